"""MuJoCo tabletop simulation: Panda arm, coloured cubes, language instructions, scripted expert.

Importing this package picks a headless OpenGL backend for MuJoCo's offscreen renderer
(MUJOCO_GL must be set before `mujoco` is imported): EGL, then OSMesa, unless the user set one.
"""
import ctypes.util
import os


def _pick_gl_backend() -> str:
    if os.environ.get('MUJOCO_GL'):
        return os.environ['MUJOCO_GL']
    for backend, lib in (('egl', 'EGL'), ('osmesa', 'OSMesa')):
        if ctypes.util.find_library(lib):
            os.environ['MUJOCO_GL'] = backend
            if backend == 'osmesa':
                os.environ.setdefault('PYOPENGL_PLATFORM', 'osmesa')
            return backend
    return ''


GL_BACKEND = _pick_gl_backend()

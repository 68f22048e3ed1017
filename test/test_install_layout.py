"""Installed like a ROS 2 package: the README's venv, an install into a temporary prefix, and colcon build."""
import os
import shutil
import subprocess
import sys

import pytest

from vla_ros import stack

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE_EXECUTABLES = [spec.executable for spec in stack.NODES]


def assert_ros_layout(prefix):
    share = os.path.join(prefix, 'share', 'vla_ros')
    for rel in ('package.xml', 'launch/vla.launch.py', 'config/vla.yaml', 'checkpoints/action_head.pt',
                'checkpoints/vision_encoder/config.json', 'models/vlm_idefics3/config.json'):
        assert os.path.isfile(os.path.join(share, rel)), rel
    assert os.path.isfile(os.path.join(prefix, 'share', 'ament_index', 'resource_index', 'packages', 'vla_ros'))
    for exe in NODE_EXECUTABLES:
        path = os.path.join(prefix, 'lib', 'vla_ros', exe)
        assert os.path.isfile(path) and os.access(path, os.X_OK), path


def _share_dir_seen_by(prefix, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k != 'AMENT_PREFIX_PATH'}
    env.update(extra_env or {})
    code = ('from ament_index_python.packages import get_package_share_directory as g; '
            'from vla_ros.resources import resolve_path; print(g("vla_ros")); '
            'print(resolve_path("package://vla_ros/checkpoints/vision_encoder", "perception.encoder_path"))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env, cwd='/')
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.split()


def test_the_readme_setup_installs_the_package_into_the_venv():
    """scripts/setup_env.sh (run by the README's commands before anything else) made the venv a ROS prefix."""
    assert_ros_layout(sys.prefix)
    share, encoder = _share_dir_seen_by(sys.prefix)     # no AMENT_PREFIX_PATH set: the venv's hook adds it
    assert share == os.path.join(sys.prefix, 'share', 'vla_ros')
    assert encoder == os.path.join(share, 'checkpoints', 'vision_encoder')
    # linked, not copied (install_layout.py --symlink): never a stale checkpoint
    head = os.path.join(share, 'checkpoints', 'pick_place', 'action_head.pt')
    assert os.path.realpath(head) == os.path.realpath(os.path.join(ROOT, 'checkpoints', 'pick_place', 'action_head.pt'))


def test_install_into_a_temporary_prefix(tmp_path):
    prefix = tmp_path / 'install'
    subprocess.run([sys.executable, os.path.join(ROOT, 'scripts', 'install_layout.py'), '--prefix', str(prefix)],
                   check=True, capture_output=True)
    assert_ros_layout(str(prefix))
    share, encoder = _share_dir_seen_by(str(prefix), {'AMENT_PREFIX_PATH': str(prefix)})
    assert share == str(prefix / 'share' / 'vla_ros')
    assert encoder.startswith(share)


def test_symlink_install_follows_the_source_tree(tmp_path):
    """--symlink (the README's venv): installed data files are links into the source tree, so a checkpoint
    retrained into checkpoints/ is what the stack loads; a copy install over it replaces the links, never
    writing through them."""
    prefix = tmp_path / 'install'
    script = os.path.join(ROOT, 'scripts', 'install_layout.py')
    subprocess.run([sys.executable, script, '--prefix', str(prefix), '--symlink'], check=True, capture_output=True)
    assert_ros_layout(str(prefix))
    share = prefix / 'share' / 'vla_ros'
    for rel in ('checkpoints/pick_place/action_head.pt', 'config/tasks/pick_place.yaml', 'launch/vla.launch.py'):
        assert os.path.islink(share / rel), rel
        assert os.path.realpath(share / rel) == os.path.realpath(os.path.join(ROOT, rel)), rel
    before = os.path.getmtime(os.path.join(ROOT, 'package.xml'))
    subprocess.run([sys.executable, script, '--prefix', str(prefix)], check=True, capture_output=True)
    assert not os.path.islink(share / 'checkpoints' / 'pick_place' / 'action_head.pt')
    assert os.path.getmtime(os.path.join(ROOT, 'package.xml')) == before
    assert_ros_layout(str(prefix))


@pytest.mark.skipif(shutil.which('colcon') is None and not os.path.exists(os.path.join(sys.prefix, 'bin', 'colcon')),
                    reason='colcon not installed')
def test_colcon_build_of_both_packages_is_clean(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ('PYTHONDONTWRITEBYTECODE', 'AMENT_PREFIX_PATH')}
    env['PATH'] = os.path.join(sys.prefix, 'bin') + os.pathsep + env.get('PATH', '')
    env['CMAKE_PREFIX_PATH'] = sys.prefix
    cmd = [os.path.join(sys.prefix, 'bin', 'colcon'), '--log-base', str(tmp_path / 'log'), 'build',
           '--build-base', str(tmp_path / 'build'), '--install-base', str(tmp_path / 'install'),
           '--paths', os.path.join(ROOT, 'vla_ros_msgs'), ROOT,
           '--event-handlers', 'console_direct-', 'console_stderr+',
           '--cmake-args', f'-DPython3_EXECUTABLE={sys.executable}', '-DBUILD_TESTING=OFF']
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=str(tmp_path), timeout=900)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert 'Summary: 2 packages finished' in log, log[-2000:]
    assert 'stderr output' not in log and 'absent from the' not in log, log[-4000:]
    assert_ros_layout(str(tmp_path / 'install' / 'vla_ros'))
    assert not os.path.exists(os.path.join(ROOT, 'vla_ros.egg-info'))  # the source tree stays clean

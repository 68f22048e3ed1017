"""Files the package ships (models, checkpoints, config, launch) and how parameters name them.

Ground floor: imports nothing of vla_ros. A path parameter may be

* ``package://<package>/<relative path>``: a file installed in that package's share directory
  (the URI scheme ROS users know from URDF meshes). ``package://vla_ros/checkpoints/vision_encoder``
  resolves through the ament index on an install (colcon, or the README's setup, which installs
  into the virtualenv like a ROS prefix), else through this source tree;
* an absolute or ``~`` path; a relative path is taken from the current directory.

A parameter that names nothing readable is a `ResourceError` whose message starts with the
parameter's name, so a user sees which of the YAML's values to fix.
"""
from __future__ import annotations

import os
from typing import Optional

PACKAGE = 'vla_ros'
SCHEME = 'package://'
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ResourceError(ValueError):
    """A path parameter that names no readable file or directory."""


def _is_source_tree(root: str) -> bool:
    try:
        with open(os.path.join(root, 'package.xml')) as fh:
            return f'<name>{PACKAGE}</name>' in fh.read()
    except OSError:
        return False


def installed_share_directory(package: str = PACKAGE) -> Optional[str]:
    """The package's share directory from the ament index, or None when it is not installed."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
    except ImportError:
        return None
    try:
        return get_package_share_directory(package)
    except (PackageNotFoundError, OSError, ValueError, LookupError):
        return None


def share_directory(package: str = PACKAGE) -> str:
    """Where `package://package/...` points: the installed share directory, else this source tree."""
    installed = installed_share_directory(package)
    if installed is not None:
        return installed
    if package == PACKAGE and _is_source_tree(SOURCE_ROOT):
        return SOURCE_ROOT
    raise ResourceError(f'package {package!r} is not installed (not in the ament index: source its '
                        'setup file, or set AMENT_PREFIX_PATH)')


def package_uri(relative: str, package: str = PACKAGE) -> str:
    return f'{SCHEME}{package}/{relative}'


def resolve_path(value: str, parameter: str, kind: str = 'any', marker: str = '') -> str:
    """Resolve a path parameter to an absolute path that exists, or raise ResourceError naming `parameter`.

    kind: 'file', 'dir' or 'any'; marker: a file a directory must contain (e.g. config.json of a
    transformers checkpoint).
    """
    if not isinstance(value, str) or not value.strip():
        raise ResourceError(f'{parameter} is empty: give a path or a {SCHEME}<package>/<path> URI')
    value = value.strip()
    if value.startswith(SCHEME):
        package, _, relative = value[len(SCHEME):].partition('/')
        try:
            base = share_directory(package)
        except ResourceError as exc:
            raise ResourceError(f'{parameter}={value!r}: {exc}') from None
        path = os.path.join(base, relative)
    else:
        path = os.path.abspath(os.path.expanduser(value))
    if not os.path.exists(path):
        raise ResourceError(f'{parameter}={value!r}: {path} does not exist')
    if kind == 'file' and not os.path.isfile(path):
        raise ResourceError(f'{parameter}={value!r}: {path} is not a file')
    if kind == 'dir' and not os.path.isdir(path):
        raise ResourceError(f'{parameter}={value!r}: {path} is not a directory')
    if marker and not os.path.isfile(os.path.join(path, marker)):
        raise ResourceError(f'{parameter}={value!r}: {path} has no {marker} (not a saved transformers model)')
    readable = os.R_OK | (os.X_OK if os.path.isdir(path) else 0)
    if not os.access(path, readable) or (marker and not os.access(os.path.join(path, marker), os.R_OK)):
        raise ResourceError(f'{parameter}={value!r}: {path} is not readable')
    return path

"""Template lookup API expected by ament_cmake_core (see package __init__)."""
import os

_TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), 'template')


def get_environment_hook_template_path(name):
    return os.path.join(_TEMPLATE_DIR, 'environment_hook', name)


def get_package_level_template_names(all_platforms=False):
    # The venv is activated by its own bin/activate; no per-package setup scripts are needed.
    return []


def get_package_level_template_path(name):
    return os.path.join(_TEMPLATE_DIR, 'package_level', name)


def get_prefix_level_template_names(*, single_language=None):
    return []


def get_prefix_level_template_path(name):
    return os.path.join(_TEMPLATE_DIR, 'prefix_level', name)

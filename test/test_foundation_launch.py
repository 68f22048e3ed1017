"""The ROS 2 launch file: valid Python, the documented arguments, and the same nodes as the bringup."""
import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch', 'vla.launch.py')


def _launch_arguments():
    tree = ast.parse(open(LAUNCH).read(), LAUNCH)
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', '') == 'ARGUMENTS':
            return [elt.elts[0].value for elt in node.value.elts]
    raise AssertionError('ARGUMENTS not found')


def test_launch_file_declares_documented_arguments():
    assert {'planner', 'config', 'record', 'model_path', 'namespace', 'use_sim'} <= set(_launch_arguments())


def test_launch_file_starts_the_bringup_nodes_with_matching_executables():
    from vla_ros.bringup import NODE_CLASSES
    text = open(LAUNCH).read()
    setup = open(os.path.join(ROOT, 'setup.py')).read()
    for name, (module, _cls) in NODE_CLASSES.items():
        executable = module.rsplit('.', 1)[1]
        assert f"executable='{executable}', name='{name}'" in text
        assert f"'{executable} = {module}:main'" in setup


def test_launch_description_builds_when_launch_is_installed():
    pytest.importorskip('launch_ros')  # present on real ROS 2 installs only
    import importlib.util
    spec = importlib.util.spec_from_file_location('vla_launch', LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.generate_launch_description().entities

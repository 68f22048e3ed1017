"""One stack description: launch file and bringup built from vla_ros.stack; defaults that name real files."""
import ast
import os
import subprocess
import sys

import pytest
import yaml

from vla_ros import stack
from vla_ros.resources import ResourceError, resolve_path, share_directory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch', 'vla.launch.py')
PATH_PARAMS = (('perception', 'encoder_path', 'dir'), ('planner', 'model_path', 'dir'),
               ('action', 'checkpoint_path', 'file'))


def _yaml_value(doc, node, key):
    return doc[f'/**/{node}']['ros__parameters'][node if node != 'sim_arm' else 'sim'][key]


def test_defaults_resolve_to_files_that_exist_and_load():
    nodes = stack.resolve()
    assert [n.name for n in nodes] == ['sim_arm', 'perception', 'planner', 'action']
    assert os.path.isfile(nodes[0].params_file)
    doc = yaml.safe_load(open(nodes[0].params_file))
    paths = {}
    for node, key, kind in PATH_PARAMS:
        value = _yaml_value(doc, node, key)
        assert value.startswith('package://vla_ros/'), value
        paths[key] = resolve_path(value, f'{node}.{key}', kind=kind)
    # ... and they load through the real loaders
    from transformers import AutoConfig
    from vla_ros.action.flow_head import FlowMatchingActionHead
    from vla_ros.perception.encoder import VisionEncoder
    encoder = VisionEncoder.from_pretrained(paths['encoder_path'])
    head = FlowMatchingActionHead.load(paths['checkpoint_path'], map_location='cpu')
    assert head.config.vis_dim == encoder.hidden_size
    assert AutoConfig.from_pretrained(paths['model_path']).model_type == 'idefics3'


def test_missing_model_path_is_an_error_naming_the_parameter(tmp_path):
    with pytest.raises(ResourceError, match=r'^perception\.encoder_path=.*does not exist'):
        resolve_path(str(tmp_path / 'nope'), 'perception.encoder_path', kind='dir', marker='config.json')
    with pytest.raises(ResourceError, match=r'^perception\.encoder_path=.*no config\.json'):
        resolve_path(str(tmp_path), 'perception.encoder_path', kind='dir', marker='config.json')
    with pytest.raises(ResourceError, match=r'^action\.checkpoint_path=.*package .nope. is not installed'):
        resolve_path('package://nope/x.pt', 'action.checkpoint_path', kind='file')
    unreadable = tmp_path / 'head.pt'
    unreadable.write_bytes(b'x')
    unreadable.chmod(0)
    if os.geteuid() != 0:  # root reads anything
        with pytest.raises(ResourceError, match='not readable'):
            resolve_path(str(unreadable), 'action.checkpoint_path', kind='file')


@pytest.mark.parametrize('module,parameter', [('vla_ros.nodes.perception_node', 'perception.encoder_path'),
                                              ('vla_ros.nodes.action_node', 'action.checkpoint_path')])
def test_node_with_a_missing_model_exits_with_one_clear_line(tmp_path, module, parameter):
    env = dict(os.environ, ROS_DOMAIN_ID='219')
    proc = subprocess.run([sys.executable, '-m', module, '--ros-args', '-p', f'{parameter}:={tmp_path}/missing'],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == stack.STARTUP_CONFIG_ERROR, proc.stderr[-2000:]
    assert f'{parameter}=' in proc.stderr and 'does not exist' in proc.stderr
    assert 'Traceback' not in proc.stderr


def test_arguments_and_supervision_flags():
    names = {a.name for a in stack.ARGUMENTS}
    assert {'planner', 'model_path', 'config', 'record', 'use_sim', 'namespace', 'use_respawn',
            'log_level'} <= names
    nodes = {n.name: n for n in stack.resolve({'record': 'true', 'bag_dir': '/tmp/b', 'namespace': '/robot1',
                                               'planner': 'vlm', 'log_level': 'warn'})}
    assert set(nodes) == {'sim_arm', 'perception', 'planner', 'action', 'recorder'}
    assert nodes['recorder'].overrides == {'recorder.output_dir': '/tmp/b'}
    assert nodes['planner'].overrides == {'planner.type': 'vlm'}           # owner only
    assert nodes['perception'].overrides == {}
    assert all(n.namespace == 'robot1' and n.log_level == 'warn' for n in nodes.values())
    assert nodes['perception'].respawn and nodes['planner'].respawn and not nodes['perception'].required
    assert nodes['action'].required and nodes['sim_arm'].required and not nodes['action'].respawn
    assert not nodes['recorder'].required and not nodes['recorder'].respawn
    # without respawn, a dead perception/planner stops the stack instead of leaving the arm waiting
    strict = {n.name: n for n in stack.resolve({'use_respawn': 'False', 'use_sim': 'false'})}
    assert 'sim_arm' not in strict and all(n.required and not n.respawn for n in strict.values())
    shared = {n.name: n for n in stack.resolve(extra_overrides={'topics.image': 'cam/rgb'})}
    assert all(n.overrides.get('topics.image') == 'cam/rgb' for n in shared.values())
    with pytest.raises(stack.StackError, match='use_sim'):
        stack.resolve({'use_sim': 'maybe'})
    with pytest.raises(stack.StackError, match='unknown launch arguments'):
        stack.resolve({'planer': 'vlm'})
    with pytest.raises(stack.StackError, match='nonsense'):
        stack.resolve(extra_overrides={'nonsense.key': 1})
    with pytest.raises(ResourceError, match='^config='):
        stack.resolve({'config': '/no/such/params.yaml'})


def test_overrides_take_the_declared_type_or_fail_before_any_node_starts():
    # `--set sim.episode_timeout_s=15` parses as an int; rclpy's declare_parameter rejects an INTEGER for a
    # DOUBLE parameter inside the node (the sim arm died at start-up), so the stack converts it first.
    nodes = {n.name: n for n in stack.resolve(extra_overrides={'sim.episode_timeout_s': 15,
                                                                 'action.control_rate_hz': 50})}
    value = nodes['sim_arm'].overrides['sim.episode_timeout_s']
    assert value == 15.0 and type(value) is float
    assert type(nodes['action'].overrides['action.control_rate_hz']) is float
    with pytest.raises(stack.StackError, match="no parameter 'episode_timeot_s'"):
        stack.resolve(extra_overrides={'sim.episode_timeot_s': 15})
    with pytest.raises(stack.StackError, match='expected a number'):
        stack.resolve(extra_overrides={'sim.episode_timeout_s': 'soon'})
    with pytest.raises(stack.StackError, match='expected a bool'):
        stack.resolve(extra_overrides={'perception.reuse_enabled': 3})


def test_bringup_runs_the_stack_description():
    from vla_ros import bringup
    args = bringup.parse_args(['--planner', 'vlm', '--record', '/tmp/x/bag', '--no-respawn', '--episodes', '3'])
    launch_args = bringup.launch_arguments(args)
    assert set(launch_args) == set(stack.ARGUMENT_DEFAULTS)     # the bringup speaks the launch file's arguments
    nodes = stack.resolve(launch_args)
    assert [n.name for n in nodes] == ['sim_arm', 'perception', 'planner', 'action', 'recorder']
    cmd = bringup.Supervisor(nodes, 1)._command(nodes[1])
    assert cmd[:3] == [sys.executable, '-m', 'vla_ros.nodes.perception_node']
    assert '__node:=perception' in cmd and '__ns:=/vla' in cmd


def test_executables_match_setup_py():
    setup = open(os.path.join(ROOT, 'setup.py')).read()
    for spec in stack.NODES:
        assert f"'{spec.executable} = {spec.module}:main'" in setup
        module = __import__(spec.module, fromlist=[spec.cls])
        assert callable(getattr(module, spec.cls)) and callable(module.main)


def test_launch_file_builds_from_the_stack_description():
    text = open(LAUNCH).read()
    ast.parse(text, LAUNCH)
    assert 'from vla_ros.stack import' in text and 'resolve(' in text
    assert 'get_package_share_directory' not in text   # nothing resolved at import time


def test_launch_file_with_launch_ros():
    pytest.importorskip('launch_ros')  # real ROS 2 installs; here: PYTHONPATH with ros2/launch + launch_ros sources
    import importlib.util
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction, RegisterEventHandler
    from launch_ros.actions import Node
    spec = importlib.util.spec_from_file_location('vla_launch', LAUNCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    description = mod.generate_launch_description()
    declared = {e.name: e for e in description.entities if isinstance(e, DeclareLaunchArgument)}
    assert set(declared) == set(stack.ARGUMENT_DEFAULTS)
    context = LaunchContext()
    context.launch_configurations.update({**stack.ARGUMENT_DEFAULTS, 'record': 'true', 'bag_dir': '/tmp/bag'})
    opaque = next(e for e in description.entities if isinstance(e, OpaqueFunction))
    actions = opaque.execute(context)
    nodes = [a for a in actions if isinstance(a, Node)]
    assert [n.node_executable for n in nodes] == [s.executable for s in stack.NODES]
    assert sum(isinstance(a, RegisterEventHandler) for a in actions) == 2      # perception, planner give-up


def test_share_directory_is_found():
    share = share_directory()
    assert os.path.isfile(os.path.join(share, 'package.xml'))
    assert os.path.isfile(os.path.join(share, 'launch', 'vla.launch.py'))

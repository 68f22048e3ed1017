"""Typed config: validation, YAML in sync with the dataclasses, ROS parameters loaded from YAML."""
import os

import pytest

DOMAIN = '212'
os.environ['ROS_DOMAIN_ID'] = DOMAIN

from vla_ros.config import ActionConfig, ConfigError, PerceptionConfig, config_from_dict, load_node_params_yaml
from vla_ros.config.dump import render
from vla_ros.config.layout import NODE_SECTIONS, SHARED_SECTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAML = os.path.join(ROOT, 'config', 'vla.yaml')


def test_committed_yaml_matches_dataclass_defaults():
    with open(YAML) as fh:
        assert fh.read() == render(), 'config/vla.yaml is stale: run python -m vla_ros.config.dump > config/vla.yaml'


@pytest.mark.parametrize('values, message', [
    ({'keep_ratio': 1.5}, 'outside'),
    ({'keep_ratio': 'half'}, 'expected a number'),
    ({'pruning': 'random'}, 'not one of'),
    ({'reuse_enabled': 1}, 'expected a bool'),
    ({'no_such_field': 1}, 'unknown'),
])
def test_invalid_values_are_rejected(values, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(PerceptionConfig, values)


def test_nested_and_dotted_keys_and_cross_field_validation():
    cfg = config_from_dict(ActionConfig, {'safety.max_velocity': 0.5, 'safety': {'stale_behavior': 'decay'}})
    assert cfg.safety.max_velocity == 0.5 and cfg.safety.stale_behavior == 'decay'
    with pytest.raises(ConfigError, match='joint_names'):
        config_from_dict(ActionConfig, {'action_dim': 3})


@pytest.mark.parametrize('node_name', sorted(NODE_SECTIONS))
def test_each_node_declares_its_parameters_from_the_yaml(node_name, tmp_path):
    """A real rclpy node reads the params file the way `ros2 launch` passes it."""
    rclpy = pytest.importorskip('rclpy')
    from rclpy.node import Node
    from vla_ros.nodes.params import declare_config

    prefix, cls = NODE_SECTIONS[node_name][0]
    # A modified copy proves the values come from the file, not from the defaults.
    text = open(YAML).read().replace('max_rate_hz: 15.0', 'max_rate_hz: 7.5') \
        .replace('rate_hz: 2.0', 'rate_hz: 0.5').replace('horizon: 16', 'horizon: 12') \
        .replace('camera_rate_hz: 15.0', 'camera_rate_hz: 9.0').replace("storage: mcap", "storage: sqlite3")
    path = tmp_path / 'params.yaml'
    path.write_text(text)
    rclpy.init()
    try:
        node = Node(node_name, namespace='vla', cli_args=['--ros-args', '--params-file', str(path)])
        cfg = declare_config(node, cls, prefix)
        topics = declare_config(node, SHARED_SECTIONS[0][1], 'topics')
        expected = load_node_params_yaml(str(path), node_name)
        for key, value in expected.items():
            if key.startswith(prefix + '.'):
                obj = cfg
                for part in key[len(prefix) + 1:].split('.'):
                    obj = getattr(obj, part)
                assert obj == value, key
        assert topics.image == 'camera/image_raw'
        assert node.describe_parameter('topics.image').description.startswith('Camera image')
        changed = {'perception': cfg.__dict__.get('max_rate_hz'), 'planner': cfg.__dict__.get('rate_hz'),
                   'action': cfg.__dict__.get('horizon'), 'sim_arm': cfg.__dict__.get('camera_rate_hz'),
                   'recorder': cfg.__dict__.get('storage')}[node_name]
        assert changed == {'perception': 7.5, 'planner': 0.5, 'action': 12, 'sim_arm': 9.0,
                           'recorder': 'sqlite3'}[node_name]
        node.destroy_node()
    finally:
        rclpy.shutdown()


def test_bringup_overrides_land_in_the_owning_node_section():
    from vla_ros.bringup import merge_params
    doc = merge_params(YAML, {'planner.type': 'vlm', 'perception.keep_ratio': 0.25, 'topics.image': 'cam/rgb'})
    assert doc['/**/planner']['ros__parameters']['planner']['type'] == 'vlm'
    assert doc['/**/perception']['ros__parameters']['perception']['keep_ratio'] == 0.25
    assert doc['/**']['ros__parameters']['topics']['image'] == 'cam/rgb'
    with pytest.raises(SystemExit):
        merge_params(YAML, {'nonsense.key': 1})

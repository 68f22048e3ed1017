"""Real-arm presets: generated files in sync, values load into the typed config the action node declares."""
import os

import pytest

from vla_ros.config import ActionConfig, TopicsConfig, config_from_dict, load_node_params_yaml
from vla_ros.config.arms import ARM_PRESETS
from vla_ros.config.dump import render

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('arm', sorted(ARM_PRESETS))
def test_arm_file_in_sync_and_loads(arm):
    path = os.path.join(ROOT, 'config', 'arms', f'{arm}.yaml')
    with open(path) as fh:
        assert fh.read() == render(arm), f'{path} is stale: python -m vla_ros.config.dump --arm {arm} > {path}'
    params = load_node_params_yaml(path, 'action')
    action = config_from_dict(ActionConfig, {k[len('action.'):]: v for k, v in params.items()
                                             if k.startswith('action.')})
    topics = config_from_dict(TopicsConfig, {k[len('topics.'):]: v for k, v in params.items()
                                             if k.startswith('topics.')})
    preset = ARM_PRESETS[arm]
    assert action.joint_names == preset['action.joint_names']
    # perception must accept the arm's joint states (else every frame is dropped as bad_joint_state)
    assert load_node_params_yaml(path, 'perception')['perception.joint_names'] == action.joint_names
    assert action.action_dim == len(action.joint_names) == len(action.safety.joint_lower)
    assert all(lo < hi for lo, hi in zip(action.safety.joint_lower, action.safety.joint_upper))
    assert action.command_interface == preset['action.command_interface']
    assert topics.joint_states == '/joint_states'
    controller = topics.joint_trajectory if action.command_interface == 'trajectory' else topics.joint_command
    assert controller.startswith('/') and controller.endswith(('/joint_trajectory', '/commands'))


def test_fr3_limits_are_the_makers():
    fr3 = ARM_PRESETS['fr3']
    assert fr3['action.safety.joint_upper'][3] == -0.1518 and fr3['action.safety.joint_lower'][5] == 0.5445
    assert fr3['action.joint_names'][0] == 'fr3_joint1'

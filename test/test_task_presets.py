"""Task presets: every params file is in sync and consistent (the same joints everywhere, its own
trained checkpoint), pick_place has 8 joints with the gripper's own limits, so101_touch the SO-101's
five joints with its MJCF's limits; the launch argument selects a preset, and the safety filter applies
per-joint limits."""
import os

import numpy as np
import pytest

from vla_ros import stack
from vla_ros.action.safety import SafetyFilter
from vla_ros.config import ActionConfig, PerceptionConfig, SimConfig, config_from_dict, load_node_params_yaml
from vla_ros.config.base import ConfigError
from vla_ros.config.dump import render
from vla_ros.config.tasks import GRIPPER_MAX_VELOCITY, TASK_PRESETS, UNTRAINED_TASKS, task_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _section(path, node, cls, prefix):
    params = load_node_params_yaml(path, node)
    return config_from_dict(cls, {k[len(prefix) + 1:]: v for k, v in params.items() if k.startswith(prefix + '.')})


@pytest.mark.parametrize('task', sorted(TASK_PRESETS))
def test_task_file_in_sync_and_consistent(task):
    path = os.path.join(ROOT, 'config', 'tasks', f'{task}.yaml')
    with open(path) as fh:
        assert fh.read() == render(task=task), f'{path} is stale: python -m vla_ros.config.dump --task {task} > {path}'
    action = _section(path, 'action', ActionConfig, 'action')
    sim = _section(path, 'sim_arm', SimConfig, 'sim')
    perception = _section(path, 'perception', PerceptionConfig, 'perception')
    assert sim.task == TASK_PRESETS[task]['sim.task']
    assert action.joint_names == sim.joint_names == perception.joint_names
    assert action.action_dim == len(action.joint_names)
    assert len(action.safety.joint_lower) == len(action.safety.joint_upper) == action.action_dim
    for path in (action.checkpoint_path, perception.encoder_path):     # its own trained checkpoint, shipped
        assert f'checkpoints/{task}/' in path
        # a preset listed as untrained has none yet (take it off the list once trained); launching it says so
        assert os.path.exists(path.replace('package://vla_ros/', ROOT + '/')) != (task in UNTRAINED_TASKS), path
    if task in UNTRAINED_TASKS:
        with pytest.raises(stack.StackError, match=f'vla_train --task {task}'):
            stack.resolve({'task': task})
    assert task_config(ActionConfig, 'action', task) == action


def test_a_preset_without_its_policy_stops_the_launch_with_the_training_command(monkeypatch):
    """Independent of UNTRAINED_TASKS (empty once every preset is trained): a preset whose policy file is
    missing is a StackError naming vla_train, unless the launch names another policy."""
    missing = 'package://vla_ros/checkpoints/pick_place/no_such_head.pt'
    monkeypatch.setitem(TASK_PRESETS['pick_place'], 'action.checkpoint_path', missing)
    with pytest.raises(stack.StackError, match='vla_train --task pick_place .*action.checkpoint_path'):
        stack.resolve({'task': 'pick_place'})
    head = os.path.join(ROOT, 'checkpoints', 'pick_place', 'action_head.pt')
    assert stack.resolve({'task': 'pick_place'}, {'action.checkpoint_path': head})


def test_pick_place_preset_commands_the_gripper():
    action = task_config(ActionConfig, 'action', 'pick_place')
    assert action.action_dim == 8 and action.joint_names[-1] == 'finger_joint1'
    assert action.safety.joint_lower[-1] == 0.0 and action.safety.joint_upper[-1] == 0.04
    assert action.safety.joint_max_velocity[-1] == GRIPPER_MAX_VELOCITY


def test_so101_preset_matches_the_arm_model():
    """The preset's joints and safety limits are the SO-101 MJCF's, as the sim loads it (the expert's
    reach over the preset's layout: test_sim_so101)."""
    from vla_ros.sim.arm_env import ArmEnv

    action = task_config(ActionConfig, 'action', 'so101_touch')
    sim = task_config(SimConfig, 'sim', 'so101_touch')
    assert sim.arm == 'so101' and action.joint_names == ['shoulder_pan', 'shoulder_lift', 'elbow_flex',
                                                         'wrist_flex', 'wrist_roll']
    env = ArmEnv(sim, render=False)
    try:
        np.testing.assert_allclose(action.safety.joint_lower, env.joint_lower, atol=1e-4)
        np.testing.assert_allclose(action.safety.joint_upper, env.joint_upper, atol=1e-4)
    finally:
        env.close()


def test_launch_argument_selects_the_task_file():
    nodes = stack.resolve({'task': 'pick_place'})
    assert all(n.params_file.endswith(os.path.join('config', 'tasks', 'pick_place.yaml')) for n in nodes)
    assert all(n.params_file.endswith('vla.yaml') for n in stack.resolve({'task': 'touch'}))
    with pytest.raises(stack.StackError, match='not both'):
        stack.resolve({'task': 'pick_place', 'config': os.path.join(ROOT, 'config', 'vla.yaml')})
    with pytest.raises(stack.StackError, match='task'):
        stack.resolve({'task': 'juggle'})


def test_safety_filter_applies_each_joints_own_limits():
    cfg = task_config(ActionConfig, 'action', 'pick_place').safety
    dt = 0.01
    f = SafetyFilter(cfg, dt)
    start = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785, 0.04])
    f.filter(start, measured=start, plan_age_s=0.0, perception_age_s=0.0, now=0.0)
    target = start + np.array([1.0] * 7 + [-0.04])          # far away: every joint saturates
    prev, t = start, 0.0
    steps = []
    for _ in range(200):
        t += dt
        cmd, _ = f.filter(target, measured=prev, plan_age_s=0.0, perception_age_s=0.0, now=t)
        steps.append(np.abs(cmd - prev) / dt)
        prev = cmd
    speed = np.max(steps, axis=0)
    assert speed[:7].max() == pytest.approx(cfg.max_velocity, rel=1e-6)
    assert speed[7] == pytest.approx(GRIPPER_MAX_VELOCITY, rel=1e-6)        # the gripper's own, slower limit
    assert prev[7] == pytest.approx(0.0) and np.all(prev >= np.asarray(cfg.joint_lower))
    bad = task_config(ActionConfig, 'action', 'pick_place')
    bad.safety.joint_max_velocity = [1.0, 2.0]
    with pytest.raises(ConfigError, match='joint_max_velocity'):
        bad.validate()

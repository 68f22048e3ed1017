"""Fast system (action head + control loop) and safety configuration."""
from dataclasses import dataclass, field
from typing import List

from vla_ros.config.base import ConfigError, param

SMOOTHING_MODES = ('none', 'ensemble', 'rtc')


@dataclass
class SafetyConfig:
    joint_lower: List[float] = param([-2.9, -1.76, -2.9, -3.07, -2.9, -0.02, -2.9],
                                     'Lower joint position limits (rad), one per joint')
    joint_upper: List[float] = param([2.9, 1.76, 2.9, -0.07, 2.9, 3.75, 2.9],
                                     'Upper joint position limits (rad), one per joint')
    max_velocity: float = param(1.5, 'Max joint speed (rad/s) of the commanded stream', range=(0.0, 100.0))
    max_acceleration: float = param(10.0, 'Max joint acceleration (rad/s^2)', range=(0.0, 10000.0))
    stale_plan_timeout_s: float = param(3.0, 'Plan older than this -> hold', range=(0.0, 3600.0))
    stale_perception_timeout_s: float = param(1.0, 'Perception older than this -> hold', range=(0.0, 3600.0))
    stale_joint_state_timeout_s: float = param(0.5, 'Any commanded joint\'s position (by name, by stamp) older '
                                               'than this -> hold', range=(0.0, 3600.0))
    stale_behavior: str = param('hold', 'What to do on stale inputs', choices=('hold', 'decay'))
    max_tracking_error: float = param(0.2, 'When a joint\'s last command is further than this (rad) from its '
                                      'measured position (episode reset, obstruction), that joint restarts from the '
                                      'measured position at rest; above the normal tracking lag (0 = off)',
                                      range=(0.0, 100.0))


@dataclass
class ActionConfig:
    checkpoint_path: str = param('package://vla_ros/checkpoints/action_head.pt',
                                 'Action-head checkpoint (.pt): a path or a package://<pkg>/<path> URI (default: the '
                                 'shipped trained head); empty = random init (untrained, meaningless commands)')
    device: str = param('cpu', 'torch device for the action head', choices=('cpu', 'cuda'))
    joint_names: List[str] = param(['joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6', 'joint7'],
                                   'Commanded joints, in order')
    horizon: int = param(16, 'Steps per action chunk', range=(1, 1024))
    action_dim: int = param(7, 'Values per action step', range=(1, 64))
    denoising_steps: int = param(10, 'Flow-matching integration steps', range=(1, 1000))
    control_rate_hz: float = param(100.0, 'Command stream rate', range=(1.0, 2000.0))
    chunk_rate_hz: float = param(10.0, 'How often a new chunk is inferred', range=(0.1, 1000.0))
    action_dt: float = param(0.05, 'Seconds between chunk steps', range=(0.001, 10.0))
    smoothing: str = param('rtc', 'Chunk-boundary smoothing', choices=SMOOTHING_MODES)
    ensemble_decay: float = param(0.5, 'Exponential weight decay for temporal ensembling', range=(0.0, 100.0))
    max_token_abs: float = param(1e4, 'Plan/perception tokens with any |value| above this are dropped',
                                 range=(0.0, 1e30))
    publish_trajectory: bool = param(True, 'Also publish trajectory_msgs/JointTrajectory')
    inference_priority: str = param('normal', 'CPU priority of the inference thread: idle (Linux SCHED_IDLE) '
                                    'keeps the 100 Hz tick regular (p99 jitter < 1 ms) but starves '
                                    'inference when other work saturates the CPU; low = nice 10',
                                    choices=('normal', 'low', 'idle'))
    torch_threads: int = param(1, 'torch intra-op threads for the head (0 = torch default); few threads '
                               'keep the control tick regular on small CPUs', range=(0, 256))
    safety: SafetyConfig = field(default_factory=SafetyConfig)

    def validate(self):
        n = len(self.joint_names)
        if self.action_dim != n:
            raise ConfigError(f'action.action_dim={self.action_dim} but {n} joint_names')
        if len(self.safety.joint_lower) != n or len(self.safety.joint_upper) != n:
            raise ConfigError('safety.joint_lower/joint_upper need one value per joint')

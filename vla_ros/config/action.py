"""Fast system (action head + control loop) and safety configuration."""
from dataclasses import dataclass, field
from typing import List

from vla_ros.config.base import ConfigError, param

SMOOTHING_MODES = ('none', 'ensemble', 'rtc')
COMMAND_INTERFACES = ('forward', 'trajectory')
INFERENCE_MODES = ('process', 'thread')


@dataclass
class SafetyConfig:
    joint_lower: List[float] = param([-2.9, -1.76, -2.9, -3.07, -2.9, -0.02, -2.9],
                                     'Lower joint position limits (rad), one per joint')
    joint_upper: List[float] = param([2.9, 1.76, 2.9, -0.07, 2.9, 3.75, 2.9],
                                     'Upper joint position limits (rad), one per joint')
    max_velocity: float = param(1.5, 'Max joint speed (rad/s) of the commanded stream', range=(0.0, 100.0))
    max_acceleration: float = param(10.0, 'Max joint acceleration (rad/s^2)', range=(0.0, 10000.0))
    joint_max_velocity: List[float] = param([], 'Per-joint max speed, one per joint (rad/s, m/s for a prismatic '
                                            'gripper joint); empty = max_velocity for every joint')
    joint_max_acceleration: List[float] = param([], 'Per-joint max acceleration, one per joint; empty = '
                                                'max_acceleration for every joint')
    stale_plan_timeout_s: float = param(3.0, 'Plan older than this -> hold', range=(0.0, 3600.0))
    stale_perception_timeout_s: float = param(1.0, 'Perception older than this -> hold', range=(0.0, 3600.0))
    stale_joint_state_timeout_s: float = param(0.5, 'Any commanded joint\'s position (by name, by stamp) older '
                                               'than this -> hold', range=(0.0, 3600.0))
    stale_behavior: str = param('hold', 'What to do on stale inputs', choices=('hold', 'decay'))
    max_tracking_error: float = param(0.2, 'When any joint\'s last command is further than this (rad) from its '
                                      'measured position (episode reset, obstruction), the whole arm restarts from '
                                      'the measured position at rest; above the normal tracking lag (0 = off)',
                                      range=(0.0, 100.0))
    joint_max_tracking_error: List[float] = param([], 'Per-joint max_tracking_error, one per joint; empty = '
                                                  'max_tracking_error for every joint. 0 = that joint never '
                                                  'restarts with the arm (a gripper squeezing an object sits '
                                                  'away from its command on purpose)')
    max_measured_jump: float = param(0.2, 'When a joint\'s measured position moves further than this (rad) plus '
                                     'twice its max speed times the time between two joint states\' stamps, the arm '
                                     'was displaced (episode reset, a push): the whole arm restarts from the measured '
                                     'position at rest (0 = off). Above what the sim arm moves in one catch-up burst '
                                     '(0.1 s of physics published at once after a stall); an arm whose driver stamps '
                                     'each state when measured can use ~0.05', range=(0.0, 100.0))


@dataclass
class RealtimeConfig:
    control_process: bool = param(True, 'Run the control tick in its own process (a single Python thread: no ROS '
                                  'callback can hold the GIL when a tick is due); false = a thread of the action '
                                  'node. Needs action.inference_mode = process')
    command_qos: str = param('reliable', 'QoS of the per-tick joint command: reliable matches '
                             "ros2_controllers' subscriptions; best_effort never waits for a reader's "
                             'acknowledgement (both reach the sim arm)', choices=('reliable', 'best_effort'))
    async_publish: bool = param(True, 'Control process on Fast DDS: publish through its asynchronous writer thread '
                                '(RMW_FASTRTPS_PUBLICATION_MODE=ASYNCHRONOUS) so a reliable reader that acknowledges '
                                'late cannot block a tick in the DDS write; an explicit environment setting wins')
    fifo_priority: int = param(40, 'SCHED_FIFO priority of the control-loop thread (0 = normal scheduling). Used '
                               'when permitted (CAP_SYS_NICE or an rtprio limit), else logged once. Below '
                               "ros2_control's controller_manager (50) so the arm's own loop always wins",
                               range=(0, 99))
    dds_transport: str = param('udp', 'Control process on Fast DDS: builtin transports of its participant. udp = '
                               'UDPv4 only: a send never waits for another process (a slow reader loses datagrams, '
                               'reliable QoS resends them); shm = default (shared memory + UDP): a reader process '
                               'that does not run can hold the writer\'s shared-memory buffers and block a publish. '
                               'An explicit FASTDDS_BUILTIN_TRANSPORTS wins', choices=('udp', 'shm'))
    lock_memory: bool = param(True, 'Control process: lock its memory (mlockall, pages locked as first touched) so '
                              'the tick never waits on a page brought back from disk; logged when not permitted')
    control_cpus: List[int] = param([], 'CPUs the control-loop thread is pinned to (empty = any)')
    inference_cpus: List[int] = param([], 'CPUs the inference process is pinned to (empty = any)')
    late_tolerance_ms: float = param(2.0, 'A tick starting later than this after its release time counts as a '
                                     'missed deadline', range=(0.0, 1000.0))
    manage_gc: bool = param(True, 'Disable automatic garbage collection in the action node and collect only '
                            'right after a tick with time to spare (gc.freeze after start-up)')
    gc_young_period_s: float = param(1.0, 'Collect the young generations (0, 1) this often, after a tick',
                                     range=(0.01, 3600.0))
    gc_full_period_s: float = param(60.0, 'Full collection this often, after a tick', range=(1.0, 86400.0))
    gc_min_slack_ms: float = param(4.0, 'Collect only if at least this much time (at most half a period) is left to the next tick',
                                   range=(0.0, 1000.0))


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
    cuda_graphs: bool = param(False, 'device cuda: run the whole denoising loop as one captured CUDA graph '
                                     '(action/flow_graph.py; noise from the CUDA generator, not the seeded one; '
                                     'eager fallback logged)')
    control_rate_hz: float = param(100.0, 'Command stream rate', range=(1.0, 2000.0))
    chunk_rate_hz: float = param(10.0, 'How often a new chunk is inferred', range=(0.1, 1000.0))
    action_dt: float = param(0.05, 'Seconds between chunk steps', range=(0.001, 10.0))
    smoothing: str = param('rtc', 'Chunk-boundary smoothing', choices=SMOOTHING_MODES)
    ensemble_decay: float = param(0.5, 'Exponential weight decay for temporal ensembling', range=(0.0, 100.0))
    max_token_abs: float = param(1e4, 'Plan/perception tokens with any |value| above this are dropped',
                                 range=(0.0, 1e30))
    command_interface: str = param('forward', 'How commands reach the arm: forward = std_msgs/Float64MultiArray '
                                   'positions every control tick (forward_command_controller ~/commands); '
                                   'trajectory = every chunk as trajectory_msgs/JointTrajectory with velocities '
                                   '(joint_trajectory_controller ~/joint_trajectory)', choices=COMMAND_INTERFACES)
    inference_mode: str = param('process', 'Where the action head runs: process = a separate OS process (chunks '
                                'through shared memory, the control tick never shares a GIL with torch); '
                                'thread = a background thread of the node', choices=INFERENCE_MODES)
    max_tokens: int = param(1024, 'Most tokens per plan/perception message the inference process accepts '
                            '(sizes its shared memory)', range=(1, 1 << 20))
    trajectory_point_dt: float = param(0.05, 'Seconds between waypoints of a chunk trajectory',
                                       range=(0.001, 10.0))
    trajectory_lead_s: float = param(0.03, 'A chunk trajectory starts this long after it is sent (header.stamp '
                                     'in the future: covers transport and one controller cycle)',
                                     range=(0.0, 10.0))
    trajectory_stop_s: float = param(0.1, 'Hold/e-stop trajectory: time to reach the hold point',
                                     range=(0.001, 10.0))
    inference_priority: str = param('normal', 'CPU priority of the inference thread: idle (Linux SCHED_IDLE) '
                                    'keeps the 100 Hz tick regular (p99 jitter < 1 ms) but starves '
                                    'inference when other work saturates the CPU; low = nice 10',
                                    choices=('normal', 'low', 'idle'))
    torch_threads: int = param(1, 'torch intra-op threads for the head (0 = torch default); few threads '
                               'keep the control tick regular on small CPUs', range=(0, 256))
    inject_inference_delay_s: float = param(0.0, 'TEST/EVAL KNOB, keep 0 on a robot: extra seconds added to every '
                                            'action-head inference (a slow planner/GPU), for RTC vs naive chunking '
                                            'under delay (vla_eval_episodes --inference-delay-s)', range=(0.0, 10.0))
    safety: SafetyConfig = field(default_factory=SafetyConfig)
    realtime: RealtimeConfig = field(default_factory=RealtimeConfig)

    def validate(self):
        n = len(self.joint_names)
        if self.action_dim != n:
            raise ConfigError(f'action.action_dim={self.action_dim} but {n} joint_names')
        if len(self.safety.joint_lower) != n or len(self.safety.joint_upper) != n:
            raise ConfigError('safety.joint_lower/joint_upper need one value per joint')
        for name in ('joint_max_velocity', 'joint_max_acceleration', 'joint_max_tracking_error'):
            values = getattr(self.safety, name)
            if values and (len(values) != n or min(values) < 0):
                raise ConfigError(f'safety.{name} needs one non-negative value per joint (or none)')

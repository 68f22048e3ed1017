"""Simulated arm node: MuJoCo Panda tabletop in real time behind the interfaces of a real arm.

Publishes camera images (sensor_msgs/Image rgb8), joint states, the episode instruction
(latched) and TaskStatus; executes joint position commands (Float64MultiArray, like a
forward_command_controller) and JointTrajectory messages the way a joint_trajectory_controller
does (spline through the waypoints, replaced at the new trajectory's start time; see
vla_ros.action.trajectory.TrajectoryFollower), sampled at every physics step. Physics, rendering and publishing share one thread because the
offscreen GL context belongs to the thread that created it.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.node import Node
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_ros.action.trajectory import TrajectoryFollower
from vla_ros.config.sim import SimConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.nodes.common import LATCHED_QOS, SENSOR_QOS, Diagnostics, DropCounter, reliable_qos, spin_node
from vla_ros.nodes.params import declare_config
from vla_ros.sim.arm_env import ArmEnv
from vla_ros.sim.pacing import RealtimePacer
from vla_ros_msgs.msg import ActionChunk, TaskStatus

# Never simulate more than this much backlog in one go: after a stall (debugger, overloaded CPU)
# the sim slows down instead of fast-forwarding through commands it never saw.
_MAX_CATCH_UP_S = 0.1
_STATUS_PERIOD_S = 0.5
# Commands without any action chunk before the sim warns that its first episode clock is still waiting
_CHUNKLESS_WARN_COMMANDS = 2000


class SimArmNode(Node):
    def __init__(self, **kwargs):
        super().__init__('sim_arm', **kwargs)
        self.cfg: SimConfig = declare_config(self, SimConfig, 'sim')
        self.topics: TopicsConfig = declare_config(self, TopicsConfig, 'topics')
        self.drops = DropCounter(self.get_logger())
        self.env = ArmEnv(self.cfg, seed=self.cfg.seed, render=False)
        self._n_joints = len(self.cfg.joint_names)
        self._lock = threading.Lock()
        self._pending_target: Optional[np.ndarray] = None
        self._follower = TrajectoryFollower(self._n_joints)   # guarded by self._lock
        self._trajectory_started = False
        self._last_q: Optional[np.ndarray] = None
        self._last_command_sim_t = 0.0
        self.counters = {'images': 0, 'joint_states': 0, 'commands': 0, 'episodes_done': 0, 'successes': 0,
                         'physics_steps': 0}
        self._finished = False
        self._rtf = 0.0

        self._image_pub = self.create_publisher(Image, self.topics.image, SENSOR_QOS)
        # Reliable joint states reach both reliable and best-effort subscribers.
        self._joint_pub = self.create_publisher(JointState, self.topics.joint_states, reliable_qos())
        self._instruction_pub = self.create_publisher(String, self.topics.instruction, LATCHED_QOS)
        self._status_pub = self.create_publisher(TaskStatus, self.topics.task_status, reliable_qos())
        # Best effort: accepts reliable and best-effort command publishers alike.
        self.create_subscription(Float64MultiArray, self.topics.joint_command, self._on_command, SENSOR_QOS)
        self.create_subscription(JointTrajectory, self.topics.joint_trajectory, self._on_trajectory,
                                 reliable_qos())
        self._diagnostics = Diagnostics(self, self._status, level_fn=self._level)
        self._publish_instruction()
        # The first episode's clock waits for the policy (sim.episode_clock_start): the action node holds the arm
        # from its first tick, seconds before perception and planner have loaded on a busy CPU (measured 3.7 s
        # on one core), and those seconds used to come out of the first episode's time limit.
        self._policy_live = self.cfg.episode_clock_start == 'immediately'
        self._chunk_seen = self.cfg.episode_clock_start != 'first_chunk'
        self._commands_before_chunk = 0
        if not self._chunk_seen:
            self.create_subscription(ActionChunk, self.topics.action_chunk, self._on_chunk, reliable_qos())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name='sim_physics', daemon=True)
        self._thread.start()
        self.get_logger().info(f'sim arm ready: episode {self.env.episode} seed {self.env.seed}: '
                               f'"{self.env.instruction}"')

    # ------------------------------------------------------------------ commands
    def _accept_target(self, values, source: str) -> None:
        q = np.asarray(values, dtype=np.float64).reshape(-1)
        if q.shape != (self._n_joints,):
            self.drops.drop('wrong_length', f'{source}: {q.size} values for {self._n_joints} joints')
            return
        if not np.all(np.isfinite(q)):
            self.drops.drop('non_finite', f'{source}: {q.tolist()}')
            return
        with self._lock:
            self._pending_target = q
            self._follower.cancel()   # a forward command takes over from any trajectory
            self.counters['commands'] += 1

    def _on_command(self, msg: Float64MultiArray) -> None:
        try:
            self._accept_target(msg.data, 'joint_command')
        except (TypeError, ValueError) as exc:
            self.drops.drop('bad_command', str(exc))

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            if not msg.points:
                self.drops.drop('empty_trajectory', 'no points')
                return
            names = list(msg.joint_names) or list(self.cfg.joint_names)
            index = {n: i for i, n in enumerate(names)}
            missing = [n for n in self.cfg.joint_names if n not in index]
            if missing:
                self.drops.drop('trajectory_joint_mismatch', f'missing {missing}')
                return
            order = [index[n] for n in self.cfg.joint_names]
            positions = np.asarray([p.positions for p in msg.points], dtype=np.float64)
            if positions.ndim != 2 or positions.shape[1] != len(names):
                self.drops.drop('trajectory_joint_mismatch', f'points need {len(names)} positions each')
                return
            with_vel = all(len(p.velocities) == len(names) for p in msg.points)
            velocities = np.asarray([p.velocities for p in msg.points], dtype=np.float64)[:, order] if with_vel else None
            times = np.asarray([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in msg.points])
            start = msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec
            now = self._now_s()
            with self._lock:
                if not self._follower.active and self._last_q is not None:
                    self._follower.hold(self._last_q, now)   # a JTC starts from the arm's current state
                accepted = self._follower.set_trajectory(now, start, times, positions[:, order], velocities)
                if accepted:
                    self._trajectory_started = True
                    self.counters['commands'] += 1
            if not accepted:
                self.drops.drop('rejected_trajectory', 'no waypoint in the future, non-increasing times or NaN')
        except (TypeError, ValueError, IndexError) as exc:
            self.drops.drop('bad_trajectory', str(exc))

    def _on_chunk(self, msg: ActionChunk) -> None:
        if not self._chunk_seen:
            self._chunk_seen = True
            self.get_logger().info(f'first action chunk (id {msg.chunk_id}) seen: the episode clock starts at the next '
                                   'command')

    def _now_s(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ------------------------------------------------------------------ simulation thread
    def _run(self) -> None:
        try:
            self._loop()
        except Exception as exc:
            if self._stop.is_set() or not self.context.ok():
                return  # shutting down: publishers may already be gone
            self.get_logger().error(f'simulation thread stopped: {exc!r}')  # a dead sim must be loud
            raise
        finally:
            self.env.close()  # the GL context is released by the thread that owns it

    def _loop(self) -> None:
        cfg, env = self.cfg, self.env
        dt = env.model.opt.timestep
        camera_period, joint_period = 1.0 / cfg.camera_rate_hz, 1.0 / cfg.joint_state_rate_hz
        next_camera = next_joint = next_status = 0.0
        pacer = RealtimePacer(dt, cfg.realtime_factor, _MAX_CATCH_UP_S)
        # Step in small batches so commands and publish deadlines are honoured between them.
        batch = max(1, int(min(camera_period, joint_period) / dt))
        while not self._stop.is_set():
            with self._lock:
                target, self._pending_target = self._pending_target, None
                following = self._follower.active
                new_trajectory, self._trajectory_started = self._trajectory_started, False
            jump = 0.0 if target is None else env.command_jump(target)
            if cfg.max_command_jump > 0 and jump > cfg.max_command_jump:
                self.drops.drop('command_jump', f'target {jump:.3f} rad from the arm > {cfg.max_command_jump}')
                target = None           # a discontinuity: keep the current target
            if target is not None or new_trajectory:
                if target is not None:
                    env.set_target(target)  # clipped to joint limits inside the env
                self._last_command_sim_t = float(env.data.time)
                if not self._policy_live and not self._chunk_seen:
                    self._commands_before_chunk += 1
                    if self._commands_before_chunk == _CHUNKLESS_WARN_COMMANDS:
                        self.get_logger().warn(
                            f'{self._commands_before_chunk} commands but no action chunk on '
                            f'{self.resolve_topic_name(self.topics.action_chunk)}: the episode clock waits for one '
                            "(sim.episode_clock_start: first_chunk); use first_command for a policy that publishes "
                            'no chunks')
                elif not self._policy_live:
                    self._policy_live = True
                    env.restart_clock()
                    next_camera = next_joint = next_status = 0.0   # publish deadlines are on the episode clock
                    self.get_logger().info(f'policy live: episode {env.episode} clock started ({self.cfg.episode_clock_start})')
            elif (cfg.command_timeout_s > 0.0
                  and float(env.data.time) - self._last_command_sim_t > cfg.command_timeout_s):
                env.set_target(env.joint_positions())
                self._last_command_sim_t = float(env.data.time)

            n_steps = pacer.steps_due(time.monotonic(), batch)
            if n_steps > 0 and following:
                self._follow_trajectory(n_steps, dt / cfg.realtime_factor)
                self._last_command_sim_t = float(env.data.time)
            elif n_steps > 0:
                env.step_physics(n_steps)
            self.counters['physics_steps'] += n_steps
            t = env.elapsed_s
            if t >= next_joint:
                self._publish_joint_state()
                next_joint = t + joint_period
            if t >= next_camera:
                self._publish_image()
                next_camera = t + camera_period
            if self._policy_live and env.done() and not self._finished:
                self._end_episode()
                next_camera = next_joint = next_status = 0.0
                continue
            if t >= next_status:
                self._publish_status(done=False)
                next_status = t + _STATUS_PERIOD_S
            self._rtf = pacer.achieved_factor(time.monotonic())
            if n_steps == 0:
                time.sleep(min(dt, 0.002) / cfg.realtime_factor)

    def _follow_trajectory(self, n_steps: int, wall_dt: float) -> None:
        """Like a JTC in the arm's control loop: a fresh spline sample before every physics step.
        The steps due now stand for the last n_steps * wall_dt seconds of wall time."""
        now = self._now_s()
        for i in range(n_steps):
            with self._lock:
                state = self._follower.sample(now - (n_steps - 1 - i) * wall_dt)
            if state is not None:
                self.env.set_target(state[0])
            self.env.step_physics(1)

    def _end_episode(self) -> None:
        env = self.env
        self.counters['episodes_done'] += 1
        self.counters['successes'] += int(env.success())
        self._publish_status(done=True)
        # the achieved real-time factor tells whether this machine kept the sim in step with the stack's
        # wall-clock control (vla_eval_episodes reports it per episode)
        self.get_logger().info(f'episode {env.episode} {"SUCCESS" if env.success() else "timeout"} '
                               f'after {env.elapsed_s:.2f}s ({env.instruction}); sim {self._rtf:.2f}x real time')
        if self.cfg.max_episodes and self.counters['episodes_done'] >= self.cfg.max_episodes:
            self._finished = True
            self.get_logger().info(f'{self.cfg.max_episodes} episodes done; holding the arm, no more resets')
            env.set_target(env.joint_positions())
            return
        env.reset()
        with self._lock:
            self._follower.cancel()   # the old episode's trajectory must not drag the new arm pose back
        self._publish_instruction()

    # ------------------------------------------------------------------ publishing
    def _stamp(self):
        return self.get_clock().now().to_msg()

    def _publish_image(self) -> None:
        rgb = self.env.render()
        msg = Image()
        msg.header.stamp = self._stamp()
        msg.header.frame_id = 'camera'
        msg.height, msg.width = int(rgb.shape[0]), int(rgb.shape[1])
        msg.encoding = 'rgb8'
        msg.is_bigendian = 0
        msg.step = int(rgb.shape[1] * 3)
        msg.data = rgb.tobytes()
        self._image_pub.publish(msg)
        self.counters['images'] += 1

    def _publish_joint_state(self) -> None:
        msg = JointState()
        msg.header.stamp = self._stamp()
        msg.header.frame_id = 'base'
        msg.name = list(self.cfg.joint_names)
        q = self.env.joint_positions()
        self._last_q = q.copy()
        msg.position = q.tolist()
        msg.velocity = self.env.joint_velocities().tolist()
        self._joint_pub.publish(msg)
        self.counters['joint_states'] += 1

    def _publish_instruction(self) -> None:
        self._instruction_pub.publish(String(data=self.env.instruction))

    def _publish_status(self, done: bool) -> None:
        env = self.env
        msg = TaskStatus()
        msg.header.stamp = self._stamp()
        msg.header.frame_id = 'base'
        msg.episode = int(env.episode)
        msg.instruction = env.instruction
        msg.success = bool(env.success())
        msg.done = bool(done)
        msg.distance_to_goal = float(env.distance_to_goal())
        msg.elapsed = float(env.elapsed_s)
        self._status_pub.publish(msg)

    # ------------------------------------------------------------------ diagnostics
    def _status(self):
        return dict(self.counters, episode=self.env.episode, seed=self.env.seed, instruction=self.env.instruction,
                    realtime_factor=self._rtf, drops=self.drops.total, **{f'drop_{k}': v for k, v in
                                                                         self.drops.counts.items()})

    def _level(self):
        if not self._thread.is_alive() and not self._stop.is_set():
            return DiagnosticStatus.ERROR, 'simulation thread stopped'
        if self._rtf and self._rtf < 0.8 * self.cfg.realtime_factor:
            return DiagnosticStatus.WARN, f'sim runs slower than real time ({self._rtf:.2f}x)'
        return DiagnosticStatus.OK, 'finished' if self._finished else 'running'

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        if not self._thread.is_alive():
            self.env.close()


def main(args=None):
    spin_node(lambda: SimArmNode(), args)


if __name__ == '__main__':
    main()

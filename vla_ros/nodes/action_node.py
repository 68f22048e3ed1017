"""Action node: the fast system. Latest plan + perception tokens + joint state in, safe joint
commands out at control rate (std_msgs/Float64MultiArray for a forward position controller,
optionally trajectory_msgs/JointTrajectory), ActionChunk for every committed chunk.

All logic lives in vla_ros.action.controller.ControlLoop; this node only converts messages.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import torch
from builtin_interfaces.msg import Duration
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool, Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.action.controller import ChunkResult, ControlLoop, RateMonitor, build_head
from vla_ros.config.action import ActionConfig
from vla_ros.config.timing import TimingConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.nodes.common import (MS_PER_S, SENSOR_QOS, Diagnostics, DropCounter, TokenDecodeError, msg_to_tokens,
                                  ns_to_stamp, reliable_qos)
from vla_ros.nodes.params import declare_config
from vla_ros.timing import JointStateTracker, StampGate, local_time_of_stamp, stamp_to_ns
from vla_ros.resources import resolve_path
from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan

try:  # std_srvs ships with every ROS 2 install; the PyPI wheel is in requirements.txt
    from std_srvs.srv import SetBool
except ImportError:  # pragma: no cover - topic-only e-stop then
    SetBool = None


class ActionNode(Node):
    def __init__(self, **kwargs):
        super().__init__('action', **kwargs)
        self.cfg: ActionConfig = declare_config(self, ActionConfig, 'action')
        self.topics: TopicsConfig = declare_config(self, TopicsConfig, 'topics')
        self.timing: TimingConfig = declare_config(self, TimingConfig, 'timing')
        self.drops = DropCounter(self.get_logger())
        # Input age is judged by header stamps on this node's clock (vla_ros.timing), not by arrival.
        safety, timing = self.cfg.safety, self.timing
        self._plan_gate = StampGate(safety.stale_plan_timeout_s, timing.max_future_s, timing.clock_jump_s)
        self._tokens_gate = StampGate(safety.stale_perception_timeout_s, timing.max_future_s, timing.clock_jump_s)
        self._joints = JointStateTracker(self.cfg.joint_names, timing.max_future_s, timing.clock_jump_s)
        if self.cfg.checkpoint_path:  # a missing/unreadable checkpoint is a startup error naming the parameter
            self.cfg.checkpoint_path = resolve_path(self.cfg.checkpoint_path, 'action.checkpoint_path', kind='file')
        if self.cfg.torch_threads > 0:
            torch.set_num_threads(self.cfg.torch_threads)
        self._joint_index: Optional[np.ndarray] = None
        self._lock = threading.Lock()
        self.loop: Optional[ControlLoop] = None
        self._head_loaded = False
        self._published = 0
        self._rate = RateMonitor(self.cfg.control_rate_hz)
        self._last_mode = 'waiting'
        self._pending_estop = False
        self._plan_cache: Optional[tuple] = None    # (tokens, plan_id, stamp as monotonic time)
        self._vis_cache: Optional[tuple] = None     # (tokens, perception sequence, stamp as monotonic time)
        self._latest_q: Optional[np.ndarray] = None
        self._latest_q_time = 0.0

        self._chunk_pub = self.create_publisher(ActionChunk, self.topics.action_chunk, reliable_qos())
        self._cmd_pub = self.create_publisher(Float64MultiArray, self.topics.joint_command, reliable_qos())
        self._traj_pub = (self.create_publisher(JointTrajectory, self.topics.joint_trajectory, reliable_qos())
                          if self.cfg.publish_trajectory else None)
        # The single trajectory point is due one control period ahead (sec/nanosec split: valid at 1 Hz too).
        period_ns = int(round(1e9 / self.cfg.control_rate_hz))
        self._point_time = Duration(sec=period_ns // 1_000_000_000, nanosec=period_ns % 1_000_000_000)

        inputs = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Plan, self.topics.plan, self._on_plan, reliable_qos(), callback_group=inputs)
        # Best-effort subscription: matches reliable and best-effort perception publishers alike,
        # and only the newest tokens matter.
        self.create_subscription(LatentTokens, self.topics.perception_tokens, self._on_tokens, SENSOR_QOS,
                                 callback_group=inputs)
        self.create_subscription(JointState, self.topics.joint_states, self._on_joint_state, SENSOR_QOS,
                                 callback_group=inputs)
        # E-stop gets its own group so a busy input queue can never delay it.
        estop_group = MutuallyExclusiveCallbackGroup()
        self.create_subscription(Bool, self.topics.estop, self._on_estop, reliable_qos(),
                                 callback_group=estop_group)
        if SetBool is not None:
            self.create_service(SetBool, self.topics.estop, self._on_estop_srv, callback_group=estop_group)
        self._control_timer = self.create_timer(1.0 / self.cfg.control_rate_hz, self._on_control_tick,
                                                callback_group=MutuallyExclusiveCallbackGroup())
        self._diagnostics = Diagnostics(self, self._status, level_fn=self._level)
        if self.cfg.checkpoint_path:
            self._ensure_loop(None, None)  # dims come from the checkpoint; fail over loudly now

    # ------------------------------------------------------------------ lazy head
    def _ensure_loop(self, vis_dim: Optional[int], plan_dim: Optional[int]) -> Optional[ControlLoop]:
        """Head dims come from the checkpoint, else from the first tokens seen (random head)."""
        with self._lock:
            if self.loop is not None:
                return self.loop
            try:
                head, self._head_loaded = build_head(self.cfg, vis_dim or 0, plan_dim or 0)
            except Exception as exc:  # a broken checkpoint must not take the node down
                self.get_logger().error(f'cannot load action head {self.cfg.checkpoint_path!r}: {exc}; '
                                        'falling back to a RANDOM head once token sizes are known')
                self.cfg.checkpoint_path = ''
                if vis_dim is None or plan_dim is None:
                    return None
                head, self._head_loaded = build_head(self.cfg, vis_dim, plan_dim)
            if not self._head_loaded:
                self.get_logger().warning('action.checkpoint_path is empty: using a RANDOMLY INITIALISED action '
                                          'head. Commands are safe (clamped) but meaningless; train one with '
                                          'vla_train.')
            loop = ControlLoop(head, self.cfg, clock=time.monotonic, on_chunk=self._publish_chunk)
            loop.set_estop(self._pending_estop)
            loop.start()
            self.loop = loop
            return loop

    # ------------------------------------------------------------------ inputs
    def _stamp_time(self, stamp, gate: StampGate, what: str) -> Optional[float]:
        """Check a header stamp; return its instant on the control loop's monotonic clock, or None (dropped)."""
        stamp_ns, now_ns = stamp_to_ns(stamp), self.get_clock().now().nanoseconds
        reason = gate.check(stamp_ns, now_ns)
        if reason is not None:
            self.drops.drop(f'{what}_{reason}', f'stamp {stamp_ns} ns, clock {now_ns} ns')
            return None
        return local_time_of_stamp(stamp_ns, now_ns, time.monotonic())

    def _on_plan(self, msg: Plan) -> None:
        try:
            tokens = msg_to_tokens(msg.plan_tokens, self.cfg.max_token_abs)
        except TokenDecodeError as exc:
            self.drops.drop('bad_plan_tokens', str(exc))
            return
        t = self._stamp_time(msg.header.stamp, self._plan_gate, 'plan')
        if t is None:
            return
        self._plan_cache = (tokens, int(msg.plan_id), t)
        self._feed()

    def _on_tokens(self, msg: LatentTokens) -> None:
        try:
            tokens = msg_to_tokens(msg, self.cfg.max_token_abs)
        except TokenDecodeError as exc:
            self.drops.drop('bad_perception_tokens', str(exc))
            return
        t = self._stamp_time(msg.header.stamp, self._tokens_gate, 'perception')
        if t is None:
            return
        self._vis_cache = (tokens, int(msg.sequence), t)
        self._feed()

    def _feed(self) -> None:
        """Hand the newest tokens to the loop, building the head once both token widths are known."""
        plan, vis = self._plan_cache, self._vis_cache
        loop = self.loop
        if loop is None:
            if plan is None or vis is None:
                return
            loop = self._ensure_loop(vis[0].shape[1], plan[0].shape[1])
            if loop is None:
                return
        hc = loop.head.config
        if plan is not None:
            if plan[0].shape[1] != hc.plan_dim:
                self.drops.drop('plan_dim', f'plan token dim {plan[0].shape[1]} != head plan_dim {hc.plan_dim}')
            else:
                loop.update_plan(*plan)
            self._plan_cache = None
        if vis is not None:
            if vis[0].shape[1] != hc.vis_dim:
                self.drops.drop('perception_dim', f'token dim {vis[0].shape[1]} != head vis_dim {hc.vis_dim}')
            else:
                loop.update_perception(*vis)
            self._vis_cache = None

    def _on_joint_state(self, msg: JointState) -> None:
        """Joints are taken BY NAME from any publisher; their age is that of the oldest arm joint's stamp."""
        stamp_ns, now_ns = stamp_to_ns(msg.header.stamp), self.get_clock().now().nanoseconds
        try:
            reason = self._joints.update(msg.name, msg.position, stamp_ns, now_ns)
        except (TypeError, ValueError) as exc:
            reason = f'bad_joint_state ({exc})'
        if reason is not None:
            self.drops.drop(f'joint_state_{reason}', f'names {list(msg.name)[:10]}, stamp {stamp_ns} ns')
            return
        q = self._joints.positions()
        if q is None:
            return  # other arm joints not seen yet
        self._latest_q = q
        self._latest_q_time = local_time_of_stamp(self._joints.oldest_stamp_ns(), now_ns, time.monotonic())
        if self.loop is not None:
            self.loop.update_proprio(q, now=self._latest_q_time)

    def _set_estop(self, active: bool) -> None:
        self._pending_estop = bool(active)
        if self.loop is not None:
            self.loop.set_estop(active)
        if active:
            self.get_logger().error('e-stop LATCHED: holding position')
        else:
            self.get_logger().warning('e-stop released')

    def _on_estop(self, msg: Bool) -> None:
        self._set_estop(bool(msg.data))

    def _on_estop_srv(self, request, response):
        self._set_estop(bool(request.data))
        response.success = True
        response.message = 'e-stop latched' if request.data else 'e-stop released'
        return response

    # ------------------------------------------------------------------ outputs
    def _on_control_tick(self) -> None:
        now = time.monotonic()
        self._rate.record(now)
        loop = self.loop
        if loop is None:
            self._last_mode = 'waiting'
            return  # no head yet: nothing has been commanded, so the arm keeps its own hold
        try:
            if loop.measured is None and self._latest_q is not None:
                loop.update_proprio(self._latest_q, now=self._latest_q_time)
            command, status = loop.tick(now)
        except Exception as exc:  # never let the control timer die; publish nothing this tick
            self.drops.drop('tick_error', f'{type(exc).__name__}: {exc}')
            return
        self._last_mode = status.mode
        if command is None:
            return
        # Stamp = the instant the safety filter limited this command for (its `now`), so stamp
        # differences are exactly the elapsed times the velocity limit was applied over.
        stamp = ns_to_stamp(self.get_clock().now().nanoseconds - int((time.monotonic() - now) * 1e9))
        cmd = Float64MultiArray()
        cmd.layout.dim = [MultiArrayDimension(label='joints', size=len(command), stride=len(command))]
        cmd.data = [float(v) for v in command]
        self._cmd_pub.publish(cmd)
        if self._traj_pub is not None:
            traj = JointTrajectory()
            traj.header.stamp = stamp
            traj.joint_names = list(self.cfg.joint_names)
            traj.points = [JointTrajectoryPoint(positions=cmd.data, time_from_start=self._point_time)]
            self._traj_pub.publish(traj)
        self._published += 1

    def _publish_chunk(self, chunk: ChunkResult) -> None:
        msg = ActionChunk()
        # Chunk step 0 applies at chunk.start_time (monotonic); express it on the ROS clock.
        offset_ns = int((chunk.start_time - time.monotonic()) * 1e9)
        msg.header.stamp = ns_to_stamp(max(0, self.get_clock().now().nanoseconds + offset_ns))
        msg.chunk_id = int(chunk.chunk_id)
        msg.horizon, msg.action_dim = int(chunk.actions.shape[0]), int(chunk.actions.shape[1])
        msg.dt = float(chunk.dt)
        msg.actions = chunk.actions.astype(np.float32).ravel()
        msg.joint_names = list(self.cfg.joint_names)
        msg.plan_id, msg.perception_sequence = int(chunk.plan_id), int(chunk.frame_id)
        msg.inference_time = float(chunk.inference_ms) / MS_PER_S
        msg.smoothing = chunk.smoothing
        self._chunk_pub.publish(msg)

    # ------------------------------------------------------------------ diagnostics
    def _status(self):
        out = dict(self._rate.stats())
        out.update(mode=self._last_mode, commands_published=self._published, dropped=self.drops.total,
                   head_from_checkpoint=self._head_loaded, estop=self._pending_estop)
        loop = self.loop
        if loop is not None:
            out.update(chunks=loop.chunk_count, inference_ms=loop.last_inference_ms,
                       inference_errors=loop.inference_errors, inference_priority=loop.inference_priority,
                       smoothing=self.cfg.smoothing)
            if loop.last_error:
                out['last_inference_error'] = loop.last_error
            out.update({f'safety_{k}': v for k, v in loop.safety.counters.items()})
        out.update({f'drop_{k}': v for k, v in sorted(self.drops.counts.items())})
        out['stamp_gate_resets'] = self._plan_gate.resets + self._tokens_gate.resets
        return out

    def _level(self):
        if self._pending_estop:
            return DiagnosticStatus.ERROR, 'e-stop latched'
        if self._last_mode in ('stale', 'decay'):
            return DiagnosticStatus.WARN, f'inputs stale ({self._last_mode})'
        if self._last_mode == 'waiting':
            return DiagnosticStatus.WARN, 'waiting for plan, perception and joint state'
        if not self._head_loaded:
            return DiagnosticStatus.WARN, 'running with a random (untrained) action head'
        return DiagnosticStatus.OK, self._last_mode

    def close(self) -> None:
        if self.loop is not None:
            self.loop.close()
        self._control_timer.cancel()


def main(args=None):
    from vla_ros.nodes.common import spin_node
    spin_node(lambda: ActionNode(), args)


if __name__ == '__main__':
    main()

"""Action node: the fast system. Latest plan + perception tokens + joint state in, safe joint
commands out: std_msgs/Float64MultiArray every control tick for a forward_command_controller, or
every chunk as trajectory_msgs/JointTrajectory for a joint_trajectory_controller
(action.command_interface); the tick's command stamped as sensor_msgs/JointState, ActionChunk for
every committed chunk.

All logic lives in vla_ros.action (ControlLoop; RealtimeController: the tick on absolute deadlines;
the head in an inference process) and the control process (vla_ros.nodes.action_control) that
publishes the commands; this node converts input messages and reports diagnostics.
"""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
import torch
from diagnostic_msgs.msg import DiagnosticStatus
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Bool

from vla_ros.action.controller import ChunkResult, ControlLoop, build_head
from vla_ros.action.inference_proc import InferenceProcess
from vla_ros.action.realtime_loop import RealtimeController
from vla_ros.config.action import ActionConfig
from vla_ros.config.timing import TimingConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.nodes.action_control import ControlProcess
from vla_ros.nodes.command_publisher import CommandPublisher, resolved_output_topics
from vla_ros.nodes.common import SENSOR_QOS, Diagnostics, DropCounter, TokenDecodeError, msg_to_tokens, reliable_qos
from vla_ros.nodes.params import declare_config
from vla_ros.resources import resolve_path
from vla_ros.timing import JointStateTracker, StampGate, local_time_of_stamp, stamp_to_ns
from vla_ros_msgs.msg import LatentTokens, Plan

try:  # std_srvs ships with every ROS 2 install; the PyPI wheel is in requirements.txt
    from std_srvs.srv import SetBool
except ImportError:  # pragma: no cover - topic-only e-stop then
    SetBool = None


_CHILD_STOP_S = 4.0   # total wait for the inference and control processes before terminating them


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
        self.rt: Optional[RealtimeController] = None     # control tick in a thread of this node
        self._ctrl_stats: dict = {}
        self._starters: list = []
        self.infer: Optional[InferenceProcess] = None    # the head in its own process
        self.ctrl: Optional[ControlProcess] = None       # the control tick in its own process
        self._head_loaded = False
        self._pending_estop = False
        self._plan_cache: Optional[tuple] = None    # (tokens, plan_id, stamp as monotonic time)
        self._vis_cache: Optional[tuple] = None     # (tokens, perception sequence, stamp as monotonic time)
        self._latest_q: Optional[np.ndarray] = None
        self._latest_q_time = 0.0

        self._topic_names = resolved_output_topics(self, self.topics)
        self._sink: Optional[CommandPublisher] = None

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
            self.loop = self._start_control(head)
            return self.loop

    def _start_control(self, head) -> ControlLoop:
        """inference_mode=process: head in an inference process; realtime.control_process: tick in a
        control process too, else in a thread here. inference_mode=thread: both in this node."""
        cfg = self.cfg
        if cfg.inference_mode == 'process':
            state = {k: v.detach().cpu().numpy() for k, v in head.state_dict().items()}
            self.infer = InferenceProcess(cfg, head.config, state, cfg.max_tokens)
            self.infer.set_estop(self._pending_estop)
            if self._latest_q is not None:
                self.infer.update_proprio(self._latest_q, time.monotonic())
        loop = ControlLoop(head, cfg, clock=time.monotonic,
                           on_chunk=self._publish_chunk_now if self.infer is None else None)
        loop.set_estop(self._pending_estop)
        if self.infer is not None and cfg.realtime.control_process:
            self.ctrl = ControlProcess(cfg, head.config, self.infer.channels, self._topic_names, self.get_name(),
                                       self.get_namespace())
            self._start_in_background(self.infer, self.ctrl)
            self.get_logger().info('control tick in its own process; its node logs the real-time settings')
            return loop
        self._sink = CommandPublisher(self, cfg, self._topic_names)
        self.rt = RealtimeController(loop, cfg, sink=self._sink,
                                     backend=None if self.infer is None else self.infer.inbox,
                                     log=self.get_logger().info)
        if self._latest_q is not None:
            self.rt.update_proprio(self._latest_q)
        if self.infer is not None:
            self._start_in_background(self.infer)
        self.rt.start()
        return loop

    def _start_in_background(self, *procs) -> None:
        """Spawning blocks until the child has imported torch (seconds on a busy CPU): do it off the
        executor so the node keeps spinning (and stops promptly on Ctrl-C meanwhile)."""
        for proc in procs:
            starter = threading.Thread(target=proc.start, name='spawn', daemon=True)
            starter.start()
            self._starters.append(starter)

    # ------------------------------------------------------------------ inputs
    def _stamp_time(self, stamp, gate: StampGate, what: str) -> Optional[float]:
        """Check a header stamp; return its instant on the control loop's monotonic clock, or None (dropped)."""
        stamp_ns, now_ns = stamp_to_ns(stamp), self.get_clock().now().nanoseconds
        reason = gate.check(stamp_ns, now_ns)
        if reason is not None:
            self.drops.drop(f'{what}_{reason}', f'stamp {stamp_ns} ns, clock {now_ns} ns')
            return None
        return local_time_of_stamp(stamp_ns, now_ns, time.monotonic())

    def _accept(self, tokens_msg, stamp, gate: StampGate, what: str, ident: int) -> Optional[tuple]:
        """(tokens, ident, stamp on the monotonic clock) of one plan or perception input, or None after
        counting why it was dropped ('bad_<what>_tokens', '<what>_<stamp reason>')."""
        try:
            tokens = msg_to_tokens(tokens_msg, self.cfg.max_token_abs)
        except TokenDecodeError as exc:
            self.drops.drop(f'bad_{what}_tokens', str(exc))
            return None
        t = self._stamp_time(stamp, gate, what)
        return None if t is None else (tokens, int(ident), t)

    def _on_plan(self, msg: Plan) -> None:
        cached = self._accept(msg.plan_tokens, msg.header.stamp, self._plan_gate, 'plan', msg.plan_id)
        if cached is not None:
            self._plan_cache = cached
            self._feed()

    def _on_tokens(self, msg: LatentTokens) -> None:
        cached = self._accept(msg, msg.header.stamp, self._tokens_gate, 'perception', msg.sequence)
        if cached is not None:
            self._vis_cache = cached
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
        infer = self.infer
        try:
            if plan is not None:
                self._plan_cache = None
                self._hand_over('plan', plan, hc.plan_dim, loop.update_plan,
                                None if infer is None else infer.update_plan)
            if vis is not None:
                self._vis_cache = None
                self._hand_over('perception', vis, hc.vis_dim, loop.update_perception,
                                None if infer is None else infer.update_perception)
        except ValueError as exc:  # more tokens than action.max_tokens
            self.drops.drop('too_many_tokens', str(exc))

    def _hand_over(self, what: str, cached: tuple, dim: int, to_loop, to_infer) -> None:
        """One input's tokens to the inference process (if any) and the loop; a token width the head
        was not built for is a drop ('<what>_dim')."""
        tokens, ident, stamp_time = cached     # stamp_time: the input's stamp on the monotonic clock
        if tokens.shape[1] != dim:
            self.drops.drop(f'{what}_dim', f'{what} token dim {tokens.shape[1]} != head {dim}')
            return
        if to_infer is not None:
            to_infer(tokens, ident, stamp_time)
        to_loop(tokens, ident, now=stamp_time)

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
        if self.infer is not None:
            self.infer.update_proprio(q, self._latest_q_time)
        if self.loop is not None:
            self.loop.update_proprio(q, now=self._latest_q_time)

    def _set_estop(self, active: bool) -> None:
        self._pending_estop = bool(active)
        if self.infer is not None:
            self.infer.set_estop(active)   # the inference and the control process both read it
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
    def _publish_chunk_now(self, chunk: ChunkResult) -> None:
        """Inference-thread mode: chunk step 0 applies at chunk.start_time (monotonic) -> ROS clock."""
        offset_ns = int((chunk.start_time - time.monotonic()) * 1e9)
        if self._sink is not None:
            self._sink.chunk(chunk, self.get_clock().now().nanoseconds + offset_ns)

    # ------------------------------------------------------------------ diagnostics
    @property
    def _last_mode(self) -> str:
        if self.rt is not None:
            return self.rt.mode
        if self.ctrl is not None:
            return str(self._ctrl_stats.get('mode', 'waiting'))
        return 'waiting'

    def _status(self):
        out = {'mode': self._last_mode, 'commands_published': 0, 'dropped': self.drops.total,
               'head_from_checkpoint': self._head_loaded, 'estop': self._pending_estop}
        loop = self.loop
        if self.rt is not None:
            out.update(self.rt.stats())
        if self.ctrl is not None:
            self._ctrl_stats = self.ctrl.stats()
            out.update(self._ctrl_stats)
        if self.infer is not None:
            out.update(self.infer.status())
        if loop is not None:
            out.update(chunks=loop.chunk_count, inference_ms=loop.last_inference_ms,
                       inference_errors=loop.inference_errors + int(out.get('inference_errors', 0)),
                       smoothing=self.cfg.smoothing)
            if loop.last_error:
                out['last_inference_error'] = loop.last_error
            if self.ctrl is None:    # else the control process's filter and restart counts (its stats, above)
                out.update({f'safety_{k}': v for k, v in loop.safety.counters.items()}, restarts=loop.restarts)
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
        for starter in self._starters:
            starter.join(timeout=5.0)
        if self.rt is not None:
            self.rt.close()
        # Both children read the same stop slot: ask once, then share one time budget (a launcher
        # kills a node that takes 15 s; an inference step on a saturated CPU can take seconds).
        procs = [p for p in (self.ctrl, self.infer) if p is not None]
        if procs:
            procs[0].channels.stop.write(v=(1.0,))
            end = time.monotonic() + _CHILD_STOP_S
            for proc in procs:
                proc.close(timeout=max(0.1, end - time.monotonic()))


def main(args=None):
    from vla_ros.nodes.common import spin_node
    spin_node(lambda: ActionNode(), args)


if __name__ == '__main__':
    main()

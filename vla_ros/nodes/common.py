"""Shared plumbing for the thin node wrappers: QoS, stamps, drop accounting, diagnostics, tokens."""
from __future__ import annotations

import math
import signal
import threading
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np
import rclpy
import rclpy.logging
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

from vla_ros.nodes.executor_stop import spin_until, stop_executor
from vla_ros.timing import StampGate, stamp_to_ns  # noqa: F401  (re-exported for the nodes)
from vla_ros.resources import ResourceError
from vla_ros.stack import STARTUP_CONFIG_ERROR
from vla_ros_msgs.msg import LatentTokens

SENSOR_QOS = qos_profile_sensor_data
MS_PER_S = 1000.0   # messages carry durations in seconds; the algorithms measure milliseconds
# Instructions must reach late joiners (planner restarted mid-task).
LATCHED_QOS = QoSProfile(depth=1, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)


def reliable_qos(depth: int = 10) -> QoSProfile:
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST, reliability=ReliabilityPolicy.RELIABLE)


def ns_to_stamp(ns: int) -> TimeMsg:
    return TimeMsg(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


class DropCounter:
    """Counts dropped inputs per reason and logs each reason at most once per `period_s`."""

    def __init__(self, logger, period_s: float = 2.0):
        self._logger = logger
        self._period = period_s
        self.counts: Dict[str, int] = {}
        self._last_log: Dict[str, float] = {}

    def drop(self, reason: str, detail: str = '') -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -math.inf) >= self._period:
            self._last_log[reason] = now
            self._logger.warning(f'dropped input ({reason}, total {self.counts[reason]}): {detail}')

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class Diagnostics:
    """Publishes one DiagnosticStatus for the node on /diagnostics at a fixed period."""

    def __init__(self, node: Node, status_fn: Callable[[], Dict[str, object]], period_s: float = 1.0,
                 level_fn: Optional[Callable[[], tuple]] = None):
        self._node = node
        self._status_fn = status_fn
        self._level_fn = level_fn
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timer = node.create_timer(period_s, self.publish)

    def publish(self) -> None:
        level, message = (self._level_fn() if self._level_fn else (DiagnosticStatus.OK, 'ok'))
        status = DiagnosticStatus(level=bytes([level]) if isinstance(level, int) else level,
                                  name=self._node.get_fully_qualified_name(), message=message,
                                  hardware_id='vla_ros')
        status.values = [KeyValue(key=str(k), value=_fmt(v)) for k, v in self._status_fn().items()]
        arr = DiagnosticArray()
        arr.header.stamp = self._node.get_clock().now().to_msg()
        arr.status = [status]
        self._pub.publish(arr)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f'{v:.4g}'
    return str(v)


def tokens_to_msg(tokens: np.ndarray, *, stamp: TimeMsg, frame_id: str, source: str,
                  kept_indices: Optional[Sequence[int]] = None, grid_hw=(0, 0), keep_ratio: float = 1.0,
                  reuse_ratio: float = 0.0, is_keyframe: bool = False, frame_counter: int = 0,
                  plan_id: int = 0, proprio: Optional[Sequence[float]] = None,
                  compute_ms: float = 0.0) -> LatentTokens:
    tokens = np.ascontiguousarray(tokens, dtype=np.float32)
    msg = LatentTokens()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.source = source
    msg.shape = [int(s) for s in tokens.shape]
    msg.data = tokens.ravel()
    msg.kept_indices = np.asarray(kept_indices if kept_indices is not None else [], dtype=np.int32)
    msg.grid_height, msg.grid_width = int(grid_hw[0]), int(grid_hw[1])
    msg.keep_ratio = float(keep_ratio)
    msg.reuse_ratio = float(reuse_ratio)
    msg.is_keyframe = bool(is_keyframe)
    msg.sequence = int(frame_counter)
    msg.plan_id = int(plan_id)
    msg.proprio = np.asarray(proprio if proprio is not None else [], dtype=np.float32)
    msg.compute_time = float(compute_ms) / MS_PER_S
    return msg


class TokenDecodeError(ValueError):
    pass


def msg_to_tokens(msg: LatentTokens, max_abs: float = 0.0) -> np.ndarray:
    """Decode and validate a LatentTokens message into a [num_tokens, dim] float32 array.

    `max_abs > 0` also rejects finite but absurd values (|x| > max_abs)."""
    shape = tuple(int(s) for s in msg.shape)
    data = np.asarray(msg.data, dtype=np.float32)
    if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
        raise TokenDecodeError(f'expected a non-empty 2-D token shape, got {shape}')
    if int(np.prod(shape)) != data.size:
        raise TokenDecodeError(f'shape {shape} does not match {data.size} values')
    if not np.all(np.isfinite(data)):
        raise TokenDecodeError('tokens contain NaN/Inf')
    if max_abs > 0 and data.size and float(np.max(np.abs(data))) > max_abs:
        raise TokenDecodeError(f'token magnitude {float(np.max(np.abs(data))):.3g} exceeds {max_abs:g}')
    return data.reshape(shape)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def spin_node(node_factory: Callable[..., Node], args=None, num_threads: int = 4) -> None:
    """Standard `main()` body: init, spin on a multi-threaded executor, shut down cleanly on Ctrl-C.

    rclpy's own signal handler would shut the context down the moment SIGINT/SIGTERM arrives,
    while worker threads (perception worker, inference, bag writer) may still publish or log.
    Instead, once spinning, the signal only sets a flag: the executor finishes the callback it is
    running (an exception thrown into it would abandon half-dispatched tasks, which then print
    "exception was never retrieved ... cannot use Destroyable" and keep their subscription
    marked busy), the node's optional drain(executor) takes what is still in flight (the
    recorder), the callbacks already dispatched finish and the executor stops (executor_stop.py),
    close() stops the node's threads, and only then is the context shut down. During construction (model loading) Ctrl-C interrupts at once.
    """
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    node = None
    executor = None
    try:
        node = node_factory()
        executor = MultiThreadedExecutor(num_threads=num_threads)
        executor.add_node(node)
        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda signum, frame: stop.set())
        signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
        spin_until(executor, stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        drain = getattr(node, 'drain', None)
        if callable(drain):
            drain(executor)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ResourceError as exc:  # a bad model/checkpoint parameter: one clear line, exit code 2
        rclpy.logging.get_logger('vla_ros').fatal(str(exc))
        raise SystemExit(STARTUP_CONFIG_ERROR) from None
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the clean-up short
        if node is not None:
            for timer in list(node.timers):   # no new timer tasks may race the node's destruction
                timer.cancel()
        if executor is not None:
            stop_executor(executor, timeout_sec=2.0)   # dispatched callbacks finish first
        if node is not None:
            close = getattr(node, 'close', None)
            if callable(close):
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()

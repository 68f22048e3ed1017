"""Recorder node: every stack topic into a rosbag2 (MCAP) bag, losing nothing on Ctrl-C.

Subscriptions are raw (serialised CDR bytes, exactly what rosbag2 stores) so recording never
deserialises. Like `ros2 bag record`, each topic is subscribed once a publisher is seen, with
the publishers' reliability/durability, so best-effort sensors and latched instructions are
both received. Callbacks only enqueue; one writer thread owns the bag. close() (also run by
spin_node on Ctrl-C) first keeps taking what DDS still holds for the recorder (up to
`recorder.drain_timeout_s`, until `recorder.drain_quiet_s` passes without a message), then stops
intake, drains the queue and writes metadata.yaml. Losses are counted honestly: besides a full
queue, a gap in a publisher's sequence numbers is a message DDS never delivered (`sequence_gap`).
"""
from __future__ import annotations

import os
import queue
import threading
import time
from typing import Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Empty, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_ros.config.recording import RecorderConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.eval.bag_io import BagWriter, bag_qos, msgtype_of
from vla_ros.nodes.common import Diagnostics, DropCounter, spin_node
from vla_ros.nodes.params import declare_config
from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan, TaskStatus

DIAGNOSTICS_TOPIC = '/diagnostics'
_STOP = object()


def recorded_topics(topics: TopicsConfig, record_images: bool) -> List[Tuple[str, type]]:
    """(topic name as configured, message class) for everything the stack publishes."""
    table = [
        (topics.joint_states, JointState),
        (topics.instruction, String),
        (topics.perception_tokens, LatentTokens),
        (topics.plan, Plan),
        (topics.replan, Empty),
        (topics.action_chunk, ActionChunk),
        (topics.joint_command, Float64MultiArray),
        (topics.joint_trajectory, JointTrajectory),
        (topics.estop, Bool),
        (topics.task_status, TaskStatus),
        (DIAGNOSTICS_TOPIC, DiagnosticArray),
    ]
    if record_images:
        table.insert(0, (topics.image, Image))
    return table


def matching_qos(publisher_qos: List[QoSProfile], depth: int) -> QoSProfile:
    """Subscription QoS compatible with every publisher (what rosbag2's QoS adaptation does)."""
    all_reliable = bool(publisher_qos) and all(q.reliability == ReliabilityPolicy.RELIABLE for q in publisher_qos)
    all_latched = bool(publisher_qos) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL
                                              for q in publisher_qos)
    return QoSProfile(depth=depth, history=HistoryPolicy.KEEP_LAST,
                      reliability=ReliabilityPolicy.RELIABLE if all_reliable else ReliabilityPolicy.BEST_EFFORT,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL if all_latched else DurabilityPolicy.VOLATILE)


class RecorderNode(Node):
    def __init__(self, **kwargs):
        super().__init__('recorder', **kwargs)
        self.cfg: RecorderConfig = declare_config(self, RecorderConfig, 'recorder')
        self.topics_cfg: TopicsConfig = declare_config(self, TopicsConfig, 'topics')
        self.drops = DropCounter(self.get_logger())
        self.output_dir = os.path.abspath(os.path.expanduser(self.cfg.output_dir))
        self._bag = BagWriter(self.output_dir, storage=self.cfg.storage)
        self._queue: 'queue.Queue' = queue.Queue(maxsize=self.cfg.max_queue)
        self._intake_lock = threading.Lock()
        self._accepting = True
        self._closed = False
        self.received: Dict[str, int] = {}
        self._last_seq: Dict[tuple, int] = {}   # (topic, publisher gid) -> last publication sequence number
        self.written = 0
        self.write_errors = 0
        self._pending: Dict[str, type] = {self.resolve_topic_name(name): cls
                                          for name, cls in recorded_topics(self.topics_cfg,
                                                                           self.cfg.record_images)}
        self._recording_subs: Dict[str, object] = {}
        self._last_message = time.monotonic()
        self._drained: Optional[int] = None
        self._writer_thread = threading.Thread(target=self._write_loop, name='bag_writer', daemon=True)
        self._writer_thread.start()
        self._discovery_timer = self.create_timer(self.cfg.discovery_period_s, self._discover)
        self._diagnostics = Diagnostics(self, self._status, period_s=self.cfg.diagnostics_period_s)
        self._discover()
        self.get_logger().info(f'recording {len(self._pending)} topics into {self.output_dir} ({self.cfg.storage})')

    def _discover(self) -> None:
        """Subscribe to each pending topic as soon as it has a publisher, matching that publisher's QoS."""
        for topic, cls in list(self._pending.items()):
            infos = self.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            qos = matching_qos([info.qos_profile for info in infos], self.cfg.subscription_depth)
            self._bag.add_topic(topic, msgtype_of(cls),
                                qos=bag_qos(reliable=qos.reliability == ReliabilityPolicy.RELIABLE,
                                            transient_local=qos.durability == DurabilityPolicy.TRANSIENT_LOCAL,
                                            depth=self.cfg.subscription_depth))
            self.received[topic] = 0
            self._recording_subs[topic] = self.create_subscription(
                cls, topic, lambda data, info, t=topic: self._on_message(t, data, info), qos, raw=True)
            del self._pending[topic]
            self.get_logger().info(f'recording {topic} ({msgtype_of(cls)}, '
                                   f'{qos.reliability.name.lower()}, {qos.durability.name.lower()})')

    def _count_gap(self, topic: str, info: Optional[dict]) -> None:
        """Messages a publisher sent that never reached this subscription (DDS loss, full history)."""
        if not info:
            return
        seq, gid = info.get('publication_sequence_number'), info.get('publisher_gid')
        if not seq or gid is None:       # 0 / None: the middleware does not report sequence numbers
            return
        key = (topic, bytes(gid.get('data', b'')) if isinstance(gid, dict) else repr(gid))
        last = self._last_seq.get(key)
        if last is not None and seq > last + 1:
            for _ in range(seq - last - 1):
                self.drops.drop('sequence_gap', f'{topic}: publisher sequence {last} -> {seq}')
        if last is None or seq > last:
            self._last_seq[key] = seq

    def _on_message(self, topic: str, data: bytes, info: Optional[dict] = None) -> None:
        log_time_ns = self.get_clock().now().nanoseconds
        self._last_message = time.monotonic()
        with self._intake_lock:
            self._count_gap(topic, info)
            if not self._accepting:
                self.drops.drop('after_close', topic)
                return
            try:
                self._queue.put_nowait((topic, data, log_time_ns))
            except queue.Full:
                self.drops.drop('writer_queue_full', topic)
                return
            self.received[topic] += 1

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            topic, data, log_time_ns = item
            try:
                self._bag.write(topic, data, log_time_ns)
                self.written += 1
            except Exception as exc:  # one bad write must not stop the recording
                self.write_errors += 1
                self.drops.drop('write_error', f'{topic}: {exc}')

    def _status(self) -> Dict[str, object]:
        status = {'output_dir': self.output_dir, 'received': sum(self.received.values()),
                  'written': self.written, 'queued': self._queue.qsize(),
                  'topics_recorded': len(self._recording_subs), 'topics_waiting': len(self._pending),
                  'dropped': self.drops.total}
        status.update({f'drop_{k}': v for k, v in sorted(self.drops.counts.items())})
        status.update({f'received{topic}': n for topic, n in self.received.items()})
        return status

    def drain(self, executor=None) -> int:
        """Take what DDS still holds for the recording subscriptions, before intake stops (once).

        Spins `executor` (spin_node's, still running) or a private one until `drain_quiet_s` passes
        without a message or `drain_timeout_s` is up; returns how many messages arrived meanwhile.
        """
        from rclpy.executors import SingleThreadedExecutor
        if self._drained is not None:
            return self._drained
        self._drained = 0
        if not self.context.ok() or self.cfg.drain_timeout_s <= 0:
            return 0
        before = sum(self.received.values())
        own = executor is None
        try:
            if own:
                executor = SingleThreadedExecutor(context=self.context)
                executor.add_node(self)
            start = self._last_message = time.monotonic()
            while True:
                now = time.monotonic()
                if now - start >= self.cfg.drain_timeout_s or now - self._last_message >= self.cfg.drain_quiet_s:
                    break
                executor.spin_once(timeout_sec=min(0.02, self.cfg.drain_quiet_s))
        except Exception as exc:  # context shut down under us: keep what we have
            self.get_logger().warning(f'drain stopped early: {exc!r}')
        finally:
            if own and executor is not None:
                executor.remove_node(self)
                executor.shutdown(timeout_sec=0.0)
        self._drained = sum(self.received.values()) - before
        return self._drained

    def close(self) -> None:
        """Take what DDS still holds, stop intake, write everything received, finalise the bag (idempotent)."""
        if self._closed:
            return
        self._closed = True
        drained = self.drain()
        with self._intake_lock:
            self._accepting = False
        try:  # cancel, not destroy: a destroy request racing a dispatched timer task raises in that task
            self._discovery_timer.cancel()
        except Exception:  # context may already be shut down by Ctrl-C
            pass
        self._queue.put(_STOP)
        self._writer_thread.join()
        self._bag.set_custom_data('vla_ros.recorder.received', str(sum(self.received.values())))
        self._bag.set_custom_data('vla_ros.recorder.dropped', str(self.drops.total))
        for reason, count in sorted(self.drops.counts.items()):
            self._bag.set_custom_data(f'vla_ros.recorder.dropped.{reason}', str(count))
        self._bag.close()
        self.get_logger().info(f'bag closed: {self.written} messages in {self.output_dir} ({drained} taken at '
                               f'shutdown; dropped {self.drops.total}: {dict(self.drops.counts)})')


def main(args=None):
    spin_node(lambda: RecorderNode(), args)


if __name__ == '__main__':
    main()

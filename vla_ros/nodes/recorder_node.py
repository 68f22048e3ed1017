"""Recorder node: every stack topic into a rosbag2 (MCAP) bag, losing nothing on Ctrl-C.

Subscriptions are raw (serialised CDR bytes, exactly what rosbag2 stores) so recording never
deserialises. Like `ros2 bag record`, each topic is subscribed once a publisher is seen, with
the publishers' reliability/durability, so best-effort sensors and latched instructions are
both received. Callbacks only enqueue; one writer thread owns the bag. close() (also run by
spin_node on Ctrl-C) first keeps taking what DDS still holds for the recorder (up to
`recorder.drain_timeout_s`, until `recorder.drain_quiet_s` passes without a message), then stops
intake, drains the queue and writes metadata.yaml. Losses are counted honestly: besides a full
queue, a gap in a publisher's sequence numbers is a message DDS never delivered (`sequence_gap`).

Like rosbag2, each topic's metadata keeps the offered QoS profiles of its publishers (so
`ros2 bag play` republishes a latched instruction latched, a sensor stream best-effort).
Camera frames are recorded only with `recorder.record_images`, at most `image_max_rate_hz`,
either raw or as sensor_msgs/CompressedImage on `<camera topic>/compressed`.
"""
from __future__ import annotations

import json
import os
import queue
import threading
import time
from typing import Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.serialization import deserialize_message
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Empty, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_ros.os_realtime import realtime_native_threads
from vla_ros.config.recording import RecorderConfig
from vla_ros.config.topics import TopicsConfig
from vla_ros.eval.bag_io import RECORDER_LOSSES_KEY, BagWriter, msgtype_of
from vla_ros.nodes.common import Diagnostics, DropCounter, spin_node
from vla_ros.nodes.params import declare_config
from vla_ros.perception.image_codec import ImageCodecError, compress
from vla_ros.perception.image_conversion import ImageConversionError, image_msg_to_numpy
from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan, TaskStatus

DIAGNOSTICS_TOPIC = '/diagnostics'
COMPRESSED_SUFFIX = '/compressed'   # image_transport's name for the compressed image topic
_STOP = object()
MAX_LOSS_RECORDS = 100000   # per topic


def parse_custom_data(text: str) -> Dict[str, str]:
    """recorder.custom_data (a JSON object, or empty) -> {key: string value}."""
    if not text.strip():
        return {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f'recorder.custom_data is not JSON: {exc}') from exc
    if not isinstance(data, dict):
        raise ValueError('recorder.custom_data must be a JSON object of key/values')
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}


class RateLimiter:
    """Lets at most `max_hz` events through per second of the given clock (0 = all)."""

    def __init__(self, max_hz: float):
        self.min_period_ns = int(1e9 / max_hz) if max_hz > 0 else 0
        self._next_ns = None

    def allow(self, now_ns: int) -> bool:
        if self._next_ns is not None and now_ns < self._next_ns:
            return False
        # Schedule from the ideal grid, but never let a pause build up a burst.
        base = now_ns if self._next_ns is None or now_ns - self._next_ns > self.min_period_ns else self._next_ns
        self._next_ns = base + self.min_period_ns
        return True


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
        (topics.command_stamped, JointState),
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
        for key, value in parse_custom_data(self.cfg.custom_data).items():
            self._bag.set_custom_data(key, value)
        self._queue: 'queue.Queue' = queue.Queue(maxsize=self.cfg.max_queue)
        self._intake_lock = threading.Lock()
        self._accepting = True
        self._closed = False
        self.received: Dict[str, int] = {}
        self._last_seq: Dict[tuple, int] = {}   # (topic, publisher gid) -> last publication sequence number
        self._losses: Dict[str, List[Tuple[int, int]]] = {}   # topic -> (log time after a gap, lost)
        self.written = 0
        self.write_errors = 0
        self._pending: Dict[str, type] = {self.resolve_topic_name(name): cls
                                          for name, cls in recorded_topics(self.topics_cfg,
                                                                           self.cfg.record_images)}
        self._recording_subs: Dict[str, object] = {}
        self._last_message = time.monotonic()
        self._drained: Optional[int] = None
        self._image_topic = self.resolve_topic_name(self.topics_cfg.image)
        self._image_limiter = RateLimiter(self.cfg.image_max_rate_hz)
        self.images_skipped = 0
        self._writer_thread = threading.Thread(target=self._write_loop, name='bag_writer', daemon=True)
        self._writer_thread.start()
        self._discovery_timer = self.create_timer(self.cfg.discovery_period_s, self._discover)
        self._diagnostics = Diagnostics(self, self._status, period_s=self.cfg.diagnostics_period_s)
        sim_time = bool(self.get_parameter('use_sim_time').value)
        self._dds_receive_time = self.cfg.receive_time == 'dds' and not sim_time
        if self.cfg.dds_fifo_priority > 0:   # the middleware threads exist now (rclpy.init, node creation)
            self.get_logger().info('recorder middleware threads: '
                                   + realtime_native_threads(self.cfg.dds_fifo_priority))
        self._discover()
        self.get_logger().info(f'recording {len(self._pending)} topics into {self.output_dir} ({self.cfg.storage})')

    def _discover(self) -> None:
        """Subscribe to each pending topic as soon as it has a publisher, matching that publisher's QoS."""
        for topic, cls in list(self._pending.items()):
            infos = self.get_publishers_info_by_topic(topic)
            if not infos:
                continue
            offered = [info.qos_profile for info in infos]
            qos = matching_qos(offered, self.cfg.subscription_depth)
            if topic == self._image_topic:
                bag_topic, bag_cls = self._add_image_topic(topic, offered)
                callback = self._on_image
            else:
                bag_topic, bag_cls = topic, cls
                self._bag.add_topic(topic, msgtype_of(cls), qos=offered)  # the publishers' QoS, as rosbag2
                self.received[topic] = 0
                callback = lambda data, info, t=topic: self._on_message(t, data, info)  # noqa: E731
            self._recording_subs[topic] = self.create_subscription(cls, topic, callback, qos, raw=True)
            del self._pending[topic]
            self.get_logger().info(f'recording {topic} as {bag_topic} ({msgtype_of(bag_cls)}, '
                                   f'{qos.reliability.name.lower()}, {qos.durability.name.lower()})')

    def _count_gap(self, topic: str, info: Optional[dict], log_time_ns: int = 0) -> None:
        """Messages a publisher sent that never reached this subscription (DDS loss, full history).
        Each gap is also kept as (log time of the message after it, messages lost), written to the
        bag's custom data at close, so an analysis can tell a recording loss from a silent stream."""
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
            losses = self._losses.setdefault(topic, [])
            if len(losses) < MAX_LOSS_RECORDS:
                losses.append((int(log_time_ns), int(seq - last - 1)))
        if last is None or seq > last:
            self._last_seq[key] = seq

    def _add_image_topic(self, topic: str, offered):
        if self.cfg.image_format == 'raw':
            bag_topic, bag_cls = topic, Image
        else:
            bag_topic, bag_cls = topic + COMPRESSED_SUFFIX, CompressedImage
        self._bag.add_topic(bag_topic, msgtype_of(bag_cls), qos=offered)
        self.received[bag_topic] = 0
        self._image_bag_topic = bag_topic
        return bag_topic, bag_cls

    def _on_image(self, data: bytes, info: Optional[dict]) -> None:  # 2 args: rclpy passes MessageInfo
        """Rate-limit camera frames; compress them when asked (a bad frame is a counted drop)."""
        received_ns = self._log_time_ns(info)   # the bag's log time: arrival, not after compression
        with self._intake_lock:  # DDS losses are judged on every frame, before the rate limit skips some
            self._count_gap(self._image_bag_topic, info, received_ns)
        if not self._image_limiter.allow(received_ns):
            self.images_skipped += 1
            return
        if self.cfg.image_format == 'raw':
            self._on_message(self._image_bag_topic, data, log_time_ns=received_ns)
            return
        image = deserialize_message(data, Image)
        try:
            fmt, payload = compress(image_msg_to_numpy(image), image.encoding, self.cfg.image_format,
                                    self.cfg.image_jpeg_quality)
        except (ImageConversionError, ImageCodecError) as exc:
            self.drops.drop('image_compression', str(exc))
            return
        msg = CompressedImage(header=image.header, format=fmt)
        msg.data = payload
        self._on_message(self._image_bag_topic, msg, log_time_ns=received_ns)  # the writer serialises it

    def _log_time_ns(self, info: Optional[dict]) -> int:
        """The bag's log time: the DDS reception timestamp (system clock, taken by the receive thread)
        when configured and reported, else the node clock now."""
        if self._dds_receive_time and info:
            received = info.get('received_timestamp')
            if received:
                return int(received)
        return self.get_clock().now().nanoseconds

    def _on_message(self, topic: str, data, info: Optional[dict] = None, log_time_ns: Optional[int] = None) -> None:
        if log_time_ns is None:
            log_time_ns = self._log_time_ns(info)
        self._last_message = time.monotonic()
        with self._intake_lock:
            self._count_gap(topic, info, log_time_ns)
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
                  'dropped': self.drops.total, 'images_skipped_by_rate_limit': self.images_skipped}
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
        for topic, losses in sorted(self._losses.items()):
            self._bag.set_custom_data(f'{RECORDER_LOSSES_KEY}{topic}', json.dumps(losses))
        self._bag.close()
        self.get_logger().info(f'bag closed: {self.written} messages in {self.output_dir} ({drained} taken at '
                               f'shutdown; dropped {self.drops.total}: {dict(self.drops.counts)})')


def main(args=None):
    spin_node(lambda: RecorderNode(), args)


if __name__ == '__main__':
    main()

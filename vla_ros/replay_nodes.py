"""Replay a recorded bag through the real nodes over DDS: what `ros2 bag play --clock` + the stack does.

    python -m vla_ros.eval.replay runs/demo/bag --out runs/replay/nodes --through-nodes [--set ...]

The perception, planner, action and recorder nodes run as processes with `use_sim_time`, fed by a
player in this process that publishes /clock from the bag's log times and the recorded camera
frames (CompressedImage decoded back to rgb8 Image), joint states, instruction (latched) and task
status at their recorded times. Stamps stay the recorded ones, so the nodes' stamp gates and the
evaluator's pairing by image stamp work as in the live run. The recorder writes out/bag with
the replay's source, label and settings in custom_data, so `vla_evaluate` compare mode pairs it
with other replays of the same source. Real time only: the nodes run on their own timers.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List

import yaml

from vla_ros.eval.replay_inputs import TYPE_COMPRESSED, decode_image, find_inputs
from vla_ros.eval.replay_output import LABEL_KEY, SETTINGS_KEY, SOURCE_KEY

NODES = ('perception', 'planner', 'action', 'recorder')
CLOCK_PERIOD_S = 0.005        # /clock publication period (wall) while playing
TAIL_S = 2.0                  # bag-time seconds the clock keeps running after the last message
READY_TIMEOUT_S = 120.0       # node start-up (model loading) limit
STARTUP_CLOCK_LEAD_S = 3600.0 # during start-up the clock runs this far before the bag (then jumps forward)


def _params_file(out_dir: str, overrides: Dict[str, object], label: str, bag: str) -> str:
    from vla_ros import stack
    from vla_ros.bringup import merge_params
    from vla_ros.resources import resolve_path
    custom = {SOURCE_KEY: os.path.abspath(bag), LABEL_KEY: label, SETTINGS_KEY: json.dumps(overrides, sort_keys=True),
              'vla_ros.replay.mode': 'through_nodes'}
    doc = merge_params(resolve_path(stack.ARGUMENT_DEFAULTS['config'], 'config', kind='file'), {**overrides, 'recorder.output_dir': os.path.join(out_dir, 'bag'),
                                               'recorder.custom_data': json.dumps(custom)})
    doc.setdefault('/**', {}).setdefault('ros__parameters', {})['use_sim_time'] = True
    path = os.path.join(out_dir, 'params.yaml')
    with open(path, 'w') as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    return path


class _Player:
    """Publishes the bag's inputs and /clock; raw CDR is forwarded unchanged where the type is kept."""

    def __init__(self, bag: str, namespace: str):
        from rclpy.node import Node
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from sensor_msgs.msg import Image, JointState
        from std_msgs.msg import String

        from vla_ros.config.topics import TopicsConfig
        from vla_ros_msgs.msg import TaskStatus
        self.bag, self.source = bag, find_inputs(bag)
        topics = TopicsConfig()
        ns = '/' + namespace.strip('/')
        self.node = Node('bag_player', namespace=ns)
        sensor = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.clock_pub = self.node.create_publisher(Clock, '/clock', 10)
        self._clock_cls = Clock
        self.image_topic = f'{ns}/{topics.image}'
        self.routes = {self.source.image_topic: self.node.create_publisher(Image, self.image_topic, sensor)}
        if self.source.joint_topic:
            self.routes[self.source.joint_topic] = self.node.create_publisher(
                JointState, f'{ns}/{topics.joint_states}', sensor)
        if self.source.instruction_topic:
            self.routes[self.source.instruction_topic] = self.node.create_publisher(
                String, f'{ns}/{topics.instruction}', latched)
        if self.source.status_topic:
            self.routes[self.source.status_topic] = self.node.create_publisher(
                TaskStatus, f'{ns}/{topics.task_status}', QoSProfile(depth=10))
        self.tokens_topic = f'{ns}/{topics.perception_tokens}'
        from vla_ros.eval.bag_io import bag_summary
        # Node timers (e.g. the recorder's discovery) run on /clock, so it must advance during start-up too.
        self.now_ns = max(0, int(bag_summary(bag)['start_time_ns'] or 0) - int(STARTUP_CLOCK_LEAD_S * 1e9))
        self.published = 0

    def ready(self) -> bool:
        """Perception, action and recorder listen (the recorder subscribes once publishers exist)."""
        return (self.routes[self.source.image_topic].get_subscription_count() >= 1
                and self.node.count_subscribers(self.tokens_topic) >= 3)

    def publish_clock(self) -> None:
        msg = self._clock_cls()
        msg.clock.sec, msg.clock.nanosec = divmod(int(self.now_ns), 1_000_000_000)
        self.clock_pub.publish(msg)

    def start_clock(self) -> None:
        """/clock advances with wall time from now on (start-up, playback and shutdown alike)."""
        self._stop_clock = threading.Event()

        def loop():
            last = time.monotonic()
            while not self._stop_clock.is_set():
                now = time.monotonic()
                self.now_ns += int((now - last) * 1e9)
                last = now
                self.publish_clock()
                time.sleep(CLOCK_PERIOD_S)
        self._clock_thread = threading.Thread(target=loop, name='sim_clock', daemon=True)
        self._clock_thread.start()

    def stop_clock(self) -> None:
        self._stop_clock.set()
        self._clock_thread.join(timeout=1.0)

    def play(self) -> None:
        """Messages at their recorded log times; the clock jumps forward to the first one."""
        from rosbags.rosbag2 import Reader

        from vla_ros.eval.bag_io import decode_cdr, default_typestore
        from vla_ros.perception.image_conversion import numpy_to_image_msg
        typestore = default_typestore()
        first, wall0 = None, 0.0
        with Reader(self.bag) as reader:
            conns = [c for c in reader.connections if c.topic in self.routes]
            for conn, log_ns, raw in reader.messages(connections=conns):
                if first is None:
                    first, wall0 = log_ns, time.monotonic()
                    self.now_ns = max(self.now_ns, first)
                delay = wall0 + (log_ns - first) / 1e9 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                data = bytes(raw)
                if conn.msgtype == TYPE_COMPRESSED:    # perception takes raw images: decode here
                    msg = decode_cdr(typestore, data, conn.msgtype)
                    image = numpy_to_image_msg(decode_image(conn.msgtype, msg), 'rgb8')
                    image.header.stamp.sec = int(msg.header.stamp.sec)
                    image.header.stamp.nanosec = int(msg.header.stamp.nanosec)
                    image.header.frame_id = str(msg.header.frame_id)
                    self.routes[conn.topic].publish(image)
                else:
                    self.routes[conn.topic].publish(data)   # serialized CDR, as ros2 bag play does
                self.published += 1
        time.sleep(TAIL_S)


def replay_through_nodes(bag: str, out_dir: str, overrides: Dict[str, object], label: str = '',
                         namespace: str = 'vla') -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from vla_ros.stack import NODES_BY_NAME
    os.makedirs(out_dir, exist_ok=True)
    params = _params_file(out_dir, overrides, label, bag)
    procs: List[tuple] = []
    for name in NODES:
        cmd = [sys.executable, '-m', NODES_BY_NAME[name].module, '--ros-args', '--params-file', params,
               '-r', f'__ns:=/{namespace}', '-r', f'__node:={name}']
        procs.append((name, subprocess.Popen(cmd)))
    rclpy.init()
    player = _Player(bag, namespace)
    executor = SingleThreadedExecutor()
    executor.add_node(player.node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    player.start_clock()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not player.ready():
            for name, proc in procs:
                if proc.poll() is not None:
                    raise RuntimeError(f'{name} node exited with code {proc.returncode} during start-up')
            if time.monotonic() > deadline:
                raise TimeoutError('nodes did not subscribe within the start-up limit')
            time.sleep(0.1)
        play_start = time.monotonic()
        player.play()
        play_s = time.monotonic() - play_start
    finally:
        for _, proc in reversed(procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)      # recorder finalises the bag on Ctrl-C
        codes = {}
        for name, proc in procs:
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = 'killed'
        player.stop_clock()
        executor.shutdown(timeout_sec=2.0)
        spin.join(timeout=5.0)   # a spin thread still inside rcl at interpreter exit aborts the process
        player.node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    summary = {'source_bag': os.path.abspath(bag), 'label': label, 'mode': 'through_nodes', 'overrides': overrides,
               'messages_played': player.published, 'play_s': play_s, 'node_exit_codes': codes,
               'output_bag': os.path.abspath(os.path.join(out_dir, 'bag'))}
    with open(os.path.join(out_dir, 'replay.json'), 'w') as fh:
        json.dump(summary, fh, indent=2)
    return summary

"""Perception node in its own process over real DDS: tokens with the image stamp, bad images dropped."""
import os
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from node_process import nodes_under_test, watch_diagnostics

DOMAIN = str(1 + zlib.crc32(b'test_perception_node_dds') % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from vla_ros.models.vision import make_demo_vision_encoder  # noqa: E402
from vla_ros.nodes.common import (LATCHED_QOS, SENSOR_QOS, msg_to_tokens, ns_to_stamp, reliable_qos,  # noqa: E402
                                  stamp_to_ns)
from vla_ros.perception.image_conversion import numpy_to_image_msg  # noqa: E402
from vla_ros.perception.synthetic import moving_object_sequence  # noqa: E402
from vla_ros_msgs.msg import LatentTokens  # noqa: E402

NS = '/perctest'
JOINTS = [0.1, -0.2, 0.3]          # a, b, c: published in another order, mapped back BY NAME


@pytest.fixture(scope='module')
def harness(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('perception')
    encoder = make_demo_vision_encoder(str(tmp / 'vision'), seed=0, image_size=64, hidden_size=32)
    params = tmp / 'params.yaml'
    params.write_text(f"""
/**:
  ros__parameters:
    perception:
      encoder_path: {encoder}
      pruning: spatial_coverage
      keep_ratio: 0.5
      keyframe_interval: 4
      max_rate_hz: 0.0
      max_input_age_s: 5.0
      torch_threads: 1
      joint_names: [a, b, c]
""")
    with nodes_under_test(['vla_ros.nodes.perception_node'], NS, params, DOMAIN, 'perception_dds_test') as (node, _):
        yield Harness(node)


class Harness:
    def __init__(self, node):
        self.node = node
        self.tokens, self.diagnostics = [], {}
        node.create_subscription(LatentTokens, 'perception/tokens', self.tokens.append, reliable_qos(100))
        watch_diagnostics(node, f'{NS}/perception', self._on_diag)
        from sensor_msgs.msg import Image
        self.img_pub = node.create_publisher(Image, 'camera/image_raw', SENSOR_QOS)
        self.js_pub = node.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        self.instr_pub = node.create_publisher(String, 'instruction', LATCHED_QOS)
        self.frames = moving_object_sequence(10_000, size=64)
        self.sent_stamps = {}

    def _on_diag(self, values):
        self.diagnostics = values

    def publish(self, image_fn=None, offset_ns=0, names=('gripper', 'c', 'a', 'b')):
        stamp = ns_to_stamp(self.node.get_clock().now().nanoseconds + offset_ns)
        by_name = {'gripper': 0.04, 'a': JOINTS[0], 'b': JOINTS[1], 'c': JOINTS[2]}
        js = JointState(name=list(names), position=[by_name[n] for n in names])
        js.header.stamp = stamp
        img = image_fn(stamp) if image_fn else numpy_to_image_msg(next(self.frames), 'rgb8', stamp, 'camera')
        self.sent_stamps[stamp_to_ns(stamp)] = 'bad' if image_fn or offset_ns or len(set(names)) < len(names) \
            else 'good'
        self.img_pub.publish(img)
        self.js_pub.publish(js)

    def run(self, seconds, until, image_fn=None, period=0.1):
        end = time.monotonic() + seconds
        next_pub = 0.0
        while time.monotonic() < end:
            if time.monotonic() >= next_pub:
                self.publish(image_fn)
                next_pub = time.monotonic() + period
            rclpy.spin_once(self.node, timeout_sec=0.01)
            if until():
                return True
        return until()


def test_tokens_published_with_image_stamp_shapes_and_proprio(harness):
    h = harness
    h.instr_pub.publish(String(data='touch the red cube'))
    assert h.run(60.0, until=lambda: len(h.tokens) >= 6), f'got {len(h.tokens)} token messages'
    for msg in h.tokens:
        tokens = msg_to_tokens(msg)
        assert tokens.shape == (8, 32)                       # 4x4 grid at keep_ratio 0.5, hidden 32
        assert h.sent_stamps.get(stamp_to_ns(msg.header.stamp)) == 'good'  # stamp = the image's stamp
        assert msg.header.frame_id == 'camera' and msg.source.startswith('perception/')
        assert (msg.grid_height, msg.grid_width) == (4, 4) and msg.keep_ratio == pytest.approx(0.5)
        idx = np.asarray(msg.kept_indices)
        assert len(idx) == 8 and np.all(np.diff(idx) > 0) and idx.max() < 16
        np.testing.assert_allclose(msg.proprio, JOINTS, rtol=1e-6)
        assert msg.compute_time > 0
    ids = [m.sequence for m in h.tokens]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert h.tokens[0].is_keyframe and any(m.reuse_ratio > 0 for m in h.tokens)


def test_bad_images_are_dropped_and_node_keeps_working(harness):
    h = harness
    start = len(h.tokens)

    def wrong_encoding(stamp):
        img = numpy_to_image_msg(np.zeros((64, 64, 3), np.uint8), 'rgb8', stamp)
        img.encoding = 'yuv422'
        return img

    def nan_depth(stamp):
        depth = np.ones((64, 64), np.float32)
        depth[3, 5] = np.nan
        return numpy_to_image_msg(depth, '32FC1', stamp)

    def truncated(stamp):
        img = numpy_to_image_msg(np.zeros((64, 64, 3), np.uint8), 'rgb8', stamp)
        img.data = bytes(img.data[:100])
        return img

    # Best-effort (sensor QoS) images may be lost on the way: each kind is sent until its drop is counted.
    for fn, key in ((wrong_encoding, 'drops.unsupported_encoding'), (nan_depth, 'drops.non_finite'),
                    (truncated, 'drops.size_mismatch')):
        assert h.run(15.0, until=lambda: int(h.diagnostics.get(key, 0)) > 0, image_fn=fn), (key, h.diagnostics)
    bad_stamps = {s for s, kind in h.sent_stamps.items() if kind == 'bad'}
    assert not any(stamp_to_ns(m.header.stamp) in bad_stamps for m in h.tokens)
    # Still alive: good frames produce tokens again.
    assert h.run(30.0, until=lambda: len(h.tokens) >= start + 3)
    assert int(h.diagnostics['frames_processed']) >= 6


def test_one_pair_from_the_future_does_not_wedge_perception(harness):
    """Audit finding 1: a single image + joint state stamped an hour ahead blocked every later frame."""
    h = harness
    n = len(h.tokens)
    assert h.run(60.0, until=lambda: len(h.tokens) > n)      # the node is up and processing
    for _ in range(5):      # best-effort sensor QoS may lose half of the pair: then the next one (a jumped
        h.publish(offset_ns=3600 * 1_000_000_000)       # clock stamps every message ahead, not only one)
        end = time.monotonic() + 1.5
        while time.monotonic() < end:           # nothing newer: the node really handles this pair
            rclpy.spin_once(h.node, timeout_sec=0.01)
        if int(h.diagnostics.get('drops.future_stamp', 0)) >= 1:
            break
    start = len(h.tokens)
    assert h.run(20.0, until=lambda: len(h.tokens) >= start + 5 and
                 int(h.diagnostics.get('drops.future_stamp', 0)) >= 1), (len(h.tokens) - start, h.diagnostics)
    assert int(h.diagnostics.get('drops.out_of_order_stamp', 0)) == 0
    assert all(h.sent_stamps.get(stamp_to_ns(m.header.stamp)) == 'good' for m in h.tokens)


def test_hostile_instruction_and_duplicate_joint_names_are_counted_drops(harness):
    h = harness
    h.instr_pub.publish(String(data='x' * 100_000))
    counted = lambda key: int(h.diagnostics.get(key, 0)) >= 1  # noqa: E731
    deadline = time.monotonic() + 20.0
    while not counted('drops.bad_joint_state') and time.monotonic() < deadline:
        h.publish(names=('a', 'b', 'b', 'c'))     # best-effort sensor QoS: sent until one arrives and is counted
        h.run(0.5, until=lambda: counted('drops.bad_joint_state'), period=10.0)
    assert h.run(10.0, until=lambda: counted('drops.instruction_too_long') and
                 counted('drops.bad_joint_state')), h.diagnostics
    assert h.diagnostics['instruction'] == 'touch the red cube'
    bad = {s for s, kind in h.sent_stamps.items() if kind == 'bad'}
    assert not any(stamp_to_ns(m.header.stamp) in bad for m in h.tokens)


def test_missing_encoder_path_fails_at_startup_with_a_clear_message():
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN)
    proc = subprocess.run([sys.executable, '-c', 'from vla_ros.nodes.perception_node import main; main()',
                           '--ros-args', '-p', "perception.encoder_path:=''"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'perception.encoder_path is empty' in proc.stderr

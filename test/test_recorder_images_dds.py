"""Recorder over real DDS: publishers' offered QoS in the bag, camera frames compressed and rate-limited."""
import os
import threading
import time
import zlib

import numpy as np
import pytest
import yaml

DOMAIN_ID = str(1 + zlib.crc32(__name__.encode()) % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN_ID
rclpy = pytest.importorskip('rclpy')
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from vla_ros.eval.bag_io import read_bag  # noqa: E402
from vla_ros.nodes.common import LATCHED_QOS, SENSOR_QOS  # noqa: E402
from vla_ros.nodes.recorder_node import RateLimiter, RecorderNode  # noqa: E402
from vla_ros.perception.image_codec import decompress_to_rgb  # noqa: E402
from vla_ros.perception.image_conversion import numpy_to_image_msg  # noqa: E402

NS = 'img_rec'


def test_rate_limiter_spacing_and_no_burst_after_pause():
    lim = RateLimiter(10.0)
    times = np.arange(0, 1_000_000_000, 10_000_000)  # 100 Hz for 1 s
    allowed = [t for t in times if lim.allow(int(t))]
    assert len(allowed) == 10 and np.all(np.diff(allowed) == 100_000_000)
    assert lim.allow(5_000_000_000) and not lim.allow(5_010_000_000)  # after a pause: one frame, not a burst
    assert all(RateLimiter(0).allow(t) for t in (1, 1, 2))


def _run_recorder(tmp_path, publish_s=1.5, rate_hz=100.0):
    rclpy.init()
    recorder = RecorderNode(namespace=NS, parameter_overrides=[
        Parameter('recorder.output_dir', value=str(tmp_path / 'bag')),
        Parameter('recorder.discovery_period_s', value=0.05),
        Parameter('recorder.record_images', value=True),
        Parameter('recorder.image_format', value='png'),
        Parameter('recorder.image_max_rate_hz', value=5.0)])
    pub_node = Node('img_publisher', namespace=NS)
    image_pub = pub_node.create_publisher(type(numpy_to_image_msg(np.zeros((2, 2, 3), np.uint8), 'rgb8')),
                                          'camera/image_raw', SENSOR_QOS)
    instr_pub = pub_node.create_publisher(String, 'instruction', LATCHED_QOS)
    instr_pub.publish(String(data='touch the green cube'))
    executor = SingleThreadedExecutor()
    executor.add_node(recorder)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    published = 0
    try:
        deadline = time.monotonic() + 20
        while image_pub.get_subscription_count() == 0 or instr_pub.get_subscription_count() == 0:
            assert time.monotonic() < deadline, 'recorder never subscribed'
            time.sleep(0.05)
        start = time.monotonic()
        while time.monotonic() - start < publish_s:
            image_pub.publish(numpy_to_image_msg(frame, 'rgb8'))
            published += 1
            time.sleep(1.0 / rate_hz)
        time.sleep(0.3)
        skipped = recorder.images_skipped
    finally:
        executor.shutdown(timeout_sec=2.0)
        recorder.close()
        recorder.destroy_node()
        pub_node.destroy_node()
        rclpy.shutdown()
    return frame, published, skipped


def test_images_compressed_rate_limited_and_publisher_qos_recorded(tmp_path):
    frame, published, skipped = _run_recorder(tmp_path)
    bag = tmp_path / 'bag'
    images = [(log_ns, m) for topic, _, log_ns, m in read_bag(bag) if topic == f'/{NS}/camera/image_raw/compressed']
    # 1.5 s at <= 5 Hz: 7 or 8 frames kept (best effort may lose a few), the rest counted as skipped
    assert 4 <= len(images) <= 9, len(images)
    assert skipped >= published - len(images) - 5
    times = np.array([t for t, _ in images]) / 1e9
    assert (len(times) - 1) / (times[-1] - times[0]) <= 5.0 * 1.1   # at most image_max_rate_hz on average
    assert images[0][1].format == 'rgb8; png compressed bgr8'
    np.testing.assert_array_equal(decompress_to_rgb(images[0][1].format, images[0][1].data), frame)  # lossless

    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    topics = {t['topic_metadata']['name']: t['topic_metadata'] for t in meta['topics_with_message_count']}
    assert topics[f'/{NS}/camera/image_raw/compressed']['type'] == 'sensor_msgs/msg/CompressedImage'
    image_qos = topics[f'/{NS}/camera/image_raw/compressed']['offered_qos_profiles']
    instr_qos = topics[f'/{NS}/instruction']['offered_qos_profiles']
    # the publishers' offered profiles (not the recorder's depth-200 subscription)
    assert [q['reliability'] for q in image_qos] == ['best_effort']
    assert [(q['durability'], q['reliability']) for q in instr_qos] == [('transient_local', 'reliable')]
    assert meta['ros_distro'] == os.environ.get('ROS_DISTRO', 'kilted')

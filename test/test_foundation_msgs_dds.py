"""vla_ros_msgs round trips between two processes over real DDS."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest

DOMAIN = '211'
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from rclpy.node import Node  # noqa: E402

from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan, TaskStatus  # noqa: E402
from vla_ros.nodes.common import msg_to_tokens, ns_to_stamp, stamp_to_ns, tokens_to_msg  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope='module')
def echo_process():
    env = dict(os.environ, ROS_DOMAIN_ID='211')
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, 'echo_node.py')], env=env)
    rclpy.init()
    node = Node('dds_roundtrip_test')
    try:
        yield node
    finally:
        node.destroy_node()
        rclpy.shutdown()
        proc.terminate()
        proc.wait(timeout=10)


def _roundtrip(node, topic, msg_type, msg, timeout=20.0):
    received = []
    sub = node.create_subscription(msg_type, topic + '_echo', received.append, 10)
    pub = node.create_publisher(msg_type, topic, 10)
    deadline = time.monotonic() + timeout
    next_pub = 0.0
    while not received and time.monotonic() < deadline:
        if time.monotonic() >= next_pub:  # keep publishing until the echo process has discovered us
            pub.publish(msg)
            next_pub = time.monotonic() + 0.2
        rclpy.spin_once(node, timeout_sec=0.05)
    node.destroy_subscription(sub)
    node.destroy_publisher(pub)
    assert received, f'no echo on {topic}_echo within {timeout}s'
    return received[0]


def test_latent_tokens_roundtrip(echo_process):
    tokens = np.random.default_rng(0).standard_normal((12, 32)).astype(np.float32)
    stamp = ns_to_stamp(1_700_000_000_123_456_789)
    msg = tokens_to_msg(tokens, stamp=stamp, frame_id='camera', source='perception/test',
                        kept_indices=np.arange(0, 24, 2), grid_hw=(4, 6), keep_ratio=0.5, reuse_ratio=0.25,
                        is_keyframe=True, frame_counter=42, proprio=[0.1] * 7, compute_ms=3.5)
    back = _roundtrip(echo_process, 'tokens', LatentTokens, msg)
    np.testing.assert_array_equal(msg_to_tokens(back), tokens)
    assert stamp_to_ns(back.header.stamp) == 1_700_000_000_123_456_789
    assert list(back.kept_indices) == list(range(0, 24, 2))
    assert (back.grid_height, back.grid_width, back.sequence) == (4, 6, 42)
    assert back.compute_time == pytest.approx(3.5e-3)   # seconds on the wire
    assert back.is_keyframe and back.source == 'perception/test'
    assert back.keep_ratio == pytest.approx(0.5) and back.reuse_ratio == pytest.approx(0.25)


def test_plan_roundtrip_carries_nested_tokens(echo_process):
    msg = Plan(plan_id=7, planner_type='vlm', instruction='touch the red cube', subtask='move above the red cube',
               cache_hit=True, cache_hit_rate=0.75, latency=12.5e-3)
    msg.header.stamp = ns_to_stamp(5_000_000_001)
    msg.plan_tokens = tokens_to_msg(np.ones((8, 64), np.float32) * 0.5, stamp=msg.header.stamp, frame_id='',
                                    source='planner/vlm', plan_id=7)
    back = _roundtrip(echo_process, 'plan', Plan, msg)
    assert (back.plan_id, back.planner_type, back.subtask) == (7, 'vlm', 'move above the red cube')
    assert back.cache_hit and back.cache_hit_rate == pytest.approx(0.75)
    assert msg_to_tokens(back.plan_tokens).shape == (8, 64)
    assert back.plan_tokens.plan_id == 7


def test_action_chunk_and_task_status_roundtrip(echo_process):
    actions = np.linspace(-1, 1, 16 * 7, dtype=np.float32)
    chunk = ActionChunk(chunk_id=3, horizon=16, action_dim=7, dt=0.05, actions=actions,
                        joint_names=[f'joint{i}' for i in range(1, 8)], plan_id=2, perception_sequence=9,
                        inference_time=4.0e-3, smoothing=ActionChunk.SMOOTHING_RTC)
    back = _roundtrip(echo_process, 'chunk', ActionChunk, chunk)
    np.testing.assert_array_equal(np.asarray(back.actions), actions)
    assert (back.horizon, back.action_dim, back.smoothing) == (16, 7, 'rtc')
    assert list(back.joint_names) == [f'joint{i}' for i in range(1, 8)]

    status = TaskStatus(episode=4, instruction='touch the blue cube', success=True, done=True,
                        distance_to_goal=0.02, elapsed=6.5)
    back = _roundtrip(echo_process, 'status', TaskStatus, status)
    assert back.success and back.done and back.episode == 4
    assert back.distance_to_goal == 0.02 and back.elapsed == 6.5   # float64: exact


def test_msg_to_tokens_rejects_bad_messages():
    from vla_ros.nodes.common import TokenDecodeError
    good = tokens_to_msg(np.zeros((2, 3), np.float32), stamp=ns_to_stamp(1), frame_id='', source='t')
    bad_shape = tokens_to_msg(np.zeros((2, 3), np.float32), stamp=ns_to_stamp(1), frame_id='', source='t')
    bad_shape.shape = [3, 3]
    nan = tokens_to_msg(np.full((2, 3), np.nan, np.float32), stamp=ns_to_stamp(1), frame_id='', source='t')
    assert msg_to_tokens(good).shape == (2, 3)
    for bad in (bad_shape, nan):
        with pytest.raises(TokenDecodeError):
            msg_to_tokens(bad)

"""Sim arm node in its own process over real DDS: sensors out, commands in, bad commands dropped."""
import os
import time
import zlib

import numpy as np
import pytest
from node_process import node_process

DOMAIN = str(1 + zlib.crc32(b'test_sim_node_dds') % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_ros.nodes.common import LATCHED_QOS, SENSOR_QOS, reliable_qos  # noqa: E402
from vla_ros_msgs.msg import ActionChunk, TaskStatus  # noqa: E402

NS = '/simtest'
WIDTH, HEIGHT = 96, 64


def params_yaml(timeout_s: float, max_episodes: int, clock_start: str = 'first_chunk') -> str:
    return f"""
/**:
  ros__parameters:
    sim:
      image_width: {WIDTH}
      image_height: {HEIGHT}
      camera_rate_hz: 10.0
      joint_state_rate_hz: 50.0
      episode_timeout_s: {timeout_s}
      seed: 7
      max_episodes: {max_episodes}
      episode_clock_start: {clock_start}
"""


class Harness:
    def __init__(self, node):
        self.node = node
        self.images, self.joint_states, self.instructions, self.status, self.diag = [], [], [], [], []
        node.create_subscription(Image, 'camera/image_raw', self.images.append, SENSOR_QOS)
        node.create_subscription(JointState, 'joint_states', self.joint_states.append, SENSOR_QOS)
        node.create_subscription(String, 'instruction', self.instructions.append, LATCHED_QOS)
        node.create_subscription(TaskStatus, 'task/status', self.status.append, reliable_qos())
        node.create_subscription(DiagnosticArray, '/diagnostics', self.diag.append, 10)
        self.cmd_pub = node.create_publisher(Float64MultiArray, 'arm/joint_command', reliable_qos())
        self.traj_pub = node.create_publisher(JointTrajectory, 'arm/joint_trajectory', reliable_qos())
        self.chunk_pub = node.create_publisher(ActionChunk, 'action/chunk', reliable_qos())

    def spin_until(self, predicate, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rclpy.spin_once(self.node, timeout_sec=0.05)
            if predicate():
                return True
        return False

    def latest_q(self):
        return np.asarray(self.joint_states[-1].position)

    def sim_diag(self):
        for arr in reversed(self.diag):
            for st in arr.status:
                if st.name.endswith('sim_arm'):
                    return {kv.key: kv.value for kv in st.values}
        return None


@pytest.fixture(scope='module')
def ros_context():
    rclpy.init()
    try:
        yield
    finally:
        rclpy.shutdown()


@pytest.fixture(scope='module')
def harness(tmp_path_factory, ros_context):
    yield from _run_sim(tmp_path_factory, NS, timeout_s=120.0, max_episodes=0)


@pytest.fixture
def short_episodes(tmp_path_factory, ros_context):
    yield from _run_sim(tmp_path_factory, NS + '_short', timeout_s=1.5, max_episodes=2)


@pytest.fixture
def clock_on_first_command(tmp_path_factory, ros_context):
    yield from _run_sim(tmp_path_factory, NS + '_cmd', timeout_s=1.5, max_episodes=1, clock_start='first_command')


def _run_sim(tmp_path_factory, namespace, timeout_s, max_episodes, clock_start='first_chunk'):
    params = tmp_path_factory.mktemp('sim') / 'params.yaml'
    params.write_text(params_yaml(timeout_s, max_episodes, clock_start))
    with node_process('vla_ros.nodes.sim_arm_node', namespace, params, DOMAIN) as proc:
        node = Node('sim_dds_test', namespace=namespace)
        try:
            h = Harness(node)
            assert h.spin_until(lambda: h.images and len(h.joint_states) > 3 and h.instructions, 60), \
                'sim node published no sensors'
            yield h
            assert proc.poll() is None, 'sim node died'
        finally:
            node.destroy_node()


def test_publishes_camera_joint_states_and_instruction(harness):
    img = harness.images[-1]
    assert (img.width, img.height, img.encoding, img.step) == (WIDTH, HEIGHT, 'rgb8', WIDTH * 3)
    assert img.header.frame_id == 'camera' and img.header.stamp.sec > 0
    rgb = np.frombuffer(bytes(img.data), dtype=np.uint8).reshape(HEIGHT, WIDTH, 3)
    assert rgb.std() > 10
    js = harness.joint_states[-1]
    assert list(js.name) == [f'joint{i}' for i in range(1, 8)]
    assert len(js.position) == 7 and np.all(np.isfinite(js.position)) and js.header.stamp.sec > 0
    text = harness.instructions[-1].data
    assert 'cube' in text or 'block' in text
    assert any(c in text for c in ('red', 'green', 'blue'))


def test_moves_when_commanded(harness):
    q0 = harness.latest_q()
    goal = q0 + np.array([0.25, 0.0, 0.0, 0.0, 0.0, 0.0, -0.25])  # inside sim.max_command_jump (0.3)
    harness.cmd_pub.publish(Float64MultiArray(data=goal.tolist()))
    assert harness.spin_until(lambda: np.abs(harness.latest_q() - goal).max() < 0.02, 20), \
        f'arm did not reach the command: {harness.latest_q()} vs {goal}'
    # The trajectory interface drives the arm as well (first point, reordered by joint name).
    goal2 = goal + np.array([-0.2, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    names = [f'joint{i}' for i in range(1, 8)]
    traj = JointTrajectory(joint_names=list(reversed(names)),
                           points=[JointTrajectoryPoint(positions=list(reversed(goal2.tolist())))])
    harness.traj_pub.publish(traj)
    assert harness.spin_until(lambda: np.abs(harness.latest_q() - goal2).max() < 0.02, 20)


def test_bad_commands_are_dropped_without_crashing(harness):
    q_before = harness.latest_q()
    harness.cmd_pub.publish(Float64MultiArray(data=[0.0, 0.1, 0.2]))
    harness.cmd_pub.publish(Float64MultiArray(data=[float('nan')] + [0.0] * 6))
    harness.cmd_pub.publish(Float64MultiArray(data=[0.0] * 6 + [float('inf')]))

    def counted():
        d = harness.sim_diag()
        return d is not None and int(d.get('drop_wrong_length', 0)) >= 1 and int(d.get('drop_non_finite', 0)) >= 2
    assert harness.spin_until(counted, 10), f'drops not reported: {harness.sim_diag()}'
    # Still alive, still holding its last good target, still publishing finite joint states.
    n = len(harness.joint_states)
    assert harness.spin_until(lambda: len(harness.joint_states) > n + 5, 5)
    assert np.all(np.isfinite(harness.latest_q()))
    np.testing.assert_allclose(harness.latest_q(), q_before, atol=0.02)


def test_episode_timeout_reports_done_and_resets(short_episodes):
    harness = short_episodes
    # The first episode's clock waits for the policy (sim.episode_clock_start: first_chunk): neither silence nor
    # hold commands (the action node holds the arm while perception and planner still load) start it ...
    harness.spin_until(lambda: False, 1.5)
    for _ in range(30):
        harness.cmd_pub.publish(Float64MultiArray(data=[float(v) for v in harness.latest_q()]))
        harness.spin_until(lambda: False, 0.05)
    harness.spin_until(lambda: False, 1.0)
    assert not any(s.done for s in harness.status), 'episode timed out before the policy sent a chunk'
    # ... the first command after the first action chunk does.
    harness.chunk_pub.publish(ActionChunk(chunk_id=1, horizon=1, action_dim=7, dt=0.05, actions=[0.0] * 7))
    harness.spin_until(lambda: False, 0.3)
    harness.cmd_pub.publish(Float64MultiArray(data=[float(v) for v in harness.latest_q()]))
    # Episodes last 1.5 s of sim time; after max_episodes=2 the node stops resetting.
    assert harness.spin_until(lambda: sum(s.done for s in harness.status) >= 2, 20)
    done = [s for s in harness.status if s.done]
    assert [s.episode for s in done[:2]] == [0, 1]
    assert all(not s.success and s.elapsed >= 1.5 - 1e-6 for s in done[:2])
    # Each reset publishes the new episode's instruction (latched): the last one is episode 1's.
    assert harness.instructions and harness.instructions[-1].data == done[1].instruction
    assert harness.spin_until(lambda: (harness.sim_diag() or {}).get('episodes_done') == '2', 5)
    time.sleep(2.5)
    rclpy.spin_once(harness.node, timeout_sec=0.1)
    assert sum(s.done for s in harness.status) == 2


def test_episode_clock_can_start_at_the_first_command(clock_on_first_command):
    """sim.episode_clock_start: first_command, for a policy that publishes no action chunks."""
    harness = clock_on_first_command
    harness.spin_until(lambda: False, 2.0)
    assert not any(s.done for s in harness.status)
    harness.cmd_pub.publish(Float64MultiArray(data=[float(v) for v in harness.latest_q()]))
    assert harness.spin_until(lambda: any(s.done for s in harness.status), 15)
    assert [s.episode for s in harness.status if s.done] == [0]

"""Action node in a separate process, driven over real DDS: commands, chunks, stale hold, e-stop."""
import os
import time
import zlib

import numpy as np
import pytest
from node_process import nodes_under_test, watch_diagnostics

DOMAIN = str(1 + zlib.crc32(b'test_action_node_dds') % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from builtin_interfaces.msg import Time  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory  # noqa: E402

from vla_ros.nodes.common import SENSOR_QOS, reliable_qos, tokens_to_msg  # noqa: E402
from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan  # noqa: E402

NS = '/acttest'
JOINTS = ['j1', 'j2', 'j3']
LOWER, UPPER = [-1.0, -0.5, 0.0], [1.0, 0.5, 0.8]
MAX_VEL = 1.0
PARAMS = f"""
/**:
  ros__parameters:
    action:
      joint_names: {JOINTS}
      action_dim: 3
      horizon: 8
      denoising_steps: 3
      chunk_rate_hz: 10.0
      control_rate_hz: 100.0
      smoothing: rtc
      safety:
        joint_lower: {LOWER}
        joint_upper: {UPPER}
        max_velocity: {MAX_VEL}
        max_acceleration: 100.0
        stale_plan_timeout_s: 1.0
        stale_perception_timeout_s: 0.5
        stale_behavior: hold
"""


@pytest.fixture(scope='module')
def harness(tmp_path_factory):
    params = tmp_path_factory.mktemp('action') / 'params.yaml'
    params.write_text(PARAMS)
    with nodes_under_test(['vla_ros.nodes.action_node'], NS, params, DOMAIN, 'action_dds_test') as (node, _):
        yield Harness(node)


class Harness:
    def __init__(self, node):
        self.node = node
        self.commands, self.chunks, self.trajs, self.stamped = [], [], [], []
        node.create_subscription(Float64MultiArray, 'arm/joint_command',
                                 lambda m: self.commands.append(np.array(m.data)), reliable_qos(100))
        node.create_subscription(ActionChunk, 'action/chunk', self.chunks.append, reliable_qos(100))
        node.create_subscription(JointTrajectory, 'arm/joint_trajectory', self.trajs.append, reliable_qos(100))
        node.create_subscription(JointState, 'action/command', self.stamped.append, SENSOR_QOS)
        self.plan_pub = node.create_publisher(Plan, 'planner/plan', reliable_qos())
        self.tok_pub = node.create_publisher(LatentTokens, 'perception/tokens', reliable_qos())
        self.js_pub = node.create_publisher(JointState, 'joint_states', SENSOR_QOS)
        self.estop_pub = node.create_publisher(Bool, 'estop', reliable_qos())
        self.frame = 0
        self.diagnostics = {}
        self.js_names = ['extra'] + JOINTS
        self.token_stamp = None           # None = now; else a fixed (hostile) stamp for plan + tokens
        self.token_value = 0.5
        watch_diagnostics(node, f'{NS}/action', self._on_diag)

    def _on_diag(self, values):
        self.diagnostics = values

    def drops(self, key):
        return int(self.diagnostics.get(f'drop_{key}', 0))

    def publish_inputs(self, tokens=True):
        stamp = self.node.get_clock().now().to_msg()
        values = {'extra': 9.0, 'gripper': 0.04, 'j1': 0.1, 'j2': 0.2, 'j3': 0.3}
        js = JointState(name=list(self.js_names), position=[values[n] for n in self.js_names])
        js.header.stamp = stamp
        self.js_pub.publish(js)
        if self.token_stamp is not None:
            stamp = self.token_stamp
        if tokens:
            self.frame += 1
            plan = Plan(plan_id=5, subtask='reach')
            plan.header.stamp = stamp
            plan.plan_tokens = tokens_to_msg(np.ones((2, 4), np.float32), stamp=stamp, frame_id='', source='t',
                                             plan_id=5)
            self.plan_pub.publish(plan)
            self.tok_pub.publish(tokens_to_msg(np.full((5, 6), self.token_value, np.float32), stamp=stamp,
                                               frame_id='cam', source='t', frame_counter=self.frame))

    def run(self, seconds, tokens=True, until=None):
        end = time.monotonic() + seconds
        next_pub = 0.0
        while time.monotonic() < end:
            if time.monotonic() >= next_pub:
                self.publish_inputs(tokens)
                next_pub = time.monotonic() + 0.05
            rclpy.spin_once(self.node, timeout_sec=0.01)
            if until is not None and until():
                return True
        return until() if until is not None else True


def _assert_safe(commands):
    arr = np.array(commands)
    assert arr.shape[1] == 3 and np.all(np.isfinite(arr))
    assert np.all(arr >= np.array(LOWER) - 1e-9) and np.all(arr <= np.array(UPPER) + 1e-9)


def test_commands_chunks_stale_hold_and_estop(harness):
    h = harness
    assert h.run(60.0, until=lambda: len(h.chunks) >= 3 and len(h.commands) >= 50), \
        f'got {len(h.chunks)} chunks, {len(h.commands)} commands'
    _assert_safe(h.commands)
    chunk = h.chunks[-1]
    assert (chunk.horizon, chunk.action_dim, chunk.smoothing) == (8, 3, 'rtc')
    assert list(chunk.joint_names) == JOINTS and len(chunk.actions) == 24
    assert chunk.plan_id == 5 and chunk.perception_sequence > 0 and chunk.inference_time > 0
    assert chunk.header.stamp.sec > 0
    assert not h.trajs                                  # forward interface: no trajectories
    # The stamped mirror carries every tick's command with the tick time in header.stamp.
    stamped = h.stamped[-20:]
    assert list(stamped[-1].name) == JOINTS
    stamps = np.array([m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in stamped])
    assert np.all(np.diff(stamps) > 0) and 0.005 < np.median(np.diff(stamps)) < 0.02
    # the safety filter's counters come from the control process, where the tick runs
    assert h.run(10.0, until=lambda: int(h.diagnostics.get('safety_ticks', 0)) > 50), h.diagnostics
    assert int(h.diagnostics['safety_reanchored']) >= 1 and h.diagnostics.get('control_alive') == 'True'
    # The random head drives the arm around (the fake arm never follows, so the whole-arm restart on
    # tracking error > 0.2 rad brings the command back to it at rest now and then).
    assert _moving(h)

    # Plan + perception stop (joint states continue): after the 0.5 s watchdog the node holds.
    h.run(1.5, tokens=False)
    start = len(h.commands)
    h.run(0.5, tokens=False)
    held = np.array(h.commands[start:])
    assert len(held) > 10
    assert _holds(held), held
    _assert_safe(h.commands)

    # Inputs resume -> moves again; e-stop latches a hold even though inputs keep flowing.
    n_chunks = len(h.chunks)
    assert h.run(30.0, until=lambda: len(h.chunks) >= n_chunks + 2)
    h.estop_pub.publish(Bool(data=True))
    h.run(0.5)
    start = len(h.commands)
    chunks_at_estop = len(h.chunks)
    h.run(1.0)
    held = np.array(h.commands[start:])
    assert len(held) > 10 and np.ptp(held, axis=0).max() == 0.0
    assert len(h.chunks) <= chunks_at_estop + 1       # no inference while stopped

    # Release through the std_srvs/SetBool service.
    from std_srvs.srv import SetBool
    client = h.node.create_client(SetBool, 'estop')
    assert client.wait_for_service(timeout_sec=10.0)
    future = client.call_async(SetBool.Request(data=False))
    rclpy.spin_until_future_complete(h.node, future, timeout_sec=10.0)
    assert future.result().success
    assert _moving(h)
    _assert_safe(h.commands)


def _held_after(h, settle_s, window_s):
    """Run with the harness' current inputs; True when the commands of the last window do not move."""
    h.run(settle_s)
    start = len(h.commands)
    h.run(window_s)
    held = np.array(h.commands[start:])
    return len(held) > 10 and _holds(held)


ARM = np.array([0.1, 0.2, 0.3])      # where the fake arm reports j1..j3, always
# How long a dropped input may take to show in the diagnostics' counters (returns as soon as it does). The
# action node takes the harness' 20 Hz inputs at a few Hz with ~0.3 s latency here (its process, the inference
# process and the SCHED_FIFO control process share 2 cores; the same before and after the eighth session's
# changes), and CI once saw no counted duplicate-name drop within 6 s.
COUNTED_WITHIN_S = 20.0


def _holds(held):
    """The command stands still; at most one step, the whole-arm restart onto the measured arm.

    The fake arm never follows, so a held command more than 0.2 rad from it trips the tracking-error restart:
    the hold then continues from the arm (within max speed x the age of the reading), and stays there.
    """
    steps = np.flatnonzero(np.abs(np.diff(held, axis=0)).max(axis=1) > 0.0)
    if len(steps) == 0:
        return True
    after = held[steps[0] + 1:]
    return len(steps) == 1 and np.abs(after[0] - ARM).max() < 0.05


def _moving(h):
    start = len(h.commands)
    ok = h.run(30.0, until=lambda: len(h.commands) > start + 30 and
               np.ptp(np.array(h.commands[-20:]), axis=0).max() > 1e-4)
    return ok


def test_hostile_inputs_hold_the_arm_and_are_counted(harness):
    """Audit findings 2, 3, 5: 1970 stamps, a silent arm beside a talking gripper, huge tokens, duplicate names."""
    h = harness
    assert _moving(h)
    # 2: plan and tokens stamped in 1970 arrive on time, but are 56 years old -> hold.
    h.token_stamp = Time(sec=0, nanosec=1)
    assert _held_after(h, 1.2, 0.6)
    h.run(COUNTED_WITHIN_S, until=lambda: h.drops('plan_stale_stamp') > 0 and h.drops('perception_stale_stamp') > 0)
    assert h.drops('plan_stale_stamp') > 0 and h.drops('perception_stale_stamp') > 0, h.diagnostics
    h.token_stamp = None
    assert _moving(h)
    # 3: the arm's joint states fall silent while a gripper keeps publishing on joint_states -> hold.
    h.js_names = ['gripper']
    assert _held_after(h, 1.0, 0.6)
    h.run(COUNTED_WITHIN_S, until=lambda: h.drops('joint_state_no_arm_joints') > 0)
    assert h.drops('joint_state_no_arm_joints') > 0
    # duplicate names: rejected (counted), so still no fresh arm positions -> still holding
    h.js_names = ['j1', 'j1', 'j2', 'j3']
    assert _held_after(h, 1.0, 0.6)
    h.run(COUNTED_WITHIN_S, until=lambda: h.drops('joint_state_duplicate_joint_names') > 0)
    assert h.drops('joint_state_duplicate_joint_names') > 0
    h.js_names = ['extra'] + JOINTS
    assert _moving(h)
    # 5: finite but absurd token values are dropped -> inputs go stale -> hold.
    h.token_value = 1e30
    assert _held_after(h, 1.2, 0.6)
    h.run(COUNTED_WITHIN_S, until=lambda: h.drops('bad_perception_tokens') > 0)
    assert h.drops('bad_perception_tokens') > 0
    h.token_value = 0.5
    assert _moving(h)
    _assert_safe(h.commands)

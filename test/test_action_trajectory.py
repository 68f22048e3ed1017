"""JTC-like trajectory follower, safe chunk trajectories, and the real-time controller's two command
interfaces driven tick by tick (no ROS, no threads)."""
import time

import numpy as np
import pytest

from vla_ros.action.controller import ControlLoop
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.action.realtime_loop import RealtimeController
from vla_ros.action.trajectory import TrajectoryFollower, chunk_trajectory
from vla_ros.config.action import ActionConfig, SafetyConfig


def test_cubic_spline_hits_waypoints_with_their_velocities_then_holds():
    f = TrajectoryFollower(2)
    assert f.sample(0.0) is None
    f.hold([0.0, 0.0], 0.0)
    assert f.set_trajectory(received=0.0, start=1.0, times_from_start=[0.5, 1.0],
                            positions=[[1.0, -1.0], [2.0, -2.0]], velocities=[[1.0, -1.0], [0.0, 0.0]])
    p, v = f.sample(0.9)                      # before the start time the hold continues
    np.testing.assert_allclose(p, [0.0, 0.0])
    p, v = f.sample(1.5)
    np.testing.assert_allclose(p, [1.0, -1.0])
    np.testing.assert_allclose(v, [1.0, -1.0])
    p, v = f.sample(1.75)                     # cubic Hermite midpoint: (p0+p1)/2 + h*(v0-v1)/8
    np.testing.assert_allclose(p, [1.5 + 0.5 / 8, -1.5 - 0.5 / 8])
    p, v = f.sample(5.0)
    np.testing.assert_allclose(p, [2.0, -2.0])
    np.testing.assert_allclose(v, [0.0, 0.0])


def test_positions_only_is_linear():
    f = TrajectoryFollower(1)
    f.hold([0.0], 0.0)
    f.set_trajectory(0.0, 0.0, [1.0], [[2.0]])
    p, v = f.sample(0.25)
    assert p[0] == pytest.approx(0.5) and v[0] == pytest.approx(2.0)


def test_replacement_splices_at_start_time_continuously_and_drops_past_points():
    f = TrajectoryFollower(1)
    f.hold([0.0], 0.0)
    f.set_trajectory(0.0, 0.0, [1.0, 2.0], [[1.0], [2.0]], [[1.0], [1.0]])
    before = f.sample(0.6)
    # Received at 0.5, starts at 0.6; its first point (0.55) lies before its own start -> dropped.
    assert f.set_trajectory(0.5, 0.6, [-0.05, 0.4], [[9.0], [0.0]], [[0.0], [0.0]])
    at = f.sample(0.6)
    np.testing.assert_allclose(at[0], before[0])          # no position jump at the splice
    np.testing.assert_allclose(at[1], before[1])          # nor a velocity jump
    after = f.sample(0.61)
    assert abs(after[0][0] - at[0][0]) < 0.02              # heads for 0.0, never for the dropped 9.0
    np.testing.assert_allclose(f.sample(1.0)[0], [0.0])
    # Stamp in the past: points already past on receipt are dropped, the rest spliced at the stamp.
    f2 = TrajectoryFollower(1)
    f2.hold([0.0], 0.0)
    assert f2.set_trajectory(0.7, 0.6, [0.05, 0.4], [[7.0], [1.0]], [[0.0], [0.0]])
    assert f2.sample(0.65)[0][0] < 1.0 and f2.sample(1.0)[0][0] == pytest.approx(1.0)
    # Entirely in the past -> rejected, the current one continues.
    assert not f.set_trajectory(2.0, 1.0, [0.1, 0.2], [[5.0], [5.0]])
    assert f.rejected == 1
    np.testing.assert_allclose(f.sample(2.5)[0], [0.0])
    # Non-increasing times and NaN are rejected.
    assert not f.set_trajectory(3.0, 0.0, [0.2, 0.2], [[1.0], [1.0]])
    assert not f.set_trajectory(3.0, 0.0, [0.2], [[np.nan]])


SAFETY = SafetyConfig(joint_lower=[-1.0, -0.5], joint_upper=[1.0, 0.5], max_velocity=1.0, max_acceleration=20.0)


def test_chunk_trajectory_obeys_limits_from_the_splice_state():
    planned = lambda t: np.array([3.0 * t, -3.0])           # far outside limits and speed
    dt = 0.05
    rel, pos, vel = chunk_trajectory(planned, 10.0, 10.8, np.array([0.2, 0.0]), np.array([0.5, 0.0]), dt, SAFETY)
    assert rel.size == 16 and rel[0] == pytest.approx(dt) and np.all(np.diff(rel) > 0)
    assert np.all(pos >= np.array(SAFETY.joint_lower) - 1e-12) and np.all(pos <= np.array(SAFETY.joint_upper) + 1e-12)
    steps = np.diff(np.vstack([[0.2, 0.0], pos]), axis=0)
    assert np.abs(steps).max() <= SAFETY.max_velocity * dt + 1e-12
    assert np.all(np.abs(vel) <= SAFETY.max_velocity + 1e-12)
    np.testing.assert_allclose(vel[-1], 0.0)                # arm comes to rest if no chunk follows
    assert chunk_trajectory(planned, 10.0, 10.01, np.zeros(2), np.zeros(2), dt, SAFETY) is None


class Sink:
    def __init__(self):
        self.stamps, self.forwarded, self.trajs, self.chunks = [], [], [], []

    def ros_now_ns(self):      # a ROS clock 1000 s ahead of CLOCK_MONOTONIC
        return time.monotonic_ns() + 1_000_000_000_000

    def stamped(self, command, stamp_ns):
        self.stamps.append((command.copy(), stamp_ns))

    def forward(self, command):
        self.forwarded.append(command.copy())

    def trajectory(self, start_ns, times, positions, velocities):
        self.trajs.append((start_ns, times.copy(), positions.copy(), velocities.copy()))

    def replan(self):
        pass

    def chunk(self, result, stamp_ns):
        self.chunks.append(result)


def _controller(interface):
    cfg = ActionConfig(joint_names=['a', 'b'], action_dim=2, horizon=8, denoising_steps=2, command_interface=interface,
                       inference_mode='thread', smoothing='none', safety=SAFETY, trajectory_lead_s=0.03)
    head = FlowMatchingActionHead(FlowHeadConfig(action_dim=2, horizon=8, vis_dim=4, plan_dim=4, proprio_dim=2,
                                                 hidden_dim=16, num_layers=1, num_heads=2))
    loop = ControlLoop(head, cfg, clock=lambda: 0.0)
    sink = Sink()
    rt = RealtimeController(loop, cfg, sink, backend=None, log=lambda s: None)
    loop.update_plan(np.ones((1, 4)), 1, now=0.0)
    loop.update_perception(np.ones((1, 4)), 1, now=0.0)
    loop.update_proprio(np.array([0.0, 0.0]), now=0.0)
    return rt, loop, sink


def _ticks(rt, t0, n, dt=0.01):
    for k in range(n):
        rt._tick(int(round((t0 + k * dt) * 1e9)))


def test_forward_interface_streams_every_tick_and_sends_no_trajectory():
    rt, loop, sink = _controller('forward')
    _ticks(rt, 0.0, 1)                 # first tick: inputs fresh, nothing to run yet
    assert loop.commit_chunk(np.linspace([0, 0], [0.3, 0.1], 8), 0.0, 0.05, 0.0, 1) is not None
    _ticks(rt, 0.01, 19)
    assert len(sink.forwarded) == 20 and len(sink.stamps) == 20 and not sink.trajs
    # Stamps are the tick times on the ROS clock.
    assert abs(sink.stamps[5][1] - sink.stamps[4][1] - 10_000_000) < 100_000
    assert abs(sink.stamps[0][1] - 1_000_000_000_000) < 100_000
    assert sink.forwarded[-1][0] > 0.0


def test_trajectory_interface_sends_each_chunk_once_then_a_stop_on_estop():
    rt, loop, sink = _controller('trajectory')
    actions = np.linspace([0, 0], [0.3, 0.1], 8)
    _ticks(rt, 0.0, 1)
    loop.commit_chunk(actions, 0.0, 0.05, 0.0, 1)
    _ticks(rt, 0.01, 9)
    assert not sink.forwarded and len(sink.stamps) == 10
    assert len(sink.trajs) == 1
    start_ns, times, pos, vel = sink.trajs[0]
    # Header stamp = the sending tick's time + trajectory_lead_s, on the sink's (ROS) clock.
    assert abs((start_ns - sink.stamps[1][1]) - 30_000_000) < 2_000_000
    assert times[0] == pytest.approx(0.05) and vel.shape == pos.shape and np.all(np.isfinite(vel))
    np.testing.assert_allclose(vel[-1], 0.0)
    # A second chunk is spliced where the first trajectory is at its start time: continuous motion.
    loop.commit_chunk(actions + 0.05, 0.1, 0.05, 0.1, 2)
    _ticks(rt, 0.1, 5)
    assert len(sink.trajs) == 2
    start2 = 0.1 + 0.03
    (p_a, v_a), (p_b, v_b) = rt.follower.sample(start2 - 1e-6), rt.follower.sample(start2 + 1e-6)
    np.testing.assert_allclose(p_a, p_b, atol=1e-4)
    np.testing.assert_allclose(v_a, v_b, atol=0.05)
    # E-stop: exactly one stop trajectory ending at rest, within limits.
    rt.set_estop(True)
    _ticks(rt, 0.2, 10)
    assert len(sink.trajs) == 3 and rt.stop_trajectories_sent == 1
    _, times, pos, vel = sink.trajs[-1]
    assert times.size == 1 and np.all(vel == 0.0)
    assert np.all(pos <= np.array(SAFETY.joint_upper)) and np.all(pos >= np.array(SAFETY.joint_lower))

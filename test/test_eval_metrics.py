"""Metrics from a synthetic bag whose content (latencies, seams, jitter, episodes) is known by construction."""
import numpy as np
import pytest

pytest.importorskip('rclpy')
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_ros.eval.bag_io import BagWriter  # noqa: E402
from vla_ros.eval.metrics import compute_metrics  # noqa: E402
from vla_ros.nodes.common import ns_to_stamp, tokens_to_msg  # noqa: E402
from vla_ros_msgs.msg import ActionChunk, Plan, TaskStatus  # noqa: E402

MS = 1_000_000
T0 = 1_700_000_000 * 1_000_000_000
N_COMMANDS = 60
STEPS_PER_CHUNK = 20
SEAM_JUMP = 0.05            # extra joint-0 jump at every chunk boundary
LATE_COMMAND = 30           # this command's stamp is 4 ms late -> periods 14 ms then 6 ms
RECEIVE_DELAY_MS = 1        # command log time = stamp + 1 ms
JOINT_LOWER, JOINT_UPPER = [-1.0, -0.1], [1.0, 1.0]
STATUS_START_MS = 460       # first status message; one every 50 ms, a new episode's first 200 ms after the last
RESET_COMMAND = 58          # logged at 581 ms: after episode 1's last status (560 ms), 179 ms before episode 2's
RESET_JUMP = 0.5            # first (760 ms): the episode reset re-anchors the command on the teleported arm (joint 0)
NEW_EPISODE_GAP_MS = 150    # the sim's status period delays the new episode's first status


def command_positions(k):
    return [0.001 * k + SEAM_JUMP * (k // STEPS_PER_CHUNK) + RESET_JUMP * (k >= RESET_COMMAND), -0.002 * k]


def command_stamp(k):
    return T0 + 10 * MS * k + (4 * MS if k == LATE_COMMAND else 0)


def image_stamp(frame):
    return T0 + frame * 100 * MS - 30 * MS


# (success, done, elapsed_s) per status message, per episode
EPISODES = {1: [(False, False, 1.0), (True, False, 2.5), (True, True, 3.0)],
            2: [(False, False, 1.0), (False, True, 8.0)],
            3: [(True, True, 4.0)],
            4: [(False, False, 0.5)]}
PLANS = [  # (plan_id, cache_hit, latency_ms, receive delay after the frame stamp in ms)
    (1, False, 100.0, 150), (1, True, 1.0, 160), (1, True, 1.0, 170), (2, False, 80.0, 180)]


def build_synthetic_bag(path, *, with_trajectory=True):
    """Write the synthetic run. Log times are chosen explicitly (they are the recorder's receive times)."""
    with BagWriter(path) as bag:
        for k in range(N_COMMANDS):
            stamp = command_stamp(k)
            if with_trajectory:
                traj = JointTrajectory(joint_names=['j1', 'j2'],
                                       points=[JointTrajectoryPoint(positions=command_positions(k))])
                traj.header.stamp = ns_to_stamp(stamp)
                bag.write('/vla/arm/joint_trajectory', traj, stamp + RECEIVE_DELAY_MS * MS)
            bag.write('/vla/arm/joint_command', Float64MultiArray(data=command_positions(k)),
                      stamp + RECEIVE_DELAY_MS * MS)
        for frame in range(6):
            msg = tokens_to_msg(np.zeros((16 if frame % 2 == 0 else 32, 4), np.float32),
                                stamp=ns_to_stamp(image_stamp(frame)), frame_id='cam', source='test',
                                grid_hw=(8, 8), keep_ratio=0.25 if frame % 2 == 0 else 0.5,
                                reuse_ratio=0.0 if frame % 3 == 0 else 0.75, is_keyframe=frame % 3 == 0,
                                frame_counter=frame, compute_ms=5.0 + frame)
            bag.write('/vla/perception/tokens', msg, image_stamp(frame) + (20 + frame) * MS)
        for c in range(N_COMMANDS // STEPS_PER_CHUNK):
            chunk = ActionChunk(chunk_id=c, horizon=STEPS_PER_CHUNK, action_dim=2, dt=0.01, plan_id=1,
                                perception_sequence=2 * c, inference_time=(3.0 + c) / 1e3,
                                smoothing=ActionChunk.SMOOTHING_NONE)
            chunk.header.stamp = ns_to_stamp(command_stamp(STEPS_PER_CHUNK * c))
            bag.write('/vla/action/chunk', chunk, T0 + 200 * MS * c - 5 * MS)
        for i, (plan_id, hit, latency, delay) in enumerate(PLANS):
            plan = Plan(plan_id=plan_id, planner_type=Plan.PLANNER_LIGHTWEIGHT, cache_hit=hit, latency=latency / 1e3,
                        cache_hit_rate=0.5)
            plan.header.stamp = ns_to_stamp(image_stamp(0))
            bag.write('/vla/planner/plan', plan, image_stamp(0) + delay * MS)
        t = T0 + (STATUS_START_MS - 50) * MS
        for i, (episode, msgs) in enumerate(EPISODES.items()):
            t += NEW_EPISODE_GAP_MS * MS if i else 0
            for success, done, elapsed in msgs:
                t += 50 * MS
                bag.write('/vla/task/status', TaskStatus(episode=episode, instruction=f'task {episode}',
                                                         success=success, done=done, elapsed=elapsed), t)
        bag.write('/vla/estop', Bool(data=True), T0 + 5 * MS)
        bag.write('/vla/estop', Bool(data=False), T0 + 6 * MS)
        bag.write('/diagnostics', DiagnosticArray(status=[DiagnosticStatus(
            name='/vla/action', values=[KeyValue(key='dropped', value='3')])]), T0 + 7 * MS)
    return path


@pytest.fixture(scope='module')
def metrics(tmp_path_factory):
    bag = build_synthetic_bag(tmp_path_factory.mktemp('synthetic') / 'bag')
    return compute_metrics(bag, max_velocity=1.5, control_rate_hz=100.0,
                           joint_lower=JOINT_LOWER, joint_upper=JOINT_UPPER)


def test_latency_per_stage(metrics):
    lat = metrics['latency']
    assert lat['perception_compute_ms']['mean'] == pytest.approx(np.mean([5.0 + f for f in range(6)]))
    assert lat['image_to_tokens_ms']['max'] == pytest.approx(25.0)
    assert lat['image_to_tokens_ms']['p50'] == pytest.approx(np.median([20 + f for f in range(6)]))
    assert lat['planner_latency_ms']['mean'] == pytest.approx((100 + 1 + 1 + 80) / 4)
    assert lat['planner_latency_miss_ms']['mean'] == pytest.approx(90.0)
    assert lat['plan_age_ms']['min'] == pytest.approx(150.0) and lat['plan_age_ms']['max'] == pytest.approx(180.0)
    assert lat['action_inference_ms']['mean'] == pytest.approx(4.0)
    # chunk c (from frame 2c) is received at T0+200c-5 ms; frame 2c's image stamp is T0+200c-30 ms.
    assert lat['frame_to_chunk_ms']['count'] == 3
    assert lat['frame_to_chunk_ms']['min'] == pytest.approx(25.0) and lat['frame_to_chunk_ms']['max'] == pytest.approx(25.0)
    # first command received after each chunk is command 20c at T0+200c+1 ms -> 31 ms after the image.
    assert lat['end_to_end_ms']['count'] == 3
    assert lat['end_to_end_ms']['p50'] == pytest.approx(31.0) and lat['end_to_end_ms']['p95'] == pytest.approx(31.0)


def test_control_rate_and_jitter(metrics):
    ctrl = metrics['control']
    assert ctrl['source'] == 'trajectory_msgs/msg/JointTrajectory' and ctrl['commands'] == N_COMMANDS
    periods = np.diff([command_stamp(k) for k in range(N_COMMANDS)]) / MS
    deviation = np.abs(periods - 10.0)
    stamped = ctrl['from_header_stamps']
    assert stamped['rate_hz'] == pytest.approx(100.0)
    assert stamped['period_ms']['max'] == pytest.approx(14.0) and stamped['period_ms']['min'] == pytest.approx(6.0)
    assert stamped['period_ms']['p50'] == pytest.approx(10.0)
    assert stamped['jitter_ms']['p50'] == pytest.approx(0.0)
    assert stamped['jitter_ms']['p99'] == pytest.approx(np.percentile(deviation, 99))
    assert stamped['jitter_ms']['max'] == pytest.approx(4.0)
    assert ctrl['from_log_times']['rate_hz'] == pytest.approx(100.0)  # constant receive delay


def test_tokens_reuse_and_plan_cache(metrics):
    tok = metrics['tokens']
    assert tok['frames'] == 6
    assert tok['keep_ratio_mean'] == pytest.approx(0.375)
    assert tok['reuse_ratio_mean'] == pytest.approx(0.75 * 4 / 6)
    assert tok['tokens_kept']['mean'] == pytest.approx(24.0) and tok['patches_total_mean'] == 64
    assert tok['keyframe_fraction'] == pytest.approx(2 / 6)
    plan = metrics['plan_cache']
    assert (plan['plans'], plan['cache_hits'], plan['distinct_plan_ids']) == (4, 2, 2)
    assert plan['hit_rate'] == pytest.approx(0.5)


def test_seam_smoothness_finds_the_jump(metrics):
    seams = metrics['seams']
    assert seams['time_base'] == 'header_stamps'
    assert seams['seam']['count'] == N_COMMANDS // STEPS_PER_CHUNK - 1
    assert seams['seam']['max'] == pytest.approx(0.001 + SEAM_JUMP)
    assert seams['seam']['mean'] == pytest.approx(0.001 + SEAM_JUMP)
    assert seams['other']['count'] == N_COMMANDS - 1 - seams['seam']['count'] - 1   # - the reset step
    assert seams['other']['max'] == pytest.approx(0.002)  # joint 1 moves 0.002 per step
    assert seams['seam_to_other_mean_ratio'] == pytest.approx((0.001 + SEAM_JUMP) / 0.002)
    assert seams['episode_reset_steps'] == 1   # left out of both, or 'other' max would be 0.501


def test_safety(metrics):
    safety = metrics['safety']
    assert safety['step_limit'] == pytest.approx(1.5 / 100.0)
    assert safety['max_step'] == pytest.approx(0.001 + SEAM_JUMP)
    assert safety['steps_over_limit'] == N_COMMANDS // STEPS_PER_CHUNK - 1   # the seams; not the reset
    assert safety['episode_reset_steps'] == 1
    assert safety['max_reset_step'] == pytest.approx(0.001 + RESET_JUMP)
    assert safety['reanchor_steps'] == 0            # no joint states in this bag: the seam jumps stay over limit
    below = sum(1 for k in range(N_COMMANDS) if command_positions(k)[1] < JOINT_LOWER[1] - 1e-9)
    assert safety['position_limit_violations'] == below > 0
    assert safety['estop_messages'] == 1


def test_success_per_episode(metrics):
    succ = metrics['success']
    assert (succ['episodes'], succ['episodes_done'], succ['successes']) == (4, 3, 2)
    assert succ['success_rate'] == pytest.approx(2 / 3)
    assert succ['time_to_success_s']['mean'] == pytest.approx((2.5 + 4.0) / 2)
    rows = {r['episode']: r for r in succ['per_episode']}
    assert rows[1]['success'] and rows[1]['time_to_success_s'] == pytest.approx(2.5)
    assert not rows[2]['success'] and rows[2]['done'] and rows[2]['elapsed_s'] == pytest.approx(8.0)
    assert not rows[4]['done']
    assert metrics['diagnostics']['/vla/action']['dropped'] == '3'
    assert metrics['bag']['storage'] == 'mcap'


def test_missing_topics_give_none_and_notes(tmp_path):
    """Only an un-stamped command stream: the other sections are None, and the report says why."""
    with BagWriter(tmp_path / 'bag') as bag:
        for k in range(10):
            bag.write('/cmd', Float64MultiArray(data=command_positions(k)), T0 + k * 20 * MS)
    m = compute_metrics(tmp_path / 'bag')
    assert m['tokens'] is None and m['plan_cache'] is None and m['success'] is None and m['seams'] is None
    assert m['latency']['end_to_end_ms'] is None
    assert m['control']['source'] == 'std_msgs/msg/Float64MultiArray'
    assert m['control']['from_header_stamps'] is None
    assert m['control']['from_log_times']['rate_hz'] == pytest.approx(50.0)
    assert any('TaskStatus' in note for note in m['notes'])
    assert any('header stamps' in note for note in m['notes'])


def test_reset_steps_are_only_steps_onto_the_measured_arm():
    """An over-limit step between two episodes counts as the reset's only if it moved the command onto the
    measured (teleported) arm; a driving jump there stays over the limit. No status, no resets."""
    from vla_ros.eval.metrics import Command, reset_step_indices

    def cmds(values):
        return [Command(T0 + 10 * MS * k, 0, np.array([v, 0.0])) for k, v in enumerate(values)]

    status = [{'episode': 0, 'log_ns': T0 + 5 * MS}, {'episode': 0, 'log_ns': T0 + 25 * MS},
              {'episode': 1, 'log_ns': T0 + 45 * MS}]
    arm_after_reset = [Command(T0 + 28 * MS, 0, np.array([0.8, 0.0]))]       # the sim teleported the arm to 0.8
    onto_arm = cmds([0.0, 0.01, 0.02, 0.8, 0.81, 0.82])                      # step 2 (0.02 -> 0.8) re-anchors
    assert reset_step_indices(onto_arm, status, 0.015, arm_after_reset) == [2]
    assert reset_step_indices(onto_arm, status, 0.015) == [2]                # no joint states: size decides
    away = cmds([0.0, 0.01, 0.02, -0.5, -0.49, -0.48])                       # the same boundary, a driving jump
    assert reset_step_indices(away, status, 0.015, arm_after_reset) == []
    assert reset_step_indices(onto_arm, [], 0.015, arm_after_reset) == []
    assert reset_step_indices(onto_arm, status[:2], 0.015, arm_after_reset) == []   # one episode: no boundary
    # the teleported arm's joint state logged just after the re-anchored command (different DDS streams)
    late = [Command(T0 + 28 * MS, 0, np.array([0.02, 0.0])), Command(T0 + 30 * MS + MS // 5, 0, np.array([0.8, 0.0]))]
    assert reset_step_indices(onto_arm, status, 0.015, late) == [2]
    much_later = [late[0], Command(T0 + 39 * MS, 0, np.array([0.8, 0.0]))]
    assert reset_step_indices(onto_arm, status, 0.015, much_later) == []


def test_mid_episode_reanchor_onto_the_arm_is_not_a_driving_step():
    """A step onto the measured arm in mid-episode (the filter re-anchoring on an obstructed arm) is counted
    apart; the same jump away from the arm stays over the limit; without joint states nothing is excused."""
    from vla_ros.eval.metrics import BagSeries, Command, safety_metrics

    def series(values, joint_states):
        s = BagSeries()
        s.joint_command = [Command(T0 + 10 * MS * k, 0, np.array([v, 0.0])) for k, v in enumerate(values)]
        s.joint_states = joint_states
        s.status = [{'episode': 0, 'log_ns': T0}]
        return s

    held = [Command(T0 + 25 * MS, 0, np.array([0.3, 0.0]))]        # the arm is held at 0.3
    onto = safety_metrics(series([0.5, 0.51, 0.52, 0.3, 0.3], held), 1.5, 100.0)
    assert (onto['reanchor_steps'], onto['steps_over_limit']) == (1, 0)
    assert onto['max_reanchor_step'] == pytest.approx(0.22) and onto['max_step'] == pytest.approx(0.01)
    away = safety_metrics(series([0.5, 0.51, 0.52, 0.8, 0.8], held), 1.5, 100.0)
    assert (away['reanchor_steps'], away['steps_over_limit']) == (0, 1)
    blind = safety_metrics(series([0.5, 0.51, 0.52, 0.3, 0.3], []), 1.5, 100.0)
    assert (blind['reanchor_steps'], blind['steps_over_limit']) == (0, 1)

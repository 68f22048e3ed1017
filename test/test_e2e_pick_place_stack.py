"""The pick-and-place stack end to end over real DDS: `bringup --task pick_place` runs every node with the
gripper as the 8th joint; the action node's per-tick commands carry 8 values (gripper inside its own
limits), the sim reports finger_joint1 in its JointState and the episode's outcome comes back.

This checks the plumbing, not the policy's success rate (see checkpoints/pick_place/README.md).
"""
import os

import numpy as np
import pytest

DOMAIN = '216'
os.environ['ROS_DOMAIN_ID'] = DOMAIN
pytest.importorskip('rclpy')
from node_process import bringup_listening, bringup_recording  # noqa: E402

from vla_ros.config.tasks import TASK_PRESETS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOINTS = TASK_PRESETS['pick_place']['action.joint_names']


def test_pick_place_stack_commands_the_gripper_over_dds():
    if not os.path.isfile(os.path.join(ROOT, 'checkpoints', 'pick_place', 'action_head.pt')):
        pytest.fail('checkpoints/pick_place is missing: the pick_place stack cannot start')
    returncode, out, commands, stamped, states = bringup_listening(
        ['--task', 'pick_place', '--episodes', '1', '--set', 'sim.seed=200001', '--set', 'sim.episode_timeout_s=6.0'],
        DOMAIN, 'pick_place_stack_test', ROOT)
    assert returncode == 0, out[-3000:]
    assert 'episode 0:' in out and '/1 episodes succeeded' in out, out[-3000:]
    assert len(commands) > 50, f'{len(commands)} commands seen\n{out[-2000:]}'
    values = np.array([c.data for c in commands])
    assert values.shape[1] == 8 and np.all(np.isfinite(values))
    gripper = values[:, 7]
    assert np.all((gripper >= 0.0) & (gripper <= 0.04))
    # The gripper's own speed limit (0.1 m/s, the arm joints get 1.5 rad/s) holds between stamped ticks.
    assert len(stamped) > 50 and list(stamped[-1].name) == JOINTS
    t = np.array([m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in stamped])
    g = np.array([m.position[7] for m in stamped])
    order = np.argsort(t)
    dt, dg = np.diff(t[order]), np.abs(np.diff(g[order]))
    ok = dt > 0
    assert np.all(dg[ok] <= 0.1 * np.maximum(dt[ok], 0.01) * 1.2 + 1e-6), (dg[ok].max(), dt[ok].min())
    assert states and list(states[-1].name) == JOINTS
    measured = np.array([s.position[7] for s in states])
    # MuJoCo joint limits are soft: a fast close onto nothing, or a fast open, may pass 0 / 0.04 by a few
    # millimetres (run 9's policy opened to 0.0467 with its commands inside [0, 0.04], asserted above)
    assert np.all((measured > -0.01) & (measured < 0.05)), (measured.min(), measured.max())


# Held-out seeds (never demos or DAgger) on which the shipped policy (run 11) put the named cube on the named pad
# in at most 4.5 s in both rows of the 100-episode stack run (full, pruning off:
# bench/results/eval_pick_place_run11/) and in all six rows of the trainer's loop
# (bench/results/pick_place_noros_rows_run11/): red cube -> purple pad, blue -> purple, green -> yellow. The policy
# succeeds on about 5 in 6 layouts through the stack, so these were chosen, not drawn: the test shows the stack
# keeps what the policy can do.
PICK_PLACE_SEEDS = (200139, 200129, 200133)


def test_pick_place_policy_succeeds_through_the_stack_on_fixed_held_out_seeds():
    """Each seed is one `vla_bringup --processes --task pick_place` over DDS (as the evaluation harness runs
    it); the sim's own check (cube resting on the named pad, fingers off) must report SUCCESS. The flow
    head's noise and DDS timing vary between runs, so 2 of the 3 are required. (CI once got 1 of 3: the
    episode clock started at the action node's first hold, seconds before perception had loaded on a busy
    CPU. It starts at the policy's first chunk now; with every node on one core these seeds and 8 others
    succeeded 11 of 11, against 8 of 11 before: bench/results/pick_place_one_core_clock_start.json.)"""
    from vla_ros.eval.harness import Job, parse_args, run_job

    args = parse_args(['--task', 'pick_place', '--episode-timeout-s', '15', '--episode-margin-s', '30',
                       '--startup-timeout-s', '180'])
    results = [run_job(Job('full', {}, seed, 1), 217, args) for seed in PICK_PLACE_SEEDS]
    for seed, r in zip(PICK_PLACE_SEEDS, results):
        assert r.returncode == 0 and [e['seed'] for e in r.episodes] == [seed], r.log_tail
    won = [r.episodes[0] for r in results if r.episodes[0]['success']]
    assert len(won) >= 2, [(r.episodes[0]['seed'], r.episodes[0]['success'], r.episodes[0]['elapsed_s'],
                            r.episodes[0].get('sim_realtime_factor')) for r in results]
    assert all(0.0 < e['elapsed_s'] < 15.0 for e in won)


def test_after_an_episode_reset_every_chunk_uses_a_plan_of_the_new_instruction():
    """Two episodes in one bringup (seeds 200100 and 200101 name different cubes and pads). Every ActionChunk
    requested after the reset is conditioned on a plan made for episode 1's instruction: the action node
    restarts at the reset, asks for a replan, and infers only from a plan of a frame captured after the
    restart. (Before, the first chunks of each episode used the previous episode's plan until the planner's
    next 0.5 s tick.)"""
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from vla_ros.nodes.common import LATCHED_QOS, SENSOR_QOS, reliable_qos, stamp_to_ns
    from vla_ros_msgs.msg import ActionChunk, Plan

    topics = {'planner/plan': (Plan, reliable_qos(100)), 'action/chunk': (ActionChunk, reliable_qos(100)),
              'instruction': (String, LATCHED_QOS), 'joint_states': (JointState, SENSOR_QOS)}
    returncode, out, got = bringup_recording(
        ['--processes', '--task', 'pick_place', '--episodes', '2', '--set', 'sim.seed=200100',
         '--set', 'sim.episode_timeout_s=4.0'], DOMAIN, 'pick_place_reset_test', ROOT, topics)
    assert returncode == 0 and 'episode 1:' in out, out[-3000:]
    texts = [m.data for _, m in got['instruction']]
    assert len(set(texts)) == 2, texts
    second = texts[-1]
    # the reset: the sim's joint state that jumps (the arm is put back home) nearest the second instruction
    states = [(t, stamp_to_ns(m.header.stamp), np.array(m.position)) for t, m in got['joint_states']]
    jumps = [(abs(t - got['instruction'][-1][0]), stamp) for (_, _, a), (t, stamp, b) in zip(states, states[1:])
             if np.abs(b - a).max() > 0.2]
    assert jumps, 'no reset seen in joint_states'
    reset_ns = min(jumps)[1]
    plan_instruction = {m.plan_id: m.instruction for _, m in got['planner/plan']}
    # a chunk's stamp is its request time (step 0); one requested in the few ms before the action node saw the
    # jump may still come from the old scene (margin 50 ms)
    after = [m for _, m in got['action/chunk'] if stamp_to_ns(m.header.stamp) > reset_ns + 50_000_000]
    assert len(after) >= 5, f'{len(after)} chunks after the reset'
    used = [plan_instruction.get(m.plan_id) for m in after]
    assert all(text == second for text in used), [(m.plan_id, text) for m, text in zip(after, used)][:10]
    before = [plan_instruction.get(m.plan_id) for _, m in got['action/chunk'] if stamp_to_ns(m.header.stamp) < reset_ns]
    assert before and before[-1] != second          # episode 0 ran on its own plan up to the reset

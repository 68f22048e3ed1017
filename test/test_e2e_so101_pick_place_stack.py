"""SO-101 pick-and-place through the whole stack over real DDS: `bringup --task so101_pick_place --processes`
(one process per node) with the policy trained for it. Commands and joint states carry the arm's five joints
plus its jaw under LeRobot's names, the jaw command stays inside its limits, and the shipped policy puts the
named cube on the named pad on fixed held-out seeds."""
import os

import numpy as np
import pytest

DOMAIN = '220'
os.environ['ROS_DOMAIN_ID'] = DOMAIN
pytest.importorskip('rclpy')
from node_process import bringup_listening  # noqa: E402

from vla_ros.config.tasks import TASK_PRESETS  # noqa: E402
from vla_ros.eval.harness import parse_episode_lines  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESET = TASK_PRESETS['so101_pick_place']
JOINTS = PRESET['action.joint_names']
JAW_LOW, JAW_HIGH = PRESET['action.safety.joint_lower'][-1], PRESET['action.safety.joint_upper'][-1]

# Held-out seeds (never demos, DAgger or the trainer's evaluation) on which the shipped policy put the named
# cube on the named pad through the stack in both 40-episode runs of seeds 200100..200139
# (bench/results/eval_so101_pick_place/, ..._b/), in under 10 s each time. The policy succeeds on 55-58% of
# layouts through the stack and a seed's outcome varies between runs (13 of the 40 seeds succeeded in both runs,
# 8 in neither), so these were chosen, not drawn: the test shows the stack keeps what the policy can do.
SEEDS = (200110, 200125, 200130, 200129)


def test_so101_pick_place_policy_succeeds_through_the_stack_on_fixed_held_out_seeds():
    """One bringup per seed; the sim's own check (cube resting on the named pad, jaw off it) must report
    SUCCESS on at least 1 of the 4. The flow head's noise and DDS timing vary between runs, and this policy
    is weaker than the Panda's (whose test asks 2 of 3): a re-run of these four seeds while writing this test
    gave 2 of 4 (200110 and 200130)."""
    won, seen = [], []
    for seed in SEEDS:
        returncode, out, commands, stamped, states = bringup_listening(
            ['--task', 'so101_pick_place', '--processes', '--episodes', '1', '--set', f'sim.seed={seed}',
             '--set', 'sim.episode_timeout_s=25.0'], DOMAIN, 'so101_pick_place_stack_test', ROOT)
        assert returncode == 0, out[-3000:]
        assert len(commands) > 50, f'{len(commands)} commands seen\n{out[-2000:]}'
        values = np.array([c.data for c in commands])
        assert values.shape[1] == 6 and np.all(np.isfinite(values))
        jaw = values[:, 5]
        assert np.all((jaw >= JAW_LOW) & (jaw <= JAW_HIGH)), (jaw.min(), jaw.max())
        assert np.ptp(jaw) > 0.2          # the policy opened and closed the jaw
        assert stamped and list(stamped[-1].name) == JOINTS
        assert states and list(states[-1].name) == JOINTS
        episodes = parse_episode_lines(out, seed)
        assert [e['seed'] for e in episodes] == [seed], out[-3000:]
        seen.append((seed, episodes[0]['success'], episodes[0]['elapsed_s']))
        if episodes[0]['success']:
            won.append(episodes[0]['elapsed_s'])
    assert len(won) >= 1, seen
    assert all(0.0 < t < 25.0 for t in won), seen

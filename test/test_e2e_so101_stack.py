"""The SO-101 through the whole stack over real DDS: `bringup --task so101_touch` (one process per node)
runs the sim with the SO-101 and the policy trained for it; commands and joint states carry the arm's five
joints under LeRobot's names, and the shipped policy touches the named cube on
held-out seeds."""
import os
import re

import numpy as np
import pytest

DOMAIN = '218'
os.environ['ROS_DOMAIN_ID'] = DOMAIN
pytest.importorskip('rclpy')
from node_process import bringup_listening  # noqa: E402

from vla_ros.config.tasks import TASK_PRESETS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOINTS = TASK_PRESETS['so101_touch']['action.joint_names']
EPISODES = 3


def test_so101_touch_stack_over_dds():
    returncode, out, commands, stamped, states = bringup_listening(
        ['--task', 'so101_touch', '--processes', '--episodes', str(EPISODES), '--set', 'sim.seed=200000',
         '--set', 'sim.episode_timeout_s=10.0'], DOMAIN, 'so101_stack_test', ROOT)
    assert returncode == 0, out[-3000:]
    assert len(commands) > 50, f'{len(commands)} commands seen\n{out[-2000:]}'
    values = np.array([c.data for c in commands])
    assert values.shape[1] == 5 and np.all(np.isfinite(values))
    assert np.ptp(values, axis=0).max() > 0.2          # the policy drove the arm (to three cubes)
    assert stamped and list(stamped[-1].name) == JOINTS
    assert states and list(states[-1].name) == JOINTS
    won = re.search(r'(\d+)/(\d+) episodes succeeded', out)
    assert won and int(won.group(2)) == EPISODES, out[-3000:]
    # 100/100 in the trainer's loop; DDS timing on a loaded machine may cost one
    assert int(won.group(1)) >= EPISODES - 1, out[-3000:]

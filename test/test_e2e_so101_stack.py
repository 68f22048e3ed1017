"""The SO-101 through the whole stack over real DDS: `bringup --task so101_touch` (one process per node)
runs the sim with the SO-101 and the policy trained for it; commands and joint states carry the arm's five
joints under LeRobot's names, inside its MJCF's limits, and the shipped policy touches the named cube on
held-out seeds."""
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

DOMAIN = '218'
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from vla_ros.config.tasks import SO101_JOINT_LOWER, SO101_JOINT_UPPER, TASK_PRESETS  # noqa: E402
from vla_ros.nodes.common import SENSOR_QOS, reliable_qos  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOINTS = TASK_PRESETS['so101_touch']['action.joint_names']
EPISODES = 3


def test_so101_touch_stack_over_dds():
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN, PYTHONUNBUFFERED='1')
    cmd = [sys.executable, '-m', 'vla_ros.bringup', '--task', 'so101_touch', '--processes',
           '--episodes', str(EPISODES), '--set', 'sim.seed=200000', '--set', 'sim.episode_timeout_s=10.0']
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    rclpy.init()
    node = Node('so101_stack_test', namespace='/vla')
    commands, stamped, states = [], [], []
    node.create_subscription(Float64MultiArray, 'arm/joint_command', commands.append, reliable_qos())
    node.create_subscription(JointState, 'action/command', stamped.append, SENSOR_QOS)
    node.create_subscription(JointState, 'joint_states', states.append, SENSOR_QOS)
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
        out = proc.communicate(timeout=30)[0]
    finally:
        node.destroy_node()
        rclpy.shutdown()
    assert proc.returncode == 0, out[-3000:]
    assert len(commands) > 50, f'{len(commands)} commands seen\n{out[-2000:]}'
    values = np.array([c.data for c in commands])
    assert values.shape[1] == 5 and np.all(np.isfinite(values))
    assert np.all(values >= np.asarray(SO101_JOINT_LOWER) - 1e-6) and np.all(values <= np.asarray(SO101_JOINT_UPPER) + 1e-6)
    assert stamped and list(stamped[-1].name) == JOINTS
    assert states and list(states[-1].name) == JOINTS
    won = re.search(r'(\d+)/(\d+) episodes succeeded', out)
    assert won and int(won.group(2)) == EPISODES, out[-3000:]
    # 100/100 in the trainer's loop; DDS timing on a loaded machine may cost one
    assert int(won.group(1)) >= EPISODES - 1, out[-3000:]

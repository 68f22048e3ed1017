"""The whole stack in closed loop: bringup in its own process group, commands observed over DDS and in the bag."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

DOMAIN = '213'
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from rclpy.node import Node  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402

from vla_ros.config import ActionConfig  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_SECONDS = 45


@pytest.fixture(scope='module')
def closed_loop_run(tmp_path_factory):
    """Run the stack (one process per node, as `ros2 launch` would) while listening to the arm command topic."""
    out = tmp_path_factory.mktemp('e2e')
    bag, report = out / 'bag', out / 'report'
    env = dict(os.environ, ROS_DOMAIN_ID=DOMAIN)
    cmd = [sys.executable, '-m', 'vla_ros.bringup', '--processes', '--duration', str(RUN_SECONDS),
           '--record', str(bag), '--report', str(report),
           '--set', 'sim.episode_timeout_s=15.0']
    log = open(out / 'bringup.log', 'w')
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    commands = []
    rclpy.init()
    node = Node('e2e_listener')
    node.create_subscription(Float64MultiArray, '/vla/arm/joint_command',
                             lambda m: commands.append((time.monotonic(), np.asarray(m.data))), 100)
    try:
        deadline = time.monotonic() + RUN_SECONDS + 240
        while proc.poll() is None and time.monotonic() < deadline:
            rclpy.spin_once(node, timeout_sec=0.05)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=30)
    finally:
        node.destroy_node()
        rclpy.shutdown()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    return {'returncode': proc.returncode, 'commands': commands, 'bag': bag, 'report': report,
            'log': (out / 'bringup.log').read_text()}


def test_bringup_exits_cleanly(closed_loop_run):
    assert closed_loop_run['returncode'] == 0, closed_loop_run['log'][-4000:]


def test_arm_receives_safe_commands_over_dds(closed_loop_run):
    commands = closed_loop_run['commands']
    assert len(commands) > 100, f'only {len(commands)} commands reached the arm topic'
    cfg = ActionConfig()
    values = np.stack([c for _, c in commands])
    assert values.shape[1] == len(cfg.joint_names)
    assert np.all(np.isfinite(values))
    lower, upper = np.asarray(cfg.safety.joint_lower), np.asarray(cfg.safety.joint_upper)
    assert np.all(values >= lower - 1e-9) and np.all(values <= upper + 1e-9)
    # The policy moves the arm: commands are not a constant hold.
    assert np.ptp(values, axis=0).max() > 1e-3


def test_bag_and_report_cover_every_stage(closed_loop_run):
    from vla_ros.eval.bag_io import read_bag

    counts = {}
    for topic, _msgtype, _t, _msg in read_bag(str(closed_loop_run['bag'])):
        counts[topic] = counts.get(topic, 0) + 1
    for topic in ('/vla/perception/tokens', '/vla/planner/plan', '/vla/action/chunk', '/vla/arm/joint_command',
                  '/vla/joint_states', '/vla/task/status'):
        assert counts.get(topic, 0) > 0, f'{topic} missing from the bag: {counts}'
    report = closed_loop_run['report']
    assert (report / 'report.html').is_file()
    metrics = json.loads((report / 'report.json').read_text())
    assert metrics, 'empty metrics'

"""The gripper as the 8th commanded joint over real DDS: the sim arm node (pick_place task) publishes
finger_joint1 in its JointState and executes it from Float64MultiArray and JointTrajectory commands."""
import os
import time
import zlib

import numpy as np
import pytest
from node_process import node_process

DOMAIN = str(1 + zlib.crc32(b'test_gripper_dds') % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from rclpy.node import Node  # noqa: E402
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray  # noqa: E402
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint  # noqa: E402

from vla_ros.config.tasks import TASK_PRESETS  # noqa: E402
from vla_ros.nodes.common import SENSOR_QOS, reliable_qos  # noqa: E402

NS = '/grippertest'
JOINTS = TASK_PRESETS['pick_place']['sim.joint_names']


def test_gripper_joint_commanded_and_reported_over_dds(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(f"""
/**:
  ros__parameters:
    sim:
      task: pick_place
      joint_names: [{', '.join(JOINTS)}]
      image_width: 64
      image_height: 64
      camera_rate_hz: 5.0
      joint_state_rate_hz: 50.0
      episode_timeout_s: 300.0
      seed: 3
""")
    rclpy.init()
    try:
        with node_process('vla_ros.nodes.sim_arm_node', NS, params, DOMAIN) as proc:
            node = Node('gripper_dds_test', namespace=NS)
            states = []
            node.create_subscription(JointState, 'joint_states', states.append, SENSOR_QOS)
            cmd = node.create_publisher(Float64MultiArray, 'arm/joint_command', reliable_qos())
            traj = node.create_publisher(JointTrajectory, 'arm/joint_trajectory', reliable_qos())

            def spin_until(pred, timeout):
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    rclpy.spin_once(node, timeout_sec=0.05)
                    if pred():
                        return True
                return False

            assert spin_until(lambda: len(states) > 3, 60), 'no joint states'
            # Each command is published once: wait until the sim's subscriptions have matched both publishers
            # (its joint states reaching us says nothing about discovery in the other direction).
            assert spin_until(lambda: cmd.get_subscription_count() > 0 and traj.get_subscription_count() > 0, 30), \
                'the sim arm never subscribed to the command topics'
            assert list(states[-1].name) == JOINTS and len(states[-1].position) == 8
            q = np.asarray(states[-1].position)
            assert abs(q[7] - 0.04) < 2e-3                      # the episode starts with the gripper open
            closed = q.copy()
            closed[7] = 0.0                                       # close: the fingers meet (nothing between them)
            cmd.publish(Float64MultiArray(data=closed.tolist()))
            assert spin_until(lambda: states[-1].position[7] < 0.003, 20), \
                f'gripper did not close: {states[-1].position[7]}'
            np.testing.assert_allclose(np.asarray(states[-1].position)[:7], q[:7], atol=0.02)   # arm stayed
            # The trajectory interface carries it too (joints by name, any order).
            half = closed.copy()
            half[7] = 0.02
            point = JointTrajectoryPoint(positions=list(reversed(half.tolist())))
            traj.publish(JointTrajectory(joint_names=list(reversed(JOINTS)), points=[point]))
            assert spin_until(lambda: abs(states[-1].position[7] - 0.02) < 0.002, 20), \
                f'gripper did not follow the trajectory: {states[-1].position[7]}'
            node.destroy_node()
            assert proc.poll() is None, 'sim node died'
    finally:
        rclpy.shutdown()

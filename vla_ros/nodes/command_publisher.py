"""Message side of the control loop's CommandSink: turns the loop's numpy outputs into ROS messages.

Used by the action node (control tick in a node thread) and by the control process
(vla_ros.nodes.action_control). Messages sent every tick are allocated once and only refilled.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import Empty, Float64MultiArray, MultiArrayDimension
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.action.controller import ChunkResult
from vla_ros.config.action import ActionConfig
from vla_ros.nodes.common import SENSOR_QOS, ns_to_stamp, reliable_qos
from vla_ros_msgs.msg import ActionChunk

# CommandSink output -> TopicsConfig field naming its topic.
OUTPUT_TOPICS = ('command_stamped', 'joint_command', 'joint_trajectory', 'action_chunk', 'replan')


def resolved_output_topics(node: Node, topics) -> Dict[str, str]:
    """Fully qualified names (namespace and remaps applied) so another process publishes the same topics."""
    return {field: node.resolve_topic_name(getattr(topics, field)) for field in OUTPUT_TOPICS}


class CommandPublisher:
    def __init__(self, node: Node, cfg: ActionConfig, topic_names: Dict[str, str]):
        self.node, self.cfg = node, cfg
        qos = reliable_qos()
        # The stamped mirror is for recording and timing only: best effort, so a slow recorder can
        # never make the tick wait for its acknowledgements.
        self._stamped_pub = node.create_publisher(JointState, topic_names['command_stamped'], SENSOR_QOS)
        self._chunk_pub = node.create_publisher(ActionChunk, topic_names['action_chunk'], qos)
        self._replan_pub = node.create_publisher(Empty, topic_names['replan'], qos)
        if cfg.command_interface == 'forward':
            cmd_qos = qos if cfg.realtime.command_qos == 'reliable' else SENSOR_QOS
            self._cmd_pub = node.create_publisher(Float64MultiArray, topic_names['joint_command'], cmd_qos)
        else:
            self._traj_pub = node.create_publisher(JointTrajectory, topic_names['joint_trajectory'], qos)
        n = len(cfg.joint_names)
        self._cmd_msg = Float64MultiArray()
        self._cmd_msg.layout.dim = [MultiArrayDimension(label='joints', size=n, stride=n)]
        self._stamped_msg = JointState(name=list(cfg.joint_names))
        self._stamped_msg.header.frame_id = 'base'

    def ros_now_ns(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def stamped(self, command: np.ndarray, stamp_ns: int) -> None:
        msg = self._stamped_msg
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.position = command
        self._stamped_pub.publish(msg)

    def forward(self, command: np.ndarray) -> None:
        self._cmd_msg.data = command
        self._cmd_pub.publish(self._cmd_msg)

    def trajectory(self, start_ns: int, times: np.ndarray, positions: np.ndarray, velocities: np.ndarray) -> None:
        msg = JointTrajectory()
        msg.header.stamp = ns_to_stamp(start_ns)
        msg.joint_names = list(self.cfg.joint_names)
        for t, p, v in zip(times, positions, velocities):
            ns = int(round(t * 1e9))
            msg.points.append(JointTrajectoryPoint(positions=p, velocities=v, time_from_start=Duration(
                sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)))
        self._traj_pub.publish(msg)

    def chunk(self, chunk: ChunkResult, stamp_ns: int) -> None:
        msg = ActionChunk()
        msg.header.stamp = ns_to_stamp(max(0, stamp_ns))   # when step 0 applies
        msg.chunk_id = int(chunk.chunk_id)
        msg.horizon, msg.action_dim = int(chunk.actions.shape[0]), int(chunk.actions.shape[1])
        msg.dt = float(chunk.dt)
        msg.actions = chunk.actions.astype(np.float32).ravel()
        msg.joint_names = list(self.cfg.joint_names)
        msg.plan_id, msg.perception_sequence = int(chunk.plan_id), int(chunk.frame_id)
        msg.inference_time = float(chunk.inference_ms) / 1000.0  # [s]
        msg.smoothing = chunk.smoothing
        self._chunk_pub.publish(msg)

    def replan(self) -> None:
        self._replan_pub.publish(Empty())

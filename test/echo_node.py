"""Test helper process: republishes every vla_ros_msgs message it receives on '<topic>_echo'."""
import sys

import rclpy
from rclpy.node import Node

from vla_ros_msgs.msg import ActionChunk, LatentTokens, Plan, TaskStatus

TYPES = {'tokens': LatentTokens, 'plan': Plan, 'chunk': ActionChunk, 'status': TaskStatus}


class Echo(Node):
    def __init__(self):
        super().__init__('echo')
        self._pubs = {}
        for topic, typ in TYPES.items():
            pub = self.create_publisher(typ, topic + '_echo', 10)
            self.create_subscription(typ, topic, lambda msg, p=pub: p.publish(msg), 10)
        self.create_publisher(TaskStatus, 'echo_ready', 10).publish(TaskStatus(instruction='ready'))


def main():
    rclpy.init(args=sys.argv)
    node = Echo()
    try:
        rclpy.spin(node)
    except KeyboardInterrupt:
        pass
    finally:
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == '__main__':
    main()

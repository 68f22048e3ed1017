"""The planner plans the first frame captured after an instruction or a replan request at once, not at its
next timer tick, and bypasses its cache: after an episode reset the action node waits for such a plan
(ControlLoop.restart), so the planner's period must not add to the wait. Separate process, real DDS."""
import os
import time
import zlib

import numpy as np
import pytest
from node_process import nodes_under_test

DOMAIN = str(1 + zlib.crc32(b'test_planning_replan_dds') % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from std_msgs.msg import Empty, String  # noqa: E402

from vla_ros.nodes.common import LATCHED_QOS, reliable_qos, stamp_to_ns, tokens_to_msg  # noqa: E402
from vla_ros_msgs.msg import LatentTokens, Plan  # noqa: E402

NS = '/replantest'
PERIOD_S = 60.0          # the planner's own timer: its first tick comes a minute after start
ANSWER_WITHIN_S = 30.0   # generous for a loaded CI machine (a fresh-clone CI took 7 s for the replan)
PARAMS = f"""
/**:
  ros__parameters:
    planner:
      rate_hz: {1.0 / PERIOD_S}
      cache_similarity: 0.5
      cache_timeout_s: 1000.0
"""
SCENE = np.random.default_rng(3).standard_normal((20, 16)).astype(np.float32) + 0.5


def test_instruction_and_replan_request_are_planned_on_the_next_frame(tmp_path):
    params = tmp_path / 'params.yaml'
    params.write_text(PARAMS)
    with nodes_under_test(['vla_ros.nodes.planner_node'], NS, params, DOMAIN, 'replan_dds_test') as (node, _):
        plans = []
        node.create_subscription(Plan, 'planner/plan', plans.append, reliable_qos(100))
        tok_pub = node.create_publisher(LatentTokens, 'perception/tokens', reliable_qos())
        instr_pub = node.create_publisher(String, 'instruction', LATCHED_QOS)
        replan_pub = node.create_publisher(Empty, 'planner/replan', reliable_qos())
        frame = [0]

        def spin_frames(until, seconds):
            end, next_pub = time.monotonic() + seconds, 0.0
            while time.monotonic() < end:
                if time.monotonic() >= next_pub:    # 15 Hz camera
                    frame[0] += 1
                    tok_pub.publish(tokens_to_msg(SCENE, stamp=node.get_clock().now().to_msg(), frame_id='cam',
                                                  source='test', frame_counter=frame[0]))
                    next_pub = time.monotonic() + 1 / 15
                rclpy.spin_once(node, timeout_sec=0.01)
                if until():
                    return True
            return False

        # let discovery match the subscriptions (the planner's timer does not tick for a minute)
        assert spin_frames(lambda: False, 3.0) is False
        sent_ns = node.get_clock().now().nanoseconds
        instr_pub.publish(String(data='put the red cube on the blue pad'))
        assert spin_frames(lambda: plans, ANSWER_WITHIN_S), 'no plan for the instruction'
        first = plans[0]
        assert first.instruction == 'put the red cube on the blue pad' and not first.cache_hit
        assert stamp_to_ns(first.header.stamp) >= sent_ns  # planned on a frame captured after the instruction

        # the same static scene and instruction would hit the cache; a replan request gets a fresh plan of a
        # frame captured after the request, at once
        n, sent_ns = len(plans), node.get_clock().now().nanoseconds
        replan_pub.publish(Empty())
        assert spin_frames(lambda: len(plans) > n, ANSWER_WITHIN_S), 'no plan after the replan request'
        fresh = plans[n]
        assert not fresh.cache_hit and fresh.plan_id == first.plan_id + 1
        assert stamp_to_ns(fresh.header.stamp) >= sent_ns

        # the same instruction sent again (the next episode may repeat it) is a new task too
        n, sent_ns = len(plans), node.get_clock().now().nanoseconds
        instr_pub.publish(String(data='put the red cube on the blue pad'))
        assert spin_frames(lambda: len(plans) > n, ANSWER_WITHIN_S), 'no plan after the repeated instruction'
        assert not plans[n].cache_hit and stamp_to_ns(plans[n].header.stamp) >= sent_ns

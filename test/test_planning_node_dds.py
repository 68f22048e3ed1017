"""Planner node in a separate process over real DDS: plans with cache hits, replan, instruction change,
bad input survival, and a runtime planner switch through the SetParameters service."""
import os
import time
import zlib

import numpy as np
import pytest
from node_process import nodes_under_test, watch_diagnostics

DOMAIN = str(1 + zlib.crc32(b'test_planning_node_dds') % 200)
os.environ['ROS_DOMAIN_ID'] = DOMAIN
rclpy = pytest.importorskip('rclpy')
from rclpy.parameter import Parameter  # noqa: E402
from rclpy.parameter_client import AsyncParameterClient  # noqa: E402
from std_msgs.msg import Empty, String  # noqa: E402

from vla_ros.nodes.common import LATCHED_QOS, ns_to_stamp, reliable_qos, stamp_to_ns, tokens_to_msg  # noqa: E402
from vla_ros_msgs.msg import LatentTokens, Plan  # noqa: E402

NS = '/plantest'
PARAMS = """
/**:
  ros__parameters:
    planner:
      rate_hz: 20.0
      cache_similarity: 0.9
      cache_timeout_s: 100.0
      max_new_tokens: 4
      model_path: ''   # no VLM configured: switching to planner.type=vlm alone must be refused
"""
RNG = np.random.default_rng(7)
BASE_SCENE = RNG.standard_normal((20, 16)).astype(np.float32) + 0.5


@pytest.fixture(scope='module')
def harness(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('planner')
    params = tmp / 'params.yaml'
    params.write_text(PARAMS)
    with nodes_under_test(['vla_ros.nodes.planner_node'], NS, params, DOMAIN, 'planner_dds_test') as (node, _):
        yield Harness(node, tmp)


class Harness:
    def __init__(self, node, tmp):
        self.node, self.tmp = node, tmp
        self.plans, self.diags, self.sent_stamps = [], [], set()
        node.create_subscription(Plan, 'planner/plan', self.plans.append, reliable_qos(100))
        watch_diagnostics(node, f'{NS}/planner', self.diags.append)
        self.tok_pub = node.create_publisher(LatentTokens, 'perception/tokens', reliable_qos())
        self.instr_pub = node.create_publisher(String, 'instruction', LATCHED_QOS)
        self.replan_pub = node.create_publisher(Empty, 'planner/replan', reliable_qos())
        self.params = AsyncParameterClient(node, f'{NS}/planner')
        self.scene = BASE_SCENE
        self.noise = 0.01
        self.frame = 0


    def publish_tokens(self, tokens=None):
        self.frame += 1
        stamp = self.node.get_clock().now().to_msg()
        if tokens is None:
            tokens = self.scene + self.noise * RNG.standard_normal(self.scene.shape).astype(np.float32)
        msg = tokens_to_msg(tokens, stamp=stamp, frame_id='cam', source='test', frame_counter=self.frame,
                            kept_indices=np.arange(tokens.shape[0]), grid_hw=(5, 8), keep_ratio=0.5)
        self.sent_stamps.add(stamp_to_ns(stamp))
        self.tok_pub.publish(msg)

    def run(self, until, seconds=20.0):
        end = time.monotonic() + seconds
        next_pub = 0.0
        while time.monotonic() < end:
            if time.monotonic() >= next_pub:
                self.publish_tokens()
                next_pub = time.monotonic() + 0.03
            rclpy.spin_once(self.node, timeout_sec=0.01)
            if until():
                return True
        return False

    def call(self, future, seconds=15.0):
        end = time.monotonic() + seconds
        while not future.done() and time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.05)
        assert future.done(), 'parameter service did not answer'
        return future.result()


def test_plans_cache_replan_instruction_and_runtime_switch(harness):
    h = harness
    h.instr_pub.publish(String(data='reach the blue block'))
    assert h.run(lambda: len([p for p in h.plans if p.instruction == 'reach the blue block']) >= 6), \
        'no plans received'
    plans = [p for p in h.plans if p.instruction == 'reach the blue block']
    first = plans[0]
    assert not first.cache_hit and first.planner_type == 'lightweight'
    assert first.subtask == 'reach the blue cube'
    assert all(p.cache_hit for p in plans[1:])                       # static scene + same instruction
    assert {p.plan_id for p in plans} == {first.plan_id}             # plan_id only moves on new plans
    assert plans[-1].cache_hit_rate > 0.5
    assert first.latency > 0 and all(p.latency >= 0 for p in plans)
    for p in plans:
        assert stamp_to_ns(p.header.stamp) in h.sent_stamps          # stamp = perception frame stamp
        assert tuple(p.plan_tokens.shape) == (8, 64) and len(p.plan_tokens.data) == 8 * 64
        assert p.plan_tokens.plan_id == p.plan_id and p.plan_tokens.source == 'planner/lightweight'
    np.testing.assert_allclose(np.asarray(plans[1].plan_tokens.data), np.asarray(first.plan_tokens.data))

    # Bad tokens are dropped without killing the node.
    bad = tokens_to_msg(np.ones((3, 16), np.float32), stamp=h.node.get_clock().now().to_msg(), frame_id='cam',
                        source='test')
    bad.data = bad.data[:-1]
    dropped = lambda: any(int(d.get('drop_bad_perception_tokens', 0)) >= 1 for d in h.diags)  # noqa: E731
    deadline = time.monotonic() + 20.0
    while not dropped() and time.monotonic() < deadline:
        h.tok_pub.publish(bad)      # a newer frame may replace it in the node's queue before it is taken: resend
        end = time.monotonic() + 1.0
        while time.monotonic() < end and not dropped():     # no good frames meanwhile
            rclpy.spin_once(h.node, timeout_sec=0.01)
    assert dropped(), {k: v for k, v in (h.diags[-1] if h.diags else {}).items() if 'drop' in k}

    # Replan request: next plan is freshly generated.
    n = len(h.plans)
    h.replan_pub.publish(Empty())
    assert h.run(lambda: any(not p.cache_hit for p in h.plans[n:]))
    fresh = next(p for p in h.plans[n:] if not p.cache_hit)
    assert fresh.plan_id == first.plan_id + 1

    # Scene change: new plan with different scene tokens.
    n = len(h.plans)
    h.scene = RNG.standard_normal(BASE_SCENE.shape).astype(np.float32)
    assert h.run(lambda: any(not p.cache_hit for p in h.plans[n:]))
    changed = next(p for p in h.plans[n:] if not p.cache_hit)
    assert changed.plan_id == fresh.plan_id + 1
    assert not np.allclose(np.asarray(changed.plan_tokens.data), np.asarray(fresh.plan_tokens.data))

    # Instruction change.
    n = len(h.plans)
    h.instr_pub.publish(String(data='touch the red cube'))
    assert h.run(lambda: any(p.instruction == 'touch the red cube' for p in h.plans[n:]))
    red = next(p for p in h.plans[n:] if p.instruction == 'touch the red cube')
    assert not red.cache_hit and red.subtask == 'touch the red cube'

    assert any(float(d.get('cache_hit_rate', 0)) > 0 for d in h.diags)

    # Runtime switch: a path without a checkpoint is refused, the lightweight planner keeps serving.
    assert h.params.wait_for_services(timeout_sec=10)
    res = h.call(h.params.set_parameters_atomically([Parameter('planner.type', value='vlm'),
                                                     Parameter('planner.model_path', value=str(h.tmp / 'missing'))]))
    assert not res.result.successful and 'planner.model_path=' in res.result.reason \
        and 'does not exist' in res.result.reason
    # Audit finding 9: SetParameters (what `ros2 param set/load` send) is all-or-nothing as well: the
    # bad path is not left behind when the type change in the same request is refused.
    path_before = h.call(h.params.get_parameters(['planner.model_path'])).values[0].string_value
    res = h.call(h.params.set_parameters([Parameter('planner.model_path', value=str(h.tmp / 'missing')),
                                          Parameter('planner.type', value='vlm')]))
    assert [r.successful for r in res.results] == [False, False]
    assert h.call(h.params.get_parameters(['planner.model_path'])).values[0].string_value == path_before
    res = h.call(h.params.set_parameters([Parameter('planner.type', value='vlm')]))  # path still empty
    assert not res.results[0].successful
    n = len(h.plans)
    assert h.run(lambda: len(h.plans) > n + 2)
    assert all(p.planner_type == 'lightweight' for p in h.plans[n:])

    # A directory that looks like a checkpoint but is not: accepted, the background load fails, the
    # parameters are reverted and the lightweight planner never stopped.
    broken = h.tmp / 'broken'
    broken.mkdir()
    (broken / 'config.json').write_text('{}')
    res = h.call(h.params.set_parameters_atomically([Parameter('planner.type', value='vlm'),
                                                     Parameter('planner.model_path', value=str(broken))]))
    assert res.result.successful

    def reverted():
        return h.call(h.params.get_parameters(['planner.type'])).values[0].string_value == 'lightweight'
    assert h.run(lambda: reverted() and any('load_error' in d for d in h.diags[-2:]), seconds=150)
    assert all(p.planner_type == 'lightweight' for p in h.plans)

    # A real (tiny) VLM checkpoint, set one parameter at a time (as `ros2 param set` does): path, then type.
    from vla_ros.models.vlm import make_demo_vlm
    path = make_demo_vlm(str(h.tmp / 'vlm'), family='idefics3')
    res = h.call(h.params.set_parameters([Parameter('planner.model_path', value=path),
                                          Parameter('planner.type', value='vlm')]))
    assert all(r.successful for r in res.results)
    assert h.run(lambda: any(p.planner_type == 'vlm' for p in h.plans), seconds=60)
    vlm_plans = [p for p in h.plans if p.planner_type == 'vlm']
    assert not vlm_plans[0].cache_hit and vlm_plans[0].plan_tokens.source == 'planner/vlm'
    assert tuple(vlm_plans[0].plan_tokens.shape) == (8, 64)
    assert vlm_plans[0].plan_id > red.plan_id
    got = h.call(h.params.get_parameters(['planner.type']))
    assert got.values[0].string_value == 'vlm'
    assert h.run(lambda: any('prefill=transformers' in str(d.get('planner', '')) for d in h.diags), seconds=20)

    # planner.fast_prefill=on (cpu: SlotKVPrefill eagerly, the CUDA code path without graphs): a reload,
    # and its plan on the same tokens and instruction equals the transformers planner's.
    def fresh_plan():
        h.run(lambda: False, seconds=0.5)            # frames from before the noise change are consumed
        n = len(h.plans)
        h.replan_pub.publish(Empty())
        assert h.run(lambda: any(not p.cache_hit and p.planner_type == 'vlm' for p in h.plans[n:]), seconds=60)
        return next(p for p in h.plans[n:] if not p.cache_hit)

    h.noise = 0.0
    hf_plan = fresh_plan()
    res = h.call(h.params.set_parameters([Parameter('planner.fast_prefill', value='on')]))
    assert all(r.successful for r in res.results)
    assert h.run(lambda: any('prefill=slot_kv' in str(d.get('planner', '')) for d in h.diags), seconds=60)
    fast_plan = fresh_plan()
    assert fast_plan.plan_id > hf_plan.plan_id and fast_plan.subtask == hf_plan.subtask
    np.testing.assert_allclose(np.asarray(fast_plan.plan_tokens.data), np.asarray(hf_plan.plan_tokens.data),
                               atol=2e-4, rtol=2e-4)


def test_hostile_instruction_tokens_and_stamps_are_counted_drops(harness):
    """Audit findings 1 and 5 on the planner: future stamps, huge values, a 100k-character instruction."""
    h = harness
    n = len(h.plans)
    assert h.run(lambda: len(h.plans) > n, seconds=60)
    current = h.plans[-1].instruction
    before = {k: int((h.diags[-1] if h.diags else {}).get(k, 0))
              for k in ('drop_instruction_too_long', 'drop_future_stamp', 'drop_bad_perception_tokens')}
    h.instr_pub.publish(String(data='x' * 100_000))
    future = tokens_to_msg(BASE_SCENE, stamp=ns_to_stamp(h.node.get_clock().now().nanoseconds + 3600 * 10**9),
                           frame_id='cam', source='test')
    huge = tokens_to_msg(BASE_SCENE * 1e30, stamp=h.node.get_clock().now().to_msg(), frame_id='cam', source='test')
    h.tok_pub.publish(future)
    h.tok_pub.publish(huge)

    def counted():
        # tokens are taken newest-only (sensor QoS): while a busy VLM planner lags, one message can be
        # replaced before it is read, so keep offering the hostile ones until they are counted
        h.tok_pub.publish(future)
        h.tok_pub.publish(huge)
        d = h.diags[-1] if h.diags else {}
        return all(int(d.get(k, 0)) > before[k] for k in before)
    assert h.run(counted, seconds=30), h.diags[-1:]
    n = len(h.plans)
    assert h.run(lambda: len(h.plans) > n + 1, seconds=60)      # the future stamp did not wedge the gate
    assert all(p.instruction == current for p in h.plans[n:])

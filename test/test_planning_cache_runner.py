"""Plan cache (hit / miss reasons / stats) and AsyncPlanner (never blocks, newest request wins, swap)."""
import threading

import numpy as np
import pytest

from vla_ros.config.planning import PlannerConfig
from vla_ros.planning.base import PlanOutput, Planner, PlanRequest
from vla_ros.planning.plan_cache import PlanCache, cosine_similarity, scene_embedding
from vla_ros.planning.runner import AsyncPlanner

RNG = np.random.default_rng(0)
SCENE = RNG.standard_normal((16, 8)).astype(np.float32) + 1.0
PLAN = PlanOutput('reach', np.ones((2, 4), np.float32))


def _emb(tokens):
    return scene_embedding(tokens)


def test_cache_hit_and_each_miss_reason():
    cache = PlanCache(similarity_threshold=0.95, timeout_s=5.0)
    assert cache.lookup('touch red', _emb(SCENE), now_s=0.0) is None
    cache.store('touch red', _emb(SCENE), PLAN, now_s=0.0)
    noisy = SCENE + 0.01 * RNG.standard_normal(SCENE.shape).astype(np.float32)
    assert cache.lookup('touch red', _emb(noisy), now_s=1.0) is PLAN                         # hit
    assert cache.lookup('touch blue', _emb(SCENE), now_s=1.0) is None                        # instruction
    changed = RNG.standard_normal(SCENE.shape).astype(np.float32)
    assert cosine_similarity(_emb(changed), _emb(SCENE)) < 0.95
    assert cache.lookup('touch red', _emb(changed), now_s=1.0) is None                       # scene
    assert cache.lookup('touch red', _emb(SCENE), now_s=6.0) is None                         # timeout
    cache.invalidate()
    assert cache.lookup('touch red', _emb(SCENE), now_s=1.0) is None                         # requested
    assert cache.lookup('touch red', _emb(SCENE), now_s=1.0) is None                         # still until store
    cache.store('touch red', _emb(SCENE), PLAN, now_s=1.0)
    assert cache.lookup('touch red', _emb(SCENE), now_s=2.0) is PLAN
    s = cache.stats
    assert (s.hits, s.misses) == (2, 6)
    assert s.miss_reasons == {'empty': 1, 'instruction_changed': 1, 'scene_changed': 1, 'timeout': 1,
                              'requested': 2}
    assert s.hit_rate == pytest.approx(2 / 8)


def test_cache_threshold_and_clear():
    strict = PlanCache(similarity_threshold=1.0, timeout_s=0.0)  # timeout 0 = never expires
    strict.store('a', _emb(SCENE), PLAN, now_s=0.0)
    assert strict.lookup('a', _emb(SCENE), now_s=1e6) is PLAN
    assert strict.lookup('a', _emb(SCENE * 1.0 + 0.05), now_s=0.0) is None
    strict.clear()
    assert strict.miss_reason('a', _emb(SCENE), 0.0) == 'empty'


class SlowPlanner(Planner):
    """Blocks inside plan() until the test releases it, so ordering is asserted with events, not time."""
    type_name = 'slow'

    def __init__(self, tag=0.0):
        super().__init__(PlannerConfig(num_plan_tokens=2, plan_token_dim=4), 8)
        self.tag = tag
        self.started = threading.Semaphore(0)
        self.release = threading.Semaphore(0)
        self.seen = []

    def plan(self, req):
        self.seen.append(req.frame_id)
        self.started.release()
        assert self.release.acquire(timeout=30)
        return PlanOutput(f'plan for frame {req.frame_id}', np.full((2, 4), self.tag + req.frame_id, np.float32))


class FailingPlanner(Planner):
    type_name = 'failing'

    def __init__(self):
        super().__init__(PlannerConfig(num_plan_tokens=2, plan_token_dim=4), 8)

    def plan(self, req):
        raise RuntimeError('model exploded')


def _req(frame, scene=SCENE, instruction='touch the red cube'):
    return PlanRequest(instruction=instruction, visual_tokens=scene, stamp_ns=1000 + frame, frame_id=frame)


def test_async_planner_never_blocks_and_keeps_serving_the_previous_plan():
    slow = SlowPlanner()
    results = []
    runner = AsyncPlanner(slow, cache=None, on_result=lambda out, meta: results.append((out, meta)))
    try:
        assert runner.latest() == (None, None)
        runner.submit(_req(1))
        assert slow.started.acquire(timeout=10)          # worker is now stuck inside plan(frame 1)
        # The fast loop keeps submitting and reading while the planner is stuck: nothing blocks.
        for frame in (2, 3, 4):
            runner.submit(_req(frame))
            assert runner.latest() == (None, None)
        slow.release.release()                           # finish frame 1
        assert runner.wait_for_results(1, timeout=10)
        assert slow.started.acquire(timeout=10)          # worker took the newest pending request...
        assert slow.seen == [1, 4]                       # ...frames 2 and 3 were superseded, not queued
        out, meta = runner.latest()
        assert out.subtask == 'plan for frame 1' and meta.plan_id == 1 and meta.stamp_ns == 1001
        runner.submit(_req(5))
        assert runner.latest()[0].subtask == 'plan for frame 1'   # still the previous plan meanwhile
        slow.release.release()
        assert runner.wait_for_results(2, timeout=10)
        assert runner.latest()[1].frame_id == 4 and runner.latest()[1].plan_id == 2
        slow.release.release()                           # frame 5
        assert runner.wait_for_results(3, timeout=10)
        assert runner.superseded == 2 and runner.submitted == 5
        assert [m.frame_id for _, m in results] == [1, 4, 5]
    finally:
        for _ in range(3):
            slow.release.release()
        runner.close()


def test_async_planner_cache_hits_replan_and_swap():
    slow = SlowPlanner()
    for _ in range(10):
        slow.release.release()                           # let it run freely
    runner = AsyncPlanner(slow, cache=PlanCache(0.95, 100.0))
    try:
        runner.submit(_req(1))
        assert runner.wait_for_results(1, timeout=10)
        runner.submit(_req(2))
        assert runner.wait_for_results(2, timeout=10)
        out, meta = runner.latest()
        assert meta.cache_hit and meta.plan_id == 1 and out.subtask == 'plan for frame 1'
        assert meta.cache_hit_rate == pytest.approx(0.5) and meta.stamp_ns == 1002
        runner.request_replan()
        runner.submit(_req(3))
        assert runner.wait_for_results(3, timeout=10)
        out, meta = runner.latest()
        assert not meta.cache_hit and meta.miss_reason == 'requested' and meta.plan_id == 2
        assert slow.seen == [1, 3]

        other = SlowPlanner(tag=100.0)
        other.type_name = 'other'
        for _ in range(10):
            other.release.release()
        runner.swap(other)
        runner.submit(_req(4))                          # same scene, but the cache was cleared by the swap
        assert runner.wait_for_results(4, timeout=10)
        out, meta = runner.latest()
        assert meta.planner_type == 'other' and not meta.cache_hit and out.plan_tokens[0, 0] == 104.0
        assert other.seen == [4] and slow.seen == [1, 3]
    finally:
        runner.close()


def test_failing_planner_keeps_previous_plan_and_thread_alive():
    slow = SlowPlanner()
    for _ in range(10):
        slow.release.release()
    errors = []
    runner = AsyncPlanner(slow, cache=None, on_error=errors.append)
    try:
        runner.submit(_req(1))
        assert runner.wait_for_results(1, timeout=10)
        runner.swap(FailingPlanner())
        runner.submit(_req(2))
        with runner._cond:
            assert runner._cond.wait_for(lambda: runner.errors == 1 and not runner.busy, timeout=10)
        assert 'model exploded' in str(errors[0]) and runner.latest()[1].frame_id == 1
        runner.swap(slow)
        runner.submit(_req(3))
        assert runner.wait_for_results(2, timeout=10)
        assert runner.latest()[1].frame_id == 3
    finally:
        runner.close()

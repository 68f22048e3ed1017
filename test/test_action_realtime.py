"""Real-time plumbing without ROS: deadline loop, shared-memory slots, the inference process."""
import gc
import threading
import time

import numpy as np
import pytest
import torch

from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.action.inference_proc import InferenceProcess
from vla_ros.action.rt import AbsoluteSleeper, DeadlineLoop, GcPolicy, apply_thread_realtime
from vla_ros.action.shm import SeqSlot
from vla_ros.config.action import ActionConfig, SafetyConfig


def test_absolute_sleeper_never_wakes_early():
    sleeper = AbsoluteSleeper()
    for delay_ms in (1, 5, 12):
        deadline = time.monotonic_ns() + delay_ms * 1_000_000
        sleeper.sleep_until(deadline)
        assert time.monotonic_ns() >= deadline
    sleeper.sleep_until(time.monotonic_ns() - 1_000_000)   # a past deadline returns at once


def test_deadline_loop_skips_overrun_periods_and_survives_errors():
    period_ms = 10.0
    calls = []

    def tick(now_ns):
        calls.append(now_ns)
        if len(calls) == 5:
            time.sleep(0.035)           # overruns 3+ periods once
        if len(calls) == 8:
            raise RuntimeError('boom')

    loop = DeadlineLoop(tick, 1e3 / period_ms, late_tolerance_s=0.5, gc_policy=GcPolicy(enabled=True))
    loop.start()
    assert not gc.isenabled()
    time.sleep(0.4)
    loop.stop()
    assert gc.isenabled()
    assert loop.tick_errors == 1 and 'boom' in loop.last_error
    assert loop.skipped_periods >= 3 and loop.missed_deadlines >= loop.skipped_periods
    # No burst after the overrun: the tick after it starts on a later release, not immediately again.
    gap = (calls[5] - calls[4]) * 1e-6
    assert gap >= 35.0
    # (A late wake-up on a loaded machine is followed by a short period back on the grid: judge pairs.
    # Catching up would run the skipped ticks back to back: pairs of periods near zero.)
    following = np.diff(calls[5:11]) * 1e-6
    assert np.all(following[1:] + following[:-1] > 1.5 * period_ms), following
    # Releases stay on the absolute grid: wake times modulo the period do not drift.
    s = loop.stats()
    assert s['ticks'] == len(calls) and 20 <= len(calls) <= 42
    assert s['gap_max_ms'] >= 35.0
    # Whole-run maxima and what the worst period went through: the 35 ms tick slept (blocked) in it.
    assert s['run_cost_max_ms'] >= 35.0 and s['run_gap_max_ms'] >= 35.0 and s['run_gaps_over_5ms'] >= 1
    assert 0.0 <= s['run_late_max_ms'] < s['run_cost_max_ms']
    assert s['worst_voluntary_csw'] >= 2      # the release sleep + the sleep inside the tick
    assert s['worst_major_faults'] == 0


def test_realtime_request_reports_what_took_effect():
    out = {}

    def run():
        out['none'] = apply_thread_realtime(0, [])
        out['fifo'] = apply_thread_realtime(10, [0])

    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert 'normal priority' in out['none']
    assert ('SCHED_FIFO priority 10' in out['fifo']) or ('NOT permitted' in out['fifo'])
    assert 'CPUs [0]' in out['fifo'] or 'NOT applied' in out['fifo']


def test_seqslot_round_trip_and_torn_reads():
    slot = SeqSlot({'a': (2, 3), 'b': (1,)})
    out = slot.buffers()
    assert slot.version == 0
    slot.write(a=np.arange(6).reshape(2, 3), b=(7.0,))
    assert slot.read_into(out) == 1
    np.testing.assert_array_equal(out['a'], np.arange(6).reshape(2, 3))
    assert out['b'][0] == 7.0
    with slot.writing() as arrays:       # a writer mid-update: readers must not return
        arrays['b'][0] = 8.0
        assert slot.read_into(out) is None
    assert slot.read_into(out) == 2 and out['b'][0] == 8.0


def _small_cfg(**kw):
    base = dict(joint_names=['a', 'b', 'c'], action_dim=3, horizon=8, denoising_steps=2, chunk_rate_hz=20.0,
                safety=SafetyConfig(joint_lower=[-1.0] * 3, joint_upper=[1.0] * 3, stale_plan_timeout_s=5.0,
                                    stale_perception_timeout_s=5.0))
    base.update(kw)
    return ActionConfig(**base)


def test_inference_process_delivers_chunks_through_shared_memory():
    cfg = _small_cfg()
    torch.manual_seed(0)
    head = FlowMatchingActionHead(FlowHeadConfig(action_dim=3, horizon=8, vis_dim=6, plan_dim=4, proprio_dim=3,
                                                 hidden_dim=32, num_layers=1, num_heads=2, denoising_steps=2))
    state = {k: v.detach().numpy() for k, v in head.state_dict().items()}
    proc = InferenceProcess(cfg, head.config, state, max_tokens=16)
    proc.start()
    try:
        with pytest.raises(ValueError):
            proc.update_perception(np.zeros((17, 6)), 1, time.monotonic())   # over max_tokens
        out = proc.channels.chunk.buffers()
        deadline = time.monotonic() + 60.0
        got = []
        while time.monotonic() < deadline and len(got) < 3:
            now = time.monotonic()
            proc.update_plan(np.ones((2, 4)), 9, now)
            proc.update_perception(np.full((5, 6), 0.5), len(got) + 1, now)
            proc.update_proprio(np.array([0.1, 0.2, 0.3]), now)
            if proc.poll_chunk(out):
                got.append({k: v.copy() for k, v in out.items()})
            time.sleep(0.01)
        assert len(got) >= 3, proc.status()
        meta = got[-1]['meta']
        assert got[-1]['actions'].shape == (8, 3) and np.all(np.isfinite(got[-1]['actions']))
        assert meta[1] == pytest.approx(cfg.action_dt) and meta[4] == 9 and meta[6] > 0
        assert meta[0] <= meta[2] <= time.monotonic()              # start <= active_from <= now
        assert len({g['meta'][3] for g in got}) == len(got)        # distinct chunk ids
        assert proc.status()['inference_alive'] and proc.status()['inference_ready']
        # E-stop: no more chunks.
        proc.set_estop(True)
        time.sleep(0.3)
        proc.poll_chunk(out)
        before = proc.channels.chunk.version
        time.sleep(0.5)
        assert proc.channels.chunk.version == before
    finally:
        proc.close()
    assert not proc.process.is_alive()


def test_control_process_side_reads_inputs_and_exports_stats_through_slots():
    """What the control process does each tick, without the process: InputMirror -> ControlLoop,
    RealtimeController.export_stats -> stats_from_slot (what the node's diagnostics read)."""
    from vla_ros.action.controller import ControlLoop
    from vla_ros.action.inference_proc import ChunkInbox, InferenceChannels
    from vla_ros.action.realtime_loop import STAT_KEYS, InputMirror, RealtimeController, stats_from_slot

    cfg = _small_cfg(inference_mode='process', smoothing='none')
    head = FlowMatchingActionHead(FlowHeadConfig(action_dim=3, horizon=8, vis_dim=6, plan_dim=4, proprio_dim=3,
                                                 hidden_dim=16, num_layers=1, num_heads=2))
    ch = InferenceChannels(8, 3, 6, 4, 16)
    loop = ControlLoop(head, cfg)
    mirror = InputMirror(ch)
    now = time.monotonic()
    with ch.plan.writing() as a:
        a['meta'][:] = (2, 7, now - 0.5)
    with ch.vis.writing() as a:
        a['meta'][:] = (5, 3, now - 0.25)
    ch.proprio.write(q=(0.1, 0.2, 0.3), meta=(now,))
    mirror.poll(loop)
    plan_age, vis_age = loop.ages(now)
    assert plan_age == pytest.approx(0.5) and vis_age == pytest.approx(0.25)
    np.testing.assert_allclose(loop.measured, [0.1, 0.2, 0.3])
    assert not loop.estop_active
    ch.estop.write(v=(1.0,))
    mirror.poll(loop)
    assert loop.estop_active

    class Sink:
        def __init__(self):
            self.n = 0

        def ros_now_ns(self):
            return time.monotonic_ns()

        def stamped(self, command, stamp_ns):
            self.n += 1

        def forward(self, command):
            pass

        def chunk(self, result, stamp_ns):
            self.chunk_ids = getattr(self, 'chunk_ids', []) + [result.chunk_id]

        def replan(self):
            pass

    stats = SeqSlot({'v': (len(STAT_KEYS),)})
    sink = Sink()
    rt = RealtimeController(loop, cfg, sink, backend=ChunkInbox(ch), log=lambda s: None, inputs=mirror,
                            stats_slot=stats)
    # A chunk written by the "inference process" is committed by the tick (inputs fresh, e-stop off).
    ch.estop.write(v=(0.0,))
    ch.chunk.write(actions=np.full((8, 3), 0.2), weights=0.0, meta=(now, 0.05, now, 11, 7, 3, 12.5, 0.0))
    for k in range(3):
        rt._tick(time.monotonic_ns())
    assert loop.chunk_count == 1 and sink.n == 3 and sink.chunk_ids == [11]
    out = stats_from_slot(stats, stats.buffers())
    assert out['mode'] == 'running' and out['commands_published'] >= 1 and out['chunks'] == 1
    # the safety filter's counters come back too (they read 0 in the node's diagnostics before)
    rt.export_stats()                          # the tick exports at most every stats period
    out = stats_from_slot(stats, stats.buffers())
    assert out['safety_ticks'] == loop.safety.counters['ticks'] >= 3
    assert out['safety_reanchored'] == loop.safety.counters['reanchored'] >= 1     # the first command
    assert 0.0 <= out['control_heartbeat_age_s'] < 5.0
    # ControlLoop.restart (the arm displaced under command) is counted in the diagnostics too
    assert out['restarts'] == loop.restarts == 0
    loop.restart()
    rt.export_stats()
    assert stats_from_slot(stats, stats.buffers())['restarts'] == 1

"""Fast-system benchmark: head latency, 100 Hz control-loop regularity, chunk-seam smoothness.

    .venv/bin/python bench/bench_action.py [--seconds 10] [--quick]

1. Action-head inference latency per chunk (ms) for a few horizon / denoising-step settings.
2. The real ControlLoop with a real head: background inference at chunk_rate_hz while a control
   thread ticks at control_rate_hz; reports achieved rate and tick-period jitter p50/p99.
3. Seam discontinuity for none / ensemble / rtc on identical synthetic conditioning (a small
   head trained on reach-to-goal chunks, a goal that keeps moving, simulated clock and a
   simulated inference latency), printed side by side with ratios to 'none'.
All numbers come from one run on this machine (shared CPU: absolute times vary run to run).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vla_ros.action.controller import ControlLoop, RateMonitor, build_head  # noqa: E402
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead  # noqa: E402
from vla_ros.action.train import train_action_head  # noqa: E402
from vla_ros.config.action import ActionConfig  # noqa: E402

VIS_TOKENS, VIS_DIM, PLAN_TOKENS, PLAN_DIM = 64, 64, 8, 64


def bench_latency(settings, repeats):
    print('\n== 1. action-head inference latency (hidden 128, 2 layers, 64 vis + 8 plan tokens, 1 thread) ==')
    print(f'{"horizon":>8} {"steps":>6} {"p50 ms":>8} {"p90 ms":>8} {"rtc p50 ms":>11}')
    rng = np.random.default_rng(0)
    vis = torch.tensor(rng.normal(size=(1, VIS_TOKENS, VIS_DIM)), dtype=torch.float32)
    plan = torch.tensor(rng.normal(size=(1, PLAN_TOKENS, PLAN_DIM)), dtype=torch.float32)
    prop = torch.zeros(1, 7)
    out = {}
    for horizon, steps in settings:
        head = FlowMatchingActionHead(FlowHeadConfig(horizon=horizon, denoising_steps=steps)).eval()
        prefix, weights = torch.zeros(1, horizon, 7), torch.linspace(1, 0, horizon)
        for _ in range(3):
            head.predict_actions(vis, None, plan, prop)
        times, rtc_times = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            head.predict_actions(vis, None, plan, prop)
            times.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            head.predict_actions(vis, None, plan, prop, prefix=prefix, prefix_weights=weights)
            rtc_times.append((time.perf_counter() - t0) * 1e3)
        out[(horizon, steps)] = float(np.median(times))
        print(f'{horizon:>8} {steps:>6} {np.median(times):>8.2f} {np.percentile(times, 90):>8.2f} '
              f'{np.median(rtc_times):>11.2f}')
    return out


class PeriodicTicker:
    """Absolute-deadline loop: sleep until just before the deadline, then a short spin."""

    def __init__(self, fn, rate_hz, spin_s):
        self.fn, self.period, self.spin_s = fn, 1.0 / rate_hz, spin_s
        self.monitor = RateMonitor(rate_hz, window=100000)
        self.tick_cost = []

    def run(self, seconds):
        deadline = time.monotonic() + self.period
        end = deadline + seconds
        while deadline < end:
            remaining = deadline - time.monotonic() - self.spin_s
            if remaining > 0:
                time.sleep(remaining)
            while time.monotonic() < deadline:
                pass
            now = time.monotonic()
            self.monitor.record(now)
            self.fn(now)
            self.tick_cost.append((time.monotonic() - now) * 1e3)
            deadline += self.period
            if deadline < time.monotonic():  # overran: skip missed ticks instead of bursting
                deadline = time.monotonic() + self.period


def bench_control_loop(seconds, spin_values, priorities=('normal', 'low', 'idle')):
    print(f'\n== 2. ControlLoop at 100 Hz with live 10 Hz inference (default ActionConfig, {seconds:.0f} s each) ==')
    print(f'{"priority":>9} {"spin ms":>8} {"rate Hz":>8} {"period p50":>11} {"period p99":>11} {"jitter p50":>11} '
          f'{"jitter p99":>11} {"jitter max":>11} {"tick p99 ms":>12} {"chunks":>7} {"infer ms":>9}')
    results = {}
    for priority, spin_s in [(p, s) for p in priorities for s in spin_values]:
        cfg = ActionConfig(inference_priority=priority)
        torch.manual_seed(0)
        head, _ = build_head(cfg, VIS_DIM, PLAN_DIM)
        loop = ControlLoop(head, cfg, seed=0)
        rng = np.random.default_rng(0)
        vis = rng.normal(size=(VIS_TOKENS, VIS_DIM)).astype(np.float32)
        plan = rng.normal(size=(PLAN_TOKENS, PLAN_DIM)).astype(np.float32)
        commands = []

        def tick(now):
            loop.update_proprio(commands[-1] if commands else np.zeros(7) - 0.5 * np.array([0, 0, 0, 1, 0, -1, 0]),
                                now=now)
            loop.update_perception(vis, now=now)
            loop.update_plan(plan, now=now)
            cmd, _ = loop.tick(now)
            if cmd is not None:
                commands.append(cmd)

        ticker = PeriodicTicker(tick, cfg.control_rate_hz, spin_s)
        tick(time.monotonic())
        loop.start()
        try:
            ticker.run(seconds)
        finally:
            loop.close()
        s = ticker.monitor.stats()
        results[(priority, spin_s)] = s
        print(f'{loop.inference_priority:>9} {spin_s * 1e3:>8.2f} {s["rate_hz"]:>8.2f} {s["period_p50_ms"]:>11.3f} {s["period_p99_ms"]:>11.3f} '
              f'{s["jitter_p50_ms"]:>11.3f} {s["jitter_p99_ms"]:>11.3f} {s["jitter_max_ms"]:>11.3f} '
              f'{np.percentile(ticker.tick_cost, 99):>12.3f} {loop.chunk_count:>7} {loop.last_inference_ms:>9.2f}')
    return results


def _synthetic_reach_data(n, horizon, rng):
    samples = []
    ramp = np.clip(np.arange(1, horizon + 1) / horizon, 0, 1)[:, None] * 0.6
    for _ in range(n):
        q = rng.uniform(-0.6, 0.6, 7)
        goal = rng.uniform(-0.6, 0.6, 7)
        vis = rng.normal(scale=0.3, size=(16, 32))
        vis[0, :7] = goal
        samples.append(dict(vis_tokens=vis.astype(np.float32),
                            plan_tokens=np.ones((4, 16), np.float32), proprio=q.astype(np.float32),
                            actions=(q + (goal - q) * ramp).astype(np.float32)))
    return samples


def bench_seams(sim_seconds, train_epochs, latency_ms, seed=0):
    print(f'\n== 3. seam discontinuity: none vs ensemble vs rtc (trained toy head, moving goal, '
          f'{latency_ms:.0f} ms simulated inference latency, {sim_seconds:.0f} s simulated) ==')
    rng = np.random.default_rng(seed)
    base = ActionConfig()
    data = _synthetic_reach_data(256, base.horizon, rng)
    cfg_head = FlowHeadConfig(horizon=base.horizon, vis_dim=32, plan_dim=16, hidden_dim=64,
                              denoising_steps=base.denoising_steps)
    head = train_action_head(data, cfg_head, epochs=train_epochs, batch_size=64, lr=2e-3, seed=seed)['head']
    head.eval()
    results = {}
    for mode in ('none', 'ensemble', 'rtc'):
        cfg = ActionConfig(smoothing=mode, checkpoint_path='')
        clock = [0.0]
        loop = ControlLoop(head, cfg, clock=lambda: clock[0], seed=seed)
        q = np.zeros(7)
        goal0 = np.array([0.3, -0.2, 0.1, -0.3, 0.2, 0.4, 0.0])
        ticks = int(sim_seconds * cfg.control_rate_hz)
        per_chunk = int(round(cfg.control_rate_hz / cfg.chunk_rate_hz))
        delay = latency_ms / 1e3
        discontinuity, targets, commands, seam_ticks = [], [], [], set()
        for k in range(ticks):
            now = k / cfg.control_rate_hz
            clock[0] = now
            goal = goal0 + 0.3 * np.sin(0.8 * now + np.arange(7))
            vis = rng.normal(scale=0.3, size=(16, 32)).astype(np.float32)
            vis[0, :7] = goal
            loop.update_perception(vis, frame_id=k, now=now)
            loop.update_plan(np.ones((4, 16), np.float32), plan_id=1, now=now)
            loop.update_proprio(q, now=now)
            if k % per_chunk == 0:
                takeover = now + delay
                before = loop.buffer.planned(takeover)
                loop.infer_chunk(now, active_from=takeover)
                if before is not None:
                    discontinuity.append(np.abs(loop.buffer.target(takeover) - before).max())
                    seam_ticks.add(int(np.ceil(takeover * cfg.control_rate_hz - 1e-9)))
            cmd, status = loop.tick(now)
            targets.append(status.target if status.target is not None else q.copy())
            commands.append(cmd)
            q = cmd  # perfect position tracking
        targets, commands = np.array(targets), np.array(commands)
        steps = np.abs(np.diff(targets, axis=0)).max(axis=1)
        seam_idx = np.array(sorted(t - 1 for t in seam_ticks if 0 < t < ticks))
        other = np.setdiff1d(np.arange(len(steps)), seam_idx)
        cmd_steps = np.abs(np.diff(commands, axis=0)).max(axis=1)
        results[mode] = dict(disc_max=float(np.max(discontinuity)), disc_mean=float(np.mean(discontinuity)),
                             seam_step_max=float(steps[seam_idx].max()), seam_step_mean=float(steps[seam_idx].mean()),
                             other_step_mean=float(steps[other].mean()),
                             cmd_seam_step_max=float(cmd_steps[seam_idx].max()),
                             safety_limited=int(loop.safety.counters['limited_velocity']))
    ref = results['none']
    print(f'{"mode":>9} {"disc max":>9} {"disc mean":>10} {"ratio":>7} {"seam step max":>14} {"seam step mean":>15} '
          f'{"ratio":>7} {"non-seam step":>14} {"cmd seam max":>13} {"vel-limited":>12}')
    for mode, r in results.items():
        print(f'{mode:>9} {r["disc_max"]:>9.4f} {r["disc_mean"]:>10.4f} {r["disc_mean"] / ref["disc_mean"]:>7.3f} '
              f'{r["seam_step_max"]:>14.4f} {r["seam_step_mean"]:>15.4f} '
              f'{r["seam_step_mean"] / ref["seam_step_mean"]:>7.3f} {r["other_step_mean"]:>14.4f} '
              f'{r["cmd_seam_step_max"]:>13.4f} {r["safety_limited"]:>12}')
    print('disc = |new - old committed target| at the take-over instant (rad, max over joints); '
          'seam step = executed target change over the tick containing the take-over; '
          'non-seam step = same for all other ticks; cmd = after the safety filter.')
    return results


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--seconds', type=float, default=10.0, help='control-loop run per setting')
    ap.add_argument('--quick', action='store_true', help='short run for a smoke test')
    args = ap.parse_args()
    torch.set_num_threads(1)
    quick = args.quick
    print(f'bench_action: torch {torch.__version__}, {os.cpu_count()} CPUs visible (shared machine), '
          f'loadavg {os.getloadavg()[0]:.2f}')
    lat = bench_latency([(16, 10), (16, 5), (32, 10)], repeats=5 if quick else 30)
    # Pure sleep scheduling (spin 0): a busy-wait spin holds the GIL and measured worse.
    bench_control_loop(2.0 if quick else args.seconds, [0.0])
    bench_seams(3.0 if quick else 10.0, 20 if quick else 150, latency_ms=max(10.0, lat[(16, 10)]))


if __name__ == '__main__':
    main()

"""Slow-system benchmark: planner latency per call with the plan cache vs without, on one sequence.

    .venv/bin/python bench/bench_planner.py [--frames 120] [--no-large]

The sequence imitates the perception stream the planner sees: mostly static scenes (a fixed base
scene plus small per-frame feature noise), a scene change every `--change-every` frames and one
instruction change half way. Each planner (lightweight, tiny random VLM, larger random VLM) runs the
same sequence through the real AsyncPlanner twice, with the cache and without, one request at a time
(the latency of every call is what the fast loop would have to wait for if it were synchronous).
All numbers come from one run on this machine (shared CPU: absolute times vary run to run).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vla_ros.config.planning import PlannerConfig  # noqa: E402
from vla_ros.models.vlm import make_demo_vlm  # noqa: E402
from vla_ros.planning.base import PlanRequest, make_planner  # noqa: E402
from vla_ros.planning.plan_cache import PlanCache  # noqa: E402
from vla_ros.planning.runner import AsyncPlanner  # noqa: E402

VIS_TOKENS, VIS_DIM = 64, 64


def make_sequence(frames: int, change_every: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((VIS_TOKENS, VIS_DIM)).astype(np.float32) + 0.5
    seq = []
    for i in range(frames):
        if i and i % change_every == 0:
            base = rng.standard_normal((VIS_TOKENS, VIS_DIM)).astype(np.float32) + 0.5
        instruction = 'touch the red cube' if i < frames // 2 else 'reach the blue block'
        tokens = base + noise * rng.standard_normal(base.shape).astype(np.float32)
        seq.append(PlanRequest(instruction=instruction, visual_tokens=tokens, kept_indices=np.arange(VIS_TOKENS),
                               stamp_ns=i + 1, frame_id=i + 1))
    return seq


def run(planner, seq, cfg, use_cache: bool, label: str):
    cache = PlanCache(cfg.cache_similarity, cfg.cache_timeout_s) if use_cache else None
    runner = AsyncPlanner(planner, cache)
    latencies, hits = [], 0
    try:
        for i, req in enumerate(tqdm(seq, desc=label, leave=False)):
            runner.submit(req)
            assert runner.wait_for_results(i + 1, timeout=600), 'planner stalled'
            _, meta = runner.latest()
            latencies.append(meta.latency_ms)
            hits += meta.cache_hit
    finally:
        runner.close()
    return np.array(latencies), hits, runner.plans


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--frames', type=int, default=120)
    parser.add_argument('--change-every', type=int, default=30)
    parser.add_argument('--noise', type=float, default=0.02, help='per-frame feature noise (static scene)')
    parser.add_argument('--no-large', action='store_true', help='skip the larger random VLM')
    parser.add_argument('--threads', type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    seq = make_sequence(args.frames, args.change_every, args.noise)
    tmp = tempfile.mkdtemp(prefix='bench_planner_')
    setups = [('lightweight', PlannerConfig(type='lightweight', torch_threads=args.threads))]
    tiny = make_demo_vlm(os.path.join(tmp, 'tiny'), family='idefics3', seed=0)
    setups.append(('vlm tiny (idefics3 h64 L2)', PlannerConfig(type='vlm', model_path=tiny,
                                                               torch_threads=args.threads)))
    if not args.no_large:
        large = make_demo_vlm(os.path.join(tmp, 'large'), family='idefics3', seed=0, hidden_size=512,
                              num_layers=8)
        setups.append(('vlm large (idefics3 h512 L8)', PlannerConfig(type='vlm', model_path=large,
                                                                     torch_threads=args.threads)))
    print(f'sequence: {args.frames} frames, {VIS_TOKENS}x{VIS_DIM} tokens, noise {args.noise}, scene change every '
          f'{args.change_every} frames, instruction change at frame {args.frames // 2}; torch threads {args.threads}')
    print(f'{"planner":30} {"cache":>6} {"mean ms":>9} {"p50 ms":>9} {"p90 ms":>9} {"plans":>6} {"hit rate":>9}')
    summary = []
    for name, cfg in setups:
        planner = make_planner(cfg, VIS_DIM)
        planner.plan(seq[0])  # warm-up outside the measurement
        stats = {}
        for use_cache in (False, True):
            lat, hits, plans = run(planner, seq, cfg, use_cache, f'{name} cache={use_cache}')
            stats[use_cache] = lat
            print(f'{name:30} {"on" if use_cache else "off":>6} {lat.mean():9.3f} {np.percentile(lat, 50):9.3f} '
                  f'{np.percentile(lat, 90):9.3f} {plans:6d} {hits / len(seq):9.2f}')
        summary.append((name, stats[False].mean() / stats[True].mean(),
                        np.percentile(stats[False], 50) / np.percentile(stats[True], 50)))
    print('\nspeed-up from the plan cache (no-cache / cache, same sequence, same run):')
    for name, mean_ratio, p50_ratio in summary:
        print(f'  {name:30} mean x{mean_ratio:.1f}   p50 x{p50_ratio:.1f}')


if __name__ == '__main__':
    main()

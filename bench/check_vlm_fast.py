"""VLM planner: transformers generate vs planner.fast_prefill (SlotKVPrefill), same requests, one process.

    python3 bench/check_vlm_fast.py --device cuda --json /tmp/vlm_fast.json
    .venv/bin/python bench/check_vlm_fast.py --device cpu --requests 6

A random-weight demo VLM (idefics3 layout, built and loaded through the real loading path) plans a
run of requests on a mostly static scene (64 perception tokens, a few change per request, as pruned +
reused perception delivers them). Per request: sub-task text and plan tokens of the fast path vs the
transformers path (exact with kv_reuse off; kv_reuse on: close, with and without the staggered
kv_refresh_interval), latency p50 of each. Weights are
random: the latency is the point, the agreement a plumbing check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None):
    import torch
    from vla_ros.config.planning import PlannerConfig
    from vla_ros.models.vlm import make_demo_vlm
    from vla_ros.planning.base import PlanRequest
    from vla_ros.planning.vlm import VLMPlanner
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda', choices=('cpu', 'cuda'))
    parser.add_argument('--hidden', type=int, default=512)
    parser.add_argument('--layers', type=int, default=8)
    parser.add_argument('--requests', type=int, default=40)
    parser.add_argument('--json', default='')
    args = parser.parse_args(argv)
    path = make_demo_vlm(os.path.join(tempfile.mkdtemp(prefix='vlm_fast_'), 'vlm'), family='idefics3', seed=0,
                         hidden_size=args.hidden, num_layers=args.layers)
    dim = 64
    base = dict(type='vlm', model_path=path, device=args.device, max_new_tokens=8, max_visual_tokens=64)
    planners = {'transformers': VLMPlanner(PlannerConfig(fast_prefill='off', **base), dim),
                'fast_exact': VLMPlanner(PlannerConfig(fast_prefill='on', kv_reuse=False, **base), dim),
                'fast_reuse': VLMPlanner(PlannerConfig(fast_prefill='on', kv_reuse=True, **base), dim),
                'fast_reuse_no_refresh': VLMPlanner(PlannerConfig(fast_prefill='on', kv_reuse=True,
                                                                  kv_refresh_interval=0, **base), dim)}
    rng = np.random.default_rng(0)
    scene = rng.standard_normal((64, dim)).astype(np.float32)
    times = {k: [] for k in planners}
    agree = {k: {'subtask': [], 'plan_cos': []} for k in planners if k != 'transformers'}
    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: None)
    for i in range(args.requests + 3):
        scene = scene.copy()
        changed = rng.choice(64, size=6, replace=False)
        scene[changed] += 0.3 * rng.standard_normal((6, dim)).astype(np.float32)
        req = PlanRequest('touch the red cube', scene, kept_indices=np.arange(64))
        outs = {}
        for name, planner in planners.items():
            sync()
            t0 = time.perf_counter()
            outs[name] = planner.plan(req)
            sync()
            if i >= 3:
                times[name].append((time.perf_counter() - t0) * 1e3)
        if i >= 3:
            ref = outs['transformers']
            for name in agree:
                agree[name]['subtask'].append(outs[name].subtask == ref.subtask)
                a, b = outs[name].plan_tokens.ravel(), ref.plan_tokens.ravel()
                agree[name]['plan_cos'].append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    report = dict(device=torch.cuda.get_device_name(0) if args.device == 'cuda' else 'cpu',
                  model=dict(family='idefics3', hidden=args.hidden, layers=args.layers), requests=args.requests,
                  fast=[planners[k].fast for k in planners if k != 'transformers'],
                  fast_reason=planners['fast_exact'].fast_reason,
                  plan_ms_p50={k: float(np.median(v)) for k, v in times.items()},
                  plan_ms_p99={k: float(np.percentile(v, 99)) for k, v in times.items()},
                  agreement={k: dict(subtask=float(np.mean(v['subtask'])), plan_cos_min=float(np.min(v['plan_cos'])),
                                     plan_cos_mean=float(np.mean(v['plan_cos']))) for k, v in agree.items()},
                  graphs={k: next(iter(planners[k]._fast.values())).graphs.stats() for k in planners
                          if k != 'transformers' and planners[k]._fast},
                  kv_refresh_interval=planners['fast_reuse'].cfg.kv_refresh_interval)
    report['speedup_fast_reuse_vs_transformers'] = report['plan_ms_p50']['transformers'] / report['plan_ms_p50']['fast_reuse']
    print(json.dumps(report, indent=1))
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == '__main__':
    main()

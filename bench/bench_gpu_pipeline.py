"""GPU pipeline benchmark: perception + planner prefill (+ plan decode, + action head) per frame,
eager vs optimised, full vs pruned+reused, interleaved frame by frame in one process.

    python bench/bench_gpu_pipeline.py --scale smolvla --frames 150 --json bench/results/gpu_smolvla.json
    python bench/bench_gpu_pipeline.py --scale openvla --frames 150 --json bench/results/gpu_openvla.json
    .venv/bin/python bench/bench_gpu_pipeline.py --scale tiny --device cpu --dtype float32 --frames 6

Settings (each its own pipeline state, same frames, order rotated every frame):
  eager_full      today's path: numpy decisions, eager PyTorch, all 729 tokens, eager LM prefill
  opt_full        device decisions + CUDA graphs (one per bucket), all tokens, LM prefill as a graph
  opt_pruned      + spatial-coverage pruning (keep 0.5) and temporal reuse (static_shapes buckets)
  opt_adaptive    + adaptive budget (attention mass 0.5, keep buckets) instead of a fixed 0.5
  opt_plancache   opt_pruned with the plan cache: the planner (prefill + plan decode) runs only on a
                  miss, so the per-frame cost amortises over the run (hits: perception + lookup)
Headline (top-level speedup_vs_*): opt_plancache, p50 of perception + prefill per frame over the
run (prefill only where it ran); `every_frame_prefill` gives opt_pruned (prefill on every frame).
Stages timed with a device sync at each boundary: perception (to host tokens), prefill (instruction
+ kept visual tokens -> next-token logits), decode (short greedy plan), and the action head chunk
(10 denoising steps, eager vs one captured graph). Scene: the mostly static tabletop of
bench_perception.py. Weights are random (speed does not depend on them); accuracy numbers compare
outputs on the same frames: feature cosine vs full, next-token and whole-plan agreement vs opt_full.
"""
from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.gpu_knobs import run_knobs  # noqa: E402
from bench.gpu_models import SCALES, lm_flops, load_lm, make_random_lm, vision_flops  # noqa: E402
from vla_ros.action.flow_graph import CapturedSampler  # noqa: E402
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead  # noqa: E402
from vla_ros.config.perception import PerceptionConfig  # noqa: E402
from vla_ros.models.vision import make_demo_vision_encoder  # noqa: E402
from vla_ros.perception.device_pipeline import bucket_up, make_pipeline  # noqa: E402
from vla_ros.perception import fps_triton  # noqa: E402
from vla_ros.perception.encoder import VisionEncoder  # noqa: E402
from vla_ros.perception.fps_triton import triton_fps_available  # noqa: E402
from vla_ros.perception.synthetic import moving_object_sequence  # noqa: E402
from vla_ros.config.planning import PlannerConfig  # noqa: E402
from vla_ros.planning.base import PlanOutput  # noqa: E402
from vla_ros.planning.plan_cache import PlanCache  # noqa: E402
from vla_ros.planning.prefill import PlannerPrefill  # noqa: E402

INSTRUCTION = 'touch the red cube'
TEXT_TOKENS = 16
PRUNED = dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True, static_shapes=True)
SETTINGS = {
    'eager_full': dict(perception=dict(ops='numpy', pruning='none', keep_ratio=1.0, reuse_enabled=False),
                       graphs=False, decode=False),
    'opt_full': dict(perception=dict(ops='torch', pruning='none', keep_ratio=1.0, reuse_enabled=False),
                     graphs=True, decode=True),
    'opt_pruned': dict(perception=dict(ops='torch', **PRUNED), graphs=True, decode=True),
    'opt_adaptive': dict(perception=dict(ops='torch', **dict(PRUNED, adaptive_budget=True, adaptive_mass=0.5)),
                         graphs=True, decode=False),
    'opt_plancache': dict(perception=dict(ops='torch', **PRUNED), graphs=True, decode=True, plan_cache=True),
}


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def summary(values):
    return dict(p50=pct(values, 50), p99=pct(values, 99), mean=float(np.mean(values)) if values else float('nan'),
                n=len(values))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float(np.mean(num / den))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--scale', default='smolvla', choices=list(SCALES))
    parser.add_argument('--device', default='cuda', choices=('cpu', 'cuda'))
    parser.add_argument('--dtype', default='bfloat16', choices=('float32', 'bfloat16'))
    parser.add_argument('--frames', type=int, default=150)
    parser.add_argument('--warmup', type=int, default=12)
    parser.add_argument('--keyframe-interval', type=int, default=10)
    parser.add_argument('--decode-tokens', type=int, default=8)
    parser.add_argument('--settings', default=','.join(SETTINGS))
    parser.add_argument('--knob-frames', type=int, default=30, help='frames for the fp8 / drop-layers drift runs')
    parser.add_argument('--workdir', default='', help='where to save the random checkpoints (default: a temp dir)')
    parser.add_argument('--json', default='')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
    dtype = getattr(torch, args.dtype)
    dev = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == 'cuda' else (lambda: None)
    shapes = SCALES[args.scale]
    root = args.workdir or tempfile.mkdtemp(prefix='vla_gpu_bench_', dir='/dev/shm' if os.path.isdir('/dev/shm') else None)
    t_build = time.perf_counter()
    encoder = VisionEncoder.from_pretrained(make_demo_vision_encoder(os.path.join(root, 'vision'), seed=0,
                                                                     **shapes['vision']), device=args.device, dtype=dtype)
    lm = load_lm(make_random_lm(os.path.join(root, 'lm'), shapes['lm'], args.device, dtype), args.device, dtype)
    build_s = time.perf_counter() - t_build
    print(f'[bench] built + saved + loaded {args.scale} in {build_s:.1f}s', flush=True)
    n = encoder.num_patches
    gen = torch.Generator().manual_seed(0)
    instruction_ids = torch.randint(10, lm.config.vocab_size, (TEXT_TOKENS,), generator=gen)
    names = [s for s in args.settings.split(',') if s]
    pipes, planners, caches = {}, {}, {}
    for name in names:
        spec = SETTINGS[name]
        cfg = PerceptionConfig(device=args.device, keyframe_interval=args.keyframe_interval,
                               cuda_graphs=spec['graphs'], **spec['perception'])
        pipes[name] = make_pipeline(encoder, cfg)
        pipes[name].set_instruction(INSTRUCTION)
        planners[name] = PlannerPrefill(lm, instruction_ids, encoder.hidden_size, n, args.decode_tokens,
                                        cuda_graphs=spec['graphs'])
        if spec.get('plan_cache'):
            pc = PlannerConfig()
            caches[name] = PlanCache(similarity_threshold=pc.cache_similarity, timeout_s=pc.cache_timeout_s)
    # Capture every bucket's graphs before the run (keyframe, recompute buckets, prefill per keep bucket).
    first_frame = next(moving_object_sequence(1, size=encoder.image_size, seed=7))
    for name in names:
        if SETTINGS[name]['graphs'] and dev.type == 'cuda':
            pipes[name].precapture(first_frame)
            cfg = pipes[name].cfg
            counts = {n}
            if cfg.pruning != 'none':
                cap = int(round(cfg.keep_ratio * n))
                counts = {cap}
                if cfg.adaptive_budget and cfg.static_shapes:
                    counts = {bucket_up(c, n, cfg.keep_buckets) for c in
                              [cap] + [int(np.ceil(f * n)) for f in cfg.keep_buckets if np.ceil(f * n) <= cap]}
            planners[name].precapture(counts, encoder.hidden_size)

    # Same config as opt_pruned, decided by the numpy path: the device path must keep the same tokens.
    ref_pipe = None
    if 'opt_pruned' in names:
        ref_cfg = PerceptionConfig(device=args.device, keyframe_interval=args.keyframe_interval,
                                   **dict(SETTINGS['opt_pruned']['perception'], ops='numpy'))
        ref_pipe = make_pipeline(encoder, ref_cfg)
        ref_pipe.set_instruction(INSTRUCTION)
    head = FlowMatchingActionHead(FlowHeadConfig(vis_dim=encoder.hidden_size)).to(args.device).eval()
    captured = CapturedSampler(head, cuda_graphs=True)
    stats = {name: {k: [] for k in ('perception', 'prefill', 'decode', 'step', 'kept', 'recomputed', 'hit',
                                    'perception_flops', 'prefill_flops', 'syncs')} for name in names}
    action = {'eager': [], 'graph': []}
    acc = {'feature_cos_pruned_vs_full': [], 'feature_cos_opt_vs_eager': [], 'next_token_pruned': [],
           'next_token_adaptive': [], 'next_token_opt_vs_eager': [], 'plan_pruned': [], 'logit_cos_pruned': [],
           'device_vs_numpy_same_kept': [], 'device_vs_numpy_same_reuse': [], 'device_vs_numpy_token_cos': []}
    vcfg, lcfg = encoder.tower.config, lm.config
    frames = moving_object_sequence(args.warmup + args.frames, size=encoder.image_size)
    try:
        from tqdm import tqdm
        frames = tqdm(frames, total=args.warmup + args.frames, desc=f'{args.scale} {args.device}', mininterval=5)
    except ImportError:
        pass
    gc.collect()
    gc.disable()              # collections run between frames, never inside a timed stage
    captures_at_start = None
    for i, frame in enumerate(frames):
        timed = i >= args.warmup
        if i % 10 == 0:
            gc.collect()
        if timed and captures_at_start is None:
            captures_at_start = _captures(pipes, planners)
        now_s = i / 10.0      # a 10 Hz camera: the plan cache's timeout counts in frame time
        order = names[i % len(names):] + names[:i % len(names)]
        outs = {}
        for name in order:
            pipe, planner, s = pipes[name], planners[name], stats[name]
            sync()
            t0 = time.perf_counter()
            result = pipe.process(frame)
            t1 = time.perf_counter()
            cache = caches.get(name)
            hit = cache is not None and cache.lookup(INSTRUCTION, result.scene_embedding, now_s) is not None
            t2 = t3 = t1
            vis = getattr(pipe, 'last_device_tokens', None)
            if vis is None:
                vis = torch.from_numpy(result.tokens).to(args.device, dtype)
            first = plan = None
            if not hit:
                first = planner.prefill(vis)
                logits = first['logits'].float().clone()
                sync()
                t2 = time.perf_counter()
                if SETTINGS[name]['decode']:
                    plan = planner.decode(first, vis.shape[0]).cpu().numpy()
                t3 = time.perf_counter()
                if cache is not None:
                    cache.store(INSTRUCTION, result.scene_embedding, PlanOutput('', np.zeros((1, 1), np.float32)), now_s)
                outs[name] = (result, logits, plan)
            else:
                outs[name] = (result, None, None)
            if timed:
                k = len(result.kept_indices)
                rec = pipe.last_plan_counts[0] if hasattr(pipe, 'last_plan_counts') else k
                if not SETTINGS[name]['perception']['reuse_enabled']:
                    rec = k
                s['perception'].append((t1 - t0) * 1e3)
                s['step'].append((t3 - t0) * 1e3)
                s['hit'].append(hit)
                s['kept'].append(k)
                s['recomputed'].append(rec)
                s['syncs'].append(getattr(pipe, 'syncs_last_frame', 1))
                s['perception_flops'].append(vision_flops(rec, k - rec if rec < k else 0, vcfg))
                if not hit:
                    s['prefill'].append((t2 - t1) * 1e3)
                    s['prefill_flops'].append(lm_flops(k + TEXT_TOKENS, lcfg))
                    if plan is not None:
                        s['decode'].append((t3 - t2) * 1e3)
        # Action head chunk on the pruned tokens: eager vs captured (same inputs).
        ref = outs.get('opt_pruned') or next(iter(outs.values()))
        vis_t = torch.from_numpy(ref[0].tokens).to(args.device)[None]
        mask = torch.ones(vis_t.shape[:2], dtype=torch.bool, device=args.device)
        plan_t = torch.randn(1, 8, head.config.plan_dim, generator=gen).to(args.device)
        proprio = torch.randn(1, head.config.proprio_dim, generator=gen).to(args.device)
        for kind in ('eager', 'graph'):
            sync()
            ta = time.perf_counter()
            if kind == 'eager':
                head.sample(vis_t, mask, plan_t, proprio)
            else:
                captured(vis_t, mask, plan_t, proprio)
            sync()
            if timed:
                action[kind].append((time.perf_counter() - ta) * 1e3)
        if ref_pipe is not None:
            ref = ref_pipe.process(frame)
            got = outs['opt_pruned'][0]
            if timed:
                acc['device_vs_numpy_same_kept'].append(bool(np.array_equal(ref.kept_indices, got.kept_indices)))
                acc['device_vs_numpy_same_reuse'].append(bool(ref.reuse_ratio == got.reuse_ratio
                                                              and ref.is_keyframe == got.is_keyframe))
                if len(ref.kept_indices) == len(got.kept_indices):
                    acc['device_vs_numpy_token_cos'].append(cosine_rows(got.tokens, ref.tokens))
        if timed:
            _accuracy(acc, outs)

    gc.enable()
    report = _report(args, stats, action, acc, names, n, pipes, planners, captured, build_s, encoder, lm)
    report['decision_selftest'] = _decision_selftest(encoder.grid_hw, args.device)
    report['perception_stage_profile_ms'] = _profile_stages(pipes, encoder, args)
    report['graph_captures_during_timed_frames'] = _captures(pipes, planners) - (captures_at_start or 0)
    if args.knob_frames > 0 and 'opt_pruned' in names:
        report['knobs'] = run_knobs(lm, encoder, instruction_ids, args, dtype, sync)
    _print(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as fh:
            json.dump(report, fh, indent=2)
    return report


def _accuracy(acc, outs):
    full = outs.get('opt_full')
    if full is None:
        return
    f_res, f_logits, f_plan = full
    for name, key_cos, key_tok in (('opt_pruned', 'feature_cos_pruned_vs_full', 'next_token_pruned'),
                                   ('opt_adaptive', None, 'next_token_adaptive'),
                                   ('eager_full', 'feature_cos_opt_vs_eager', 'next_token_opt_vs_eager')):
        if name not in outs or outs[name][1] is None:
            continue
        res, logits, plan = outs[name]
        if key_cos:
            acc[key_cos].append(cosine_rows(res.tokens, f_res.tokens[res.kept_indices]))
        acc[key_tok].append(bool(int(logits.argmax()) == int(f_logits.argmax())))
        if name == 'opt_pruned':
            acc['logit_cos_pruned'].append(float(torch.nn.functional.cosine_similarity(logits, f_logits, dim=0)))
            if plan is not None and f_plan is not None:
                acc['plan_pruned'].append(bool(np.array_equal(plan, f_plan)))


def _report(args, stats, action, acc, names, n, pipes, planners, captured, build_s, encoder, lm):
    settings = {}
    for name in names:
        s = stats[name]
        per_frame = [p + (0.0 if h else q) for p, h, q in zip(s['perception'], s['hit'], _fill(s))]
        settings[name] = dict(
            perception_ms=summary(s['perception']), prefill_ms=summary(s['prefill']), decode_ms=summary(s['decode']),
            perception_plus_prefill_ms=summary(per_frame), frame_total_ms=summary(s['step']),
            hit_frame_total_ms=summary([t for t, h in zip(s['step'], s['hit']) if h]),
            plan_cache_hit_rate=float(np.mean(s['hit'])) if s['hit'] else 0.0,
            kept_tokens=float(np.mean(s['kept'])), recomputed_tokens=float(np.mean(s['recomputed'])),
            host_syncs_per_frame=float(np.mean(s['syncs'])),
            perception_gflops=float(np.mean(s['perception_flops']) / 1e9),
            prefill_gflops=float(np.mean(s['prefill_flops']) / 1e9) if s['prefill_flops'] else 0.0,
            graphs=dict(perception=getattr(pipes[name], 'graphs', None) and pipes[name].graphs.stats(),
                        planner=planners[name].graphs.stats()))
    headline = 'opt_plancache' if 'opt_plancache' in names else 'opt_pruned'
    speed = {}
    for name in names:
        if name in ('opt_full', 'eager_full'):
            continue
        for base in ('opt_full', 'eager_full'):
            if base in settings:
                # Per-frame perception + prefill (prefill counted only where it ran: plan-cache misses).
                b = settings[base]['perception_plus_prefill_ms']
                m = settings[name]['perception_plus_prefill_ms']
                speed.setdefault(name, {})[f'vs_{base}'] = dict(p50=b['p50'] / m['p50'], mean=b['mean'] / m['mean'])
    mean_or_nan = lambda v: float(np.mean(v)) if v else float('nan')  # noqa: E731
    device_name = torch.cuda.get_device_name(0) if args.device == 'cuda' else platform.processor() or 'cpu'
    return dict(
        device=device_name, scale=args.scale, dtype=args.dtype, frames=args.frames,
        headline_setting=headline,
        speedup_vs_optimised_full=speed.get(headline, {}).get('vs_opt_full', {}).get('p50'),
        speedup_vs_eager_full=speed.get(headline, {}).get('vs_eager_full', {}).get('p50'),
        every_frame_prefill=dict(setting='opt_pruned',
                                 speedup_vs_optimised_full=speed.get('opt_pruned', {}).get('vs_opt_full', {}).get('p50'),
                                 speedup_vs_eager_full=speed.get('opt_pruned', {}).get('vs_eager_full', {}).get('p50')),
        speedups=speed, settings=settings,
        action_head_chunk_ms=dict(eager=summary(action['eager']), graph=summary(action['graph']),
                                  steps=captured.steps, graphs=captured.graphs.stats()),
        accuracy={k: mean_or_nan(v) for k, v in acc.items()},
        shapes=dict(vision=SCALES[args.scale]['vision'], lm=SCALES[args.scale]['lm'], patches=n,
                    text_tokens=TEXT_TOKENS, decode_tokens=args.decode_tokens),
        triton_fps=dict(available=triton_fps_available(), disabled_reason=list(fps_triton._DISABLED),
                        best_config=str(getattr(getattr(fps_triton, '_fps_fill_kernel', None), 'best_config', None))),
        versions=dict(torch=torch.__version__, transformers=__import__('transformers').__version__,
                      cuda=torch.version.cuda), build_s=build_s, args=vars(args))


def _profile_stages(pipes, encoder, args, frames=40):
    """Separate pass (a sync after every stage, so not part of the timed run): where perception's
    time goes, median ms per stage, for the optimised settings."""
    out = {}
    for name in ('opt_full', 'opt_pruned'):
        pipe = pipes.get(name)
        if pipe is None or not hasattr(pipe, 'profile'):
            continue
        pipe.reset()
        pipe.profile = {}
        for frame in moving_object_sequence(frames, size=encoder.image_size, seed=3):
            pipe.process(frame)
        out[name] = {stage: float(np.median(v[5:])) for stage, v in pipe.profile.items()}
        pipe.profile = None
    return out


def _decision_selftest(grid, device, trials=20):
    """Spatial-coverage selection on the device (Triton fill and torch loop) vs the numpy path, on
    saliency quantised like bf16 attention (many exact ties, where tie rules matter)."""
    from vla_ros.perception import pruning, torch_ops
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    same = {'triton': [], 'torch_loop': []}
    for t in range(trials):
        att = torch.from_numpy(rng.random(n)).to(torch.bfloat16).double().numpy()
        rel = np.where(rng.random(n) < 0.05, 1.0, 0.0)
        for budget in (n // 2, n // 4):
            want, _ = pruning.select_tokens(np.zeros((n, 1)), 'spatial_coverage', budget, grid, att, rel)
            sal = torch_ops.combined_saliency(torch.from_numpy(att).to(device), torch.from_numpy(rel).to(device), n, device)
            for name, flag in (('triton', None), ('torch_loop', False)):
                got = torch_ops.spatial_coverage(sal, budget, grid, 0.5, use_triton=flag).cpu().numpy()
                same[name].append(bool(np.array_equal(got, want)))
    return {name: float(np.mean(v)) for name, v in same.items()}


def _captures(pipes, planners):
    return sum(getattr(p, 'graphs', None).captures if hasattr(p, 'graphs') else 0 for p in pipes.values()) + \
        sum(p.graphs.captures for p in planners.values())


def _fill(s):
    """Prefill time per frame aligned with the frame list (0 on plan-cache hits)."""
    it = iter(s['prefill'])
    return [0.0 if h else next(it) for h in s['hit']]


def _print(r):
    print(f"\n{r['scale']} on {r['device']} ({r['dtype']}), {r['frames']} frames; ms per frame")
    head = f"{'setting':<15}{'tokens':>7}{'recomp':>7}{'hit':>6}{'perc p50':>10}{'prefill p50':>12}{'p+p p50':>9}{'p+p p99':>9}{'decode':>8}"
    print(head)
    print('-' * len(head))
    for name, s in r['settings'].items():
        print(f"{name:<15}{s['kept_tokens']:>7.0f}{s['recomputed_tokens']:>7.0f}{s['plan_cache_hit_rate']:>6.2f}"
              f"{s['perception_ms']['p50']:>10.2f}{s['prefill_ms']['p50']:>12.2f}"
              f"{s['perception_plus_prefill_ms']['p50']:>9.2f}{s['perception_plus_prefill_ms']['p99']:>9.2f}"
              f"{s['decode_ms']['p50']:>8.2f}")
    for name, sp in r['speedups'].items():
        print(f'{name}: ' + ', '.join(f"{k} p50 {v['p50']:.2f}x mean {v['mean']:.2f}x" for k, v in sp.items()))
    a = r['action_head_chunk_ms']
    print(f"action head chunk ({a['steps']} steps): eager p50 {a['eager']['p50']:.2f} ms, graph p50 "
          f"{a['graph']['p50']:.2f} p99 {a['graph']['p99']:.2f} ms")
    print('accuracy: ' + ', '.join(f'{k} {v:.3f}' for k, v in r['accuracy'].items()))
    for name, k in r.get('knobs', {}).items():
        print(f'knob {name}: {k}')


if __name__ == '__main__':
    main()

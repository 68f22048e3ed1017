"""Reporting and checks for bench_gpu_pipeline.py: stage statistics, speed-ups, accuracy on the same
frames, the per-stage perception profile and the device-vs-numpy decision self-test."""
from __future__ import annotations

import platform

import numpy as np
import torch

from bench.gpu_models import SCALES
from vla_ros.perception import fps_triton
from vla_ros.perception.fps_triton import triton_fps_available
from vla_ros.perception.synthetic import moving_object_sequence

TEXT_TOKENS = 16


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def summary(values):
    return dict(p50=pct(values, 50), p99=pct(values, 99), mean=float(np.mean(values)) if values else float('nan'),
                n=len(values))


def cosine_rows(a: np.ndarray, b: np.ndarray) -> float:
    num = (a * b).sum(1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float(np.mean(num / den))


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


def _accuracy_fast(acc, outs):
    """The fused-decoder settings against their own full baseline (same kernels, all tokens)."""
    ff = outs.get('opt_full_fast')
    if ff is None or ff[1] is None:
        return
    cos = lambda a, b: float(torch.nn.functional.cosine_similarity(a, b, dim=0))  # noqa: E731
    for name, tok_key, cos_key in (('opt_pruned_kv', 'next_token_pruned_kv_vs_full_fast', 'logit_cos_pruned_kv_vs_full_fast'),
                                   ('opt_pruned_fast', 'next_token_pruned_fast_vs_full_fast', None)):
        if name in outs and outs[name][1] is not None:
            acc[tok_key].append(bool(int(outs[name][1].argmax()) == int(ff[1].argmax())))
            if cos_key:
                acc[cos_key].append(cos(outs[name][1], ff[1]))
    for name, base in (('opt_pruned_kv_c', 'opt_pruned_kv'), ('opt_full_fast_c', 'opt_full_fast'),
                       ('opt_pruned_kv_c', 'opt_full_fast_c'), ('opt_pruned_kv_r2', 'opt_pruned_kv')):
        # Compiled layers vs the same setting eager; compiled pruned+reuse vs compiled full.
        if name in outs and base in outs and outs[name][1] is not None and outs[base][1] is not None:
            acc.setdefault(f'next_token_{name}_vs_{base}', []).append(
                bool(int(outs[name][1].argmax()) == int(outs[base][1].argmax())))
            acc.setdefault(f'logit_cos_{name}_vs_{base}', []).append(cos(outs[name][1], outs[base][1]))
    for name, base in (('opt_pruned_kv_int8', 'opt_pruned_kv'), ('opt_full_fast_int8', 'opt_full_fast')):
        if name in outs and base in outs and outs[name][1] is not None and outs[base][1] is not None:
            acc.setdefault(f'int8_next_token_{name}_vs_bf16', []).append(
                bool(int(outs[name][1].argmax()) == int(outs[base][1].argmax())))
            acc.setdefault(f'int8_logit_cos_{name}_vs_bf16', []).append(cos(outs[name][1], outs[base][1]))
    full = outs.get('opt_full')
    if full is not None and full[1] is not None:
        acc['next_token_full_fast_vs_full'].append(bool(int(full[1].argmax()) == int(ff[1].argmax())))
        acc['logit_cos_full_fast_vs_full'].append(cos(full[1], ff[1]))


def _compile_failed(planner) -> str:
    comp = getattr(planner, 'compiled', None)
    return '; '.join(c.failed for c in comp if c.failed) if comp else ''


def _compile_state(encoder):
    comp = getattr(encoder, '_compiled_layer', None)
    return None if comp is None else dict(failed=comp.failed, calls=comp.calls)


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
            p99_over_p50=pct(per_frame, 99) / pct(per_frame, 50) if per_frame else float('nan'),
            lm_rows_per_prefill=float(np.mean(s['lm_rows'])) if s['lm_rows'] else float('nan'),
            perception_gflops=float(np.mean(s['perception_flops']) / 1e9),
            prefill_gflops=float(np.mean(s['prefill_flops']) / 1e9) if s['prefill_flops'] else 0.0,
            graphs=dict(perception=getattr(pipes[name], 'graphs', None) and pipes[name].graphs.stats(),
                        planner=planners[name].graphs.stats()))
    enc_comp = _compile_state(encoder)
    compile_ok = all(getattr(pipes[x], 'compiled', False) and not _compile_failed(planners[x])
                     for x in ('opt_pruned_kv_c', 'opt_full_fast_c') if x in names) and \
        not (enc_comp and enc_comp['failed'])
    headline = next((h for h in ('opt_pruned_kv_c', 'opt_pruned_kv', 'opt_plancache', 'opt_pruned')
                     if h in names and (compile_ok or not h.endswith('_c'))), names[-1])
    speed = {}
    for name in names:
        if name in ('opt_full', 'eager_full'):
            continue
        for base in ('opt_full', 'eager_full', 'opt_full_fast', 'opt_full_fast_c', 'opt_full_fast_int8'):
            if base == name:
                continue
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
        speedup_vs_optimised_full_fast=speed.get(headline, {}).get('vs_opt_full_fast', {}).get('p50'),
        speedup_vs_optimised_full_compiled=speed.get(headline, {}).get('vs_opt_full_fast_c', {}).get('p50'),
        compiled_layers=dict(ok=compile_ok, encoder=enc_comp,
                             planner={x: _compile_failed(planners[x]) for x in ('opt_pruned_kv_c', 'opt_full_fast_c')
                                      if x in names}),
        int8=dict(setting='opt_pruned_kv_int8', note='int8 weight-only decoder matmuls; like with like = vs '
                  'opt_full_fast_int8; vs opt_full / eager_full mixes precisions',
                  speedup_vs_full_fast_int8=speed.get('opt_pruned_kv_int8', {}).get('vs_opt_full_fast_int8', {}).get('p50'),
                  speedup_vs_optimised_full=speed.get('opt_pruned_kv_int8', {}).get('vs_opt_full', {}).get('p50'),
                  speedup_vs_eager_full=speed.get('opt_pruned_kv_int8', {}).get('vs_eager_full', {}).get('p50')),
        plan_cache_amortised=dict(setting='opt_plancache',
                                  speedup_vs_optimised_full=speed.get('opt_plancache', {}).get('vs_opt_full', {}).get('p50'),
                                  speedup_vs_eager_full=speed.get('opt_plancache', {}).get('vs_eager_full', {}).get('p50')),
        speedups=speed, settings=settings,
        action_head_chunk_ms=dict(eager=summary(action['eager']), graph=summary(action['graph']),
                                  graph_rtc_prefix=summary(action.get('graph_rtc', [])),
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
    for name in ('opt_full', 'opt_pruned', 'opt_pruned_kv', 'opt_pruned_kv_r2'):
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
    same = {'triton': [], 'torch_loop': [], 'triton_continuous': []}
    for t in range(trials):
        # Continuous saliency (no ties), as the pipeline's minmax'd scores mostly are.
        att = rng.random(n)
        rel = np.where(rng.random(n) < 0.05, 1.0, 0.0)
        want, _ = pruning.select_tokens(np.zeros((n, 1)), 'spatial_coverage', n // 2, grid, att, rel)
        sal = torch_ops.combined_saliency(torch.from_numpy(att).to(device), torch.from_numpy(rel).to(device), n, device)
        got = torch_ops.spatial_coverage(sal, n // 2, grid, 0.5, use_triton=None).cpu().numpy()
        same['triton_continuous'].append(bool(np.array_equal(got, want)))
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
    head = (f"{'setting':<16}{'tokens':>7}{'recomp':>7}{'lm rows':>8}{'hit':>6}{'perc p50':>10}{'prefill p50':>12}"
            f"{'p+p p50':>9}{'p+p p99':>9}{'decode':>8}")
    print(head)
    print('-' * len(head))
    for name, s in r['settings'].items():
        print(f"{name:<16}{s['kept_tokens']:>7.0f}{s['recomputed_tokens']:>7.0f}{s['lm_rows_per_prefill']:>8.0f}"
              f"{s['plan_cache_hit_rate']:>6.2f}"
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

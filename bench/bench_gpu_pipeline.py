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
  opt_full_fast   opt_full with the planner as our fused decoder forward (SlotKVPrefill, no reuse):
                  the strongest full baseline
  opt_pruned_fast opt_pruned with that planner (no KV reuse; visual tokens at their patch positions)
  opt_pruned_kv   pruned + reuse with STAGGERED refresh (no keyframes) + the planner keeping its
                  keys/values per patch slot across frames: only changed visual tokens + the
                  instruction are prefilled (VLA-Cache-style)
  opt_pruned_kv_r2  opt_pruned_kv as the second round left it: host colour relevance, a host read of
                  the change count before the encoder graph and before the prefill graph (third
                  round's opt_pruned_kv: relevance in the selection graph, selection + encoder one
                  graph and change test + prefill one graph at a speculative bucket, one read each)
  *_c             opt_full_fast / opt_pruned_kv with the encoder and decoder layers as torch.compile'd
                  functions (inductor, default mode: norms, residuals, RoPE, activations fused around
                  cuBLAS matmuls), still inside the per-bucket CUDA graphs
  *_int8          opt_full_fast / opt_pruned_kv with int8 weight-only decoder matmuls (planning/int8.py);
                  their ratio is reported against each other (like with like) and beside the bf16 rows
Headline (top-level speedup_vs_*): opt_pruned_kv, p50 of perception + prefill on EVERY frame, vs
opt_full (h11's optimised full: transformers StaticCache prefill as a graph) and eager_full;
`speedup_vs_optimised_full_fast` compares with opt_full_fast (same fused kernels, all tokens);
`plan_cache_amortised` keeps h11's opt_plancache headline (planner only on cache misses).
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
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.gpu_knobs import run_knobs  # noqa: E402
from bench.gpu_report import (TEXT_TOKENS, _accuracy, _accuracy_fast, _captures, _decision_selftest, _print,  # noqa: E402
                              _profile_stages, _report, cosine_rows)
from bench.gpu_models import SCALES, lm_flops, load_lm, make_random_lm, vision_flops  # noqa: E402
from vla_ros.action.flow_graph import CapturedSampler  # noqa: E402
from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead  # noqa: E402
from vla_ros.config.perception import PerceptionConfig  # noqa: E402
from vla_ros.models.vision import make_demo_vision_encoder  # noqa: E402
from vla_ros.perception.device_pipeline import bucket_up, make_pipeline  # noqa: E402
from vla_ros.perception.encoder import VisionEncoder  # noqa: E402
from vla_ros.perception.synthetic import moving_object_sequence  # noqa: E402
from vla_ros.config.planning import PlannerConfig  # noqa: E402
from vla_ros.planning.base import PlanOutput  # noqa: E402
from vla_ros.planning.plan_cache import PlanCache  # noqa: E402
from vla_ros.planning.kv_prefill import SlotKVPrefill  # noqa: E402
from vla_ros.planning.prefill import PlannerPrefill  # noqa: E402

INSTRUCTION = 'touch the red cube'
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
    # Issue 11, second round: our own fused decoder forward (SlotKVPrefill) for the planner.
    'opt_full_fast': dict(perception=dict(ops='torch', pruning='none', keep_ratio=1.0, reuse_enabled=False),
                          graphs=True, decode=True, planner='kv', kv_reuse=False),
    'opt_pruned_fast': dict(perception=dict(ops='torch', **PRUNED), graphs=True, decode=True, planner='kv',
                            kv_reuse=False),
    'opt_pruned_kv': dict(perception=dict(ops='torch', refresh='staggered', **PRUNED), graphs=True, decode=True,
                          planner='kv', kv_reuse=True),
    # Third round: opt_pruned_kv as the second round left it (colour relevance on the host, two host
    # syncs per stage: the change count read before each encoder / prefill graph), for the delta.
    'opt_pruned_kv_r2': dict(perception=dict(ops='torch', refresh='staggered', device_relevance=False,
                                             speculative_bucket=False, **PRUNED),
                             graphs=True, decode=False, planner='kv', kv_reuse=True, speculate=False),
    # Third round: the same two with torch.compile'd layer functions (inductor fusions inside the graphs).
    'opt_full_fast_c': dict(perception=dict(ops='torch', pruning='none', keep_ratio=1.0, reuse_enabled=False,
                                            compile_layers=True),
                            graphs=True, decode=True, planner='kv', kv_reuse=False, compile='inductor'),
    'opt_pruned_kv_c': dict(perception=dict(ops='torch', refresh='staggered', compile_layers=True, **PRUNED),
                            graphs=True, decode=True, planner='kv', kv_reuse=True, compile='inductor'),
    # The same two with int8 weight-only decoder matmuls (compare these with each other: like with like).
    'opt_full_fast_int8': dict(perception=dict(ops='torch', pruning='none', keep_ratio=1.0, reuse_enabled=False),
                               graphs=True, decode=False, planner='kv', kv_reuse=False, quantize='int8'),
    'opt_pruned_kv_int8': dict(perception=dict(ops='torch', refresh='staggered', **PRUNED), graphs=True,
                               decode=False, planner='kv', kv_reuse=True, quantize='int8'),
}


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
    parser.add_argument('--decode', default='', help='comma list: only these settings run the plan decode '
                        '(default: as SETTINGS says; the decode is untimed for the perception + prefill numbers)')
    parser.add_argument('--knob-frames', type=int, default=0, help='frames for the fp8 / drop-layers drift runs')
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
    if args.decode:
        keep = set(args.decode.split(','))
        for name in names:
            SETTINGS[name] = dict(SETTINGS[name], decode=SETTINGS[name]['decode'] and name in keep)
    pipes, planners, caches = {}, {}, {}
    for name in names:
        spec = SETTINGS[name]
        cfg = PerceptionConfig(device=args.device, keyframe_interval=args.keyframe_interval,
                               cuda_graphs=spec['graphs'], **spec['perception'])
        pipes[name] = make_pipeline(encoder, cfg)
        pipes[name].set_instruction(INSTRUCTION)
        if spec.get('planner') == 'kv':
            planners[name] = SlotKVPrefill(lm, instruction_ids, encoder.hidden_size, n, args.decode_tokens,
                                           cuda_graphs=spec['graphs'], reuse=spec['kv_reuse'],
                                           recompute_buckets=cfg.recompute_buckets,
                                           quantize=spec.get('quantize', 'none'),
                                           speculate=spec.get('speculate', True),
                                           compile_layers=spec.get('compile', 'none'))
        else:
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
            if isinstance(planners[name], SlotKVPrefill):
                planners[name].precapture(counts, encoder.hidden_size, decode=SETTINGS[name]['decode'])
            else:
                planners[name].precapture(counts, encoder.hidden_size)

    # Full recompute on opt_pruned_kv's own tokens (untimed): the drift KV reuse costs.
    kv_ref = None
    if 'opt_pruned_kv' in names:
        kv_ref = SlotKVPrefill(lm, instruction_ids, encoder.hidden_size, n, args.decode_tokens,
                               cuda_graphs=dev.type == 'cuda', reuse=False)
        kv_ref.precapture({int(round(PRUNED['keep_ratio'] * n))}, encoder.hidden_size)
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
                                    'perception_flops', 'prefill_flops', 'syncs', 'lm_rows')} for name in names}
    action = {'eager': [], 'graph': [], 'graph_rtc': []}
    rtc_prefix = torch.randn(1, head.config.horizon, head.config.action_dim, generator=gen).to(args.device)
    rtc_weights = torch.linspace(1.0, 0.0, head.config.horizon).to(args.device)
    acc = {'feature_cos_pruned_vs_full': [], 'feature_cos_opt_vs_eager': [], 'next_token_pruned': [],
           'next_token_adaptive': [], 'next_token_opt_vs_eager': [], 'plan_pruned': [], 'logit_cos_pruned': [],
           'device_vs_numpy_same_kept': [], 'device_vs_numpy_same_reuse': [], 'device_vs_numpy_token_cos': [],
           'device_vs_numpy_kept_symmetric_diff': [], 'kv_reuse_next_token_vs_recompute': [], 'kv_reuse_logit_cos_vs_recompute': [],
           'next_token_pruned_kv_vs_full_fast': [], 'logit_cos_pruned_kv_vs_full_fast': [],
           'next_token_pruned_fast_vs_full_fast': [], 'next_token_full_fast_vs_full': [],
           'logit_cos_full_fast_vs_full': []}
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
                if isinstance(planner, SlotKVPrefill):
                    kept_dev = getattr(pipe, 'last_device_kept', None)
                    if kept_dev is None:
                        kept_dev = torch.from_numpy(result.kept_indices.astype(np.int64)).to(args.device)
                    first = planner.prefill(vis, kept_dev)
                else:
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
            if timed and name == 'opt_pruned_kv' and kv_ref is not None and not hit:
                want = kv_ref.prefill(vis, pipe.last_device_kept)['logits'].float()
                acc['kv_reuse_next_token_vs_recompute'].append(bool(int(want.argmax()) == int(logits.argmax())))
                acc['kv_reuse_logit_cos_vs_recompute'].append(
                    float(torch.nn.functional.cosine_similarity(want, logits, dim=0)))
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
                    lm_rows = (planner.last_recomputed if isinstance(planner, SlotKVPrefill) else k) + TEXT_TOKENS
                    s['lm_rows'].append(lm_rows)
                    s['prefill_flops'].append(lm_flops(lm_rows, lcfg))
                    if plan is not None:
                        s['decode'].append((t3 - t2) * 1e3)
        # Action head chunk on the pruned tokens: eager vs captured (same inputs).
        ref = outs.get('opt_pruned') or next(iter(outs.values()))
        vis_t = torch.from_numpy(ref[0].tokens).to(args.device)[None]
        mask = torch.ones(vis_t.shape[:2], dtype=torch.bool, device=args.device)
        plan_t = torch.randn(1, 8, head.config.plan_dim, generator=gen).to(args.device)
        proprio = torch.randn(1, head.config.proprio_dim, generator=gen).to(args.device)
        for kind in ('eager', 'graph', 'graph_rtc'):
            sync()
            ta = time.perf_counter()
            if kind == 'eager':
                head.sample(vis_t, mask, plan_t, proprio)
            elif kind == 'graph':
                captured(vis_t, mask, plan_t, proprio)
            else:                # with the real-time-chunking prefix, as the control loop runs it
                captured(vis_t, mask, plan_t, proprio, rtc_prefix, rtc_weights)
            sync()
            if timed:
                action[kind].append((time.perf_counter() - ta) * 1e3)
        if ref_pipe is not None:
            ref = ref_pipe.process(frame)
            got = outs['opt_pruned'][0]
            if timed:
                acc['device_vs_numpy_same_kept'].append(bool(np.array_equal(ref.kept_indices, got.kept_indices)))
                acc['device_vs_numpy_kept_symmetric_diff'].append(
                    len(set(ref.kept_indices.tolist()) ^ set(got.kept_indices.tolist())))
                acc['device_vs_numpy_same_reuse'].append(bool(ref.reuse_ratio == got.reuse_ratio
                                                              and ref.is_keyframe == got.is_keyframe))
                if len(ref.kept_indices) == len(got.kept_indices):
                    acc['device_vs_numpy_token_cos'].append(cosine_rows(got.tokens, ref.tokens))
        if timed:
            _accuracy(acc, outs)
            _accuracy_fast(acc, outs)

    gc.enable()
    report = _report(args, stats, action, acc, names, n, pipes, planners, captured, build_s, encoder, lm)
    report['decision_selftest'] = _decision_selftest(encoder.grid_hw, args.device)
    report['perception_stage_profile_ms'] = _profile_stages(pipes, encoder, args)
    report['speculative_bucket_overflows'] = {
        name: dict(perception=getattr(pipes[name], 'spec_overflows', None),
                   prefill=getattr(planners[name], 'spec_overflows', None)) for name in names}
    report['graph_captures_during_timed_frames'] = _captures(pipes, planners) - (captures_at_start or 0)
    from vla_ros.planning import int8 as int8_mod
    report['int8_kernel'] = dict(triton=int8_mod.triton_int8_available(args.device), failed=list(int8_mod._FAILED)[:2],
                                 tiles='fixed per shape (int8._blocks)')
    if args.knob_frames > 0 and 'opt_pruned' in names:
        report['knobs'] = run_knobs(lm, encoder, instruction_ids, args, dtype, sync)
    _print(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as fh:
            json.dump(report, fh, indent=2)
    return report


if __name__ == '__main__':
    main()

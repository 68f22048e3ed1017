"""Planner knobs beyond pruning, each with the output drift it costs (used by bench_gpu_pipeline.py):
dropping the LM's final layers (SmolVLA keeps the first half of its VLM) and FP8 weights+activations.

The same pruned+reused visual tokens of `frames` frames go through the bf16 full-depth planner (the
reference) and through each variant; drift = next-token agreement with the reference and the cosine
of the next-token logits. The prefill is timed as a CUDA graph, as in the main benchmark.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from vla_ros.config.perception import PerceptionConfig
from vla_ros.perception.device_pipeline import make_pipeline
from vla_ros.perception.synthetic import moving_object_sequence
from vla_ros.planning.prefill import PlannerPrefill, drop_final_layers
from vla_ros.planning.quant import quantize_linears


def _collect_tokens(encoder, args, frames: int):
    cfg = PerceptionConfig(device=args.device, ops='torch', pruning='spatial_coverage', keep_ratio=0.5,
                           reuse_enabled=True, static_shapes=True, cuda_graphs=True,
                           keyframe_interval=args.keyframe_interval)
    pipe = make_pipeline(encoder, cfg)
    pipe.set_instruction('touch the red cube')
    out = []
    for frame in moving_object_sequence(frames, size=encoder.image_size, seed=1):
        pipe.process(frame)
        out.append(pipe.last_device_tokens.clone())
    return out


def _run(lm, tokens, instruction_ids, encoder, args, sync):
    planner = PlannerPrefill(lm, instruction_ids, encoder.hidden_size, encoder.num_patches, args.decode_tokens,
                             cuda_graphs=True)
    times, logits = [], []
    for rep in range(2):                       # first pass captures the graph(s)
        for vis in tokens:
            sync()
            t0 = time.perf_counter()
            out = planner.prefill(vis)
            sync()
            if rep:
                times.append((time.perf_counter() - t0) * 1e3)
                logits.append(out['logits'].float().clone())
    stats = planner.graphs.stats()
    del planner
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return times, logits, stats


def _drift(ref, logits, times, stats, **extra):
    agree = [int(a.argmax()) == int(b.argmax()) for a, b in zip(ref, logits)]
    cos = [float(torch.nn.functional.cosine_similarity(a, b, dim=0)) for a, b in zip(ref, logits)]
    return dict(prefill_p50_ms=float(np.percentile(times, 50)), prefill_p99_ms=float(np.percentile(times, 99)),
                next_token_agreement=float(np.mean(agree)), logit_cosine=float(np.mean(cos)),
                graph_failures=len(stats['failed']), **extra)


def run_knobs(lm, encoder, instruction_ids, args, dtype, sync):
    tokens = _collect_tokens(encoder, args, args.knob_frames)
    out = {}
    times, ref, stats = _run(lm, tokens, instruction_ids, encoder, args, sync)
    out['bf16_all_layers'] = _drift(ref, ref, times, stats, layers=lm.config.num_hidden_layers)
    base = lm.model
    layers, n_layers = base.layers, lm.config.num_hidden_layers
    layer_types = getattr(lm.config, 'layer_types', None)

    def restore():
        base.layers = layers
        lm.config.num_hidden_layers = n_layers
        if layer_types is not None:
            lm.config.layer_types = layer_types

    kept = drop_final_layers(lm, n_layers // 2)
    times, logits, stats = _run(lm, tokens, instruction_ids, encoder, args, sync)
    out['drop_half_layers'] = _drift(ref, logits, times, stats, layers=kept)
    restore()
    if args.device == 'cuda' and torch.cuda.get_device_capability() >= (8, 9):
        try:
            replaced = quantize_linears(base.layers, 'fp8')
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            times, logits, stats = _run(lm, tokens, instruction_ids, encoder, args, sync)
            out['fp8'] = _drift(ref, logits, times, stats, layers=n_layers, linears_replaced=replaced,
                                fast_path=all(getattr(m, 'fast', False) for m in base.layers.modules()
                                              if type(m).__name__ == 'Fp8Linear'))
            kept = drop_final_layers(lm, n_layers // 2)
            times, logits, stats = _run(lm, tokens, instruction_ids, encoder, args, sync)
            out['fp8_drop_half_layers'] = _drift(ref, logits, times, stats, layers=kept)
            restore()
        except Exception as exc:  # noqa: BLE001 - report, do not lose the main results
            out['fp8'] = dict(error=f'{type(exc).__name__}: {exc}'[:300])
    else:
        out['fp8'] = dict(skipped='needs a CUDA device with FP8 tensor cores (compute capability >= 8.9)')
    return out

"""Perception benchmark: tokens kept, reuse ratio, encoder + downstream latency with vs without
pruning / temporal reuse, measured side by side (settings interleaved frame by frame) in one run.

    .venv/bin/python bench/bench_perception.py --encoder tiny --frames 60
    .venv/bin/python bench/bench_perception.py --encoder small --frames 40
    python bench/bench_perception.py --device cuda --encoder siglip-base --frames 200

Scene: a mostly static simulated tabletop (three cubes, a small grey 'gripper' square sweeping
2 px per frame, +-1 LSB sensor noise), instruction "touch the red cube".
Encoder: a random-weight SigLIP vision tower of the chosen shape, saved and reloaded through the
real loading path (compute cost is what matters; weights do not change FLOPs).
"Downstream" = a stand-in for the planner's compute over the visual tokens: a linear projection to
planner width plus `--planner-layers` standard transformer encoder layers (width `--planner-width`,
64-dim heads, 4x MLP) over [16 instruction tokens + the kept visual tokens], i.e. a VLM prefill.
It does not benefit from reuse (it sees K tokens either way), only from pruning.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vla_ros.config.perception import PerceptionConfig  # noqa: E402
from vla_ros.models.vision import SIGLIP_BASE_SHAPE, SIGLIP_SO400M_SHAPE, make_demo_vision_encoder  # noqa: E402
from vla_ros.perception.encoder import VisionEncoder  # noqa: E402
from vla_ros.perception.pipeline import PerceptionPipeline  # noqa: E402
from vla_ros.perception.synthetic import moving_object_sequence  # noqa: E402

ENCODERS = {
    'tiny': dict(image_size=128, patch_size=16, hidden_size=64, num_layers=2, num_heads=4),   # the demo encoder
    'small': dict(image_size=224, patch_size=16, hidden_size=384, num_layers=6, num_heads=6),
    'siglip-base': SIGLIP_BASE_SHAPE,
    'so400m': SIGLIP_SO400M_SHAPE,
}
INSTRUCTION = 'touch the red cube'
INSTRUCTION_TOKENS = 16
SETTINGS = {
    'full': dict(pruning='none', keep_ratio=1.0, reuse_enabled=False),
    'prune50': dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=False),
    'reuse': dict(pruning='none', keep_ratio=1.0, reuse_enabled=True),
    'prune50+reuse': dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True),
}


class PlannerStandIn(torch.nn.Module):
    def __init__(self, vis_dim: int, width: int, layers: int):
        super().__init__()
        self.proj = torch.nn.Linear(vis_dim, width)
        self.text = torch.nn.Parameter(torch.randn(1, INSTRUCTION_TOKENS, width) * 0.02)
        layer = torch.nn.TransformerEncoderLayer(width, max(width // 64, 1), 4 * width, batch_first=True,
                                                 norm_first=True, dropout=0.0)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    @torch.inference_mode()
    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.text, self.proj(tokens)[None]], dim=1)
        return self.body(x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'),
                        help='encoder + downstream weights dtype (bfloat16 for GPU runs)')
    parser.add_argument('--encoder', default='tiny', choices=list(ENCODERS))
    parser.add_argument('--frames', type=int, default=60)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--keyframe-interval', type=int, default=10)
    parser.add_argument('--planner-width', type=int, default=576, help='SmolVLM-256M LM width')
    parser.add_argument('--planner-layers', type=int, default=4)
    parser.add_argument('--threads', type=int, default=1, help='torch CPU threads (0 = torch default)')
    parser.add_argument('--json', default='', help='also write the results here')
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = ENCODERS[args.encoder]
    with tempfile.TemporaryDirectory() as tmp:
        path = make_demo_vision_encoder(os.path.join(tmp, 'vision'), seed=0, **shape)
        dtype = getattr(torch, args.dtype)
        encoder = VisionEncoder.from_pretrained(path, device=args.device, dtype=dtype)
    planner = PlannerStandIn(encoder.hidden_size, args.planner_width, args.planner_layers)
    planner = planner.to(device=args.device, dtype=dtype).eval()
    pipes = {}
    for name, kw in SETTINGS.items():
        cfg = PerceptionConfig(device=args.device, keyframe_interval=args.keyframe_interval, **kw)
        pipes[name] = PerceptionPipeline(encoder, cfg)
        pipes[name].set_instruction(INSTRUCTION)

    sync = torch.cuda.synchronize if args.device == 'cuda' else (lambda: None)
    stats = {name: {'enc': [], 'down': [], 'kept': [], 'reuse': []} for name in SETTINGS}
    frames = moving_object_sequence(args.warmup + args.frames, size=encoder.image_size)
    try:
        from tqdm import tqdm
        frames = tqdm(frames, total=args.warmup + args.frames, desc=f'{args.encoder} on {args.device}')
    except ImportError:
        pass
    for i, frame in enumerate(frames):
        order = list(SETTINGS) if i % 2 == 0 else list(SETTINGS)[::-1]   # no setting always goes first
        for name in order:
            sync()
            t0 = time.perf_counter()
            result = pipes[name].process(frame)
            sync()
            t1 = time.perf_counter()
            planner(torch.from_numpy(result.tokens).to(args.device, dtype))
            sync()
            t2 = time.perf_counter()
            if i >= args.warmup:
                s = stats[name]
                s['enc'].append((t1 - t0) * 1e3)
                s['down'].append((t2 - t1) * 1e3)
                s['kept'].append(len(result.kept_indices))
                s['reuse'].append(result.reuse_ratio)

    n = encoder.num_patches
    print(f'\nencoder {args.encoder} {shape} ({n} patches), device {args.device} {args.dtype}, {args.frames} frames, '
          f'keyframe every {args.keyframe_interval}; downstream = {args.planner_layers} layers x width '
          f'{args.planner_width} over {INSTRUCTION_TOKENS} text + kept tokens; median ms/frame')
    header = (f'{"setting":<15}{"tokens":>8}{"reuse":>8}{"enc ms":>9}{"down ms":>9}{"total ms":>10}'
              f'{"enc x":>8}{"total x":>9}')
    print(header)
    print('-' * len(header))
    base = stats['full']
    base_enc, base_tot = np.median(base['enc']), np.median(np.add(base['enc'], base['down']))
    rows = {}
    for name, s in stats.items():
        enc, down = np.median(s['enc']), np.median(s['down'])
        tot = np.median(np.add(s['enc'], s['down']))
        rows[name] = dict(tokens=float(np.mean(s['kept'])), reuse_ratio=float(np.mean(s['reuse'])),
                          encoder_ms=float(enc), downstream_ms=float(down), total_ms=float(tot),
                          encoder_speedup=float(base_enc / enc), total_speedup=float(base_tot / tot))
        r = rows[name]
        print(f'{name:<15}{r["tokens"]:>8.1f}{r["reuse_ratio"]:>8.2f}{enc:>9.2f}{down:>9.2f}{tot:>10.2f}'
              f'{r["encoder_speedup"]:>7.2f}x{r["total_speedup"]:>8.2f}x')
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, 'w') as fh:
            json.dump(dict(args=vars(args), shape=shape, device_name=_device_name(args.device), rows=rows),
                      fh, indent=2)
    return rows


def _device_name(device: str) -> str:
    if device == 'cuda' and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return 'cpu'


if __name__ == '__main__':
    main()

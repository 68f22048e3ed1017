"""CPU perception: an older commit's path vs this checkout's, in ONE process, interleaved frame by frame
(robust to the load swings of a shared box), same encoder weights and frames, 1 torch thread. Also
checks both give identical results (kept indices, reuse ratio, tokens).

    .venv/bin/python bench/compare_cpu_paths.py --base c28d4da --encoder tiny --frames 60

The base commit's vla_ros package is exported with `git archive` and imported as `vla_ros_base`.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHAPES = {'tiny': dict(image_size=128, patch_size=16, hidden_size=64, num_layers=2, num_heads=4),
          'small': dict(image_size=224, patch_size=16, hidden_size=384, num_layers=6, num_heads=6)}
SET = {'full': dict(pruning='none', keep_ratio=1.0, reuse_enabled=False),
       'prune50+reuse': dict(pruning='spatial_coverage', keep_ratio=0.5, reuse_enabled=True)}


def export_base(commit: str) -> str:
    """git archive <commit> vla_ros -> <tmp>/vla_ros_base with its imports renamed."""
    root = tempfile.mkdtemp(prefix='vla_base_')
    archive = subprocess.run(['git', '-C', ROOT, 'archive', commit, 'vla_ros'], check=True, capture_output=True).stdout
    subprocess.run(['tar', '-x', '-C', root], input=archive, check=True)
    os.rename(os.path.join(root, 'vla_ros'), os.path.join(root, 'vla_ros_base'))
    for folder, _, files in os.walk(os.path.join(root, 'vla_ros_base')):
        for name in files:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                text = open(path).read().replace('vla_ros.', 'vla_ros_base.').replace('from vla_ros import',
                                                                                       'from vla_ros_base import')
                open(path, 'w').write(text)
    return root


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--base', default='c28d4da')
    parser.add_argument('--encoder', default='tiny', choices=list(SHAPES))
    parser.add_argument('--frames', type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, export_base(args.base))
    import vla_ros_base.config.perception as C0
    import vla_ros_base.perception.encoder as E0
    import vla_ros_base.perception.pipeline as P0

    import vla_ros.config.perception as C1
    import vla_ros.perception.encoder as E1
    import vla_ros.perception.pipeline as P1
    from vla_ros.models.vision import make_demo_vision_encoder
    from vla_ros.perception.synthetic import moving_object_sequence
    path = make_demo_vision_encoder(tempfile.mkdtemp() + '/v', seed=0, **SHAPES[args.encoder])
    encs = {'base': E0.VisionEncoder.from_pretrained(path), 'new': E1.VisionEncoder.from_pretrained(path)}
    pipes = {}
    for s, kw in SET.items():
        pipes[('base', s)] = P0.PerceptionPipeline(encs['base'], C0.PerceptionConfig(**kw))
        pipes[('new', s)] = P1.PerceptionPipeline(encs['new'], C1.PerceptionConfig(**kw))
    for p in pipes.values():
        p.set_instruction('touch the red cube')
    times = {k: [] for k in pipes}
    same = []
    for i, frame in enumerate(moving_object_sequence(args.frames + 5, size=encs['new'].image_size)):
        keys = list(pipes) if i % 2 == 0 else list(pipes)[::-1]
        res = {}
        for k in keys:
            t = time.perf_counter()
            res[k] = pipes[k].process(frame)
            if i >= 5:
                times[k].append((time.perf_counter() - t) * 1e3)
        for s in SET:
            a, b = res[('base', s)], res[('new', s)]
            same.append(np.array_equal(a.kept_indices, b.kept_indices) and abs(a.reuse_ratio - b.reuse_ratio) < 1e-9
                        and np.allclose(a.tokens, b.tokens, atol=1e-5))
    out = {f'{v}/{s} median ms': round(float(np.median(t)), 3) for (v, s), t in times.items()}
    out['identical_results'] = float(np.mean(same))
    print(args.encoder, json.dumps(out))


if __name__ == '__main__':
    main()

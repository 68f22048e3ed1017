"""Closed-loop success and latency with the efficiency features on vs off (the README table).

Runs the full stack (one process per node, as `ros2 launch` would) on the simulated arm for
N episodes per setting, records a bag for each, and evaluates both bags side by side:

    .venv/bin/python bench/closed_loop_ablation.py --episodes 20 --out runs/ablation

"on"  = defaults (spatial-coverage pruning at keep_ratio 0.5, temporal reuse, plan cache);
"off" = every patch token kept and recomputed each frame, plan cache disabled.
"""
import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SETTINGS = {
    'on': [],
    'off': ['perception.pruning=none', 'perception.keep_ratio=1.0', 'perception.reuse_enabled=false',
            'planner.cache_enabled=false'],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--episodes', type=int, default=20)
    parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'ablation'))
    parser.add_argument('--settings', nargs='+', default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument('--planner', default='lightweight')
    parser.add_argument('--extra', action='append', default=[], help='extra --set for every run')
    args = parser.parse_args(argv)
    stamp = time.strftime('%Y%m%d_%H%M%S')
    bags = []
    for label in args.settings:
        bag = os.path.join(args.out, f'{stamp}_{label}', 'bag')
        cmd = [sys.executable, '-m', 'vla_ros.bringup', '--processes', '--episodes', str(args.episodes),
               '--planner', args.planner, '--record', bag]
        for item in SETTINGS[label] + args.extra:
            cmd += ['--set', item]
        print(f'[ablation] {label}: {" ".join(cmd[1:])}', flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
        bags.append((label, bag))
    from vla_ros.eval.evaluate import main as evaluate_main
    out = os.path.join(args.out, f'{stamp}_compare')
    argv = [b for _, b in bags] + sum((['--label', label] for label, _ in bags), []) + ['--out', out]
    rc = evaluate_main(argv)
    table = os.path.join(out, 'comparison.md')
    if os.path.isfile(table):
        print(open(table).read())
    return rc


if __name__ == '__main__':
    sys.exit(main())

"""Success rate of a task's scripted expert alone (no noise, no learning), with a Wilson interval.

    python -m vla_ros.training.expert_check --task pick_place --episodes 200 --workers 16
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional


def expert_success(task: str, seeds: List[int], workers: int = 1, timeout_s: float = 20.0,
                   max_steps: int = 400, progress: bool = True) -> dict:
    from vla_ros.eval.stats import wilson_interval
    from vla_ros.training.rollouts import expert_outcome, run_jobs

    results = run_jobs(expert_outcome, [{'seed': s, 'max_steps': max_steps} for s in seeds], workers, timeout_s,
                       desc=f'{task} expert', progress=progress, task=task)
    wins = sum(r['success'] for r in results)
    lo, hi = wilson_interval(wins, len(results))
    return {'task': task, 'episodes': len(results), 'successes': wins, 'success_rate': wins / max(1, len(results)),
            'wilson95': [round(lo, 4), round(hi, 4)],
            'failed_seeds': [r['seed'] for r in results if not r['success']],
            'mean_time_to_success_s': (sum(r['elapsed_s'] for r in results if r['success']) / max(1, wins))}


def main(argv: Optional[List[str]] = None) -> int:
    from vla_ros.config.tasks import TASKS

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--task', default='pick_place', choices=TASKS)
    p.add_argument('--episodes', type=int, default=200)
    p.add_argument('--seed', type=int, default=100000, help='first seed')
    p.add_argument('--workers', type=int, default=1)
    p.add_argument('--episode-timeout-s', type=float, default=20.0)
    p.add_argument('--out', default='', help='write the JSON result here too')
    args = p.parse_args(argv)
    res = expert_success(args.task, list(range(args.seed, args.seed + args.episodes)), args.workers,
                         args.episode_timeout_s)
    text = json.dumps(res, indent=1)
    print(text, flush=True)
    if args.out:
        with open(args.out, 'w') as fh:
            fh.write(text + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Rows compared on the same seeds: each row's success rate minus the base row's, with a paired 95% interval.

The ablation rows of `vla_eval_episodes` (ROS stack) and of `vla_train --eval-only` (no ROS) run the same
seeds in every row, so a feature's effect is best read from the seeds whose outcome changed when the feature
was switched off (discordant seeds), not from two independent Wilson intervals side by side. The interval is
Newcombe's hybrid score interval for paired proportions (`stats.paired_difference_interval`).

    vla_compare_rows bench/results/eval_pick_place_rows_clockfix [more runs ...] [--base full] [--out F.md]

Each path is a `vla_eval_episodes` output (a directory with episodes.json, or the file) or a directory of
`vla_train --eval-only` rows (<row>/eval_metrics.json). Several paths pool their episodes; an episode is
paired by (path, seed), so runs that repeat the same seeds add pairs instead of overwriting them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, Hashable, List, Sequence

from vla_ros.eval.stats import paired_difference_interval

Outcomes = Dict[Hashable, bool]          # (run, seed) -> success


def compare(base: Outcomes, other: Outcomes) -> dict:
    """other - base on the keys both rows ran."""
    shared = set(base) & set(other)
    both = sum(base[k] and other[k] for k in shared)
    only_base = sum(base[k] and not other[k] for k in shared)
    only_other = sum(other[k] and not base[k] for k in shared)
    neither = len(shared) - both - only_base - only_other
    diff, low, high = paired_difference_interval(both, only_base, only_other, neither)
    return {'paired_episodes': len(shared), 'base_successes': both + only_base,
            'row_successes': both + only_other, 'both': both, 'only_base': only_base, 'only_row': only_other,
            'neither': neither, 'difference': round(diff, 4), 'paired95': [round(low, 4), round(high, 4)]}


def compare_rows(rows: Dict[str, Outcomes], base: str = 'full') -> List[dict]:
    """Every row other than `base` against `base`; [] when there is no base row."""
    if base not in rows:
        return []
    return [dict(row=name, base=base, **compare(rows[base], outcomes))
            for name, outcomes in rows.items() if name != base]


def rows_of_episodes(per_episode: Sequence[dict], run: Hashable = 0) -> Dict[str, Outcomes]:
    """{row: {(run, seed): success}} of a per-episode table with 'row', 'seed' and 'success'."""
    rows: Dict[str, Outcomes] = {}
    for e in per_episode:
        rows.setdefault(e['row'], {})[(run, int(e['seed']))] = bool(e['success'])
    return rows


def load_rows(path: str, run: Hashable = 0) -> Dict[str, Outcomes]:
    """Rows of one harness output (episodes.json) or one directory of no-ROS rows (<row>/eval_metrics.json)."""
    harness = path if path.endswith('.json') else os.path.join(path, 'episodes.json')
    if os.path.isfile(harness):
        with open(harness) as fh:
            return rows_of_episodes(json.load(fh)['per_episode'], run)
    rows: Dict[str, Outcomes] = {}
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else []:
        metrics = os.path.join(path, name, 'eval_metrics.json')
        if os.path.isfile(metrics):
            with open(metrics) as fh:
                episodes = json.load(fh)['eval']['per_episode']
            rows[name] = {(run, int(e['seed'])): bool(e['success']) for e in episodes}
    if not rows:
        raise FileNotFoundError(f'{path}: neither episodes.json nor <row>/eval_metrics.json')
    return rows


def markdown(comparisons: Sequence[dict]) -> str:
    lines = ['| row | vs | paired episodes | successes (base / row) | only base / only row | difference (points) '
             '| paired 95% CI (points) |', '| --- | --- | --- | --- | --- | --- | --- |']
    for c in comparisons:
        lines.append(f"| {c['row']} | {c['base']} | {c['paired_episodes']} | {c['base_successes']} / "
                     f"{c['row_successes']} | {c['only_base']} / {c['only_row']} | {100 * c['difference']:+.1f} | "
                     f"[{100 * c['paired95'][0]:+.1f}, {100 * c['paired95'][1]:+.1f}] |")
    return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog='vla_compare_rows', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('paths', nargs='+', help='vla_eval_episodes outputs or directories of no-ROS rows')
    p.add_argument('--base', default='full', help='the row the others are compared with')
    p.add_argument('--out', default='', help='also write the table (markdown) and a .json next to it')
    args = p.parse_args(argv)
    pooled: Dict[str, Outcomes] = {}
    for run, path in enumerate(args.paths):
        for name, outcomes in load_rows(path, run).items():
            pooled.setdefault(name, {}).update(outcomes)
    comparisons = compare_rows(pooled, args.base)
    if not comparisons:
        print(f'vla_compare_rows: no row named {args.base!r} next to other rows (rows: {sorted(pooled)})',
              file=sys.stderr)
        return 2
    table = markdown(comparisons)
    print(table, end='')
    if args.out:
        with open(args.out, 'w') as fh:
            fh.write(table)
        with open(os.path.splitext(args.out)[0] + '.json', 'w') as fh:
            json.dump({'paths': args.paths, 'base': args.base, 'rows': comparisons}, fh, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())

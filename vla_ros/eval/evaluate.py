"""`vla_evaluate`: rosbag2 bag(s) -> metrics, plots and reports; several labelled bags -> comparison table.

    vla_evaluate runs/demo/bag --out runs/demo/report
    vla_evaluate runs/on/bag runs/off/bag --label on --label off --out runs/compare

Replays of one recording (`python -m vla_ros.eval.replay`) are also compared frame by frame:
kept tokens, plans, actions and latency on the very same source frames.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from vla_ros.eval.metrics import bag_info, compute_from_series, extract_series
from vla_ros.eval.bag_io import bag_summary
from vla_ros.eval.replay_compare import paired_differences, paired_markdown
from vla_ros.eval.report import comparison_table, markdown_table, summary_rows, write_report


def evaluate_bag(bag: str, out_dir: Optional[str], *, progress: bool = True, label: str = '',
                 limits: Optional[dict] = None) -> dict:
    """Metrics for one bag; writes the report into out_dir when given."""
    summary = bag_summary(bag)
    series = extract_series(bag, progress=progress, desc=label or os.path.basename(os.path.normpath(bag)))
    metrics = compute_from_series(series, **(limits or {}))
    metrics['bag'] = bag_info(bag, summary)
    if label:
        metrics['label'] = label
    if out_dir:
        metrics['report_files'] = write_report(metrics, series, out_dir,
                                               title=f'vla_ros evaluation: {label}' if label else 'vla_ros evaluation')
    return metrics


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog='vla_evaluate', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('bags', nargs='+', help='rosbag2 directories (with metadata.yaml)')
    parser.add_argument('--out', required=True, help='report directory (one sub-directory per bag if several)')
    parser.add_argument('--label', action='append', default=[],
                        help='label per bag, in order (compare mode: column names of the comparison table)')
    parser.add_argument('--max-velocity', type=float, default=None,
                        help='joint speed limit [rad/s] for the safety check (default: action.safety.max_velocity)')
    parser.add_argument('--control-rate-hz', type=float, default=None,
                        help='nominal command rate for the step limit (default: action.control_rate_hz)')
    parser.add_argument('--no-progress', action='store_true', help='no progress bars')
    args = parser.parse_args(argv)
    if args.label and len(args.label) != len(args.bags):
        parser.error(f'{len(args.label)} --label for {len(args.bags)} bags: give one label per bag')
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    from tqdm import tqdm
    limits = {'max_velocity': args.max_velocity, 'control_rate_hz': args.control_rate_hz}
    labels = args.label or [os.path.basename(os.path.normpath(b)) or f'bag{i}' for i, b in enumerate(args.bags)]
    if len(set(labels)) != len(labels):  # same bag names from different runs: make directories unique
        labels = [f'{i}_{label}' for i, label in enumerate(labels)]
    several = len(args.bags) > 1
    results = []
    failed = False
    bags = tqdm(list(zip(args.bags, labels)), desc='bags', unit='bag', disable=args.no_progress or not several)
    for bag, label in bags:
        out_dir = os.path.join(args.out, label) if several else args.out
        try:
            metrics = evaluate_bag(bag, out_dir, progress=not args.no_progress,
                                   label=label if (several or args.label) else '', limits=limits)
        except Exception as exc:  # report the other bags anyway
            print(f'[vla_evaluate] cannot evaluate {bag}: {exc}', file=sys.stderr)
            failed = True
            continue
        results.append((label, metrics))
        print(f'\n== {label}: {bag}  ->  {metrics["report_files"]["html"]}')
        print(markdown_table(['section', 'metric', 'value'], summary_rows(metrics)))
        for note in metrics['notes']:
            print(f'  note: {note}')
    if several and results:
        table = comparison_table(results)
        evaluated = {label for label, _ in results}
        paired = paired_differences([(label, bag) for bag, label in zip(args.bags, labels) if label in evaluated])
        os.makedirs(args.out, exist_ok=True)
        if paired is not None:
            table += '\n\n' + paired_markdown(paired)
            with open(os.path.join(args.out, 'paired_differences.json'), 'w') as fh:
                json.dump(paired, fh, indent=2)
        with open(os.path.join(args.out, 'comparison.md'), 'w') as fh:
            fh.write(table + '\n')
        with open(os.path.join(args.out, 'comparison.json'), 'w') as fh:
            json.dump({label: {'bag': m['bag']['path'], 'report': m['report_files']['json']} for label, m in results},
                      fh, indent=2)
        print('\n== comparison\n' + table)
    return 1 if failed or not results else 0


if __name__ == '__main__':
    sys.exit(main())

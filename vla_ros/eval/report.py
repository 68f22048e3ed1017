"""Metrics -> report.json, report.md, PNG plots and one self-contained report.html (PNGs inlined)."""
from __future__ import annotations

import base64
import html
import json
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from vla_ros.eval.metrics import NS_PER_MS, NS_PER_S, BagSeries, seam_indices
from vla_ros.eval.metrics import latency_samples as metrics_latency_samples

LATENCY_LABELS = {
    'perception_compute_ms': 'perception compute',
    'image_to_tokens_ms': 'image stamp -> tokens received',
    'planner_latency_ms': 'planner (all messages)',
    'planner_latency_miss_ms': 'planner (cache misses)',
    'plan_age_ms': 'plan age at receipt',
    'action_inference_ms': 'action head inference',
    'frame_to_chunk_ms': 'image stamp -> chunk',
    'end_to_end_ms': 'image stamp -> first command',
}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return 'n/a'
    if isinstance(value, bool):
        return 'yes' if value else 'no'
    if isinstance(value, float):
        return f'{value:.{digits}g}' if abs(value) < 1e4 else f'{value:.0f}'
    return str(value)


# ---------------------------------------------------------------- tables

def latency_rows(metrics: dict) -> List[List[str]]:
    rows = []
    for key, label in LATENCY_LABELS.items():
        s = metrics['latency'].get(key)
        rows.append([label] + ([_fmt(s[k]) for k in ('count', 'mean', 'p50', 'p95', 'max')] if s else ['n/a'] * 5))
    return rows


def summary_rows(metrics: dict) -> List[List[str]]:
    """Headline numbers, one per row (section, metric, value)."""
    rows = []
    succ = metrics.get('success')
    if succ:
        rows += [['success', 'success rate', _fmt(succ['success_rate'])],
                 ['success', 'episodes (done / seen)', f"{succ['episodes_done']} / {succ['episodes']}"],
                 ['success', 'time to success mean [s]',
                  _fmt(succ['time_to_success_s']['mean'] if succ['time_to_success_s'] else None)]]
    ctrl = metrics.get('control')
    if ctrl:
        for base in ('from_header_stamps', 'from_log_times'):
            c = ctrl.get(base)
            if c:
                rows += [['control', f'rate [Hz] ({base})', _fmt(c['rate_hz'])],
                         ['control', f'period p50 / p99 [ms] ({base})',
                          f"{_fmt(c['period_ms']['p50'])} / {_fmt(c['period_ms']['p99'])}"],
                         ['control', f'jitter p50 / p99 [ms] ({base})',
                          f"{_fmt(c['jitter_ms']['p50'])} / {_fmt(c['jitter_ms']['p99'])}"]]
    tok = metrics.get('tokens')
    if tok:
        rows += [['perception', 'keep ratio (mean)', _fmt(tok['keep_ratio_mean'])],
                 ['perception', 'tokens kept (mean)', _fmt(tok['tokens_kept']['mean'] if tok['tokens_kept'] else None)],
                 ['perception', 'reuse ratio (mean)', _fmt(tok['reuse_ratio_mean'])],
                 ['perception', 'keyframe fraction', _fmt(tok['keyframe_fraction'])]]
    plan = metrics.get('plan_cache')
    if plan:
        rows += [['planner', 'plan cache hit rate', _fmt(plan['hit_rate'])],
                 ['planner', 'plan messages / distinct plans', f"{plan['plans']} / {plan['distinct_plan_ids']}"]]
    seams = metrics.get('seams')
    if seams:
        rows += [['seams', 'max joint step at chunk seams [rad]', _fmt(seams['seam']['max'])],
                 ['seams', 'max joint step elsewhere [rad]', _fmt(seams['other']['max'])],
                 ['seams', 'mean joint step, seams / elsewhere', _fmt(seams['seam_to_other_mean_ratio'])]]
    safety = metrics.get('safety')
    if safety and 'max_step' in safety:
        rows += [['safety', 'max command step [rad] (limit)', f"{_fmt(safety['max_step'])} ({_fmt(safety['step_limit'])})"],
                 ['safety', 'steps over limit', _fmt(safety['steps_over_limit'])],
                 ['safety', 'episode-reset re-anchor steps (not counted above; max [rad])',
                  f"{_fmt(safety.get('episode_reset_steps'))} ({_fmt(safety.get('max_reset_step'))})"],
                 ['safety', 'mid-episode re-anchor steps onto the measured arm (not counted above; max [rad])',
                  f"{_fmt(safety.get('reanchor_steps'))} ({_fmt(safety.get('max_reanchor_step'))})"],
                 ['safety', 'commands outside joint limits', _fmt(safety['position_limit_violations'])],
                 ['safety', 'estop messages (true)', _fmt(safety['estop_messages'])]]
    return rows


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c).replace('|', '\\|') for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = ''.join(f'<th>{html.escape(str(h))}</th>' for h in header)
    body = ''.join('<tr>' + ''.join(f'<td>{html.escape(str(c))}</td>' for c in row) + '</tr>' for row in rows)
    return f'<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def episode_rows(metrics: dict) -> List[List[str]]:
    succ = metrics.get('success') or {}
    return [[str(r['episode']), r['instruction'], _fmt(r['done']), _fmt(r['success']),
             _fmt(r['time_to_success_s']), _fmt(r['elapsed_s']), _fmt(r['final_distance_m'])]
            for r in succ.get('per_episode', [])]


EPISODE_HEADER = ['episode', 'instruction', 'done', 'success', 'time to success [s]', 'elapsed [s]',
                  'final distance [m]']
LATENCY_HEADER = ['stage', 'count', 'mean [ms]', 'p50 [ms]', 'p95 [ms]', 'max [ms]']


# ---------------------------------------------------------------- plots

def _plt():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def _seconds(ns_values, start_ns) -> np.ndarray:
    return (np.asarray(ns_values, dtype=np.int64) - int(start_ns)) / NS_PER_S


def make_plots(metrics: dict, series: BagSeries, out_dir: str) -> Dict[str, str]:
    """Write each plot whose data exists; returns name -> PNG path."""
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    start = series.start_ns or 0
    written: Dict[str, str] = {}

    def save(fig, name):
        path = os.path.join(out_dir, f'{name}.png')
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written[name] = path

    latency_samples = metrics_latency_samples(series)
    stages = [(k, v) for k, v in latency_samples.items() if len(v)]
    if stages:
        cols = min(3, len(stages))
        nrows = (len(stages) + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
        for ax, (key, values) in zip(axes.ravel(), stages):
            ax.hist(values, bins=min(40, max(5, len(values) // 3)), color='tab:blue', alpha=0.8)
            ax.set_title(LATENCY_LABELS[key], fontsize=9)
            ax.set_xlabel('ms')
        for ax in axes.ravel()[len(stages):]:
            ax.axis('off')
        save(fig, 'latency_hist')

    commands = series.commands
    if commands:
        width = max(c.positions.size for c in commands)
        cmds = [c for c in commands if c.positions.size == width]
        t = _seconds([c.log_ns for c in cmds], start)
        q = np.stack([c.positions for c in cmds])
        fig, ax = plt.subplots(figsize=(10, 4))
        for j in range(q.shape[1]):
            ax.plot(t, q[:, j], lw=1, label=f'joint {j + 1}')
        if series.chunks:
            seams, _ = seam_indices(cmds, series.chunks)
            for k in seams:
                ax.axvline(t[k + 1], color='grey', lw=0.5, alpha=0.5)
        ax.set_xlabel('time [s] (grey lines: chunk seams)')
        ax.set_ylabel('command [rad]')
        ax.legend(fontsize=7, ncol=min(7, q.shape[1]), loc='upper right')
        save(fig, 'commands')

        if len(cmds) >= 3:
            use_stamps = all(c.stamp_ns > 0 for c in cmds)
            times = np.asarray([c.stamp_ns if use_stamps else c.log_ns for c in cmds], dtype=np.int64)
            periods = np.diff(times) / NS_PER_MS
            fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.2))
            ax1.plot(t[1:], periods, lw=0.8)
            ax1.set_xlabel('time [s]')
            ax1.set_ylabel('command period [ms]')
            ax1.set_title('header stamps' if use_stamps else 'receive times', fontsize=9)
            ax2.hist(periods, bins=50, color='tab:orange')
            ax2.set_xlabel('command period [ms]')
            save(fig, 'control_jitter')

    if series.tokens:
        t = _seconds([x['log_ns'] for x in series.tokens], start)
        fig, ax = plt.subplots(figsize=(10, 3.2))
        ax.plot(t, [x['keep_ratio'] for x in series.tokens], label='keep ratio')
        ax.plot(t, [x['reuse_ratio'] for x in series.tokens], label='reuse ratio')
        key_t = [ti for ti, x in zip(t, series.tokens) if x['is_keyframe']]
        ax.plot(key_t, [1.02] * len(key_t), '|', color='k', label='keyframe')
        ax.set_ylim(-0.05, 1.08)
        ax.set_xlabel('time [s]')
        ax.legend(fontsize=8)
        save(fig, 'tokens')

    if series.plans:
        t = _seconds([p['log_ns'] for p in series.plans], start)
        hits = np.asarray([p['cache_hit'] for p in series.plans], dtype=np.float64)
        fig, ax = plt.subplots(figsize=(10, 3.2))
        ax.plot(t, hits, '.', alpha=0.5, label='cache hit (1) / miss (0)')
        ax.plot(t, np.cumsum(hits) / np.arange(1, hits.size + 1), label='hit rate so far')
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel('time [s]')
        ax.legend(fontsize=8)
        save(fig, 'plan_cache')

    rows = (metrics.get('success') or {}).get('per_episode', [])
    if rows:
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(rows) + 2), 3.2))
        colors = ['tab:green' if r['success'] else ('tab:red' if r['done'] else 'tab:grey') for r in rows]
        heights = [r['time_to_success_s'] if r['success'] and r['time_to_success_s'] is not None else r['elapsed_s']
                   for r in rows]
        ax.bar([str(r['episode']) for r in rows], heights, color=colors)
        ax.set_xlabel('episode (green: success, red: failure, grey: unfinished)')
        ax.set_ylabel('time to success / elapsed [s]')
        save(fig, 'episodes')
    return written


# ---------------------------------------------------------------- documents

def _json_default(obj):
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def write_report(metrics: dict, series: Optional[BagSeries], out_dir: str, title: str = 'vla_ros evaluation') -> Dict[str, str]:
    """Write report.json/.md/.html and the plots into out_dir; returns name -> path."""
    os.makedirs(out_dir, exist_ok=True)
    plots = make_plots(metrics, series, out_dir) if series is not None else {}
    paths = {'json': os.path.join(out_dir, 'report.json'), 'md': os.path.join(out_dir, 'report.md'),
             'html': os.path.join(out_dir, 'report.html')}
    with open(paths['json'], 'w') as fh:
        json.dump(metrics, fh, indent=2, default=_json_default)

    bag = metrics.get('bag') or {}
    md = [f'# {title}', '']
    if bag:
        md += [f"Bag: `{bag.get('path')}` ({bag.get('storage')}, {bag.get('messages')} messages, "
               f"{_fmt(bag.get('duration_s'))} s)", '']
    md += ['## Summary', '', markdown_table(['section', 'metric', 'value'], summary_rows(metrics)), '',
           '## Latency per stage', '', markdown_table(LATENCY_HEADER, latency_rows(metrics)), '']
    if episode_rows(metrics):
        md += ['## Episodes', '', markdown_table(EPISODE_HEADER, episode_rows(metrics)), '']
    if metrics.get('notes'):
        md += ['## Notes', ''] + [f'- {n}' for n in metrics['notes']] + ['']
    md += ['## Plots', ''] + [f'![{name}]({name}.png)' for name in plots] + ['']
    with open(paths['md'], 'w') as fh:
        fh.write('\n'.join(md))

    images = []
    for name, path in plots.items():
        with open(path, 'rb') as fh:
            data = base64.b64encode(fh.read()).decode('ascii')
        images.append(f'<h3>{html.escape(name)}</h3><img alt="{html.escape(name)}" src="data:image/png;base64,{data}">')
    notes = ''.join(f'<li>{html.escape(n)}</li>' for n in metrics.get('notes') or [])
    doc = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}th{{background:#eee}}img{{max-width:100%}}</style>
</head><body><h1>{html.escape(title)}</h1>
<p>{html.escape(str(bag.get('path', '')))}</p>
<h2>Summary</h2>{_html_table(['section', 'metric', 'value'], summary_rows(metrics))}
<h2>Latency per stage</h2>{_html_table(LATENCY_HEADER, latency_rows(metrics))}
{('<h2>Episodes</h2>' + _html_table(EPISODE_HEADER, episode_rows(metrics))) if episode_rows(metrics) else ''}
{('<h2>Notes</h2><ul>' + notes + '</ul>') if notes else ''}
<h2>Plots</h2>{''.join(images)}
</body></html>
"""
    with open(paths['html'], 'w') as fh:
        fh.write(doc)
    paths.update({f'png:{name}': path for name, path in plots.items()})
    return paths


COMPARE_ROWS = [
    ('success rate', lambda m: (m.get('success') or {}).get('success_rate')),
    ('episodes done', lambda m: (m.get('success') or {}).get('episodes_done')),
    ('end-to-end p50 [ms]', lambda m: _stat(m, 'end_to_end_ms', 'p50')),
    ('end-to-end p95 [ms]', lambda m: _stat(m, 'end_to_end_ms', 'p95')),
    ('perception compute mean [ms]', lambda m: _stat(m, 'perception_compute_ms', 'mean')),
    ('planner latency mean [ms]', lambda m: _stat(m, 'planner_latency_ms', 'mean')),
    ('action inference mean [ms]', lambda m: _stat(m, 'action_inference_ms', 'mean')),
    ('control rate [Hz]', lambda m: _control(m, 'rate_hz')),
    ('control jitter p99 [ms]', lambda m: (_control(m, 'jitter_ms') or {}).get('p99')),
    ('keep ratio', lambda m: (m.get('tokens') or {}).get('keep_ratio_mean')),
    ('reuse ratio', lambda m: (m.get('tokens') or {}).get('reuse_ratio_mean')),
    ('plan cache hit rate', lambda m: (m.get('plan_cache') or {}).get('hit_rate')),
    ('max joint step at seams [rad]', lambda m: ((m.get('seams') or {}).get('seam') or {}).get('max')),
]


def _stat(metrics, key, stat):
    s = (metrics.get('latency') or {}).get(key)
    return s[stat] if s else None


def _control(metrics, key):
    ctrl = metrics.get('control') or {}
    base = ctrl.get('from_header_stamps') or ctrl.get('from_log_times') or {}
    return base.get(key)


def comparison_table(labelled: Sequence[tuple]) -> str:
    """Markdown table, one column per (label, metrics)."""
    header = ['metric'] + [label for label, _ in labelled]
    rows = [[name] + [_fmt(getter(m)) for _, m in labelled] for name, getter in COMPARE_ROWS]
    return markdown_table(header, rows)

"""What the stack did during each episode, from the nodes' /diagnostics counters.

The bringup's episode monitor keeps the newest value of a few cumulative counters per node and, when an
episode ends, prints how much each grew since the previous episode ended:

    episode 3 stack: action.restarts=1 action.safety_stale=0 ... perception.frames_processed=141

`vla_eval_episodes` attaches those to the episode (`stack` in episodes.json) and compares failed with
successful episodes, so a burst of failures in one bringup (a starved node, holds on stale inputs, restarts)
shows up next to the outcome. Diagnostics arrive about once a second, so a count is that of the episode
give or take a second of the next one.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

# node name (last part of the status name) -> cumulative counters published in its diagnostics
EPISODE_COUNTERS: Dict[str, Sequence[str]] = {
    'action': ('safety_ticks', 'safety_stale', 'safety_holding', 'safety_reanchored', 'restarts', 'dropped'),
    'perception': ('frames_processed', 'drops_total'),
    'planner': ('results', 'replan_requests', 'dropped'),
}
STACK_LINE = re.compile(r'episode (\d+) stack: ((?:[\w.]+=-?[0-9]+ ?)+)')


class CounterDeltas:
    """Newest counter values per node; `episode_end()` returns their growth since the previous call."""

    def __init__(self, counters: Mapping[str, Sequence[str]] = EPISODE_COUNTERS):
        self.counters = counters
        self._latest: Dict[str, float] = {}
        self._at_last_end: Dict[str, float] = {}

    def update(self, status_name: str, values: Mapping[str, str]) -> None:
        node = status_name.rstrip('/').rsplit('/', 1)[-1]
        for key in self.counters.get(node, ()):
            try:
                self._latest[f'{node}.{key}'] = float(values[key])
            except (KeyError, ValueError):
                continue

    def episode_end(self) -> Dict[str, float]:
        deltas = {k: v - self._at_last_end.get(k, 0.0) for k, v in sorted(self._latest.items())}
        self._at_last_end = dict(self._latest)
        return deltas


def format_line(episode: int, deltas: Mapping[str, float]) -> Optional[str]:
    if not deltas:
        return None
    return f'episode {episode} stack: ' + ' '.join(f'{k}={int(round(v))}' for k, v in deltas.items())


def parse_lines(text: str) -> Dict[int, Dict[str, float]]:
    """{episode: {counter: growth}} of the bringup output's 'episode N stack: ...' lines (first wins)."""
    out: Dict[int, Dict[str, float]] = {}
    for m in STACK_LINE.finditer(text):
        ep = int(m.group(1))
        if ep not in out:
            out[ep] = {k: float(v) for k, v in (kv.split('=', 1) for kv in m.group(2).split())}
    return out


def compare_outcomes(episodes: Iterable[dict]) -> List[dict]:
    """Mean growth of each counter over the failed and over the successful episodes that carry `stack`."""
    groups: Dict[bool, List[Dict[str, float]]] = {True: [], False: []}
    for e in episodes:
        if e.get('stack'):
            groups[bool(e['success'])].append(e['stack'])
    keys = sorted({k for g in groups.values() for d in g for k in d})
    rows = []
    for key in keys:
        row = {'counter': key}
        for ok, name in ((False, 'failed'), (True, 'succeeded')):
            vals = [d[key] for d in groups[ok] if key in d]
            row[name] = sum(vals) / len(vals) if vals else None
            row[f'{name}_episodes'] = len(vals)
        rows.append(row)
    return rows

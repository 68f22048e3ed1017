"""Judging one fault run from the probe's records and the bag (used by vla_ros.eval.faults)."""
from __future__ import annotations

from typing import Dict, List

from vla_ros.eval import fault_metrics as fm

# Topics each node publishes: reliable samples in flight die with a kill -9'd publisher (reported apart).
PUBLISHED_BY = {'action': ('action/chunk',), 'sim_arm': ('joint_states', 'task/status'),
                'planner': ('planner/plan',)}
SIGINT_CHECK_S = 3.0    # the recorder's SIGINT: the bag must hold everything of the 3 s before it
HOLD_MODES = ('stale', 'decay', 'estop', 'hold', 'waiting')   # action node modes in which the arm holds
NODE_MODE_MARGIN_S = 1.5   # diagnostics come at 1 Hz: a hold still counts if reported this long after the fault


def judge(fault_name: str, probe, limits: fm.Limits, t0: float, t1: float, t_end: float,
          diag_before, expect_hold: bool, sim_sample_period_s: float = fm.SIM_SAMPLE_PERIOD_S) -> dict:
    js_rows, cmd_rows, status_rows, _, diag_after = probe.snapshot()
    resets_ns = [s[4] for s in status_rows if s[2]]     # the sim resets the arm right after a done status
    joints = len(probe.joint_names)
    js = fm.Series.from_rows(js_rows, joints).window(t0, t_end)
    cmd = fm.Series.from_rows(cmd_rows, joints)
    hold = fm.time_to_hold(cmd, t0, t1 + 0.5) if expect_hold else None
    modes, token_times = probe.liveness()
    return {'fault': fault_name, 't0': t0, 't1': t1, 't_end': t_end, 'expect_hold': expect_hold,
            'violations': fm.measured_violations(js, limits, resets_ns, sim_sample_period_s),
            'commanded_peak_speed': fm.commanded_peak_speed(cmd.window(t0, t_end)),
            'time_to_hold_s': hold, 'time_to_recover_s': fm.time_to_recover(cmd, t1, t_end),
            # the action node's own account (1 Hz diagnostics) and whether perception still produced
            'node_modes_during_fault': sorted({m for t, m in modes if t0 <= t <= t1 + NODE_MODE_MARGIN_S}),
            'node_held': any(m in HOLD_MODES for t, m in modes if t0 <= t <= t1 + NODE_MODE_MARGIN_S),
            'perception_tokens_after_fault': sum(1 for t in token_times if t1 <= t <= t_end),
            'drops': fm.drop_deltas(diag_before, diag_after)}


def failure_reasons(row: dict) -> List[str]:
    """Why a judged row fails (empty: it passes), in words for the table and the test."""
    out = []
    v = row['violations']
    if v['position'] or v['velocity'] or v['acceleration']:
        out.append(f"limit violations p/v/a {v['position']}/{v['velocity']}/{v['acceleration']}")
    if row.get('bag_missing'):
        out.append(f"{row['bag_missing']} messages missing from the bag {row.get('bag_missing_by_topic')}")
    if row['expect_hold'] and row['time_to_hold_s'] is None:
        out.append('no hold in the command stream' + (' (the node reported one)' if row['node_held'] else ''))
    if row['time_to_recover_s'] is None:
        out.append('no recovery' + ('' if row['perception_tokens_after_fault'] else
                                    ': perception published no tokens after the fault (starved or wedged)'))
    return out


def bag_check(rows: List[dict], probe, bag_dir: str, namespace: str, t_stop: float) -> dict:
    """Fill each row's bag_checked/bag_missing; return the whole-run numbers per topic."""
    from vla_ros.eval.bag_io import read_bag
    from vla_ros.eval.fault_probe import CHECKED_TOPICS, message_key
    in_bag: Dict[str, set] = {t: set() for t in CHECKED_TOPICS}
    names = {f'/{namespace}/{t}': t for t in CHECKED_TOPICS}
    for topic, _, _, msg in read_bag(bag_dir, topics=list(names)):
        in_bag[names[topic]].add(message_key(topic, msg))
    keys = probe.snapshot()[3]
    first = {t: min((tt for tt, k in keys[t] if k in in_bag[t]), default=None) for t in CHECKED_TOPICS}
    total = {}
    for t in CHECKED_TOPICS:
        if first[t] is not None:
            total[t] = dict(zip(('received', 'missing'), fm.missing_from_bag(keys[t], in_bag[t], first[t], t_stop)))
    for row in rows:
        checked = missing = 0
        row['bag_missing_by_topic'], row['bag_lost_with_killed_publisher'] = {}, 0
        killed = PUBLISHED_BY.get(row['fault'][len('kill_'):], ()) if row['fault'].startswith('kill_') else ()
        for t in CHECKED_TOPICS:
            if first[t] is None:
                continue
            start = row['t0'] - SIGINT_CHECK_S if row['fault'] == 'sigint_recording' else row['t0']
            c, m = fm.missing_from_bag(keys[t], in_bag[t], max(first[t], start), min(row['t_end'], t_stop))
            if m:
                row['bag_missing_by_topic'][t] = m
            if t in killed:     # reliable samples in flight die with a kill -9'd publisher: reported apart
                row['bag_lost_with_killed_publisher'] += m
                m = 0
            checked, missing = checked + c, missing + m
        row['bag_checked'], row['bag_missing'] = checked, missing
    return total


def episode_outcomes(rows: List[dict], probe) -> None:
    status = probe.snapshot()[2]
    for row in rows:
        done = [s for s in status if s[2] and s[0] >= row['t0']]
        row['episode'] = done[0][1] if done else None
        row['episode_success'] = done[0][3] if done else None


def markdown(rows: List[dict]) -> str:
    """The per-fault table as Markdown (faults.md next to faults.json)."""
    lines = ['| fault | violations p/v/a | peak measured speed (rad/s) | hold (s) | recover (s) | bag missing / checked '
             '| episode | node modes | load (1 min) | drops | result |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in rows:
        v = r['violations']
        hold = '-' if r['time_to_hold_s'] is None else f"{r['time_to_hold_s']:.2f}"
        rec = '-' if r['time_to_recover_s'] is None else f"{r['time_to_recover_s']:.2f}"
        ep = {True: 'success', False: 'fail', None: '?'}[r.get('episode_success')]
        drops = ', '.join(f'{k}={n}' for k, n in sorted(r['drops'].items()))
        load = r.get('load_average') or ['?']
        result = 'pass' if not r.get('failure_reasons') else 'FAIL: ' + '; '.join(r['failure_reasons'])
        lines.append(f"| {r['fault']} | {v['position']}/{v['velocity']}/{v['acceleration']} | {v['peak_speed']:.2f} | "
                     f"{hold} | {rec} | {r.get('bag_missing', '?')} / {r.get('bag_checked', '?')} | {ep} | "
                     f"{' '.join(r.get('node_modes_during_fault', []))} | {load[0]} | {drops} | {result} |")
    return '\n'.join(lines) + '\n'

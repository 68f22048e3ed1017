"""Control-loop timing and arm-motion smoothness from a recorded bag (no ROS).

Timing of the command stream, twice: by header stamps (when the control tick ran: the loop's own
regularity) and by the recorder's receive times (what a subscriber - the arm's controller - sees,
DDS and the receiving process included). Smoothness of the *measured* arm motion from
joint_states: jerk by finite differences on the uniform sampling grid, and how much larger it is
around chunk seams (where a new chunk or trajectory takes over) than elsewhere.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np

from vla_ros.eval.bag_io import RECORDER_LOSSES_KEY, read_bag

GAP_MS = 5.0
# Keys of the action node's diagnostics copied into the results (the loop's own view, whole run).
LOOP_KEYS = ('ticks', 'missed_deadlines', 'skipped_periods', 'commands_published', 'jitter_p99_ms', 'gap_max_ms',
             'late_p99_ms', 'tick_cost_p99_ms', 'tick_cost_max_ms', 'publish_max_ms',
             'run_gap_max_ms', 'run_gaps_over_5ms', 'gc_max_ms', 'gc_runs', 'realtime_granted',
             'run_late_max_ms', 'run_cost_max_ms', 'worst_voluntary_csw', 'worst_involuntary_csw',
             'worst_minor_faults', 'worst_major_faults', 'inputs_max_ms', 'safety_max_ms', 'trajectory_max_ms',
             'chunk_publish_max_ms')


def period_stats(times_s: Sequence[float], nominal_s: float, gap_ms: float = GAP_MS) -> Dict[str, float]:
    """Rate, jitter |period - nominal| p50/p99/max and gaps of a time series. A gap is a period more
    than `gap_ms` longer than nominal (the stream fell silent for > gap_ms beyond the expected tick)."""
    t = np.sort(np.asarray(times_s, dtype=np.float64))
    if t.size < 3:
        return {'samples': int(t.size)}
    periods_ms = np.diff(t) * 1e3
    jitter = np.abs(periods_ms - nominal_s * 1e3)
    return {'samples': int(t.size), 'duration_s': float(t[-1] - t[0]), 'rate_hz': float(1e3 / periods_ms.mean()),
            'jitter_p50_ms': float(np.percentile(jitter, 50)), 'jitter_p99_ms': float(np.percentile(jitter, 99)),
            'jitter_max_ms': float(jitter.max()), f'gaps_over_{gap_ms:g}ms': int(np.sum(periods_ms - nominal_s * 1e3 > gap_ms)),
            'max_gap_ms': float(periods_ms.max())}


def gaps_on_grid(times_s: Sequence[float], nominal_s: float, tol_ms: float = 0.05, gap_ms: float = GAP_MS) -> int:
    """Gaps whose period is a whole multiple (>= 2) of the nominal within `tol_ms`: the ticks kept their
    grid and messages in between are missing (recording losses, or periods the loop skipped after an
    overrun), as opposed to a late tick. For bags without the recorder's loss notes."""
    t = np.sort(np.asarray(times_s, dtype=np.float64))
    periods = np.diff(t) * 1e3
    gap = periods - nominal_s * 1e3 > gap_ms
    ratio = periods / (nominal_s * 1e3)
    return int(np.sum(gap & (np.abs(ratio - np.round(ratio)) * nominal_s * 1e3 <= tol_ms)))


def gap_intervals(times_s: Sequence[float], nominal_s: float, gap_ms: float = GAP_MS) -> np.ndarray:
    """[K, 2] (start, end) of every period more than `gap_ms` longer than nominal."""
    t = np.sort(np.asarray(times_s, dtype=np.float64))
    if t.size < 2:
        return np.zeros((0, 2))
    idx = np.nonzero(np.diff(t) * 1e3 - nominal_s * 1e3 > gap_ms)[0]
    return np.stack([t[idx], t[idx + 1]], axis=1)


def gaps_vs_floor(gaps: np.ndarray, floor_events: Sequence[dict], late_ms: float = GAP_MS) -> Dict[str, object]:
    """How many stream gaps coincide with a late wake-up (> late_ms) of an idle real-time probe thread
    (bench_wakeup_latency: events with wall_s = wake time, late_ms): those gaps the machine made
    (non-preemptible kernel, hypervisor), not the loop. Also lists the gaps (start wall time, ms)."""
    late = [(e['wall_s'] - e['late_ms'] * 1e-3, e['wall_s']) for e in floor_events if e['late_ms'] > late_ms]
    starts = np.asarray([a for a, _ in late])
    ends = np.asarray([b for _, b in late])
    both = 0
    for a, b in gaps:
        if starts.size and np.any((starts < b) & (ends > a)):
            both += 1
    return {'gaps': int(len(gaps)), 'gaps_with_probe_late_too': both, 'probe_late_wakeups': len(late),
            'gap_list': [[float(a), float((b - a) * 1e3)] for a, b in gaps[:50]]}


def recording_losses(bag: str, topic: str) -> Dict[int, int]:
    """{log time ns of the message after a gap: messages lost} the recorder noted for `topic` (its
    publishers' sequence numbers jumped), from the bag's custom data; empty for older bags."""
    import json
    from pathlib import Path

    import yaml
    meta = yaml.safe_load((Path(bag) / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    text = (meta.get('custom_data') or {}).get(RECORDER_LOSSES_KEY + topic)
    return {int(t): int(n) for t, n in json.loads(text)} if text else {}


def split_gaps(times_s: np.ndarray, log_ns: np.ndarray, nominal_s: float, losses: Dict[int, int],
               gap_ms: float = GAP_MS) -> Dict[str, float]:
    """Gaps of a stream (sorted by `times_s`) split into those that end at a message the recorder got
    right after losing some (`losses`, by log time: a recording loss, not a silent stream) and the rest."""
    order = np.argsort(times_s)
    t, log = np.asarray(times_s)[order], np.asarray(log_ns)[order]
    if t.size < 2:
        return {}
    periods = np.diff(t) * 1e3
    gap = periods - nominal_s * 1e3 > gap_ms
    lost_after = np.array([int(x) in losses for x in log[1:]], dtype=bool)
    stream = gap & ~lost_after
    return {'gaps_lost_in_recording': int(np.sum(gap & lost_after)), 'gaps_stream': int(np.sum(stream)),
            'max_gap_stream_ms': float(periods[stream].max()) if stream.any() else float(periods[~lost_after].max()),
            'messages_lost_in_recording': int(sum(losses.values()))}


def motion_smoothness(times_s: Sequence[float], positions: np.ndarray, seams_s: Iterable[float],
                      window_s: float = 0.05) -> Dict[str, float]:
    """Jerk of measured joint positions [N, J] (rad/s^3, max over joints) overall and within
    +-window_s of each seam, vs. away from seams."""
    t = np.asarray(times_s, dtype=np.float64)
    q = np.asarray(positions, dtype=np.float64)
    if t.size < 10:
        return {'samples': int(t.size)}
    order = np.argsort(t)
    t, q = t[order], q[order]
    dt = float(np.median(np.diff(t)))               # joint states are sampled on a fixed sim-time grid
    jerk = np.abs(np.diff(q, n=3, axis=0)).max(axis=1) / dt ** 3
    accel = np.abs(np.diff(q, n=2, axis=0)).max(axis=1) / dt ** 2
    t_jerk = t[1:-2] + 0.5 * dt                      # centre of each third difference
    seams = np.sort(np.asarray(list(seams_s), dtype=np.float64))
    seams = seams[(seams > t[0]) & (seams < t[-1])]
    near = np.zeros(t_jerk.size, dtype=bool)
    if seams.size:
        idx = np.searchsorted(seams, t_jerk)
        left = np.abs(t_jerk - seams[np.clip(idx - 1, 0, seams.size - 1)])
        right = np.abs(seams[np.clip(idx, 0, seams.size - 1)] - t_jerk)
        near = np.minimum(left, right) <= window_s
    out = {'samples': int(t.size), 'sample_dt_ms': dt * 1e3, 'seams': int(seams.size),
           'max_accel': float(accel.max()), 'max_jerk': float(jerk.max()), 'jerk_p99': float(np.percentile(jerk, 99)),
           'jerk_rms': float(np.sqrt(np.mean(jerk ** 2)))}
    if near.any() and (~near).any():
        out.update(seam_jerk_p95=float(np.percentile(jerk[near], 95)), seam_jerk_max=float(jerk[near].max()),
                   off_seam_jerk_p95=float(np.percentile(jerk[~near], 95)))
        out['seam_to_off_seam'] = out['seam_jerk_p95'] / max(out['off_seam_jerk_p95'], 1e-12)
    return out


def _stamp(msg) -> float:
    return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec


def analyze_bag(bag: str, namespace: str = '/vla', control_rate_hz: float = 100.0,
                skip_s: float = 5.0, progress: bool = False,
                floor_events: Optional[Sequence[dict]] = None) -> Dict[str, Dict[str, float]]:
    """Timing of `<ns>/action/command` (stamps and receive times) and smoothness of `<ns>/joint_states`
    with seams at chunk (ActionChunk receipt) or trajectory (JointTrajectory stamp) take-overs.
    The first `skip_s` seconds after the first command (start-up) are left out."""
    ns = namespace.rstrip('/')
    topics = {f'{ns}/action/command': 'cmd', f'{ns}/joint_states': 'js', f'{ns}/action/chunk': 'chunk',
              f'{ns}/arm/joint_trajectory': 'traj', '/diagnostics': 'diag'}
    loop_view: Dict[str, float] = {}
    cmd_stamp: List[float] = []
    cmd_recv: List[float] = []
    log_ns_list: List[int] = []
    js_t: List[float] = []
    js_q: List[np.ndarray] = []
    chunk_recv: List[float] = []
    traj_start: List[float] = []
    for topic, _, log_ns, msg in read_bag(bag, topics=list(topics), progress=progress):
        kind = topics[topic]
        if kind == 'cmd':
            cmd_stamp.append(_stamp(msg))
            cmd_recv.append(log_ns * 1e-9)
            log_ns_list.append(log_ns)
        elif kind == 'js':
            js_t.append(_stamp(msg))
            js_q.append(np.asarray(msg.position, dtype=np.float64))
        elif kind == 'chunk':
            chunk_recv.append(log_ns * 1e-9)
        elif kind == 'traj' and len(msg.points) > 1:
            traj_start.append(_stamp(msg))
        elif kind == 'diag':
            for st in msg.status:
                if st.name.rstrip('/').endswith(f'{ns}/action'):
                    values = {kv.key: kv.value for kv in st.values}
                    for key in LOOP_KEYS:
                        if key in values:
                            text = values[key]
                            try:
                                loop_view[key] = float({'True': 1.0, 'False': 0.0}.get(text, text))
                            except ValueError:
                                pass
    if not cmd_stamp:
        raise ValueError(f'{bag}: no {ns}/action/command messages (recorded with an older stack?)')
    t0 = min(cmd_stamp) + skip_s
    keep = np.asarray(cmd_stamp) >= t0
    nominal = 1.0 / control_rate_hz
    out = {'by_header_stamp': period_stats(np.asarray(cmd_stamp)[keep], nominal),
           'by_receive_time': period_stats(np.asarray(cmd_recv)[keep], nominal)}
    losses = recording_losses(bag, f'{ns}/action/command')
    for key, times in (('by_header_stamp', cmd_stamp), ('by_receive_time', cmd_recv)):
        out[key].update(split_gaps(np.asarray(times)[keep], np.asarray(log_ns_list)[keep], nominal, losses))
    out['by_header_stamp']['gaps_on_grid'] = gaps_on_grid(np.asarray(cmd_stamp)[keep], nominal)
    if floor_events is not None:   # header stamps and receive times are wall-clock (system) time
        for key, times in (('by_header_stamp', cmd_stamp), ('by_receive_time', cmd_recv)):
            out[key]['floor'] = gaps_vs_floor(gap_intervals(np.asarray(times)[keep], nominal), floor_events)
    if loop_view:   # the control loop's own counters (last diagnostics): ticks it ran vs messages recorded
        out['control_loop'] = dict(loop_view, recorded_commands=len(cmd_stamp))
    js_t_arr = np.asarray(js_t)
    keep_js = js_t_arr >= t0
    if keep_js.sum() > 10:
        seams = traj_start if traj_start else chunk_recv
        out['arm_motion'] = motion_smoothness(js_t_arr[keep_js], np.stack(js_q)[keep_js], seams)
    return out


def format_table(results: Dict[str, Dict[str, Dict[str, float]]], rows: Optional[Sequence[tuple]] = None) -> str:
    """Side-by-side text table: one column per run label."""
    rows = rows or [
        ('by_header_stamp', 'rate_hz', '{:.2f}'), ('by_header_stamp', 'jitter_p50_ms', '{:.3f}'),
        ('by_header_stamp', 'jitter_p99_ms', '{:.3f}'), ('by_header_stamp', 'jitter_max_ms', '{:.2f}'),
        ('by_header_stamp', f'gaps_over_{GAP_MS:g}ms', '{}'), ('by_header_stamp', 'max_gap_ms', '{:.2f}'),
        ('by_receive_time', 'rate_hz', '{:.2f}'), ('by_receive_time', 'jitter_p99_ms', '{:.3f}'),
        ('by_receive_time', f'gaps_over_{GAP_MS:g}ms', '{}'), ('by_receive_time', 'max_gap_ms', '{:.2f}'),
        ('by_header_stamp', 'gaps_lost_in_recording', '{}'), ('by_header_stamp', 'gaps_stream', '{}'),
        ('by_header_stamp', 'max_gap_stream_ms', '{:.2f}'), ('by_receive_time', 'gaps_lost_in_recording', '{}'),
        ('by_receive_time', 'gaps_stream', '{}'), ('by_receive_time', 'max_gap_stream_ms', '{:.2f}'),
        ('by_header_stamp', 'messages_lost_in_recording', '{}'), ('by_header_stamp', 'gaps_on_grid', '{}'),
        ('by_header_stamp', 'gaps_with_probe_late_too', '{}'), ('by_receive_time', 'gaps_with_probe_late_too', '{}'),
        ('by_header_stamp', 'probe_late_wakeups', '{}'),
        ('arm_motion', 'max_jerk', '{:.0f}'), ('arm_motion', 'jerk_p99', '{:.0f}'),
        ('arm_motion', 'seam_jerk_p95', '{:.0f}'), ('arm_motion', 'off_seam_jerk_p95', '{:.0f}'),
        ('arm_motion', 'seam_to_off_seam', '{:.2f}'), ('arm_motion', 'max_accel', '{:.1f}'),
        ('by_header_stamp', 'duration_s', '{:.0f}'),
        ('control_loop', 'ticks', '{:.0f}'), ('control_loop', 'recorded_commands', '{:.0f}'),
        ('control_loop', 'run_gaps_over_5ms', '{:.0f}'), ('control_loop', 'run_gap_max_ms', '{:.2f}'),
        ('control_loop', 'missed_deadlines', '{:.0f}'), ('control_loop', 'skipped_periods', '{:.0f}'),
        ('control_loop', 'jitter_p99_ms', '{:.3f}'), ('control_loop', 'gap_max_ms', '{:.2f}'),
        ('control_loop', 'tick_cost_p99_ms', '{:.3f}'), ('control_loop', 'tick_cost_max_ms', '{:.2f}'),
        ('control_loop', 'run_late_max_ms', '{:.2f}'), ('control_loop', 'run_cost_max_ms', '{:.2f}'),
        ('control_loop', 'inputs_max_ms', '{:.2f}'), ('control_loop', 'safety_max_ms', '{:.2f}'),
        ('control_loop', 'publish_max_ms', '{:.2f}'), ('control_loop', 'trajectory_max_ms', '{:.2f}'),
        ('control_loop', 'chunk_publish_max_ms', '{:.2f}'),
        ('control_loop', 'worst_voluntary_csw', '{:.0f}'), ('control_loop', 'worst_involuntary_csw', '{:.0f}'),
        ('control_loop', 'worst_minor_faults', '{:.0f}'), ('control_loop', 'worst_major_faults', '{:.0f}'),
        ('control_loop', 'gc_max_ms', '{:.2f}'), ('control_loop', 'realtime_granted', '{:.0f}'),
    ]
    labels = list(results)
    lines = [f'{"metric":<36}' + ''.join(f'{lab:>16}' for lab in labels)]
    for section, key, fmt in rows:
        cells = []
        for lab in labels:
            block = results[lab].get(section, {})
            value = block.get(key, block.get('floor', {}).get(key))
            cells.append(f'{fmt.format(value) if value is not None else "-":>16}')
        lines.append(f'{section + "." + key:<36}' + ''.join(cells))
    return '\n'.join(lines)

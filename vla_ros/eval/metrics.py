"""Bag -> metrics for the efficient-VLA stack (no ROS needed).

Topics are found by message type, not name, so bags recorded under any namespace (or by
`ros2 bag record`) evaluate the same. Every section is None when its topics are missing, and
the reason is added to `notes`, so a partial bag still yields a partial report.

Time bases: header stamps are producer clocks (image stamp travels with tokens, plans and
chunks); log times are the recorder's receive clock. On one host these are the same clock,
which is what the cross-stage latencies assume.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from vla_ros.eval.bag_io import bag_summary, read_bag

NS_PER_MS = 1e6
NS_PER_S = 1e9
MS_PER_S = 1e3
# Tolerance when comparing commanded values with limits: float32 round-off in the messages.
LIMIT_TOLERANCE = 1e-5
# The sim resets the arm at an episode start (it teleports to the new home pose) and the safety filter
# re-anchors the command stream where the arm now is: that one command step follows the arm, it does
# not drive it. The sim publishes the old episode's final status, resets, and publishes the new episode's
# first status up to a few hundred ms later (its status period); the re-anchoring step lands in between,
# give or take a few control ticks (receive times). The largest over-limit step in that span that moved the
# command onto the measured arm is counted as the reset's, apart from the driving steps.
RESET_WINDOW_S = 0.05
# The recorder takes joint states and commands from different DDS streams: the joint state that a command
# re-anchored on can be logged just after that command (0.2 ms after, in a fresh-clone main job's episode
# reset). A command "follows the arm" if it lands on a joint state received up to this long after it; no arm
# moves a whole over-limit step (>= 15 mrad at 1.5 rad/s, 100 Hz) on its own within it.
ARM_LOOKAHEAD_S = 0.005

TYPE_TOKENS = 'vla_ros_msgs/msg/LatentTokens'
TYPE_PLAN = 'vla_ros_msgs/msg/Plan'
TYPE_CHUNK = 'vla_ros_msgs/msg/ActionChunk'
TYPE_STATUS = 'vla_ros_msgs/msg/TaskStatus'
TYPE_TRAJECTORY = 'trajectory_msgs/msg/JointTrajectory'
TYPE_COMMAND = 'std_msgs/msg/Float64MultiArray'
TYPE_ESTOP = 'std_msgs/msg/Bool'
TYPE_DIAGNOSTICS = 'diagnostic_msgs/msg/DiagnosticArray'
TYPE_INSTRUCTION = 'std_msgs/msg/String'
TYPE_JOINT_STATE = 'sensor_msgs/msg/JointState'


def _field(msg, name: str, before: str):
    """Field `name`, or its name before the message convention change (bags recorded earlier)."""
    return getattr(msg, name) if hasattr(msg, name) else getattr(msg, before)


def _ms(msg, seconds_field: str, ms_field: str) -> float:
    """A duration in ms from the float64-seconds field, or the float32-ms field of older bags."""
    if hasattr(msg, seconds_field):
        return float(getattr(msg, seconds_field)) * MS_PER_S
    return float(getattr(msg, ms_field))


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


@dataclass
class Command:
    log_ns: int
    stamp_ns: int  # 0 when the command message has no header (Float64MultiArray)
    positions: np.ndarray


@dataclass
class BagSeries:
    """The per-message values the metrics and plots need, in log-time order."""
    tokens: List[dict] = field(default_factory=list)
    plans: List[dict] = field(default_factory=list)
    chunks: List[dict] = field(default_factory=list)
    trajectory: List[Command] = field(default_factory=list)
    joint_command: List[Command] = field(default_factory=list)
    status: List[dict] = field(default_factory=list)
    estop: List[tuple] = field(default_factory=list)
    diagnostics: Dict[str, Dict[str, str]] = field(default_factory=dict)
    instructions: List[str] = field(default_factory=list)
    joint_states: List[Command] = field(default_factory=list)   # the measured arm (`joint_states`), no names
    start_ns: Optional[int] = None

    @property
    def commands(self) -> List[Command]:
        """The command stream: trajectory messages carry stamps, so they are preferred."""
        return self.trajectory if self.trajectory else self.joint_command

    @property
    def command_source(self) -> Optional[str]:
        if self.trajectory:
            return TYPE_TRAJECTORY
        return TYPE_COMMAND if self.joint_command else None


def extract_series(bag_path, progress: bool = False, desc: str = '') -> BagSeries:
    series = BagSeries()
    wanted_types = {TYPE_TOKENS, TYPE_PLAN, TYPE_CHUNK, TYPE_STATUS, TYPE_TRAJECTORY, TYPE_COMMAND,
                    TYPE_ESTOP, TYPE_DIAGNOSTICS, TYPE_INSTRUCTION, TYPE_JOINT_STATE}
    topics = [name for name, info in bag_summary(bag_path)['topics'].items() if info['type'] in wanted_types]
    for topic, msgtype, log_ns, msg in read_bag(bag_path, topics=topics, progress=progress, desc=desc):
        if series.start_ns is None or log_ns < series.start_ns:
            series.start_ns = log_ns
        if msgtype == TYPE_TOKENS:
            series.tokens.append(dict(
                log_ns=log_ns, stamp_ns=_stamp_ns(msg.header), frame_id=int(_field(msg, 'sequence', 'frame_id')),
                keep_ratio=float(msg.keep_ratio), reuse_ratio=float(msg.reuse_ratio),
                num_tokens=int(msg.shape[0]) if len(msg.shape) else 0,
                num_patches=int(msg.grid_height) * int(msg.grid_width),
                is_keyframe=bool(msg.is_keyframe), compute_ms=_ms(msg, 'compute_time', 'compute_ms')))
        elif msgtype == TYPE_PLAN:
            series.plans.append(dict(
                log_ns=log_ns, stamp_ns=_stamp_ns(msg.header), plan_id=int(msg.plan_id),
                cache_hit=bool(msg.cache_hit), cache_hit_rate=float(msg.cache_hit_rate),
                latency_ms=_ms(msg, 'latency', 'latency_ms'), subtask=str(msg.subtask), planner_type=str(msg.planner_type)))
        elif msgtype == TYPE_CHUNK:
            series.chunks.append(dict(
                log_ns=log_ns, stamp_ns=_stamp_ns(msg.header), chunk_id=int(msg.chunk_id),
                frame_id=int(_field(msg, 'perception_sequence', 'frame_id')), plan_id=int(msg.plan_id),
                inference_ms=_ms(msg, 'inference_time', 'inference_ms'),
                horizon=int(msg.horizon), dt=float(msg.dt), smoothing=str(msg.smoothing)))
        elif msgtype == TYPE_TRAJECTORY:
            if len(msg.points):
                series.trajectory.append(Command(log_ns, _stamp_ns(msg.header),
                                                 np.asarray(msg.points[0].positions, dtype=np.float64)))
        elif msgtype == TYPE_COMMAND:
            series.joint_command.append(Command(log_ns, 0, np.asarray(msg.data, dtype=np.float64)))
        elif msgtype == TYPE_STATUS:
            series.status.append(dict(
                log_ns=log_ns, episode=int(msg.episode), instruction=str(msg.instruction),
                success=bool(msg.success), done=bool(msg.done), distance_to_goal=float(msg.distance_to_goal),
                elapsed_s=float(_field(msg, 'elapsed', 'elapsed_s'))))
        elif msgtype == TYPE_ESTOP:
            series.estop.append((log_ns, bool(msg.data)))
        elif msgtype == TYPE_DIAGNOSTICS:
            for status in msg.status:
                series.diagnostics[str(status.name)] = {str(kv.key): str(kv.value) for kv in status.values}
        elif msgtype == TYPE_JOINT_STATE and topic.rstrip('/').endswith('joint_states'):
            series.joint_states.append(Command(log_ns, _stamp_ns(msg.header),
                                               np.asarray(msg.position, dtype=np.float64)))
        elif msgtype == TYPE_INSTRUCTION and topic.rstrip('/').endswith('instruction'):
            series.instructions.append(str(msg.data))
    for items in (series.tokens, series.plans, series.chunks, series.status):
        items.sort(key=lambda d: d['log_ns'])
    series.trajectory.sort(key=lambda c: c.log_ns)
    series.joint_command.sort(key=lambda c: c.log_ns)
    series.joint_states.sort(key=lambda c: c.log_ns)
    return series


# ---------------------------------------------------------------- generic statistics

def summarize(values: Sequence[float]) -> Optional[Dict[str, float]]:
    """count/mean/p50/p95/p99/min/max of finite values, or None when there are none."""
    arr = np.asarray([v for v in values if v is not None], dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return None
    return {'count': int(arr.size), 'mean': float(arr.mean()), 'p50': float(np.percentile(arr, 50)),
            'p95': float(np.percentile(arr, 95)), 'p99': float(np.percentile(arr, 99)),
            'min': float(arr.min()), 'max': float(arr.max())}


def _period_stats(times_ns: Sequence[int]) -> Optional[dict]:
    """Command rate and jitter (deviation of each period from the median period)."""
    times = np.asarray(times_ns, dtype=np.int64)  # diff in integer ns: float64 epoch ns lose ~0.1 us
    if times.size < 3:
        return None
    periods_ms = np.diff(times) / NS_PER_MS
    median = float(np.median(periods_ms))
    deviation = np.abs(periods_ms - median)
    mean = float(periods_ms.mean())
    return {'rate_hz': 1000.0 / mean if mean > 0 else None, 'period_ms': summarize(periods_ms),
            'jitter_ms': {'p50': float(np.percentile(deviation, 50)), 'p99': float(np.percentile(deviation, 99)),
                          'max': float(deviation.max()), 'std': float(periods_ms.std())}}


# ---------------------------------------------------------------- sections

def latency_samples(series: BagSeries) -> Dict[str, List[float]]:
    """Per-stage latency samples in ms (the plots use the raw samples, the tables summarize them).

    end_to_end: image stamp -> first command received after the first chunk built from that frame.
    """
    image_stamp_of_frame = {}
    for tok in series.tokens:
        image_stamp_of_frame.setdefault(tok['frame_id'], tok['stamp_ns'])
    first_chunk_per_frame = {}
    for chunk in series.chunks:
        first_chunk_per_frame.setdefault(chunk['frame_id'], chunk)
    frame_to_chunk, end_to_end = [], []
    command_logs = np.asarray([c.log_ns for c in series.commands], dtype=np.int64)
    for frame_id, chunk in first_chunk_per_frame.items():
        image_ns = image_stamp_of_frame.get(frame_id, 0)
        if image_ns <= 0:
            continue
        frame_to_chunk.append((chunk['log_ns'] - image_ns) / NS_PER_MS)
        k = int(np.searchsorted(command_logs, chunk['log_ns'], side='left'))
        if k < command_logs.size:
            end_to_end.append((command_logs[k] - image_ns) / NS_PER_MS)
    return {
        'perception_compute_ms': [t['compute_ms'] for t in series.tokens],
        'image_to_tokens_ms': [(t['log_ns'] - t['stamp_ns']) / NS_PER_MS for t in series.tokens if t['stamp_ns'] > 0],
        'planner_latency_ms': [p['latency_ms'] for p in series.plans],
        'planner_latency_miss_ms': [p['latency_ms'] for p in series.plans if not p['cache_hit']],
        'plan_age_ms': [(p['log_ns'] - p['stamp_ns']) / NS_PER_MS for p in series.plans if p['stamp_ns'] > 0],
        'action_inference_ms': [c['inference_ms'] for c in series.chunks],
        'frame_to_chunk_ms': frame_to_chunk,
        'end_to_end_ms': end_to_end,
    }


def latency_metrics(series: BagSeries) -> dict:
    return {stage: summarize(values) for stage, values in latency_samples(series).items()}


def control_metrics(series: BagSeries) -> Optional[dict]:
    commands = series.commands
    if not commands:
        return None
    stamps = [c.stamp_ns for c in commands]
    return {'source': series.command_source, 'commands': len(commands),
            'from_header_stamps': _period_stats(stamps) if all(s > 0 for s in stamps) else None,
            'from_log_times': _period_stats([c.log_ns for c in commands])}


def token_metrics(series: BagSeries) -> Optional[dict]:
    if not series.tokens:
        return None
    toks = series.tokens
    return {'frames': len(toks),
            'keep_ratio_mean': float(np.mean([t['keep_ratio'] for t in toks])),
            'reuse_ratio_mean': float(np.mean([t['reuse_ratio'] for t in toks])),
            'tokens_kept': summarize([t['num_tokens'] for t in toks]),
            'patches_total_mean': float(np.mean([t['num_patches'] for t in toks])),
            'keyframe_fraction': float(np.mean([t['is_keyframe'] for t in toks]))}


def plan_cache_metrics(series: BagSeries) -> Optional[dict]:
    if not series.plans:
        return None
    hits = [p['cache_hit'] for p in series.plans]
    return {'plans': len(hits), 'cache_hits': int(sum(hits)), 'hit_rate': float(np.mean(hits)),
            'reported_hit_rate_last': series.plans[-1]['cache_hit_rate'],
            'distinct_plan_ids': len({p['plan_id'] for p in series.plans}),
            'planner_types': sorted({p['planner_type'] for p in series.plans})}


def _uniform_commands(commands: List[Command]) -> List[Command]:
    """Commands whose length is the most common one (a malformed message must not break the diff)."""
    if not commands:
        return []
    width = Counter(c.positions.size for c in commands).most_common(1)[0][0]
    return [c for c in commands if c.positions.size == width and width > 0]


def command_steps(commands: List[Command]) -> np.ndarray:
    """Per command k >= 1: the largest joint change |q_k - q_{k-1}|."""
    if len(commands) < 2:
        return np.zeros(0)
    q = np.stack([c.positions for c in commands])
    return np.abs(np.diff(q, axis=0)).max(axis=1)


def seam_indices(commands: List[Command], chunks: List[dict]) -> tuple:
    """Index (into command_steps) of the first step of each chunk, and the time base used.

    A chunk's header stamp is when its step 0 applies, which can precede its publication (RTC
    skips the steps that ran during inference), and the controller can only switch once it
    has the chunk: the seam is the first command stamped at or after max(stamp, receipt).
    Without command stamps, receive (log) times are compared.
    """
    use_stamps = (bool(commands) and all(c.stamp_ns > 0 for c in commands)
                  and bool(chunks) and all(ch['stamp_ns'] > 0 for ch in chunks))
    times = np.asarray([c.stamp_ns if use_stamps else c.log_ns for c in commands], dtype=np.int64)
    seams = set()
    for chunk in chunks[1:]:  # the first chunk has no predecessor to be smooth with
        boundary = max(chunk['stamp_ns'], chunk['log_ns']) if use_stamps else chunk['log_ns']
        k = int(np.searchsorted(times, boundary, side='left'))
        if 1 <= k < times.size:
            seams.add(k - 1)  # step k-1 of command_steps is q_k - q_{k-1}
    return sorted(seams), ('header_stamps' if use_stamps else 'log_times')


class _MeasuredArm:
    """The bag's joint states of the command's width, looked up by receive time."""

    def __init__(self, joint_states: Sequence[Command], width: int):
        mine = [j for j in joint_states if j.positions.size == width]
        self.times = np.asarray([j.log_ns for j in mine], dtype=np.int64)
        self.positions = [j.positions for j in mine]

    def latest(self, log_ns: int) -> Optional[np.ndarray]:
        i = int(np.searchsorted(self.times, log_ns, 'right'))
        return self.positions[i - 1] if i else None


def _follows_the_arm(commands: List[Command], k: int, arm: _MeasuredArm, unknown: bool = True) -> bool:
    """Whether step k (command k -> k + 1) moved the command onto the measured arm: the latest joint state
    received by command k + 1 (ARM_LOOKAHEAD_S) is nearer the new command than the old, by most of the step. `unknown` when
    the bag has no joint states of the command's width to tell."""
    measured = arm.latest(commands[k + 1].log_ns + int(ARM_LOOKAHEAD_S * NS_PER_S))
    if measured is None:
        return unknown
    before = float(np.abs(commands[k].positions - measured).max())
    after = float(np.abs(commands[k + 1].positions - measured).max())
    step = float(np.abs(commands[k + 1].positions - commands[k].positions).max())
    return before - after >= 0.5 * step


def reset_step_indices(commands: List[Command], status: List[dict], step_limit: float,
                       joint_states: Sequence[Command] = ()) -> List[int]:
    """Index (into command_steps) of the re-anchoring step of each episode start after the first: the
    largest step over `step_limit` whose command arrived between the previous episode's last status
    message and this episode's first (receive times, each widened by RESET_WINDOW_S), and that moved the
    command onto the measured arm (`joint_states`, when the bag has them). Episode starts without such a
    step add nothing."""
    steps = command_steps(commands)
    if not steps.size or not status:
        return []
    times = np.asarray([c.log_ns for c in commands[1:]], dtype=np.int64)  # step k ends at command k + 1
    first_seen: Dict[int, int] = {}
    last_seen: Dict[int, int] = {}
    for msg in status:
        first_seen.setdefault(msg['episode'], msg['log_ns'])
        last_seen[msg['episode']] = max(last_seen.get(msg['episode'], msg['log_ns']), msg['log_ns'])
    episodes = sorted(first_seen, key=first_seen.get)
    window = int(RESET_WINDOW_S * NS_PER_S)
    arm = _MeasuredArm(joint_states, commands[0].positions.size)
    found = set()
    for previous, episode in zip(episodes, episodes[1:]):
        lo = np.searchsorted(times, min(last_seen[previous], first_seen[episode]) - window, 'left')
        hi = np.searchsorted(times, first_seen[episode] + window, 'right')
        if hi > lo:
            k = int(lo + np.argmax(steps[lo:hi]))
            if steps[k] > step_limit + LIMIT_TOLERANCE and _follows_the_arm(commands, k, arm):
                found.add(k)
    return sorted(found)


def seam_metrics(series: BagSeries, resets: Sequence[int]) -> Optional[dict]:
    """Joint steps at chunk seams against elsewhere; `resets` (reset_step_indices) are neither."""
    commands = _uniform_commands(series.commands)
    if len(commands) < 2 or not series.chunks:
        return None
    steps = command_steps(commands)
    seams, time_base = seam_indices(commands, series.chunks)
    mask = np.zeros(steps.size, dtype=bool)
    mask[seams] = True
    # an episode reset's re-anchoring step is neither a seam nor smooth motion
    reset = np.zeros(steps.size, dtype=bool)
    reset[list(resets)] = True
    seam_steps, other_steps = steps[mask & ~reset], steps[~mask & ~reset]

    def _agg(x):
        return {'count': int(x.size), 'max': float(x.max()) if x.size else None,
                'mean': float(x.mean()) if x.size else None}
    seam, other = _agg(seam_steps), _agg(other_steps)
    ratio = (seam['mean'] / other['mean']) if seam['mean'] is not None and other['mean'] else None
    return {'time_base': time_base, 'seam': seam, 'other': other, 'seam_to_other_mean_ratio': ratio,
            'episode_reset_steps': int(reset.sum()), 'smoothing_modes': sorted({c['smoothing'] for c in series.chunks})}


def safety_metrics(series: BagSeries, max_velocity: float, control_rate_hz: float,
                   joint_lower: Sequence[float] = (), joint_upper: Sequence[float] = (),
                   resets: Optional[Sequence[int]] = None) -> Optional[dict]:
    """Command steps against the speed limit; `resets` = reset_step_indices (computed here when None)."""
    commands = _uniform_commands(series.commands)
    estops = sum(1 for _, on in series.estop if on)
    if not commands:
        return {'estop_messages': estops} if series.estop else None
    all_steps = command_steps(commands)
    step_limit = max_velocity / control_rate_hz
    if resets is None:
        resets = reset_step_indices(commands, series.status, step_limit, series.joint_states)
    resets = list(resets)
    # mid-episode, the safety filter also re-anchors on an arm held back from its command (an obstruction,
    # tracking error over max_tracking_error): a step onto the measured arm (joint states required)
    arm = _MeasuredArm(series.joint_states, commands[0].positions.size)
    over = set(np.flatnonzero(all_steps > step_limit + LIMIT_TOLERANCE).tolist()) - set(resets)
    reanchors = [k for k in sorted(over) if _follows_the_arm(commands, k, arm, unknown=False)]
    steps = np.delete(all_steps, resets + reanchors)   # the steps that drive the arm
    out = {'step_limit': step_limit, 'max_velocity': max_velocity, 'control_rate_hz': control_rate_hz,
           'max_step': float(steps.max()) if steps.size else 0.0,
           'steps_over_limit': int(np.sum(steps > step_limit + LIMIT_TOLERANCE)),
           'episode_reset_steps': len(resets),
           'max_reset_step': float(all_steps[resets].max()) if resets else None,
           'reanchor_steps': len(reanchors),
           'max_reanchor_step': float(all_steps[reanchors].max()) if reanchors else None,
           'estop_messages': estops, 'position_limit_violations': None}
    q = np.stack([c.positions for c in commands])
    if len(joint_lower) == q.shape[1] and len(joint_upper) == q.shape[1]:
        outside = (q < np.asarray(joint_lower) - LIMIT_TOLERANCE) | (q > np.asarray(joint_upper) + LIMIT_TOLERANCE)
        out['position_limit_violations'] = int(outside.any(axis=1).sum())
    return out


def episode_outcomes(status: List[dict]) -> List[dict]:
    """One row per episode: final success, whether it finished, time to first success."""
    by_episode: Dict[int, List[dict]] = {}
    for msg in status:
        by_episode.setdefault(msg['episode'], []).append(msg)
    rows = []
    for episode in sorted(by_episode):
        msgs = by_episode[episode]
        done_msgs = [m for m in msgs if m['done']]
        final = done_msgs[0] if done_msgs else msgs[-1]
        first_success = next((m for m in msgs if m['success']), None)
        rows.append({'episode': episode, 'instruction': final['instruction'], 'done': bool(done_msgs),
                     'success': bool(final['success']) if done_msgs else first_success is not None,
                     'time_to_success_s': first_success['elapsed_s'] if first_success else None,
                     'elapsed_s': final['elapsed_s'], 'final_distance_m': final['distance_to_goal'],
                     'end_log_ns': final['log_ns']})
    return rows


def success_metrics(series: BagSeries) -> Optional[dict]:
    if not series.status:
        return None
    rows = episode_outcomes(series.status)
    done = [r for r in rows if r['done']]
    successes = sum(r['success'] for r in done)
    times = [r['time_to_success_s'] for r in done if r['success'] and r['time_to_success_s'] is not None]
    return {'episodes': len(rows), 'episodes_done': len(done), 'successes': int(successes),
            'success_rate': successes / len(done) if done else None,
            'time_to_success_s': summarize(times), 'per_episode': rows}


def compute_from_series(series: BagSeries, *, max_velocity: Optional[float] = None,
                        control_rate_hz: Optional[float] = None, joint_lower: Sequence[float] = (),
                        joint_upper: Sequence[float] = ()) -> dict:
    """All metric sections; limits default to the stack's own SafetyConfig/ActionConfig."""
    from vla_ros.config.action import ActionConfig
    defaults = ActionConfig()
    max_velocity = defaults.safety.max_velocity if max_velocity is None else max_velocity
    control_rate_hz = defaults.control_rate_hz if control_rate_hz is None else control_rate_hz
    joint_lower = list(joint_lower) or list(defaults.safety.joint_lower)
    joint_upper = list(joint_upper) or list(defaults.safety.joint_upper)
    # an episode reset's re-anchoring command step: counted apart by both the seam and the safety metrics
    resets = reset_step_indices(_uniform_commands(series.commands), series.status, max_velocity / control_rate_hz,
                                series.joint_states)
    metrics = {
        'latency': latency_metrics(series),
        'control': control_metrics(series),
        'tokens': token_metrics(series),
        'plan_cache': plan_cache_metrics(series),
        'seams': seam_metrics(series, resets),
        'safety': safety_metrics(series, max_velocity, control_rate_hz, joint_lower, joint_upper, resets),
        'success': success_metrics(series),
        'diagnostics': series.diagnostics or None,
        'instructions': sorted(set(series.instructions)),
    }
    metrics['notes'] = _missing_notes(series, metrics)
    return metrics


def _missing_notes(series: BagSeries, metrics: dict) -> List[str]:
    notes = []
    need = [('tokens', 'no LatentTokens (perception) messages: token/reuse metrics unavailable'),
            ('plan_cache', 'no Plan messages: plan-cache metrics unavailable'),
            ('control', 'no JointTrajectory or Float64MultiArray commands: control metrics unavailable'),
            ('seams', 'need commands and ActionChunk messages for seam smoothness'),
            ('success', 'no TaskStatus messages: success unavailable')]
    for key, text in need:
        if metrics[key] is None:
            notes.append(text)
    if metrics['latency']['end_to_end_ms'] is None:
        notes.append('end-to-end latency needs tokens, chunks (perception_sequence) and commands')
    if metrics['control'] and metrics['control']['from_header_stamps'] is None:
        notes.append('commands carry no header stamps: control jitter from receive times only')
    return notes


def compute_metrics(bag_path, progress: bool = False, **limits) -> dict:
    """Bag directory -> nested metrics dict (see compute_from_series)."""
    summary = bag_summary(bag_path)
    series = extract_series(bag_path, progress=progress)
    metrics = compute_from_series(series, **limits)
    metrics['bag'] = bag_info(bag_path, summary)
    return metrics


def bag_info(bag_path, summary) -> dict:
    return {'path': str(bag_path), 'storage': summary['storage'], 'messages': summary['message_count'],
            'duration_s': summary['duration_ns'] / NS_PER_S,
            'topics': {name: info for name, info in sorted(summary['topics'].items())}}


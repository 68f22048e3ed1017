"""Frame-by-frame differences between replays of one source bag (the evaluator's compare mode).

Replays of the same recording (vla_ros.eval.replay) stamp everything with the source image stamps,
so two settings are compared on the very same frames: which tokens were kept (IoU of kept patch
indices), what the planner said (sub-task agreement, plan-token distance), what the head commanded
(joint-target differences in rad, same per-frame noise in both runs) and what it cost (latency).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from vla_ros.eval.bag_io import bag_summary, read_bag
from vla_ros.eval.replay_output import LABEL_KEY, SETTINGS_KEY, SOURCE_KEY

TYPE_TOKENS = 'vla_ros_msgs/msg/LatentTokens'
TYPE_PLAN = 'vla_ros_msgs/msg/Plan'
TYPE_CHUNK = 'vla_ros_msgs/msg/ActionChunk'
MS_PER_S = 1e3


def replay_info(bag) -> Optional[Dict[str, str]]:
    """custom_data of a replay bag (source, label, settings), None for a live recording."""
    meta = yaml.safe_load((Path(bag) / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    custom = meta.get('custom_data') or {}
    if SOURCE_KEY not in custom:
        return None
    return {'source': custom[SOURCE_KEY], 'label': custom.get(LABEL_KEY, ''), 'settings': custom.get(SETTINGS_KEY, '')}


def _stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def load_frames(bag) -> Dict[int, dict]:
    """image stamp -> {'kept', 'num_tokens', 'perception_ms', 'subtask', 'plan_tokens', 'planner_ms',
    'actions', 'action_ms'} (keys present when that stage produced output on the frame)."""
    topics = [n for n, info in bag_summary(bag)['topics'].items() if info['type'] in (TYPE_TOKENS, TYPE_PLAN, TYPE_CHUNK)]
    frames: Dict[int, dict] = {}
    stamp_of_frame: Dict[int, int] = {}   # perception frame counter -> image stamp
    chunks = []
    for _, msgtype, _, msg in read_bag(bag, topics=topics):
        if msgtype == TYPE_CHUNK:         # paired through the perception frame it was conditioned on
            chunks.append(msg)
            continue
        row = frames.setdefault(_stamp_ns(msg.header), {})
        if msgtype == TYPE_TOKENS:
            stamp_of_frame[int(msg.sequence)] = _stamp_ns(msg.header)
            row.update(kept=set(int(i) for i in msg.kept_indices), num_tokens=int(msg.shape[0]) if len(msg.shape) else 0,
                       perception_ms=float(msg.compute_time) * MS_PER_S)
        elif msgtype == TYPE_PLAN:
            shape = tuple(int(s) for s in msg.plan_tokens.shape)
            row.update(subtask=str(msg.subtask), planner_ms=float(msg.latency) * MS_PER_S,
                       plan_tokens=np.asarray(msg.plan_tokens.data, np.float32).reshape(shape))
    for msg in chunks:
        stamp = stamp_of_frame.get(int(msg.perception_sequence))
        if stamp is None or 'actions' in frames[stamp]:
            continue                      # unknown frame, or a later chunk on the same frame
        frames[stamp].update(actions=np.asarray(msg.actions, np.float32).reshape(int(msg.horizon),
                                                                                 int(msg.action_dim)),
                             action_ms=float(msg.inference_time) * MS_PER_S)
    return frames


def _mean(values) -> Optional[float]:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _iou(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if (a or b) else 1.0


def pair(base: Dict[int, dict], other: Dict[int, dict]) -> dict:
    """Differences of `other` against `base` over their common frames."""
    common = sorted(set(base) & set(other))
    tok = [s for s in common if 'kept' in base[s] and 'kept' in other[s]]
    plans = [s for s in common if 'subtask' in base[s] and 'subtask' in other[s]]
    acts = [s for s in common if 'actions' in base[s] and 'actions' in other[s]]
    diffs = [np.abs(base[s]['actions'] - other[s]['actions']) for s in acts]
    plan_dist = [float(np.linalg.norm(base[s]['plan_tokens'] - other[s]['plan_tokens']) /
                       (np.linalg.norm(base[s]['plan_tokens']) + 1e-12))
                 for s in plans if base[s]['plan_tokens'].shape == other[s]['plan_tokens'].shape]
    return {
        'frames_common': len(common),
        'tokens': {'frames': len(tok), 'mean_tokens': (_mean(base[s]['num_tokens'] for s in tok),
                                                        _mean(other[s]['num_tokens'] for s in tok)),
                   'kept_iou_mean': _mean(_iou(base[s]['kept'], other[s]['kept']) for s in tok)},
        'plans': {'frames': len(plans),
                  'subtask_agreement': _mean(float(base[s]['subtask'] == other[s]['subtask']) for s in plans),
                  'plan_token_rel_diff_mean': _mean(plan_dist)},
        'actions': {'frames': len(acts),
                    'mean_abs_diff_rad': float(np.mean([d.mean() for d in diffs])) if diffs else None,
                    'max_abs_diff_rad': float(np.max([d.max() for d in diffs])) if diffs else None,
                    'first_step_mean_abs_diff_rad': float(np.mean([d[0].mean() for d in diffs])) if diffs else None},
        'latency_ms': {stage: (_mean(base[s].get(key) for s in common), _mean(other[s].get(key) for s in common))
                       for stage, key in (('perception', 'perception_ms'), ('planner', 'planner_ms'),
                                          ('action', 'action_ms'))},
    }


def paired_differences(labelled_bags: Sequence[Tuple[str, str]]) -> Optional[dict]:
    """Pairs every bag with the first when all are replays of one source; None otherwise."""
    infos = [replay_info(bag) for _, bag in labelled_bags]
    if len(labelled_bags) < 2 or any(i is None for i in infos) or len({i['source'] for i in infos}) != 1:
        return None
    base_label, base_bag = labelled_bags[0]
    base = load_frames(base_bag)
    return {'source': infos[0]['source'], 'baseline': base_label,
            'pairs': {label: pair(base, load_frames(bag)) for label, bag in labelled_bags[1:]}}


def _f(value, digits=4) -> str:
    if value is None:
        return '-'
    return f'{value:.{digits}g}' if isinstance(value, float) else str(value)


def paired_markdown(paired: dict) -> str:
    base = paired['baseline']
    lines: List[str] = [f'### Frame-by-frame differences (same source frames: {paired["source"]})', '',
                        f'| metric | {base} vs ' + ' | '.join(paired['pairs']) + ' |',
                        '|---|' + '---|' * len(paired['pairs'])]

    def row(name, getter):
        lines.append(f'| {name} | ' + ' | '.join(getter(p) for p in paired['pairs'].values()) + ' |')
    row('common frames', lambda p: _f(p['frames_common']))
    row('tokens per frame (base / other)', lambda p: f'{_f(p["tokens"]["mean_tokens"][0])} / '
                                                     f'{_f(p["tokens"]["mean_tokens"][1])}')
    row('kept-token IoU (mean)', lambda p: _f(p['tokens']['kept_iou_mean']))
    row('plans compared', lambda p: _f(p['plans']['frames']))
    row('sub-task agreement', lambda p: _f(p['plans']['subtask_agreement']))
    row('plan-token relative difference', lambda p: _f(p['plans']['plan_token_rel_diff_mean']))
    row('action chunks compared', lambda p: _f(p['actions']['frames']))
    row('action mean / max abs diff [rad]', lambda p: f'{_f(p["actions"]["mean_abs_diff_rad"])} / '
                                                      f'{_f(p["actions"]["max_abs_diff_rad"])}')
    row('first-step action mean abs diff [rad]', lambda p: _f(p['actions']['first_step_mean_abs_diff_rad']))
    for stage in ('perception', 'planner', 'action'):
        row(f'{stage} latency mean [ms] (base / other)',
            lambda p, s=stage: f'{_f(p["latency_ms"][s][0])} / {_f(p["latency_ms"][s][1])}')
    return '\n'.join(lines)

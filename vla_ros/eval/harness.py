"""`vla_eval_episodes`: closed-loop success of the REAL ROS stack over DDS, N episodes per row, in parallel.

    vla_eval_episodes --episodes 100 --workers 4 --ablate pruning --ablate rtc --out runs/eval
    vla_eval_episodes --episodes 100 --workers 2 --smoothing-rows --inference-delay-s 0.3 --out runs/eval_rtc

Every row (the full stack, then one row per `--ablate` feature switched off) runs its episodes as
jobs of consecutive held-out seeds; each job is one `vla_bringup` process (all nodes, DDS between
them) in its own process group with its own ROS_DOMAIN_ID, so parallel jobs never see each other.
Sim episode i of a job uses seed `seed + i` (SimConfig.seed), so the seeds of a row do not depend on
the number of workers. Reports success with a Wilson 95% interval, time to success and the
per-episode table (JSON + Markdown). An episode whose final status never arrived is counted as
missing, not as a success or a failure.

`--smoothing-rows` replaces the rows by `rtc` (action.smoothing=rtc) and `naive` (smoothing=none:
each new chunk simply takes over); with `--inference-delay-s` every action-head inference of every
row takes that much longer (action.inject_inference_delay_s, an eval knob), which is the case RTC
is for.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import os
import queue
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from vla_ros.config.tasks import TASKS
from vla_ros.eval.episode_diagnostics import compare_outcomes, parse_lines as parse_stack_lines
from vla_ros.eval.paired import compare_rows, markdown as paired_markdown, rows_of_episodes
from vla_ros.eval.stats import wilson_interval

# Efficiency feature -> the parameter overrides that switch it off.
ABLATIONS: Dict[str, Dict[str, object]] = {
    'pruning': {'perception.pruning': 'none'},
    'reuse': {'perception.reuse_enabled': False},
    'plan_cache': {'planner.cache_enabled': False},
    'rtc': {'action.smoothing': 'none'},
}
# Seeds below this are used for training (expert demos, DAgger); evaluation stays above.
# Chunk-boundary smoothing rows (--smoothing-rows): RTC inpainting vs a new chunk simply taking over.
SMOOTHING_ROWS: Dict[str, Dict[str, object]] = {
    'rtc': {'action.smoothing': 'rtc'},
    'naive': {'action.smoothing': 'none'},
}
HELD_OUT_SEED = 200000
# Not anchored at the line end: another process' log line can land between the text and its newline.
EPISODE_LINE = re.compile(r'episode (\d+): (SUCCESS|fail) in ([0-9.]+)s \(([^()\n]*)\)')
# The sim's own end-of-episode log: its achieved real-time factor (below 1: the machine is overloaded).
REALTIME_LINE = re.compile(r'episode (\d+) (?:SUCCESS|timeout) after [0-9.]+s \([^()\n]*\); sim ([0-9.]+)x real time')
CORES_PER_STACK = 2     # one stack (sim, perception, planner, action + inference, recorder) keeps real time on ~2


@dataclass
class Job:
    label: str
    overrides: Dict[str, object]
    seed: int
    episodes: int


@dataclass
class JobResult:
    job: Job
    domain_id: int
    returncode: Optional[int]
    wall_s: float
    episodes: List[dict] = field(default_factory=list)
    log_tail: str = ''
    load_average: Optional[List[float]] = None    # os.getloadavg() when the job ended


def parse_episode_lines(text: str, seed: int) -> List[dict]:
    """Bringup's 'episode N: SUCCESS in 2.3s (instruction)' lines -> one dict per episode (first wins)."""
    out: Dict[int, dict] = {}
    realtime: Dict[int, float] = {}      # the sim's achieved real-time factor, where it logged one
    for line in text.splitlines():
        m = EPISODE_LINE.search(line)
        if m and int(m.group(1)) not in out:
            ep = int(m.group(1))
            out[ep] = {'episode': ep, 'seed': seed + ep, 'success': m.group(2) == 'SUCCESS',
                       'elapsed_s': float(m.group(3)), 'instruction': m.group(4)}
        m = REALTIME_LINE.search(line)
        if m:
            realtime.setdefault(int(m.group(1)), float(m.group(2)))
    for ep, factor in realtime.items():
        if ep in out:
            out[ep]['sim_realtime_factor'] = factor
    for ep, counters in parse_stack_lines(text).items():
        if ep in out:
            out[ep]['stack'] = counters
    return [out[k] for k in sorted(out)]


def row_overrides(label: str) -> Dict[str, object]:
    """'full' = defaults; an --ablate feature = that feature off; 'rtc' / 'naive' in smoothing mode."""
    if label == 'full':
        return {}
    return dict(ABLATIONS[label])


def plan_jobs(rows: Sequence[str], episodes: int, workers: int, seed: int, chunk: int = 0,
              overrides_of=row_overrides) -> List[Job]:
    """Split each row's `episodes` seeds into jobs of `chunk` episodes (default: spread over workers)."""
    size = chunk or max(1, math.ceil(episodes / max(1, workers)))
    jobs = []
    # Rows interleaved chunk by chunk, so a change in machine load over the run hits every row alike.
    for start in range(0, episodes, size):
        for label in rows:
            overrides = overrides_of(label)
            jobs.append(Job(label, overrides, seed + start, min(size, episodes - start)))
    return jobs


def bringup_command(job: Job, args) -> List[str]:
    cmd = [sys.executable, '-m', 'vla_ros.bringup', '--episodes', str(job.episodes)]
    if not getattr(args, 'in_process', False):
        cmd.append('--processes')          # one process per node, as ros2 launch runs them
    cmd += ['--task', getattr(args, 'task', 'touch'),
            '--set', f'sim.seed={job.seed}', '--set', f'sim.episode_timeout_s={float(args.episode_timeout_s)}']
    if args.encoder_path:
        cmd += ['--encoder-path', os.path.abspath(args.encoder_path)]
    if args.checkpoint:
        cmd += ['--checkpoint', os.path.abspath(args.checkpoint)]
    overrides = dict(job.overrides)
    delay = float(getattr(args, 'inference_delay_s', 0.0))   # callers may build args without it
    if delay > 0:
        overrides['action.inject_inference_delay_s'] = delay
    for text in args.set or []:
        key, value = text.split('=', 1)
        overrides[key.strip()] = value
    for key, value in overrides.items():
        value = str(value).lower() if isinstance(value, bool) else value
        cmd += ['--set', f'{key}={value}']
    return cmd


def run_job(job: Job, domain_id: int, args) -> JobResult:
    """One bringup process group on its own ROS domain; killed (whole group) on timeout."""
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1')
    timeout = args.startup_timeout_s + job.episodes * (args.episode_timeout_s + args.episode_margin_s)
    start = time.monotonic()
    proc = subprocess.Popen(bringup_command(job, args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _stop_group(proc)
        output, _ = proc.communicate()
        output += f'\n[harness] job timed out after {timeout:.0f} s'
    episodes = parse_episode_lines(output, job.seed)
    return JobResult(job, domain_id, proc.returncode, time.monotonic() - start, episodes, output[-3000:],
                     _load_average())


def _load_average() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    for sig in (signal.SIGINT, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def summarise(label: str, requested: int, episodes: List[dict]) -> dict:
    wins = sum(e['success'] for e in episodes)
    n = len(episodes)
    lo, hi = wilson_interval(wins, n)
    times = [e['elapsed_s'] for e in episodes if e['success']]
    rtf = [e['sim_realtime_factor'] for e in episodes if 'sim_realtime_factor' in e]
    return {'row': label, 'requested': requested, 'episodes': n, 'missing': requested - n, 'successes': wins,
            'success_rate': wins / n if n else float('nan'), 'wilson95': [round(lo, 4), round(hi, 4)],
            'time_to_success_mean_s': float(np.mean(times)) if times else None,
            'time_to_success_median_s': float(np.median(times)) if times else None,
            'sim_realtime_factor_mean': round(float(np.mean(rtf)), 3) if rtf else None,
            'sim_realtime_factor_min': round(float(np.min(rtf)), 3) if rtf else None}


def markdown(rows: List[dict], per_episode: List[dict], paired: Sequence[dict] = (),
             by_outcome: Sequence[dict] = ()) -> str:
    lines = ['| row | episodes | successes | success rate | Wilson 95% CI | time to success (mean / median s) '
             '| missing | sim x real time (mean / min) |',
             '| --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in rows:
        t = (f"{r['time_to_success_mean_s']:.2f} / {r['time_to_success_median_s']:.2f}"
             if r['time_to_success_mean_s'] is not None else 'n/a')
        rtf = (f"{r['sim_realtime_factor_mean']:.2f} / {r['sim_realtime_factor_min']:.2f}"
               if r.get('sim_realtime_factor_mean') is not None else 'n/a')
        lines.append(f"| {r['row']} | {r['episodes']} | {r['successes']} | {r['success_rate']:.3f} | "
                     f"[{r['wilson95'][0]:.3f}, {r['wilson95'][1]:.3f}] | {t} | {r['missing']} | {rtf} |")
    if paired:
        lines += ['', 'Each row against the first on the seeds both ran (Newcombe paired 95% interval):', '',
                  paired_markdown(paired).rstrip('\n')]
    if by_outcome:
        lines += ['', 'What the stack did per episode (growth of node counters, all rows), failed vs succeeded:', '',
                  '| counter | failed: mean per episode | succeeded: mean per episode |', '| --- | --- | --- |']
        for r in by_outcome:
            cells = [f"{r[k]:.1f} ({r[k + '_episodes']})" if r[k] is not None else 'n/a'
                     for k in ('failed', 'succeeded')]
            lines.append(f"| {r['counter']} | {cells[0]} | {cells[1]} |")
    lines += ['', '| row | seed | success | time (s) | sim x real time | instruction |',
              '| --- | --- | --- | --- | --- | --- |']
    for e in per_episode:
        rtf = f"{e['sim_realtime_factor']:.2f}" if 'sim_realtime_factor' in e else 'n/a'
        lines.append(f"| {e['row']} | {e['seed']} | {'yes' if e['success'] else 'no'} | {e['elapsed_s']:.1f} | "
                     f"{rtf} | {e['instruction']} |")
    return '\n'.join(lines) + '\n'


def run_harness(args) -> dict:
    from tqdm import tqdm

    if args.smoothing_rows:
        rows = list(SMOOTHING_ROWS)
        jobs = plan_jobs(rows, args.episodes, args.workers, args.seed, args.chunk,
                         overrides_of=lambda label: dict(SMOOTHING_ROWS[label]))
    else:
        rows = ['full'] + [a for a in (args.ablate or []) if a != 'full']
        jobs = plan_jobs(rows, args.episodes, args.workers, args.seed, args.chunk)
    domains: 'queue.Queue[int]' = queue.Queue()
    for w in range(args.workers):
        domains.put(args.domain_base + w)

    def work(job: Job) -> JobResult:
        domain = domains.get()
        try:
            return run_job(job, domain, args)
        finally:
            domains.put(domain)

    results: List[JobResult] = []
    bar = tqdm(total=len(jobs) and sum(j.episodes for j in jobs), desc='episodes (ROS stack)', unit='ep',
               disable=args.no_progress)
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.workers) as pool:
        for res in concurrent.futures.as_completed([pool.submit(work, j) for j in jobs]):
            r = res.result()
            results.append(r)
            write_report(rows, results, args, partial=True)
            bar.update(r.job.episodes)
            wins = sum(e['success'] for x in results for e in x.episodes)
            bar.set_postfix(success=f'{wins}/{sum(len(x.episodes) for x in results)}')
            if len(r.episodes) < r.job.episodes:
                bar.write(f'[harness] {r.job.label} seeds {r.job.seed}..{r.job.seed + r.job.episodes - 1}: '
                          f'{len(r.episodes)}/{r.job.episodes} episodes reported (rc {r.returncode})\n'
                          + r.log_tail[-800:])
    bar.close()
    return write_report(rows, results, args)


def write_report(rows: Sequence[str], results: List[JobResult], args, partial: bool = False) -> dict:
    """Summary + per-episode table of the jobs done so far (also after every job: a run cut short keeps them)."""
    per_episode, summary = [], []
    for label in rows:
        mine = sorted((e for r in results if r.job.label == label for e in r.episodes), key=lambda e: e['seed'])
        per_episode += [dict(e, row=label) for e in mine]
        summary.append(summarise(label, args.episodes, mine))
    paired = compare_rows(rows_of_episodes(per_episode), base=rows[0])
    by_outcome = compare_outcomes(per_episode)
    report = {'rows': summary, 'paired': paired, 'stack_by_outcome': by_outcome, 'per_episode': per_episode,
              'workers': args.workers, 'partial': partial,
              'inference_delay_s': getattr(args, 'inference_delay_s', 0.0), 'load_average': _load_average(),
              'seeds': [args.seed, args.seed + args.episodes - 1],
              'jobs': [{'row': r.job.label, 'seed': r.job.seed, 'episodes': r.job.episodes,
                        'reported': len(r.episodes), 'domain_id': r.domain_id, 'returncode': r.returncode,
                        'wall_s': round(r.wall_s, 1), 'load_average': r.load_average} for r in results],
              'command': ' '.join(sys.argv)}
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, 'episodes.json'), 'w') as fh:
            json.dump(report, fh, indent=1)
        with open(os.path.join(args.out, 'episodes.md'), 'w') as fh:
            fh.write(markdown(summary, per_episode, paired, by_outcome))
    return report


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog='vla_eval_episodes', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--episodes', type=int, default=20, help='episodes per row')
    p.add_argument('--task', default='touch', choices=TASKS, help='sim task preset of every bringup')
    p.add_argument('--workers', type=int, default=1, help='bringup processes at a time (one ROS domain each)')
    p.add_argument('--seed', type=int, default=HELD_OUT_SEED, help='first held-out seed')
    p.add_argument('--chunk', type=int, default=0, help='episodes per bringup (0 = episodes / workers)')
    p.add_argument('--ablate', action='append', choices=sorted(ABLATIONS), default=[],
                   help='also run a row with this efficiency feature off (repeatable)')
    p.add_argument('--smoothing-rows', action='store_true',
                   help='rows rtc (action.smoothing=rtc) and naive (smoothing=none) instead of full + --ablate')
    p.add_argument('--inference-delay-s', type=float, default=0.0,
                   help='every row: each action-head inference takes this much longer '
                   '(action.inject_inference_delay_s, an eval knob)')
    p.add_argument('--set', action='append', metavar='PREFIX.NAME=VALUE', help='override for every row')
    p.add_argument('--in-process', action='store_true',
                   help='run each stack as one process (bringup without --processes); the default is one process '
                   'per node as ros2 launch runs them: in one process the nodes share a GIL, and on a 2-core '
                   'machine the sim then falls to ~0.7x real time')
    p.add_argument('--encoder-path', default='', help='perception.encoder_path (default: the bringup default)')
    p.add_argument('--checkpoint', default='', help='action.checkpoint_path (default: the bringup default)')
    p.add_argument('--domain-base', type=int, default=int(os.environ.get('VLA_EVAL_DOMAIN_BASE', 40)),
                   help='worker w uses ROS_DOMAIN_ID domain_base + w')
    p.add_argument('--episode-timeout-s', type=float, default=20.0, help='sim.episode_timeout_s of every episode (sim time)')
    p.add_argument('--episode-margin-s', type=float, default=25.0,
                   help='wall-clock allowance per episode beyond the sim timeout (slow CPUs)')
    p.add_argument('--startup-timeout-s', type=float, default=120.0, help='wall-clock allowance to start a stack')
    p.add_argument('--out', default='', help='write episodes.json and episodes.md here')
    p.add_argument('--no-progress', action='store_true')
    args = p.parse_args(argv)
    if args.episodes < 1 or args.workers < 1:
        p.error('--episodes and --workers must be >= 1')
    if args.smoothing_rows and args.ablate:
        p.error('--smoothing-rows and --ablate are separate comparisons')
    if args.inference_delay_s < 0:
        p.error('--inference-delay-s must be >= 0')
    if args.workers + args.domain_base > 232:
        p.error('ROS_DOMAIN_ID must stay <= 232')
    cores = os.cpu_count() or 1
    if args.workers * CORES_PER_STACK > cores:
        print(f'[harness] warning: {args.workers} stacks at once on {cores} CPU cores (each needs about '
              f'{CORES_PER_STACK}): the sims will fall behind real time while control runs on the wall clock; '
              'check the "sim x real time" column', file=sys.stderr)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run_harness(args)
    print(markdown(report['rows'], []).split('\n\n')[0])
    if report['paired']:
        print(paired_markdown(report['paired']), end='')
    missing = sum(r['missing'] for r in report['rows'])
    if missing:
        print(f'[harness] {missing} episode(s) never reported a final status', file=sys.stderr)
    return 1 if missing else 0


if __name__ == '__main__':
    sys.exit(main())

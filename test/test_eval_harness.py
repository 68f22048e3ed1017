"""vla_eval_episodes: statistics, job planning, and real parallel runs of the ROS stack on separate domains."""
import math
import os
import sys

import pytest

from vla_ros.eval.harness import (ABLATIONS, SMOOTHING_ROWS, bringup_command, main, markdown, parse_args,
                                  parse_episode_lines, plan_jobs, summarise)
from vla_ros.eval.stats import wilson_interval


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(95, 100)
    assert math.isclose(lo, 0.8882, abs_tol=1e-3) and math.isclose(hi, 0.9785, abs_tol=1e-3)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and math.isclose(hi, 0.2775, abs_tol=1e-3)
    assert math.isclose(wilson_interval(10, 10)[1], 1.0) and wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_episode_lines_parse_and_missing_episodes_are_counted():
    text = ('noise\nepisode 0: SUCCESS in 2.3s (touch the red cube)\n'
            '[bar] episode 1: fail in 20.0s (touch the blue block)\nepisode 1: SUCCESS in 1.0s (dup)\n')
    text += '[bar] episode 2: SUCCESS in 5.2s (touch the red cube)[INFO] [17956] [vla.planner]: instruction: x\n'
    eps = parse_episode_lines(text, seed=500)
    assert [(e['seed'], e['success'], e['elapsed_s']) for e in eps] == [(500, True, 2.3), (501, False, 20.0),
                                                                        (502, True, 5.2)]
    assert eps[2]['instruction'] == 'touch the red cube'     # a log line interleaved before the newline
    row = summarise('full', 4, eps)
    assert row['episodes'] == 3 and row['missing'] == 1 and row['successes'] == 2
    assert row['time_to_success_mean_s'] == 3.75
    assert row['sim_realtime_factor_mean'] is None            # no sim log lines here


def test_the_sims_real_time_factor_is_reported_per_episode():
    text = ('episode 0: SUCCESS in 6.3s (put the red cube on the purple pad)\n'
            '[INFO] [1.0] [vla.sim_arm]: episode 0 SUCCESS after 6.27s (put the red cube on the purple pad); '
            'sim 0.96x real time\n'
            'episode 1: fail in 20.0s (move the green cube onto the yellow pad)\n'
            '[INFO] [2.0] [vla.sim_arm]: episode 1 timeout after 20.01s (move the green cube onto the yellow pad); '
            'sim 0.67x real time\n')
    eps = parse_episode_lines(text, seed=10)
    assert [e['sim_realtime_factor'] for e in eps] == [0.96, 0.67]
    row = summarise('full', 2, eps)
    assert row['sim_realtime_factor_mean'] == 0.815 and row['sim_realtime_factor_min'] == 0.67
    table = markdown([row], [dict(e, row='full') for e in eps])
    assert '| 0.81 / 0.67 |' in table or '| 0.82 / 0.67 |' in table
    assert '| full | 11 | no | 20.0 | 0.67 | move the green cube onto the yellow pad |' in table


def test_stacks_run_one_process_per_node_unless_asked():
    job = plan_jobs(['full'], 1, 1, 5)[0]
    assert '--processes' in bringup_command(job, parse_args([]))
    assert '--processes' not in bringup_command(job, parse_args(['--in-process']))


def test_jobs_cover_every_seed_once_per_row():
    jobs = plan_jobs(['full', 'rtc'], episodes=7, workers=3, seed=1000)
    for label in ('full', 'rtc'):
        seeds = [j.seed + i for j in jobs if j.label == label for i in range(j.episodes)]
        assert sorted(seeds) == list(range(1000, 1007))
    assert all(j.overrides == ABLATIONS['rtc'] for j in jobs if j.label == 'rtc')
    args = parse_args(['--ablate', 'reuse', '--set', 'action.device=cpu'])
    cmd = bringup_command(plan_jobs(['reuse'], 1, 1, 5)[0], args)
    assert 'sim.seed=5' in cmd and 'perception.reuse_enabled=false' in cmd and 'action.device=cpu' in cmd


def test_smoothing_rows_run_rtc_and_naive_interleaved_under_the_injected_delay():
    args = parse_args(['--smoothing-rows', '--inference-delay-s', '0.3', '--episodes', '6', '--workers', '2',
                       '--chunk', '2'])
    jobs = plan_jobs(list(SMOOTHING_ROWS), args.episodes, args.workers, args.seed, args.chunk,
                     overrides_of=lambda label: dict(SMOOTHING_ROWS[label]))
    assert [j.label for j in jobs] == ['rtc', 'naive'] * 3          # interleaved chunk by chunk
    assert [j.seed for j in jobs if j.label == 'rtc'] == [j.seed for j in jobs if j.label == 'naive']
    cmds = {j.label: bringup_command(j, args) for j in jobs}
    assert 'action.smoothing=rtc' in cmds['rtc'] and 'action.smoothing=none' in cmds['naive']
    for cmd in cmds.values():
        assert 'action.inject_inference_delay_s=0.3' in cmd
    assert not any('inject_inference_delay' in c for c in bringup_command(jobs[0], parse_args([])))
    with pytest.raises(SystemExit):
        parse_args(['--smoothing-rows', '--ablate', 'rtc'])


def test_parallel_stacks_on_separate_domains_report_every_episode(tmp_path, monkeypatch):
    """Two bringups at once (own process group + ROS domain each): every held-out episode is reported
    with the instruction the sim gives that seed."""
    import json

    from vla_ros.config import SimConfig
    from vla_ros.sim.arm_env import ArmEnv

    monkeypatch.setattr(sys, 'argv', ['vla_eval_episodes'])
    rc = main(['--episodes', '2', '--workers', '2', '--episode-timeout-s', '3', '--domain-base', '150',
               '--out', str(tmp_path), '--no-progress'])
    report = json.loads((tmp_path / 'episodes.json').read_text())
    assert rc == 0, report['jobs']
    assert sorted(j['domain_id'] for j in report['jobs']) == [150, 151]
    assert report['rows'][0]['episodes'] == 2 and report['rows'][0]['missing'] == 0
    env = ArmEnv(SimConfig(), render=False)
    for ep in report['per_episode']:
        env.reset(seed=ep['seed'])
        assert ep['instruction'] == env.instruction
    assert (tmp_path / 'episodes.md').read_text().count('| full |') == 3   # summary + 2 episode rows
    assert all(0.0 < ep['sim_realtime_factor'] <= 1.5 for ep in report['per_episode'])
    # what each stack did during its episode, from its nodes' diagnostics (bringup's 'episode N stack:' line)
    for ep in report['per_episode']:
        assert ep['stack']['action.safety_ticks'] > 0 and ep['stack']['perception.frames_processed'] > 0, ep
    assert 'failed vs succeeded' in (tmp_path / 'episodes.md').read_text()

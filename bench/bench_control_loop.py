"""Control-loop deadline keeping and arm smoothness in the closed loop, from recorded bags.

Runs the whole stack (one process per node, sim arm, trained head, recorder) once per setting for
--seconds each, records a bag, and prints side by side from the bags: command-stream rate, p99
jitter and gaps > 5 ms by header stamps (the tick itself) and by receive times (what the arm's
controller sees), plus the smoothness of the measured arm motion (max / p99 jerk, jerk around chunk
seams vs elsewhere). Results also go to <out>/<stamp>/results.json.

    # issue 14 targets: 100 Hz, p99 jitter < 2 ms, no gap > 5 ms over 10 minutes (stretch 250 Hz)
    /work/helpers/netns_run.sh ".venv/bin/python bench/bench_control_loop.py --seconds 600"
    .venv/bin/python bench/bench_control_loop.py --settings forward trajectory forward_250hz --seconds 120
    .venv/bin/python bench/bench_control_loop.py --analyze runs/control/<stamp>/forward/bag  # existing bag

Run it in a private network namespace (or alone on the ROS domain) so other stacks' traffic does
not mix in. The load average before and after each run is printed: on a shared machine the
numbers are pessimistic.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vla_ros.eval.control_timing import analyze_bag, format_table  # noqa: E402

SETTINGS = {
    # (a) streaming positions to a forward_command_controller, head in its own process, SCHED_FIFO 40
    'forward': ['action.command_interface=forward'],
    # (a) with Fast DDS writing synchronously in the tick (a late-acknowledging reader can block it)
    'forward_sync': ['action.command_interface=forward', 'action.realtime.async_publish=false'],
    # (a) with a best-effort command stream (no DDS acknowledgements to wait for)
    'forward_best_effort': ['action.command_interface=forward', 'action.realtime.command_qos=best_effort'],
    # (a) with the control process on Fast DDS's default transports (shared memory first)
    'forward_shm': ['action.command_interface=forward', 'action.realtime.dds_transport=shm'],
    # (b) whole chunks as JointTrajectory to the sim's JTC mode
    'trajectory': ['action.command_interface=trajectory'],
    # the same deadline loop as a thread of the action node (shares the GIL with ROS callbacks)
    'forward_in_node': ['action.command_interface=forward', 'action.realtime.control_process=false'],
    # ... and with the head in a thread too, normal priority, automatic gc (closest to the old rclpy timer)
    'forward_thread': ['action.command_interface=forward', 'action.inference_mode=thread',
                       'action.realtime.fifo_priority=0', 'action.realtime.manage_gc=false'],
    # stretch target
    'forward_250hz': ['action.command_interface=forward', 'action.control_rate_hz=250.0'],
}
RATES = {'forward_250hz': 250.0}
LOAD_SAMPLE_S = 10.0
PROBE_RATE_HZ = 1000.0
# Recording subscriptions' history: a recorder whose Python side is starved for seconds on a loaded
# machine must not lose the command stream (every lost message reads as a gap in the bag).
# Fast DDS allocates history entries as they fill, so a deep history costs memory only while it is used.
RECORDER_DEPTH = 5000


def run_setting(label: str, seconds: float, warmup: float, out_dir: str, extra, recorder_fifo: int,
                probe_priority: int):
    """Run the stack once; returns (bag path, run info: command, load averages sampled during the run)."""
    bag = os.path.join(out_dir, label, 'bag')
    os.makedirs(os.path.dirname(bag), exist_ok=True)
    cmd = [sys.executable, '-m', 'vla_ros.bringup', '--processes', '--duration', str(seconds + warmup),
           '--record', bag, '--set', f'recorder.dds_fifo_priority={recorder_fifo}',
           '--set', f'recorder.subscription_depth={RECORDER_DEPTH}']
    for item in SETTINGS[label] + list(extra):
        cmd += ['--set', item]
    print(f'\n[bench] {label}: {" ".join(cmd[1:])}\n[bench] load average before: {os.getloadavg()[0]:.2f}',
          flush=True)
    loads = []
    probe = None
    probe_json = os.path.join(out_dir, label, 'wakeup_probe.json')
    if probe_priority > 0:   # the floor: an idle FIFO thread's late wake-ups, beside the stack, same time
        probe = subprocess.Popen([sys.executable, os.path.join(ROOT, 'bench', 'bench_wakeup_latency.py'),
                                  '--seconds', str(seconds + warmup), '--rate', str(PROBE_RATE_HZ), '--priority',
                                  str(probe_priority), '--json', probe_json, '--quiet'],
                                 cwd=ROOT, stdout=open(os.path.join(out_dir, label, 'probe.log'), 'w'),
                                 stderr=subprocess.STDOUT)
    with open(os.path.join(out_dir, label, 'stack.log'), 'w') as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        while proc.poll() is None:     # 1-minute load average every LOAD_SAMPLE_S, for the report
            loads.append(os.getloadavg()[0])
            try:
                proc.wait(LOAD_SAMPLE_S)
            except subprocess.TimeoutExpired:
                pass
    print(f'[bench] load average after: {os.getloadavg()[0]:.2f} (during: min {min(loads):.2f}, '
          f'mean {sum(loads) / len(loads):.2f}, max {max(loads):.2f})', flush=True)
    info = {'command': ' '.join(['python'] + cmd[1:]), 'load_average_1min': {
        'min': min(loads), 'mean': sum(loads) / len(loads), 'max': max(loads), 'samples': len(loads)}}
    if probe is not None:
        probe.wait(120)
        if os.path.exists(probe_json):
            with open(probe_json) as fh:
                info['wakeup_probe'] = json.load(fh)
    return bag, info


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', nargs='+', default=['forward', 'trajectory'], choices=list(SETTINGS))
    parser.add_argument('--seconds', type=float, default=120.0, help='measured run time per setting (about)')
    parser.add_argument('--warmup', type=float, default=60.0,
                        help='added to --seconds: the stack loads its models before the first command')
    parser.add_argument('--skip', type=float, default=5.0, help='seconds after the first command left out')
    parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'control'))
    parser.add_argument('--extra', action='append', default=[], help='extra --set for every run')
    parser.add_argument('--recorder-fifo', type=int, default=30,
                        help='SCHED_FIFO priority of the recorder\'s DDS receive threads (0 = normal): receive '
                             'times are DDS reception timestamps; this keeps them the stream\'s, not the load\'s')
    parser.add_argument('--probe-priority', type=int, default=45,
                        help='run bench_wakeup_latency.py beside the stack at this SCHED_FIFO priority (0 = no '
                             'probe): which gaps an idle real-time thread saw too (the machine\'s floor)')
    parser.add_argument('--analyze', nargs='+', default=None, metavar='BAG', help='only analyse existing bags')
    parser.add_argument('--rate', type=float, default=100.0,
                        help='nominal control rate for --analyze (settings named in RATES use theirs)')
    args = parser.parse_args(argv)

    results = {}
    if args.analyze:   # a bench run's bags again: its probe events and run info are next to them
        for bag in args.analyze:
            setting_dir = os.path.dirname(os.path.abspath(bag))
            label = os.path.basename(setting_dir) or bag
            probe_json = os.path.join(setting_dir, 'wakeup_probe.json')
            probe = json.load(open(probe_json)) if os.path.exists(probe_json) else None
            results[label] = analyze_bag(bag, control_rate_hz=RATES.get(label, args.rate), skip_s=args.skip,
                                         floor_events=probe['late_events'] if probe else None)
            earlier = os.path.join(os.path.dirname(setting_dir), 'results.json')
            if os.path.exists(earlier):
                run = json.load(open(earlier)).get('results', {}).get(label, {}).get('run')
                if run:
                    results[label]['run'] = run
        out_dir = os.path.dirname(os.path.dirname(os.path.abspath(args.analyze[0])))
    else:
        out_dir = os.path.join(args.out, time.strftime('%Y%m%d_%H%M%S'))
        os.makedirs(out_dir, exist_ok=True)
        for label in args.settings:
            bag, info = run_setting(label, args.seconds, args.warmup, out_dir, args.extra, args.recorder_fifo,
                                    args.probe_priority)
            try:
                results[label] = analyze_bag(bag, control_rate_hz=RATES.get(label, 100.0), skip_s=args.skip,
                                             floor_events=info.get('wakeup_probe', {}).get('late_events'))
                results[label]['run'] = info
            except Exception as exc:  # keep the other settings' numbers
                print(f'[bench] {label}: cannot analyse {bag}: {exc}', flush=True)
    print('\n' + format_table(results))
    path = os.path.join(out_dir, 'results_analyzed.json' if args.analyze else 'results.json')
    with open(path, 'w') as fh:
        json.dump({'cpu_count': os.cpu_count(), 'bench_command': ' '.join(['python'] + sys.argv),
                   'load_average_end': os.getloadavg(), 'results': results}, fh, indent=2)
    print(f'\n[bench] JSON: {path}')


if __name__ == '__main__':
    main()

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


def run_setting(label: str, seconds: float, warmup: float, out_dir: str, extra) -> str:
    bag = os.path.join(out_dir, label, 'bag')
    os.makedirs(os.path.dirname(bag), exist_ok=True)
    cmd = [sys.executable, '-m', 'vla_ros.bringup', '--processes', '--duration', str(seconds + warmup),
           '--record', bag]
    for item in SETTINGS[label] + list(extra):
        cmd += ['--set', item]
    load = os.getloadavg()
    print(f'\n[bench] {label}: {" ".join(cmd[1:])}\n[bench] load average before: {load[0]:.2f}', flush=True)
    with open(os.path.join(out_dir, label, 'stack.log'), 'w') as log:
        subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, check=False)
    print(f'[bench] load average after: {os.getloadavg()[0]:.2f}', flush=True)
    return bag


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', nargs='+', default=['forward', 'trajectory'], choices=list(SETTINGS))
    parser.add_argument('--seconds', type=float, default=120.0, help='measured run time per setting (about)')
    parser.add_argument('--warmup', type=float, default=60.0,
                        help='added to --seconds: the stack loads its models before the first command')
    parser.add_argument('--skip', type=float, default=5.0, help='seconds after the first command left out')
    parser.add_argument('--out', default=os.path.join(ROOT, 'runs', 'control'))
    parser.add_argument('--extra', action='append', default=[], help='extra --set for every run')
    parser.add_argument('--analyze', nargs='+', default=None, metavar='BAG', help='only analyse existing bags')
    parser.add_argument('--rate', type=float, default=100.0, help='nominal control rate for --analyze')
    args = parser.parse_args(argv)

    results = {}
    if args.analyze:
        for bag in args.analyze:
            results[os.path.basename(os.path.dirname(os.path.abspath(bag))) or bag] = analyze_bag(
                bag, control_rate_hz=args.rate, skip_s=args.skip)
        out_dir = os.path.dirname(os.path.abspath(args.analyze[0]))
    else:
        out_dir = os.path.join(args.out, time.strftime('%Y%m%d_%H%M%S'))
        os.makedirs(out_dir, exist_ok=True)
        for label in args.settings:
            bag = run_setting(label, args.seconds, args.warmup, out_dir, args.extra)
            try:
                results[label] = analyze_bag(bag, control_rate_hz=RATES.get(label, 100.0), skip_s=args.skip)
            except Exception as exc:  # keep the other settings' numbers
                print(f'[bench] {label}: cannot analyse {bag}: {exc}', flush=True)
    print('\n' + format_table(results))
    path = os.path.join(out_dir, 'results.json')
    with open(path, 'w') as fh:
        json.dump({'cpu_count': os.cpu_count(), 'load_average_end': os.getloadavg(), 'results': results}, fh, indent=2)
    print(f'\n[bench] JSON: {path}')


if __name__ == '__main__':
    main()

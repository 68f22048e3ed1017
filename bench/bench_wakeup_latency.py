"""What this machine allows a real-time thread: a cyclictest-like probe (no ROS).

One thread at SCHED_FIFO (when permitted) wakes at absolute CLOCK_MONOTONIC deadlines, does no work,
and records how late each wake-up is, whether the thread was switched out (voluntary/involuntary
context switches, from getrusage) and the CPUs' steal time (/proc/stat: time the hypervisor ran
something else while this VM's vCPU wanted to run). Run it beside the stack: late wake-ups of a
thread that does nothing are the floor under any control loop's gaps on this machine.

    .venv/bin/python bench/bench_wakeup_latency.py --seconds 60 --rate 1000 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from vla_ros.os_realtime import AbsoluteSleeper, apply_thread_realtime, lock_memory, thread_rusage  # noqa: E402


def steal_ticks():
    """Total steal time of all CPUs in USER_HZ ticks (field 8 of the cpu line)."""
    with open('/proc/stat') as fh:
        return int(fh.readline().split()[8])


def probe(seconds: float, rate_hz: float, priority: int, threshold_ms: float):
    period = int(1e9 / rate_hz)
    n = int(seconds * rate_hz)
    late = np.zeros(n, dtype=np.int64)
    out = {}

    def run():
        out['realtime'] = apply_thread_realtime(priority, [])
        sleeper = AbsoluteSleeper()
        events = []
        ru_prev = thread_rusage()
        release = time.monotonic_ns() + period
        for i in range(n):
            sleeper.sleep_until(release)
            woke = time.monotonic_ns()
            late[i] = woke - release
            if late[i] > threshold_ms * 1e6:
                ru = thread_rusage()
                events.append({'t_s': i / rate_hz, 'wall_s': time.time(), 'late_ms': late[i] * 1e-6,
                               'involuntary_csw': ru.ru_nivcsw - ru_prev.ru_nivcsw,
                               'voluntary_csw': ru.ru_nvcsw - ru_prev.ru_nvcsw})
            ru_prev = thread_rusage()
            release += period
            if time.monotonic_ns() > release:   # skip, do not burst (like DeadlineLoop)
                release += ((time.monotonic_ns() - release) // period + 1) * period
        out['events'] = events

    steal0, load0 = steal_ticks(), os.getloadavg()[0]
    t = threading.Thread(target=run)
    t.start()
    t.join()
    hz = os.sysconf('SC_CLK_TCK')
    late_ms = late * 1e-6
    return {'rate_hz': rate_hz, 'seconds': seconds, 'realtime': out['realtime'], 'memory': out.get('memory', ''),
            'late_p50_ms': float(np.percentile(late_ms, 50)), 'late_p99_ms': float(np.percentile(late_ms, 99)),
            'late_p999_ms': float(np.percentile(late_ms, 99.9)), 'late_max_ms': float(late_ms.max()),
            f'wakeups_late_over_{threshold_ms:g}ms': len(out['events']),
            'steal_s': (steal_ticks() - steal0) / hz, 'load_average_before': load0,
            'load_average_after': os.getloadavg()[0], 'late_events': out['events']}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--seconds', type=float, default=60.0)
    parser.add_argument('--rate', type=float, default=1000.0)
    parser.add_argument('--priority', type=int, default=45, help='SCHED_FIFO priority (0 = normal)')
    parser.add_argument('--threshold-ms', type=float, default=2.0, help='late wake-ups listed above this')
    parser.add_argument('--json', default='')
    parser.add_argument('--quiet', action='store_true', help='print the summary only')
    args = parser.parse_args(argv)
    memory = lock_memory()
    result = probe(args.seconds, args.rate, args.priority, args.threshold_ms)
    result['memory'] = memory
    for key, value in result.items():
        if key != 'late_events':
            print(f'{key:<28} {value}')
    for event in [] if args.quiet else result['late_events'][:20]:
        print('  late wake-up', event)
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(result, fh, indent=2)


if __name__ == '__main__':
    main()

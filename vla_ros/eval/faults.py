"""Fault-injection suite: the closed loop over DDS, one injected fault at a time.

    python -m vla_ros.eval.faults                 # every fault (~10 min on 2 cores)
    python -m vla_ros.eval.faults --short         # the CI subset (~2-3 min)
    python -m vla_ros.eval.faults --two-hosts [--degrade 8mbit]   # perception+planner | action+sim

Starts sim arm, perception, planner, action and recorder as processes (one per node, as
`ros2 launch` does), plus the impairment relay (vla_ros/nodes/fault_relay_node.py) between the
producers and consumers of images, joint states, tokens and plans. After a fault-free baseline
it injects each fault (vla_ros/eval/fault_inject.py) and judges it (vla_ros/eval/fault_judge.py, fault_metrics.py):
limit violations on the measured arm state (must be 0), time to hold, time to recover, messages
the probe received that the bag lacks (must be 0), the episode's outcome and every drop counter
that moved. Prints a table and writes faults.json (+ node logs and the bag) into --out.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List, Optional

import numpy as np
import yaml

from vla_ros import stack
from vla_ros.bringup import merge_params
from vla_ros.config.action import ActionConfig
from vla_ros.config.sim import SimConfig
from vla_ros.eval import fault_metrics as fm
from vla_ros.eval.fault_inject import CONSUMERS, Fault, RelayFault, select
from vla_ros.eval.fault_judge import bag_check, episode_outcomes, failure_reasons, judge, markdown
from vla_ros.eval.multi_host import HostLayout

STARTUP_TIMEOUT_S = 240.0
RESTART_DELAY_S = 1.0
RECOVER_TIMEOUT_S = {'kill': 90.0}     # a restarted node loads its model first
DEFAULT_RECOVER_TIMEOUT_S = 20.0
SETTLE_S = 1.0
BASELINE_S = float(os.environ.get('VLA_FAULTS_BASELINE_S', 4.0))
SIGINT_GRACE_S = 1.0
SUITE_OVERRIDES = {'sim.command_timeout_s': 0.5}   # the arm holds itself when the action node is gone


def log(text: str) -> None:
    print(f'[faults] {text}', flush=True)


class Processes:
    """The stack's node processes (+ relay), killable, stoppable and restartable one by one."""

    def __init__(self, nodes: List[stack.ResolvedNode], out_dir: str, hosts: HostLayout, env: dict):
        self.nodes = {n.name: n for n in nodes}
        self.hosts, self.env = hosts, env
        self.log_dir = os.path.join(out_dir, 'logs')
        os.makedirs(self.log_dir, exist_ok=True)
        self.procs: Dict[str, subprocess.Popen] = {}
        self.namespace = nodes[0].namespace

    def command(self, name: str) -> List[str]:
        if name == 'fault_relay':
            args = ['-r', f'__ns:=/{self.namespace}']
            module = 'vla_ros.nodes.fault_relay_node'
        else:
            node = self.nodes[name]
            args = node.ros_arguments()
            for topic in CONSUMERS.get(name, ()):
                args += ['-r', f'{topic}:=relay/{topic}']
            module = node.spec.module
        return self.hosts.prefix(name) + [sys.executable, '-m', module, '--ros-args', *args]

    def start(self, name: str) -> None:
        out = open(os.path.join(self.log_dir, f'{name}.log'), 'a')
        self.procs[name] = subprocess.Popen(self.command(name), env=self.env, stdout=out, stderr=subprocess.STDOUT)

    def signal(self, name: str, sig: int) -> None:
        proc = self.procs.get(name)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)

    def wait(self, name: str, timeout: float) -> Optional[int]:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.procs[name].kill()
            return self.procs[name].wait()

    def stop_all(self, grace_s: float) -> None:
        """SIGINT to everything but the recorder, then (after grace_s) to the recorder: it records the end."""
        order = [n for n in reversed(list(self.procs)) if n != 'recorder']
        for name in order:
            self.signal(name, signal.SIGINT)
        for name in order:
            self.wait(name, 20.0)
        if 'recorder' in self.procs:
            time.sleep(grace_s)
            self.signal('recorder', signal.SIGINT)
            self.wait('recorder', 60.0)


def _spin(probe, stop: threading.Event) -> None:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    executor = SingleThreadedExecutor()
    executor.add_node(probe)
    while not stop.is_set() and rclpy.ok():
        executor.spin_once(timeout_sec=0.05)


def _moving_since(probe, since: float) -> bool:
    """Commands move again by the judge's own rule (fm.time_to_recover), not one re-anchoring step."""
    cmds = [c for c in probe.snapshot()[1] if c[0] >= since]
    if len(cmds) < 3:
        return False
    series = fm.Series.from_rows(cmds, len(probe.joint_names))
    return fm.time_to_recover(series, since, time.monotonic()) is not None


def _wait_until(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def inject(fault: Fault, probe, procs: Processes) -> float:
    """Apply one fault; returns the time it was removed (t1)."""
    if fault.action == 'relay':
        probe.relay(fault.relay)
        time.sleep(fault.duration_s)
        probe.relay(RelayFault())
    elif fault.action == 'kill':
        procs.signal(fault.target, signal.SIGKILL)
        procs.wait(fault.target, 10.0)
        time.sleep(RESTART_DELAY_S)
        procs.start(fault.target)
    elif fault.action == 'stall':
        procs.signal(fault.target, signal.SIGSTOP)
        time.sleep(fault.duration_s)
        procs.signal(fault.target, signal.SIGCONT)
    elif fault.action == 'estop':
        probe.estop(True)
        time.sleep(fault.duration_s)
        probe.estop(False)
    elif fault.action == 'instruction':
        probe.instruction('x' * 100_000)
        time.sleep(fault.duration_s)
        probe.forget_instruction()
    elif fault.action == 'sigint':
        procs.signal('recorder', signal.SIGINT)
        procs.wait('recorder', 60.0)
    return time.monotonic()


def run(args) -> int:
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    bag_dir = os.path.join(out, 'bag')
    faults = [] if args.faults == 'none' else select(args.faults.split(',') if args.faults else None,
                                                     short=args.short)
    from vla_ros.bringup import _parse_override
    extra = dict(SUITE_OVERRIDES, **dict(_parse_override(t) for t in args.set or []))
    nodes = stack.resolve({'record': 'true', 'bag_dir': bag_dir, 'namespace': args.namespace,
                           'use_respawn': 'false'}, extra)
    overrides = {}
    for n in nodes:
        overrides.update(n.overrides)
    params_file = os.path.join(out, 'params.yaml')
    with open(params_file, 'w') as fh:
        yaml.safe_dump(merge_params(nodes[0].params_file, overrides), fh, sort_keys=False)
    import dataclasses
    nodes = [dataclasses.replace(n, params_file=params_file) for n in nodes]
    hosts = HostLayout.from_args(args)
    env = hosts.environment(dict(os.environ))
    if args.transport == 'udp':      # Fast DDS without its shared-memory transport (see docs/faults.md)
        env['FASTDDS_BUILTIN_TRANSPORTS'] = 'UDPv4'
    os.environ.update(env)
    procs = Processes(nodes, out, hosts, env)
    cfg = ActionConfig()
    limits = fm.Limits(np.array(cfg.safety.joint_lower), np.array(cfg.safety.joint_upper),
                       cfg.safety.max_velocity, cfg.safety.max_acceleration)
    sim_period = 1.0 / SimConfig().joint_state_rate_hz    # the sim's joint-state period in sim time

    import rclpy
    from vla_ros.eval.fault_probe import FaultProbe
    rclpy.init()
    probe = FaultProbe(cfg.joint_names, namespace=args.namespace)
    stop = threading.Event()
    spinner = threading.Thread(target=_spin, args=(probe, stop), daemon=True)
    spinner.start()
    rows: List[dict] = []
    t_recorder_stop = None
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    try:
        procs.start('fault_relay')
        for name in procs.nodes:
            procs.start(name)
        log(f'started {", ".join(procs.procs)} ({hosts.describe()}); waiting for the arm to move')
        if not _wait_until(lambda: _moving_since(probe, 0.0), STARTUP_TIMEOUT_S):
            raise RuntimeError(f'the closed loop never started moving; see {procs.log_dir}')
        t0 = time.monotonic()
        diag = probe.diagnostics_copy()
        time.sleep(BASELINE_S)
        rows.append(judge('baseline', probe, limits, t0, t0, time.monotonic(), diag, expect_hold=False,
                          sim_sample_period_s=sim_period))
        rows[-1]['load_average'] = [round(x, 2) for x in os.getloadavg()]
        for i, fault in enumerate(faults):
            log(f'[{i + 1}/{len(faults)}] {fault.name}: {fault.what}')
            diag = probe.diagnostics_copy()
            t0 = time.monotonic()
            t1 = inject(fault, probe, procs)
            if fault.action == 'sigint':
                t_recorder_stop = t0   # everything received before the Ctrl-C must be in the bag
            limit = RECOVER_TIMEOUT_S.get(fault.action, DEFAULT_RECOVER_TIMEOUT_S)
            _wait_until(lambda: _moving_since(probe, t1), limit)
            time.sleep(SETTLE_S)
            rows.append(judge(fault.name, probe, limits, t0, t1, time.monotonic(), diag, fault.expect_hold,
                              sim_period))
            r = rows[-1]
            r['load_average'] = [round(x, 2) for x in os.getloadavg()]
            log(f'    hold {r["time_to_hold_s"]} s, recover {r["time_to_recover_s"]} s, '
                f'violations {r["violations"]}, drops {r["drops"]}, node modes {r["node_modes_during_fault"]}, '
                f'tokens after {r["perception_tokens_after_fault"]}, load {r["load_average"]}')
    finally:
        t_stop = time.monotonic()
        final_diagnostics = probe.diagnostics_copy()
        procs.stop_all(SIGINT_GRACE_S)
        stop.set()
        spinner.join(timeout=5.0)
        probe.destroy_node()
        rclpy.shutdown()
        hosts.teardown()
    js_rows, cmd_rows, status_rows, _, _ = probe.snapshot()
    np.savez_compressed(os.path.join(out, 'series.npz'),   # what the probe saw, for plots and post-mortems
                        js_t=[r[0] for r in js_rows], js_stamp=[r[1] for r in js_rows],
                        js_q=[r[2] for r in js_rows], js_v=[r[3] for r in js_rows],
                        cmd_t=[r[0] for r in cmd_rows], cmd_stamp=[r[1] for r in cmd_rows],
                        cmd_q=[r[2] for r in cmd_rows], status=np.array(status_rows, float).reshape(-1, 5))
    bag_total = bag_check(rows, probe, bag_dir, args.namespace, t_recorder_stop or t_stop)
    episode_outcomes(rows, probe)
    table = fm.summarise(rows)
    print(table, flush=True)
    for r in rows:
        r['failure_reasons'] = failure_reasons(r)
    failures = [r['fault'] for r in rows if r['failure_reasons']]
    for r in rows:
        if r['failure_reasons']:
            log(f"FAILED {r['fault']}: {'; '.join(r['failure_reasons'])}")
    result = {'faults': rows, 'bag': bag_total, 'failures': failures, 'hosts': hosts.describe(),
              'fastdds_builtin_transports': env.get('FASTDDS_BUILTIN_TRANSPORTS', 'DEFAULT (SHM + UDPv4)'),
              'link': hosts.link_stats, 'diagnostics_at_end': final_diagnostics,
              'short': args.short, 'load_average': [round(x, 2) for x in os.getloadavg()],
              'load_average_at_start': load_at_start, 'sim_sample_period_s': sim_period,
              'limits': {'max_velocity': limits.max_velocity, 'max_acceleration': limits.max_acceleration,
                         'velocity_tol': limits.velocity_tol, 'acceleration_tol': limits.acceleration_tol}}
    with open(os.path.join(out, 'faults.json'), 'w') as fh:
        json.dump(result, fh, indent=1, default=float)
    with open(os.path.join(out, 'faults.txt'), 'w') as fh:
        fh.write(table + '\n')
    with open(os.path.join(out, 'faults.md'), 'w') as fh:
        fh.write(markdown(rows))
    if hosts.link_stats:
        log(f'link between the hosts: {hosts.link_stats}')
    log(f'wrote {os.path.join(out, "faults.json")}; ' + (f'FAILED: {failures}' if failures else 'all faults passed'))
    return 1 if failures else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--short', action='store_true', help='the CI subset of faults')
    p.add_argument('--faults', default='', help='comma-separated fault names (default: all, or the short set; '
                   '"none": baseline only)')
    p.add_argument('--out', default=os.path.join('runs', time.strftime('faults_%Y%m%d_%H%M%S')))
    p.add_argument('--namespace', default='vla')
    p.add_argument('--set', action='append', metavar='PREFIX.NAME=VALUE', help='override a parameter (repeatable)')
    p.add_argument('--transport', choices=('default', 'udp'), default='udp',
                   help='Fast DDS transports of every process: udp (FASTDDS_BUILTIN_TRANSPORTS=UDPv4, as '
                   '--two-hosts uses) or default (shared memory + UDPv4: after a node is stopped or killed, '
                   'large samples to it can stop for good; docs/faults.md)')
    HostLayout.add_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())

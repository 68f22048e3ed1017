"""Run the stack without `ros2 launch`: the same description (`vla_ros.stack`), the same supervision.

`launch`/`launch_ros` are not installable from PyPI, so this is the runner used here and in CI;
on a ROS 2 install `ros2 launch vla_ros vla.launch.py` starts the same nodes with the same
parameters. Two modes:

* `--processes`: one OS process per node, as `ros2 launch` does, supervised like nav2's bringup:
  perception and planner are respawned after `--respawn-delay` (at most `--max-restarts` times
  each; the action node holds the arm meanwhile), a required node's exit (action, sim arm) or a
  node that cannot start shuts the stack down with a non-zero exit code. At the end the nodes are
  stopped in reverse order and the recorder last, after a grace period, so the bag holds the
  final messages;
* in-process (default): every node in this process on one MultiThreadedExecutor.

Typical use (the README's main job):

    python -m vla_ros.bringup --processes --episodes 5 --record runs/demo/bag --report runs/demo/report
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

import yaml

from vla_ros import stack
from vla_ros.eval.episode_diagnostics import CounterDeltas, format_line
from vla_ros.config.base import ConfigError, parse_assignment

STOP_TIMEOUT_S = 15.0
POLL_S = 0.2


def log(text: str) -> None:
    print(f'[bringup] {text}', flush=True)


def _parse_override(text: str):
    try:
        return parse_assignment(text, '--set', 'prefix.name=value')
    except ConfigError as exc:
        raise SystemExit(str(exc)) from None


def merge_params(config_path: str, overrides: Dict[str, object]) -> dict:
    """The params-file document with `overrides` (dotted names) written into the owning node's section."""
    with open(config_path) as fh:
        doc = yaml.safe_load(fh) or {}
    for key, value in overrides.items():
        try:
            owner = stack.owner_of(key)
        except stack.StackError as exc:
            raise SystemExit(str(exc)) from None
        section_key = '/**' if owner == stack.SHARED else f'/**/{owner}'
        node = doc.setdefault(section_key, {}).setdefault('ros__parameters', {})
        parts = key.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return doc


class EpisodeMonitor:
    """Watches TaskStatus to stop after N episodes and print each outcome."""

    def __init__(self, node, topic: str, target_episodes: int):
        from diagnostic_msgs.msg import DiagnosticArray

        from vla_ros_msgs.msg import TaskStatus
        self.target = target_episodes
        self._prefix = node.get_namespace().rstrip('/') + '/'     # this stack's nodes only
        self._counters = CounterDeltas()
        self.results: List[dict] = []
        self.done = threading.Event()
        self._seen = set()
        self._bar = None
        if target_episodes > 0:
            from tqdm import tqdm
            self._bar = tqdm(total=target_episodes, desc='episodes', unit='ep')
        node.create_subscription(TaskStatus, topic, self._on_status, 10)
        node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics, 10)

    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            if status.name.startswith(self._prefix):
                self._counters.update(status.name, {kv.key: kv.value for kv in status.values})

    def _on_status(self, msg) -> None:
        if not msg.done or msg.episode in self._seen:
            return
        self._seen.add(msg.episode)
        self.results.append({'episode': int(msg.episode), 'instruction': msg.instruction,
                             'success': bool(msg.success), 'elapsed_s': float(msg.elapsed)})
        line = (f'episode {msg.episode}: {"SUCCESS" if msg.success else "fail"} '
                f'in {msg.elapsed:.1f}s ({msg.instruction})')
        stack_line = format_line(int(msg.episode), self._counters.episode_end())
        if stack_line:
            line += '\n' + stack_line
        if self._bar is not None:
            self._bar.write(line)
            self._bar.update(1)
        else:
            print(line, flush=True)
        if self.target > 0 and len(self.results) >= self.target:
            self.done.set()

    def close(self):
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------- supervision
def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """A node must not outlive a bringup that was killed outright (SIGKILL)."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


@dataclasses.dataclass
class Managed:
    node: stack.ResolvedNode
    proc: Optional[subprocess.Popen] = None
    restarts: int = 0
    respawn_at: Optional[float] = None   # monotonic time of a scheduled respawn


class Supervisor:
    """Starts node processes, respawns or escalates exits, stops them in order."""

    def __init__(self, nodes: List[stack.ResolvedNode], max_restarts: int, env: Optional[dict] = None):
        self.managed = [Managed(n) for n in nodes]
        self.max_restarts = max_restarts
        self.env = env
        self.failure: Optional[str] = None
        self.events: List[dict] = []     # what happened, for the caller and tests

    def _command(self, node: stack.ResolvedNode) -> List[str]:
        return [sys.executable, '-m', node.spec.module, '--ros-args', *node.ros_arguments()]

    def _spawn(self, m: Managed) -> None:
        m.proc = subprocess.Popen(self._command(m.node), env=self.env, preexec_fn=_die_with_parent)
        m.respawn_at = None

    def start(self) -> None:
        for m in self.managed:
            self._spawn(m)
        log(f'started {", ".join(m.node.name for m in self.managed)} as processes '
            f'(namespace /{self.managed[0].node.namespace})' if self.managed else 'nothing to start')

    def poll(self) -> Optional[str]:
        """Handle exits and due respawns; returns why the stack must stop, or None."""
        now = time.monotonic()
        for m in self.managed:
            if m.respawn_at is not None:
                if now >= m.respawn_at:
                    self._spawn(m)
                    log(f'{m.node.name} respawned (restart {m.restarts}/{self.max_restarts})')
                    self.events.append({'node': m.node.name, 'event': 'respawned', 'restart': m.restarts})
                continue
            if m.proc is None or m.proc.poll() is None:
                continue
            code = m.proc.returncode
            self.events.append({'node': m.node.name, 'event': 'exited', 'code': code})
            if code == stack.STARTUP_CONFIG_ERROR:
                self.failure = f'{m.node.name} could not start (bad parameters, see its log above)'
            elif m.node.respawn and m.restarts < self.max_restarts:
                m.restarts += 1
                m.respawn_at = now + m.node.respawn_delay
                m.proc = None
                log(f'{m.node.name} exited with code {code}; respawning in {m.node.respawn_delay:.1f} s '
                    f'(restart {m.restarts}/{self.max_restarts}); the action node holds the arm meanwhile')
                continue
            elif m.node.respawn:
                self.failure = f'{m.node.name} exited with code {code} after {m.restarts} restarts (limit reached)'
            elif m.node.required:
                self.failure = f'required node {m.node.name} exited with code {code}'
            else:
                log(f'{m.node.name} exited with code {code} (not required: the stack keeps running)')
                m.proc = None
                continue
            log(self.failure + ': shutting the stack down')
            return self.failure
        return None

    def stop(self, grace_s: float) -> None:
        """SIGINT (Ctrl-C) in reverse start order, the recorder last after `grace_s` so it records the end."""
        running = [m for m in self.managed if m.proc is not None]
        order = [m for m in reversed(running) if m.node.name != 'recorder']
        last = [m for m in running if m.node.name == 'recorder']
        for group, pause in ((order, 0.0), (last, grace_s)):
            if group and pause:
                time.sleep(pause)
            for m in group:
                if m.proc.poll() is None:
                    m.proc.send_signal(signal.SIGINT)
            for m in group:
                try:
                    m.proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    log(f'{m.node.name} did not stop on SIGINT; killing it')
                    m.proc.kill()
                    m.proc.wait()


# ---------------------------------------------------------------------------- runners
def _monitor(namespace: str, monitor_topic: str, episodes: int):
    """The episode monitor node on its own executor, spun by _wait() in the calling thread (no extra thread)."""
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    node = Node('bringup_monitor', namespace=namespace)
    monitor = EpisodeMonitor(node, monitor_topic, episodes)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    return node, monitor, executor


def run_processes(args, nodes: List[stack.ResolvedNode], monitor_topic: str) -> tuple:
    import rclpy
    supervisor = Supervisor(nodes, args.max_restarts)
    supervisor.start()
    rclpy.init(args=None)
    node, monitor, executor = _monitor(nodes[0].namespace, monitor_topic, args.episodes)
    failure = None
    try:
        failure = _wait(args, monitor, executor, supervisor.poll)
    finally:
        monitor.close()
        supervisor.stop(args.shutdown_grace)
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return monitor.results, failure


def run_in_process(args, nodes: List[stack.ResolvedNode], monitor_topic: str) -> tuple:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor

    from vla_ros.nodes.executor_stop import spin_until, stop_executor

    rclpy.init(args=['--ros-args', '--log-level', nodes[0].log_level])
    instances = []
    executor = MultiThreadedExecutor(num_threads=args.threads)
    stop = threading.Event()
    spinner = threading.Thread(target=spin_until, args=(executor, stop), daemon=True)
    try:
        for n in nodes:
            module = importlib.import_module(n.spec.module)
            cli = ['--ros-args', '--params-file', n.params_file]
            for src, dst in n.remappings:
                cli += ['-r', f'{src}:={dst}']
            instance = getattr(module, n.spec.cls)(namespace=n.namespace, cli_args=cli)
            instances.append(instance)
            executor.add_node(instance)
        monitor_node, monitor, monitor_executor = _monitor(nodes[0].namespace, monitor_topic, args.episodes)
        log(f'running {", ".join(n.name for n in nodes)} in-process (namespace /{nodes[0].namespace})')
        spinner.start()
        _wait(args, monitor, monitor_executor, lambda: None)
        monitor.close()
        monitor_executor.shutdown(timeout_sec=2.0)
        monitor_node.destroy_node()
        return monitor.results, None
    finally:
        stop.set()                      # no new callbacks; the dispatched ones finish before shutdown
        if spinner.is_alive():
            spinner.join(timeout=5.0)
        stop_executor(executor, timeout_sec=2.0)
        for instance in reversed(instances):  # recorder last in, first closed: bag finalised before shutdown
            close = getattr(instance, 'close', None)
            if callable(close):
                try:
                    close()
                except Exception as exc:  # keep closing the others
                    print(f'[bringup] error closing {instance.get_name()}: {exc}', file=sys.stderr)
            instance.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _wait(args, monitor: EpisodeMonitor, executor, poll) -> Optional[str]:
    start = time.monotonic()
    try:
        while True:
            deadline = time.monotonic() + POLL_S
            while not monitor.done.is_set() and time.monotonic() < deadline:
                executor.spin_once(timeout_sec=max(0.0, deadline - time.monotonic()))
            if monitor.done.is_set():
                return None
            if args.duration > 0 and time.monotonic() - start >= args.duration:
                return None
            failure = poll()
            if failure:
                return failure
    except KeyboardInterrupt:
        log('interrupted, shutting down')
        return None


# ---------------------------------------------------------------------------- command line
def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description='Run the vla_ros stack (sim arm, perception, planner, action, recorder) without ros2 launch. '
                    'Same nodes and parameters as `ros2 launch vla_ros vla.launch.py` (vla_ros.stack).')
    default = stack.ARGUMENT_DEFAULTS
    parser.add_argument('--config', default=default['config'], help='ROS 2 params file (path or package:// URI)')
    parser.add_argument('--task', default=default['task'], choices=stack.TASKS,
                        help='sim task preset (pick_place: config/tasks/pick_place.yaml, gripper + its trained policy)')
    parser.add_argument('--planner', default=default['planner'], choices=('lightweight', 'vlm'),
                        help='planner.type for this run')
    parser.add_argument('--namespace', default=default['namespace'])
    parser.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = no limit)')
    parser.add_argument('--episodes', type=int, default=0, help='stop after this many sim episodes (0 = no limit)')
    parser.add_argument('--record', default='', help='record a rosbag2 (MCAP) into this new directory')
    parser.add_argument('--report', default='', help='evaluate the recorded bag into this directory')
    parser.add_argument('--no-sim', action='store_true', help='do not start the simulated arm (real robot)')
    parser.add_argument('--processes', action='store_true',
                        help='one supervised OS process per node (as ros2 launch) instead of one process')
    parser.add_argument('--threads', type=int, default=8, help='executor threads (in-process mode)')
    parser.add_argument('--encoder-path', default='', help='perception.encoder_path (default: the demo encoder)')
    parser.add_argument('--vlm-path', default='', help='planner.model_path for --planner vlm (default: demo VLM)')
    parser.add_argument('--checkpoint', default='', help='action.checkpoint_path (default: the trained head)')
    parser.add_argument('--no-respawn', action='store_true',
                        help='do not respawn perception/planner: any node exit stops the stack')
    parser.add_argument('--respawn-delay', type=float, default=float(default['respawn_delay']))
    parser.add_argument('--max-restarts', type=int, default=stack.MAX_RESTARTS, help='respawns allowed per node')
    parser.add_argument('--shutdown-grace', type=float, default=1.0,
                        help='seconds between stopping the other nodes and the recorder')
    parser.add_argument('--log-level', default=default['log_level'], choices=stack.LOG_LEVELS)
    parser.add_argument('--set', action='append', metavar='PREFIX.NAME=VALUE',
                        help='override any parameter, e.g. --set perception.keep_ratio=0.25 (repeatable)')
    args = parser.parse_args(argv)
    if args.report and not args.record:
        parser.error('--report needs --record')
    if args.duration <= 0 and args.episodes <= 0:
        log('no --duration/--episodes given: running until Ctrl-C')
    return args


def launch_arguments(args) -> Dict[str, str]:
    """The bringup's options as the launch file's arguments (the same names `ros2 launch` takes)."""
    return {'config': args.config, 'task': args.task, 'planner': args.planner, 'namespace': args.namespace,
            'model_path': args.vlm_path, 'encoder_path': args.encoder_path, 'checkpoint': args.checkpoint,
            'use_sim': str(not args.no_sim).lower(), 'record': str(bool(args.record)).lower(),
            'bag_dir': args.record, 'use_respawn': str(not args.no_respawn).lower(),
            'respawn_delay': str(args.respawn_delay), 'log_level': args.log_level}


def main(argv=None) -> int:
    args = parse_args(argv)
    extra = dict(_parse_override(text) for text in args.set or [])
    if args.episodes > 0 and not args.no_sim:
        extra.setdefault('sim.max_episodes', args.episodes)
    try:
        nodes = stack.resolve(launch_arguments(args), extra)
    except (stack.StackError, ValueError) as exc:
        raise SystemExit(f'[bringup] {exc}') from None
    # One params file holding the YAML plus every node's overrides, as launch_ros passes them.
    overrides = {}
    for n in nodes:
        overrides.update(n.overrides)
    doc = merge_params(nodes[0].params_file, overrides)
    if args.record:
        run_dir = os.path.dirname(os.path.abspath(args.record))
        os.makedirs(run_dir, exist_ok=True)
    else:
        run_dir = tempfile.mkdtemp(prefix='vla_bringup_')
    params_file = os.path.join(run_dir, f'params_{os.getpid()}.yaml')
    with open(params_file, 'w') as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    nodes = [dataclasses.replace(n, params_file=params_file) for n in nodes]
    topics = (doc.get('/**') or {}).get('ros__parameters', {}).get('topics', {})
    monitor_topic = topics.get('task_status', 'task/status')

    runner = run_processes if args.processes else run_in_process
    results, failure = runner(args, nodes, monitor_topic)
    if results:
        wins = sum(r['success'] for r in results)
        log(f'{wins}/{len(results)} episodes succeeded ({100.0 * wins / len(results):.0f}%)')
    rc = 1 if failure else 0
    if args.report:
        from vla_ros.eval.evaluate import main as evaluate_main
        rc = rc or int(evaluate_main([args.record, '--out', args.report]) or 0)
    return rc


if __name__ == '__main__':
    sys.exit(main())

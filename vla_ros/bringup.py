"""Start the whole stack from one YAML file, without `ros2 launch`.

`launch`/`launch_ros` are not installable from PyPI, so this is the launcher used here
and in CI; on a full ROS 2 install `ros2 launch vla_ros vla.launch.py` starts the same
nodes from the same parameter file. Two modes:

* in-process (default): every node in this process on one MultiThreadedExecutor;
* `--processes`: one OS process per node (what `ros2 launch` does), which keeps the
  100 Hz control loop away from the encoder's and the simulator's Python time.

Typical use (the README's main job):

    python -m vla_ros.bringup --episodes 5 --record runs/demo/bag --report runs/demo/report
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Dict, List

import yaml

from vla_ros.config.layout import NODE_SECTIONS, SHARED_SECTIONS

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# node name -> (module, class). Module paths match the console scripts in setup.py.
NODE_CLASSES = {
    'sim_arm': ('vla_ros.nodes.sim_arm_node', 'SimArmNode'),
    'perception': ('vla_ros.nodes.perception_node', 'PerceptionNode'),
    'planner': ('vla_ros.nodes.planner_node', 'PlannerNode'),
    'action': ('vla_ros.nodes.action_node', 'ActionNode'),
    'recorder': ('vla_ros.nodes.recorder_node', 'RecorderNode'),
}


def default_config_path() -> str:
    try:
        from ament_index_python.packages import get_package_share_directory
        path = os.path.join(get_package_share_directory('vla_ros'), 'config', 'vla.yaml')
        if os.path.isfile(path):
            return path
    except Exception:  # not installed through ament: use the source tree
        pass
    return os.path.join(REPO_ROOT, 'config', 'vla.yaml')


def default_checkpoint_path() -> str:
    return os.path.join(REPO_ROOT, 'checkpoints', 'action_head.pt')


def default_encoder_path() -> str:
    """The vision encoder trained with the shipped head (checkpoints/vision_encoder), '' if absent."""
    path = os.path.join(REPO_ROOT, 'checkpoints', 'vision_encoder')
    return path if os.path.isfile(os.path.join(path, 'config.json')) else ''


def _parse_override(text: str):
    if '=' not in text:
        raise SystemExit(f'--set expects prefix.name=value, got {text!r}')
    key, raw = text.split('=', 1)
    return key.strip(), yaml.safe_load(raw)


def _section_key(prefix: str) -> str:
    if prefix in {p for p, _ in SHARED_SECTIONS}:
        return '/**'
    for node, sections in NODE_SECTIONS.items():
        if prefix in {p for p, _ in sections}:
            return f'/**/{node}'
    raise SystemExit(f'no node declares parameters under {prefix!r}; '
                     f'known: {sorted({p for s in NODE_SECTIONS.values() for p, _ in s} | {"topics"})}')


def merge_params(config_path: str, overrides: Dict[str, object]) -> dict:
    """Return the params-file document with `overrides` (dotted names) written into the owning node's section."""
    with open(config_path) as fh:
        doc = yaml.safe_load(fh) or {}
    for key, value in overrides.items():
        prefix = key.split('.', 1)[0]
        section = doc.setdefault(_section_key(prefix), {}).setdefault('ros__parameters', {})
        node = section
        parts = key.split('.')
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return doc


class EpisodeMonitor:
    """Watches TaskStatus to stop after N episodes and print each outcome."""

    def __init__(self, node, topic: str, target_episodes: int):
        from vla_ros_msgs.msg import TaskStatus
        self.target = target_episodes
        self.results: List[dict] = []
        self.done = threading.Event()
        self._seen = set()
        self._bar = None
        if target_episodes > 0:
            from tqdm import tqdm
            self._bar = tqdm(total=target_episodes, desc='episodes', unit='ep')
        node.create_subscription(TaskStatus, topic, self._on_status, 10)

    def _on_status(self, msg) -> None:
        if not msg.done or msg.episode in self._seen:
            return
        self._seen.add(msg.episode)
        self.results.append({'episode': int(msg.episode), 'instruction': msg.instruction,
                             'success': bool(msg.success), 'elapsed_s': float(msg.elapsed_s)})
        line = (f'episode {msg.episode}: {"SUCCESS" if msg.success else "fail"} '
                f'in {msg.elapsed_s:.1f}s ({msg.instruction})')
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


def _node_names(args) -> List[str]:
    names = ['perception', 'planner', 'action']
    if not args.no_sim:
        names.insert(0, 'sim_arm')
    if args.record:
        names.append('recorder')
    return names


def build_overrides(args) -> Dict[str, object]:
    from vla_ros.models.make_demo_models import ensure_vision_encoder, ensure_vlm
    overrides: Dict[str, object] = {}
    overrides['planner.type'] = args.planner
    encoder = args.encoder_path or default_encoder_path() or ensure_vision_encoder(args.models_dir)
    overrides['perception.encoder_path'] = os.path.abspath(encoder)
    if args.planner == 'vlm':
        overrides['planner.model_path'] = os.path.abspath(args.vlm_path or ensure_vlm(args.models_dir))
    checkpoint = args.checkpoint if args.checkpoint is not None else default_checkpoint_path()
    if checkpoint and os.path.isfile(checkpoint):
        overrides['action.checkpoint_path'] = os.path.abspath(checkpoint)
    elif checkpoint:
        print(f'[bringup] action checkpoint {checkpoint} not found: the action head runs untrained', flush=True)
    if args.record:
        overrides['recorder.output_dir'] = os.path.abspath(args.record)
    if args.episodes > 0 and not args.no_sim:
        overrides['sim.max_episodes'] = args.episodes
    for text in args.set or []:
        key, value = _parse_override(text)
        overrides[key] = value
    return overrides


def _import_node_class(name: str):
    import importlib
    module, cls = NODE_CLASSES[name]
    return getattr(importlib.import_module(module), cls)


def run_in_process(args, params_file: str, monitor_topic: str) -> List[dict]:
    import rclpy
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.node import Node

    rclpy.init(args=None)
    nodes = []
    executor = MultiThreadedExecutor(num_threads=args.threads)
    try:
        for name in _node_names(args):
            cls = _import_node_class(name)
            node = cls(namespace=args.namespace, cli_args=['--ros-args', '--params-file', params_file])
            nodes.append(node)
            executor.add_node(node)
        monitor_node = Node('bringup_monitor', namespace=args.namespace)
        monitor = EpisodeMonitor(monitor_node, monitor_topic, args.episodes)
        nodes.append(monitor_node)
        executor.add_node(monitor_node)
        print(f'[bringup] running {", ".join(_node_names(args))} in-process '
              f'(namespace /{args.namespace})', flush=True)
        spin_thread = threading.Thread(target=executor.spin, daemon=True)
        spin_thread.start()
        _wait(args, monitor)
        monitor.close()
        return monitor.results
    finally:
        executor.shutdown(timeout_sec=2.0)
        for node in reversed(nodes):  # recorder last in, first closed: bag finalised before shutdown
            close = getattr(node, 'close', None)
            if callable(close):
                try:
                    close()
                except Exception as exc:  # keep closing the others
                    print(f'[bringup] error closing {node.get_name()}: {exc}', file=sys.stderr)
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def run_processes(args, params_file: str, monitor_topic: str) -> List[dict]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node

    procs = []
    for name in _node_names(args):
        module = NODE_CLASSES[name][0]
        cmd = [sys.executable, '-m', module, '--ros-args', '--params-file', params_file,
               '-r', f'__ns:=/{args.namespace}', '-r', f'__node:={name}']
        procs.append((name, subprocess.Popen(cmd)))
    print(f'[bringup] started {len(procs)} node processes (namespace /{args.namespace})', flush=True)
    rclpy.init(args=None)
    monitor_node = Node('bringup_monitor', namespace=args.namespace)
    monitor = EpisodeMonitor(monitor_node, monitor_topic, args.episodes)
    executor = SingleThreadedExecutor()
    executor.add_node(monitor_node)
    spin_thread = threading.Thread(target=executor.spin, daemon=True)
    spin_thread.start()
    try:
        _wait(args, monitor, procs)
    finally:
        monitor.close()
        for _, proc in reversed(procs):  # SIGINT = Ctrl-C: nodes (recorder included) shut down cleanly
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        for name, proc in reversed(procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                print(f'[bringup] {name} did not stop on SIGINT; killing it', file=sys.stderr)
                proc.kill()
        executor.shutdown(timeout_sec=2.0)
        monitor_node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return monitor.results


def _wait(args, monitor: EpisodeMonitor, procs=None) -> None:
    start = time.monotonic()
    try:
        while True:
            if monitor.done.wait(timeout=0.2):
                return
            if args.duration > 0 and time.monotonic() - start >= args.duration:
                return
            for name, proc in procs or []:
                if proc.poll() is not None:
                    raise RuntimeError(f'node process {name} exited with code {proc.returncode}')
    except KeyboardInterrupt:
        print('[bringup] interrupted, shutting down', flush=True)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Run the vla_ros stack (perception, planner, action, sim arm).')
    parser.add_argument('--config', default=None, help='ROS 2 params file (default: config/vla.yaml)')
    parser.add_argument('--planner', default='lightweight', choices=('lightweight', 'vlm'),
                        help='planner.type for this run')
    parser.add_argument('--namespace', default='vla')
    parser.add_argument('--duration', type=float, default=0.0, help='stop after this many seconds (0 = no limit)')
    parser.add_argument('--episodes', type=int, default=0, help='stop after this many sim episodes (0 = no limit)')
    parser.add_argument('--record', default='', help='record a rosbag2 (MCAP) into this new directory')
    parser.add_argument('--report', default='', help='evaluate the recorded bag into this directory')
    parser.add_argument('--no-sim', action='store_true', help='do not start the simulated arm (real robot)')
    parser.add_argument('--processes', action='store_true', help='one OS process per node instead of one process')
    parser.add_argument('--threads', type=int, default=8, help='executor threads (in-process mode)')
    parser.add_argument('--models-dir', default=os.path.join(REPO_ROOT, 'models'),
                        help='where the demo encoder/VLM are created if no path is given')
    parser.add_argument('--encoder-path', default='', help='perception.encoder_path (default: checkpoints/vision_encoder, the encoder trained '
                        'with the shipped head)')
    parser.add_argument('--vlm-path', default='', help='planner.model_path for --planner vlm (default: demo VLM)')
    parser.add_argument('--checkpoint', default=None, help='action-head checkpoint (default: checkpoints/)')
    parser.add_argument('--set', action='append', metavar='PREFIX.NAME=VALUE',
                        help='override any parameter, e.g. --set perception.keep_ratio=0.25 (repeatable)')
    args = parser.parse_args(argv)
    if args.report and not args.record:
        parser.error('--report needs --record')
    if args.duration <= 0 and args.episodes <= 0:
        print('[bringup] no --duration/--episodes given: running until Ctrl-C', flush=True)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    config_path = args.config or default_config_path()
    doc = merge_params(config_path, build_overrides(args))
    run_dir = os.path.dirname(os.path.abspath(args.record)) if args.record else os.path.join(REPO_ROOT, 'runs')
    os.makedirs(run_dir, exist_ok=True)
    params_file = os.path.join(run_dir, f'params_{os.getpid()}.yaml')
    with open(params_file, 'w') as fh:
        yaml.safe_dump(doc, fh, sort_keys=False)
    topics = (doc.get('/**') or {}).get('ros__parameters', {}).get('topics', {})
    monitor_topic = topics.get('task_status', 'task/status')

    runner = run_processes if args.processes else run_in_process
    results = runner(args, params_file, monitor_topic)
    if results:
        wins = sum(r['success'] for r in results)
        print(f'[bringup] {wins}/{len(results)} episodes succeeded', flush=True)
    if args.report:
        from vla_ros.eval.evaluate import main as evaluate_main
        return int(evaluate_main([args.record, '--out', args.report]) or 0)
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""Recording and evaluation throughput vs the stack's real-time message rate, measured side by side.

Builds SECONDS of a simulated run at the stack's nominal rates (pruned visual tokens, 100 Hz
commands as both JointTrajectory and Float64MultiArray, chunks, plans, status), serialises it
with rclpy once, then times: BagWriter into MCAP vs sqlite3 storage, and the evaluator
(decode + metrics) on the MCAP bag. Prints real-time factors (simulated seconds per wall
second: > 1 means the recorder/evaluator keeps up) and the MCAP/sqlite3 ratio.

    .venv/bin/python bench/bench_eval_recording.py --seconds 20
"""
import argparse
import os
import shutil
import tempfile
import time

import numpy as np
from rclpy.serialization import serialize_message
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.eval.bag_io import BagWriter, msgtype_of
from vla_ros.eval.metrics import compute_from_series, extract_series
from vla_ros.nodes.common import ns_to_stamp, tokens_to_msg
from vla_ros_msgs.msg import ActionChunk, Plan, TaskStatus

T0 = 1_700_000_000 * 1_000_000_000


def simulated_run(seconds: float, token_count: int, token_dim: int):
    """[(topic, msgtype, cdr bytes, log_ns)] in time order at the stack's nominal rates."""
    rng = np.random.default_rng(0)
    out = []
    tokens = rng.standard_normal((token_count, token_dim)).astype(np.float32)
    rates = {'tokens': 10.0, 'command': 100.0, 'chunk': 10.0, 'plan': 2.0, 'status': 10.0}
    for name, hz in rates.items():
        for i in range(int(seconds * hz)):
            t = T0 + int(i * 1e9 / hz)
            stamp = ns_to_stamp(t)
            if name == 'tokens':
                msgs = [('/vla/perception/tokens', tokens_to_msg(
                    tokens, stamp=stamp, frame_id='cam', source='bench', grid_hw=(16, 16),
                    keep_ratio=token_count / 256, reuse_ratio=0.5, frame_counter=i, compute_ms=5.0))]
            elif name == 'command':
                q = [float(np.sin(i * 0.01 + j)) for j in range(7)]
                traj = JointTrajectory(joint_names=[f'joint{j}' for j in range(1, 8)],
                                       points=[JointTrajectoryPoint(positions=q)])
                traj.header.stamp = stamp
                msgs = [('/vla/arm/joint_trajectory', traj),
                        ('/vla/arm/joint_command', Float64MultiArray(data=q))]
            elif name == 'chunk':
                chunk = ActionChunk(chunk_id=i, horizon=16, action_dim=7, dt=0.05, perception_sequence=i, plan_id=1,
                                    actions=rng.standard_normal(16 * 7).astype(np.float32), inference_time=0.004)
                chunk.header.stamp = stamp
                msgs = [('/vla/action/chunk', chunk)]
            elif name == 'plan':
                plan = Plan(plan_id=1 + i // 4, cache_hit=i % 4 != 0, latency=0.001, subtask='reach')
                plan.header.stamp = stamp
                plan.plan_tokens = tokens_to_msg(tokens[:8, :64], stamp=stamp, frame_id='', source='plan')
                msgs = [('/vla/planner/plan', plan)]
            else:
                msgs = [('/vla/task/status', TaskStatus(episode=1 + i // 50, success=i % 50 == 49,
                                                        done=i % 50 == 49, elapsed=(i % 50) / hz))]
            for topic, msg in msgs:
                out.append((topic, msgtype_of(msg), serialize_message(msg), t + 1_000_000))
    out.sort(key=lambda m: m[3])
    return out


def time_write(messages, path, storage):
    start = time.perf_counter()
    with BagWriter(path, storage=storage) as bag:
        for topic, msgtype in sorted({(m[0], m[1]) for m in messages}):
            bag.add_topic(topic, msgtype)
        for topic, _, data, log_ns in messages:
            bag.write(topic, data, log_ns)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=float, default=20.0, help='simulated run length')
    parser.add_argument('--tokens', type=int, default=64, help='kept visual tokens per frame')
    parser.add_argument('--dim', type=int, default=384, help='token dimension')
    parser.add_argument('--repeats', type=int, default=3, help='best-of repeats per measurement')
    args = parser.parse_args()

    messages = simulated_run(args.seconds, args.tokens, args.dim)
    total_mb = sum(len(m[2]) for m in messages) / 1e6
    print(f'simulated run: {args.seconds:.0f} s, {len(messages)} messages, {total_mb:.1f} MB '
          f'({len(messages) / args.seconds:.0f} msg/s, {total_mb / args.seconds:.2f} MB/s needed)')
    tmp = tempfile.mkdtemp(prefix='bench_eval_')
    try:
        write_s = {}
        for storage in ('mcap', 'sqlite3'):
            runs = []
            for r in range(args.repeats):
                path = os.path.join(tmp, f'{storage}_{r}')
                runs.append(time_write(messages, path, storage))
            write_s[storage] = min(runs)
            print(f'write {storage:8s}: {write_s[storage] * 1e3:8.1f} ms  '
                  f'{len(messages) / write_s[storage]:9.0f} msg/s  {total_mb / write_s[storage]:7.1f} MB/s  '
                  f'real-time factor {args.seconds / write_s[storage]:7.1f}x')
        print(f'mcap / sqlite3 write speed: {write_s["sqlite3"] / write_s["mcap"]:.2f}x')

        bag = os.path.join(tmp, 'mcap_0')
        eval_runs = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            metrics = compute_from_series(extract_series(bag))
            eval_runs.append(time.perf_counter() - start)
        eval_s = min(eval_runs)
        print(f'evaluate mcap   : {eval_s * 1e3:8.1f} ms  {len(messages) / eval_s:9.0f} msg/s  '
              f'real-time factor {args.seconds / eval_s:7.1f}x  '
              f'(control rate {metrics["control"]["from_header_stamps"]["rate_hz"]:.1f} Hz, '
              f'plan hit rate {metrics["plan_cache"]["hit_rate"]:.2f})')
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()

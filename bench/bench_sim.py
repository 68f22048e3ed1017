#!/usr/bin/env python3
"""Sim cost vs its real-time budget: physics, offscreen rendering, scripted expert.

Prints measured times and the ratios that matter for the ROS node (one core must run physics at
physics_rate_hz and render at camera_rate_hz in real time), all measured side by side in this run.
"""
import argparse
import json
import time

import torch

import vla_ros.sim  # noqa: F401  (headless GL backend)
from vla_ros.config.sim import SimConfig
from vla_ros.sim.arm_env import ArmEnv
from vla_ros.sim.expert import TouchExpert


def _time(fn, repeats):
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - t0) / repeats


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--seconds', type=float, default=2.0, help='simulated seconds for the physics timing')
    ap.add_argument('--frames', type=int, default=30)
    ap.add_argument('--json', default='')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cfg = SimConfig()
    env = ArmEnv(cfg, seed=0)
    expert = TouchExpert(env)
    n_steps = int(args.seconds * cfg.physics_rate_hz)
    env.set_target(env.joint_positions() + 0.2)
    t0 = time.perf_counter()
    env.step_physics(n_steps)
    physics_s = (time.perf_counter() - t0) / n_steps
    render_128 = _time(env.render, args.frames)
    big = ArmEnv(SimConfig(image_width=224, image_height=224), seed=0)
    render_224 = _time(big.render, args.frames)
    big.close()
    chunk_s = _time(lambda: expert.chunk(env.joint_positions()), 20)
    # One real-time second of node work: physics + camera frames (JointState publishing excluded).
    node_load = physics_s * cfg.physics_rate_hz + render_128 * cfg.camera_rate_hz
    out = {
        'physics_step_us': physics_s * 1e6,
        'physics_realtime_factor_max': 1.0 / (physics_s * cfg.physics_rate_hz),
        'render_ms_128': render_128 * 1e3,
        'render_ms_224': render_224 * 1e3,
        'render_224_vs_128': render_224 / render_128,
        'expert_chunk_ms': chunk_s * 1e3,
        'expert_chunk_vs_action_dt': chunk_s / expert.config.action_dt,
        'node_cpu_fraction_of_one_core': node_load,
    }
    env.close()
    for k, v in out.items():
        print(f'{k:32s} {v:10.3f}')
    if args.json:
        with open(args.json, 'w') as fh:
            json.dump(out, fh, indent=2)


if __name__ == '__main__':
    main()

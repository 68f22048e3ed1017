"""Action-head inference in a separate OS process, chunks back through shared memory (no ROS).

The control tick and the head must not share a GIL: a 100-200 ms torch forward pass interleaved
with Python bytecode in the same process delays the tick by up to the interpreter's switch
interval per hand-over, and CPU-saturating torch threads compete with it. Here the head runs in a
spawned child (its own interpreter, CPU priority and CPU set); the parent only copies the latest
inputs into `SeqSlot`s (callback threads) and polls the chunk slot in the tick (a counter read
and, ~10x per second, a 16x7 copy).

The child runs an ordinary `ControlLoop` without a control tick: its buffer mirrors the chunks it
produced, which is all real-time chunking needs for the inpainting prefix. Timestamps are
CLOCK_MONOTONIC seconds, the same clock in both processes.
"""
from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import time
import traceback
from typing import Dict, Optional

import numpy as np

from vla_ros.os_realtime import set_affinity
from vla_ros.action.shm import SeqSlot
from vla_ros.config.action import ActionConfig
from vla_ros.config.base import config_from_dict

_CHUNK_META = ('start_time', 'dt', 'active_from', 'chunk_id', 'plan_id', 'frame_id', 'inference_ms', 'has_weights')
_PARENT_POLL_S = 0.5


class InferenceChannels:
    """Every shared slot between the node process (P) and the inference process (C)."""

    def __init__(self, horizon: int, action_dim: int, vis_dim: int, plan_dim: int, max_tokens: int):
        self.dims = (horizon, action_dim, vis_dim, plan_dim, max_tokens)
        self.plan = SeqSlot({'data': (max_tokens * plan_dim,), 'meta': (3,)})      # P writes: n, id, received
        self.vis = SeqSlot({'data': (max_tokens * vis_dim,), 'meta': (3,)})        # P writes
        self.proprio = SeqSlot({'q': (action_dim,), 'meta': (1,)})                 # P writes: received
        self.estop = SeqSlot({'v': (1,)})                                          # P (e-stop callback)
        self.epoch = SeqSlot({'v': (2,)})                                          # P (tick): clear count, restart time
        self.stop = SeqSlot({'v': (1,)})                                           # P (close)
        self.chunk = SeqSlot({'actions': (horizon, action_dim), 'weights': (horizon,),
                              'meta': (len(_CHUNK_META),)})                        # C writes
        self.status = SeqSlot({'v': (4,)})   # C writes: inference errors, heartbeat, ready, torch threads


class ChunkInbox:
    """The control side of the channels: new chunks, the clear epoch, the inference heartbeat.
    Used by exactly one thread (the control tick), in whichever process runs it."""

    def __init__(self, channels: InferenceChannels):
        self.channels = channels
        self._epoch = 0
        self._last_chunk_version = 0
        self._status = channels.status.buffers()

    def poll_chunk(self, out: Dict[str, np.ndarray]) -> bool:
        """Copy a chunk committed since the last poll into `out` (from `channels.chunk.buffers()`)."""
        got = self.channels.chunk.read_new(out, self._last_chunk_version)
        if got is None:
            return False
        self._last_chunk_version = got
        return True

    def clear(self, restart_at: Optional[float] = None) -> None:
        """The control side dropped its chunks (stale inputs): the inference process drops its mirror too.
        With `restart_at` (monotonic s; ControlLoop.restart) it also waits for a frame captured after it."""
        self._epoch += 1
        self.channels.epoch.write(v=(self._epoch, math.nan if restart_at is None else float(restart_at)))

    def status(self) -> Dict[str, float]:
        self.channels.status.read_into(self._status)
        v = self._status['v']
        return {'inference_errors': int(v[0]), 'heartbeat_age_s': time.monotonic() - v[1] if v[1] else -1.0,
                'inference_ready': bool(v[2])}


class InferenceProcess:
    """Parent-side handle: feed inputs, poll chunks, stop the child."""

    def __init__(self, cfg: ActionConfig, head_config, state_dict, max_tokens: int = 1024):
        self.cfg = cfg
        self.max_tokens = int(max_tokens)
        self.channels = InferenceChannels(cfg.horizon, cfg.action_dim, head_config.vis_dim, head_config.plan_dim,
                                          self.max_tokens)
        self.vis_dim, self.plan_dim = head_config.vis_dim, head_config.plan_dim
        self.inbox = ChunkInbox(self.channels)
        ctx = multiprocessing.get_context('spawn')  # never fork a process that runs DDS threads
        self.process = ctx.Process(
            target=child_main, name='action-inference', daemon=True,
            args=(dataclasses.asdict(cfg), dataclasses.asdict(head_config), state_dict, self.channels, os.getpid()))

    def start(self) -> None:
        self.process.start()

    # ------------------------------------------------------------------ inputs (callback threads)
    def _tokens(self, slot: SeqSlot, tokens: np.ndarray, dim: int, ident: int, received: float) -> None:
        tokens = np.asarray(tokens, dtype=np.float64)
        if tokens.ndim != 2 or tokens.shape[1] != dim:
            raise ValueError(f'tokens of shape {tokens.shape}, expected [N, {dim}]')
        n = tokens.shape[0]
        if n > self.max_tokens:
            raise ValueError(f'{n} tokens exceed action.max_tokens={self.max_tokens}')
        with slot.writing() as arrays:
            arrays['data'][:n * dim] = tokens.ravel()
            arrays['meta'][:] = (n, ident, received)

    def update_plan(self, tokens, ident: int, received: float) -> None:
        self._tokens(self.channels.plan, tokens, self.plan_dim, ident, received)

    def update_perception(self, tokens, ident: int, received: float) -> None:
        self._tokens(self.channels.vis, tokens, self.vis_dim, ident, received)

    def update_proprio(self, q, received: float) -> None:
        self.channels.proprio.write(q=q, meta=(received,))

    def set_estop(self, active: bool) -> None:
        self.channels.estop.write(v=(1.0 if active else 0.0,))

    # ------------------------------------------------------------------ outputs (control tick)
    def poll_chunk(self, out: Dict[str, np.ndarray]) -> bool:
        return self.inbox.poll_chunk(out)

    def clear(self, restart_at: Optional[float] = None) -> None:
        self.inbox.clear(restart_at)

    def status(self) -> Dict[str, float]:
        return dict(self.inbox.status(), inference_alive=self.process.is_alive())

    def close(self, timeout: float = 5.0) -> None:
        stop_child(self.channels, self.process, timeout)


def child_main(cfg_dict, head_cfg_dict, state_dict, ch: InferenceChannels, parent_pid: int) -> None:
    """Entry point of the inference process."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C reaches the whole group: the parent stops us
    import torch

    from vla_ros.action.controller import ControlLoop, set_thread_priority
    from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead

    cfg: ActionConfig = config_from_dict(ActionConfig, cfg_dict)
    priority = set_thread_priority(cfg.inference_priority)   # torch's threads, made later, inherit it
    if cfg.realtime.inference_cpus:
        priority += ', ' + set_affinity(cfg.realtime.inference_cpus)
    if cfg.torch_threads > 0:
        torch.set_num_threads(cfg.torch_threads)
    head = FlowMatchingActionHead(FlowHeadConfig(**head_cfg_dict))
    head.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state_dict.items()})
    head.to(cfg.device).eval()
    horizon, action_dim, vis_dim, plan_dim, _ = ch.dims
    errors = 0

    def publish(result) -> None:
        weights = result.prefix_weights
        meta = (result.start_time, result.dt, result.active_from, result.chunk_id, result.plan_id, result.frame_id,
                result.inference_ms, 0.0 if weights is None else 1.0)
        ch.chunk.write(actions=result.actions, weights=0.0 if weights is None else weights, meta=meta)

    loop = ControlLoop(head, cfg, clock=time.monotonic, on_chunk=publish)
    bufs = {name: getattr(ch, name).buffers() for name in ('plan', 'vis', 'proprio', 'estop', 'epoch', 'stop')}
    seen = {name: 0 for name in bufs}
    warm_s = loop.warm_up()
    print(f'[action-inference] pid {os.getpid()}: {priority}, torch threads {torch.get_num_threads()}, '
          f'warm-up inference {warm_s * 1e3:.0f} ms', flush=True)
    period = 1.0 / cfg.chunk_rate_hz
    next_t = time.monotonic()
    last_parent_check = 0.0
    while True:
        now = time.monotonic()
        if now - last_parent_check > _PARENT_POLL_S:
            last_parent_check = now
            if os.getppid() != parent_pid:
                return  # orphaned: the node died
        for name, buf in bufs.items():
            got = getattr(ch, name).read_new(buf, seen[name])
            if got is None:
                continue
            seen[name] = got
            if name == 'plan':
                n, ident, received = buf['meta']
                loop.update_plan(buf['data'][:int(n) * plan_dim].reshape(int(n), plan_dim), int(ident), received)
            elif name == 'vis':
                n, ident, received = buf['meta']
                loop.update_perception(buf['data'][:int(n) * vis_dim].reshape(int(n), vis_dim), int(ident), received)
            elif name == 'proprio':
                loop.update_proprio(buf['q'].copy(), now=float(buf['meta'][0]))
            elif name == 'estop':
                loop.set_estop(bool(buf['v'][0]))
            elif name == 'epoch':
                restart_at = float(buf['v'][1])
                if math.isfinite(restart_at):
                    loop.restart(restart_at)
                else:
                    loop.buffer.clear()
            elif name == 'stop' and buf['v'][0]:
                return
        try:
            if not loop.inputs_ready():
                loop.buffer.clear()  # the parent goes stale on the same receive times and clears too
            else:
                loop.infer_chunk()
        except Exception:  # keep serving; the parent holds while no chunks come
            errors += 1
            if errors < 5 or errors % 100 == 0:
                traceback.print_exc()
        ch.status.write(v=(errors + loop.inference_errors, time.monotonic(), 1.0, torch.get_num_threads()))
        next_t += period
        delay = next_t - time.monotonic()
        if delay < 0:
            next_t, delay = time.monotonic(), 0.0
        time.sleep(delay)


def stop_child(channels, process, timeout: float) -> None:
    """Ask a child process to stop through its shared-memory stop slot; terminate it if it does not."""
    channels.stop.write(v=(1.0,))
    if process.pid is None:
        return
    process.join(timeout)
    if process.is_alive():
        process.terminate()
        process.join(1.0)

"""One CUDA graph per static-shape key, with a logged eager fallback.

At batch 1 a GPU transformer is bound by kernel launches, not arithmetic: replaying a captured graph
removes the per-kernel CPU cost. Callers bucket their shapes (token counts) so a few graphs cover
every frame. `GraphCache.run(key, fn, inputs)` captures `fn(**inputs)` the first time it sees `key`
(after warm-up runs on a side stream), then copies new inputs into the graph's static input tensors
and replays it. The returned tensors are the graph's static outputs: consume (or clone) them before
the next replay of the same key. Where capture fails (an op that syncs with the host, a dynamic
shape) the key is logged once and runs eagerly from then on. On CPU, or disabled, it is plain `fn`.
Optionally `compile=True` wraps `fn` in torch.compile(mode='reduce-overhead') instead.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Dict, Hashable

import torch

LOG = logging.getLogger(__name__)


def _tree_clone(x):
    if isinstance(x, torch.Tensor):
        return x.clone()
    if isinstance(x, dict):
        return {k: _tree_clone(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_tree_clone(v) for v in x)
    return x


class GraphCache:
    def __init__(self, name: str, enabled: bool = True, warmup: int = 2, compile: bool = False):
        self.name = name
        self.enabled = bool(enabled) and torch.cuda.is_available()
        self.warmup = warmup
        self.compile = compile
        self._graphs: Dict[Hashable, Any] = {}
        self._compiled: Dict[Hashable, Callable] = {}
        self.failed: Dict[Hashable, str] = {}
        self.captures = 0
        self.replays = 0
        self.eager_calls = 0

    def run(self, key: Hashable, fn: Callable, inputs: Dict[str, torch.Tensor]):
        if not self.enabled or key in self.failed:
            self.eager_calls += 1
            return fn(**inputs)
        if self.compile:
            return self._run_compiled(key, fn, inputs)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(key, fn, inputs)
            if entry is None:
                self.eager_calls += 1
                return fn(**inputs)
        graph, static_in, out = entry
        for name, value in inputs.items():
            static_in[name].copy_(value, non_blocking=True)
        graph.replay()
        self.replays += 1
        return out

    def _run_compiled(self, key, fn, inputs):
        compiled = self._compiled.get(key)
        if compiled is None:
            compiled = torch.compile(fn, mode='reduce-overhead', fullgraph=False, dynamic=False)
            self._compiled[key] = compiled
            self.captures += 1
        try:
            out = compiled(**inputs)
            self.replays += 1
            return _tree_clone(out)
        except Exception as exc:  # noqa: BLE001 - any compile failure falls back, logged
            self._fail(key, exc)
            self.eager_calls += 1
            return fn(**inputs)

    def _capture(self, key, fn, inputs):
        static_in = {name: value.clone() for name, value in inputs.items()}
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(self.warmup):
                    fn(**static_in)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fn(**static_in)
        except Exception as exc:  # noqa: BLE001 - a failed capture must not stop the pipeline
            self._fail(key, exc)
            torch.cuda.synchronize()
            return None
        self.captures += 1
        self._graphs[key] = (graph, static_in, out)
        return self._graphs[key]

    def _fail(self, key, exc):
        msg = f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'[:300]
        self.failed[key] = msg
        LOG.warning('%s: CUDA graph capture failed for %r, running eagerly: %s', self.name, key, msg)

    def stats(self) -> Dict[str, Any]:
        return dict(name=self.name, enabled=self.enabled, captures=self.captures, replays=self.replays,
                    eager_calls=self.eager_calls, failed={str(k): v for k, v in self.failed.items()})


class CompiledFn:
    """`torch.compile(fn)` (default inductor mode: pointwise/reduction fusions around cuBLAS matmuls,
    no CUDA graphs of its own, so it runs inside GraphCache's captures), falling back to plain `fn`
    for good, logged, the first time compiling or running it raises. dynamic=True: one compile
    serves every bucket's row count (rows of 1, the decode step, get their own)."""

    def __init__(self, fn: Callable, name: str, backend: str = 'inductor'):
        self.fn = fn
        self.name = name
        self.failed = ''
        self.calls = 0
        try:
            import torch._dynamo as dynamo
            for knob in ('cache_size_limit', 'recompile_limit'):
                if hasattr(dynamo.config, knob):
                    setattr(dynamo.config, knob, max(int(getattr(dynamo.config, knob)), 64))
            self.compiled = torch.compile(fn, backend=backend, fullgraph=True, dynamic=True)
        except Exception as exc:  # noqa: BLE001 - no compiler: plain fn
            self._fail(exc)

    def __call__(self, *args, **kwargs):
        if self.failed:
            return self.fn(*args, **kwargs)
        try:
            out = self.compiled(*args, **kwargs)
            self.calls += 1
            return out
        except Exception as exc:  # noqa: BLE001 - logged, plain fn from now on
            self._fail(exc)
            return self.fn(*args, **kwargs)

    def _fail(self, exc):
        self.failed = f'{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}'[:300]
        LOG.warning('%s: torch.compile failed, running eagerly: %s', self.name, self.failed)

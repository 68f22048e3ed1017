"""Latest-value slots in shared memory between processes, guarded by a sequence lock (no ROS).

One `SeqSlot` = named float64 arrays of fixed shape in one `multiprocessing.RawArray`, plus a
sequence counter. One process writes a slot (its writing threads take a process-local lock);
any number of processes read it. The writer makes the counter odd, copies, then makes it even
again; a reader copies into its own preallocated arrays and retries if the counter was odd or
changed meanwhile, so it never sees a torn value and never blocks the writer (the control tick
never waits on the inference process, nor the inference process on the tick).

Memory ordering (the seqlock of Boehm, "Can seqlocks get along with programming language memory
models?", MSPC 2012), so it also holds on weakly ordered CPUs (ARM, e.g. Jetson):

    writer: s = seq (relaxed); seq = s+1 (relaxed); fence(release); data...; seq = s+2 (release)
    reader: s1 = seq (acquire); data...; fence(acquire); s2 = seq (relaxed); valid iff s1 == s2, even

The counter is read and written with real 8-byte atomics and the fences are C11
`atomic_thread_fence`, all from libatomic (the GCC runtime, present wherever GCC-built Python
runs) through ctypes, so they are opaque calls the compiler cannot move the data copies across.
Without libatomic, x86 (total store order: plain aligned loads/stores are already acquire/release
and CPython's C calls are compiler barriers) uses plain accesses; other CPUs refuse to start.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import multiprocessing
import platform
import threading
from typing import Dict, Optional, Tuple

import numpy as np

_RETRIES = 100
_RELAXED, _ACQUIRE, _RELEASE = 0, 2, 3   # C11 memory_order values (GCC __ATOMIC_*)
_TSO_MACHINES = ('x86_64', 'amd64', 'i386', 'i686', 'x86')


class _Atomics:
    """8-byte atomic load/store and thread fences on shared memory."""

    def __init__(self):
        self.lib = None
        self.kind = 'plain (x86 total store order)'
        name = ctypes.util.find_library('atomic') or 'libatomic.so.1'
        try:
            lib = ctypes.CDLL(name)
            # getattr: a literal `lib.__atomic...` inside a class body would be name-mangled
            self._load_8, self._store_8 = getattr(lib, '__atomic_load_8'), getattr(lib, '__atomic_store_8')
            self._fence = lib.atomic_thread_fence
            self._load_8.argtypes, self._load_8.restype = [ctypes.c_void_p, ctypes.c_int], ctypes.c_uint64
            self._store_8.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_int]
            self._store_8.restype = None
            self._fence.argtypes, self._fence.restype = [ctypes.c_int], None
            self.lib = lib
            self.kind = 'libatomic acquire/release + fences'
        except (OSError, AttributeError):
            if platform.machine().lower() not in _TSO_MACHINES:
                raise RuntimeError(
                    f'shared-memory slots on {platform.machine()} need libatomic (GCC runtime) for memory '
                    'fences; install it (e.g. apt install libatomic1)') from None

    def load(self, addr: int, order: int) -> int:
        return self._load_8(addr, order)

    def store(self, addr: int, value: int, order: int) -> None:
        self._store_8(addr, value, order)

    def fence(self, order: int) -> None:
        self._fence(order)


ATOMICS = _Atomics()


class SeqSlot:
    def __init__(self, layout: Dict[str, Tuple[int, ...]], raw=None):
        self.layout = {k: tuple(int(s) for s in v) for k, v in layout.items()}
        sizes = [int(np.prod(s)) for s in self.layout.values()]
        total = 1 + sum(sizes)
        self.raw = raw if raw is not None else multiprocessing.RawArray('d', total)  # zero-filled
        if len(self.raw) != total:
            raise ValueError(f'shared buffer holds {len(self.raw)} values, layout needs {total}')
        flat = np.frombuffer(self.raw, dtype=np.float64)
        self._seq = flat[:1].view(np.int64)
        self._addr = ctypes.addressof(self.raw)          # the counter: first 8 bytes, 8-byte aligned
        if self._addr % 8:
            raise ValueError('shared buffer is not 8-byte aligned')
        self._write_lock = threading.Lock()              # writing threads of the one writing process
        self.arrays: Dict[str, np.ndarray] = {}
        offset = 1
        for (name, shape), size in zip(self.layout.items(), sizes):
            self.arrays[name] = flat[offset:offset + size].reshape(shape)
            offset += size
        if ATOMICS.lib is not None:
            self._load, self._store, self._fence = ATOMICS.load, ATOMICS.store, ATOMICS.fence
        else:
            self._load, self._store, self._fence = self._plain_load, self._plain_store, _no_fence

    def __getstate__(self):  # travels to a spawned process as (layout, shared buffer)
        return {'layout': self.layout, 'raw': self.raw}

    def __setstate__(self, state):
        self.__init__(state['layout'], state['raw'])

    def _plain_load(self, addr: int, order: int) -> int:
        return int(self._seq[0])

    def _plain_store(self, addr: int, value: int, order: int) -> None:
        self._seq[0] = value

    @property
    def version(self) -> int:
        """Number of completed writes (0 = never written)."""
        return self._load(self._addr, _ACQUIRE) >> 1

    def buffers(self) -> Dict[str, np.ndarray]:
        """Fresh arrays shaped like the slot, to read into (allocate once, reuse)."""
        return {k: np.zeros(s) for k, s in self.layout.items()}

    @contextlib.contextmanager
    def writing(self):
        """Write in place (`with slot.writing() as arrays: arrays['x'][:n] = ...`)."""
        with self._write_lock:
            seq = self._load(self._addr, _RELAXED)
            self._store(self._addr, seq + 1, _RELAXED)
            self._fence(_RELEASE)           # the odd counter is visible before any data store
            try:
                yield self.arrays
            finally:
                self._store(self._addr, seq + 2, _RELEASE)   # every data store before the even counter

    def write(self, **values) -> None:
        with self.writing() as arrays:
            for name, value in values.items():
                arrays[name][...] = value

    def read_into(self, out: Dict[str, np.ndarray]) -> Optional[int]:
        """Copy a consistent snapshot into `out`; returns its version, or None if the writer kept
        the slot busy for every retry (the caller just tries again next time)."""
        load, fence, addr = self._load, self._fence, self._addr
        for _ in range(_RETRIES):
            before = load(addr, _ACQUIRE)   # data loads below cannot move above this
            if before & 1:
                continue
            for name, dst in out.items():
                np.copyto(dst, self.arrays[name])
            fence(_ACQUIRE)                 # data loads above cannot move below the re-check
            if load(addr, _RELAXED) == before:
                return before >> 1
        return None

    def read_new(self, out: Dict[str, np.ndarray], seen: int) -> Optional[int]:
        """Like read_into, but only when a write newer than version `seen` exists: its version
        after copying it into `out`, else None (nothing new, or busy: try again later)."""
        if self.version == seen:
            return None
        return self.read_into(out)


def _no_fence(order: int) -> None:
    return None

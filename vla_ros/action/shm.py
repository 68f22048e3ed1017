"""Latest-value slots in shared memory between processes, guarded by a sequence lock (no ROS).

One `SeqSlot` = named float64 arrays of fixed shape in one `multiprocessing.RawArray`, plus a
sequence counter. Exactly one thread of one process writes a slot; any number read it. The writer
makes the counter odd, copies, then makes it even again; a reader copies into its own preallocated
arrays and retries if the counter was odd or changed meanwhile, so it never sees a torn value and
never blocks the writer (the control tick never waits on the inference process).

Ordering relies on x86-64's total store order (aligned 8-byte stores/loads are atomic and not
reordered with each other); on weakly ordered CPUs (ARM) swap this for a lock-based slot.
"""
from __future__ import annotations

import contextlib
import multiprocessing
from typing import Dict, Optional, Tuple

import numpy as np

_RETRIES = 100


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
        self.arrays: Dict[str, np.ndarray] = {}
        offset = 1
        for (name, shape), size in zip(self.layout.items(), sizes):
            self.arrays[name] = flat[offset:offset + size].reshape(shape)
            offset += size

    def __getstate__(self):  # travels to a spawned process as (layout, shared buffer)
        return {'layout': self.layout, 'raw': self.raw}

    def __setstate__(self, state):
        self.__init__(state['layout'], state['raw'])

    @property
    def version(self) -> int:
        """Number of completed writes (0 = never written)."""
        return int(self._seq[0]) >> 1

    def buffers(self) -> Dict[str, np.ndarray]:
        """Fresh arrays shaped like the slot, to read into (allocate once, reuse)."""
        return {k: np.zeros(s) for k, s in self.layout.items()}

    @contextlib.contextmanager
    def writing(self):
        """Write in place (`with slot.writing() as arrays: arrays['x'][:n] = ...`)."""
        seq = int(self._seq[0])
        self._seq[0] = seq + 1
        try:
            yield self.arrays
        finally:
            self._seq[0] = seq + 2

    def write(self, **values) -> None:
        with self.writing() as arrays:
            for name, value in values.items():
                arrays[name][...] = value

    def read_into(self, out: Dict[str, np.ndarray]) -> Optional[int]:
        """Copy a consistent snapshot into `out`; returns its version, or None if the writer kept
        the slot busy for every retry (the caller just tries again next time)."""
        for _ in range(_RETRIES):
            before = int(self._seq[0])
            if before & 1:
                continue
            for name, dst in out.items():
                np.copyto(dst, self.arrays[name])
            if int(self._seq[0]) == before:
                return before >> 1
        return None

"""Operating-system real-time facilities (Linux, no ROS): sleeping to an absolute CLOCK_MONOTONIC time,
SCHED_FIFO and CPU affinity for a thread or a process's middleware threads, memory locking, and the
calling thread's resource usage. Every request that can be refused says so in one line instead of
raising, so callers log what took effect.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import resource
import threading
import time
from typing import Sequence

_CLOCK_MONOTONIC = 1
_TIMER_ABSTIME = 1
_EINTR = 4
_PR_SET_TIMERSLACK = 29
_RUSAGE_THREAD = getattr(resource, 'RUSAGE_THREAD', resource.RUSAGE_SELF)   # Linux: this thread only


class _Timespec(ctypes.Structure):
    _fields_ = [('tv_sec', ctypes.c_long), ('tv_nsec', ctypes.c_long)]


def _load_libc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6', use_errno=True)
        libc.clock_nanosleep.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(_Timespec),
                                         ctypes.POINTER(_Timespec)]
        libc.clock_nanosleep.restype = ctypes.c_int
        libc.mlockall.argtypes, libc.mlockall.restype = [ctypes.c_int], ctypes.c_int
        return libc
    except (OSError, AttributeError):  # not Linux/glibc: fall back to time.sleep
        return None


_LIBC = _load_libc()


def thread_rusage():
    """getrusage of the calling thread (Linux; the whole process elsewhere)."""
    return resource.getrusage(_RUSAGE_THREAD)


class AbsoluteSleeper:
    """Sleep until an absolute CLOCK_MONOTONIC time (ns) with a preallocated timespec."""

    def __init__(self):
        self._ts = _Timespec()
        self._ref = ctypes.byref(self._ts)
        self.uses_clock_nanosleep = _LIBC is not None

    def sleep_until(self, deadline_ns: int) -> None:
        if _LIBC is None:
            delay = deadline_ns - time.monotonic_ns()
            if delay > 0:
                time.sleep(delay * 1e-9)
            return
        self._ts.tv_sec, self._ts.tv_nsec = divmod(deadline_ns, 1_000_000_000)
        while _LIBC.clock_nanosleep(_CLOCK_MONOTONIC, _TIMER_ABSTIME, self._ref, None) == _EINTR:
            pass


def apply_thread_realtime(fifo_priority: int, cpus: Sequence[int]) -> str:
    """Give the calling thread SCHED_FIFO `fifo_priority` (0 = leave as is) and pin it to `cpus`
    (empty = leave as is). Never raises; returns one human-readable line saying what took effect,
    including why a request was refused (e.g. no CAP_SYS_NICE / RLIMIT_RTPRIO in a container)."""
    parts = []
    if _LIBC is not None:  # wake at the deadline, not up to 50 us later (default timer slack)
        _LIBC.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0)
    if fifo_priority > 0:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(int(fifo_priority)))
            parts.append(f'SCHED_FIFO priority {fifo_priority}')
        except (AttributeError, OSError) as exc:
            parts.append(f'SCHED_FIFO {fifo_priority} NOT permitted ({exc.__class__.__name__}: '
                         f'{getattr(exc, "strerror", exc)}; grant CAP_SYS_NICE or an rtprio limit, see '
                         f'docs/real_arms.md), running at normal priority')
    else:
        parts.append('normal priority (action.realtime.fifo_priority = 0)')
    if cpus:
        parts.append(set_affinity(cpus))
    return ', '.join(parts)


def set_affinity(cpus: Sequence[int]) -> str:
    """Pin the calling thread (and threads it creates later) to `cpus`; returns what took effect."""
    try:
        os.sched_setaffinity(0, [int(c) for c in cpus])
        return f'pinned to CPUs {sorted(os.sched_getaffinity(0))}'
    except (AttributeError, OSError, ValueError) as exc:
        return f'CPU affinity {list(cpus)} NOT applied ({exc})'


_MCL_CURRENT, _MCL_FUTURE, _MCL_ONFAULT = 1, 2, 4


def lock_memory() -> str:
    """mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT): no page this process has touched (code,
    heap, shared memory) is ever paged out again, so the tick cannot take a major fault after start-up.
    ONFAULT locks pages as they are first touched instead of faulting in every mapped library up front
    (torch's alone are ~1 GB). Never raises; returns one line saying what took effect."""
    if _LIBC is None:
        return 'memory NOT locked (no libc)'
    if _LIBC.mlockall(_MCL_CURRENT | _MCL_FUTURE | _MCL_ONFAULT) == 0:
        return 'memory locked (mlockall)'
    err = ctypes.get_errno()
    return f'memory NOT locked (mlockall: {os.strerror(err)}; needs CAP_IPC_LOCK or a memlock limit)'


def realtime_native_threads(fifo_priority: int, skip_python_threads: bool = True) -> str:
    """Give this process's middleware threads (native, not started by Python, named other than the
    process: DDS receive/event/async writer threads made by rclpy.init / create_node) SCHED_FIFO
    `fifo_priority`. For processes whose
    priority is decided after their middleware threads exist (the recorder reads it from a parameter)."""
    python = {t.native_id for t in threading.enumerate()} if skip_python_threads else set()
    done, failed = 0, ''
    try:
        tids = [int(t) for t in os.listdir('/proc/self/task')]
        main_name = _thread_name(os.getpid())
        # Interpreter-side helper threads keep the process's name; middleware threads name themselves
        # (Fast DDS: dds.udp.*, dds.shm.*, dds.ev.*, dds.asyn.*).
        tids = [t for t in tids if t not in python and _thread_name(t) != main_name]
    except OSError as exc:
        return f'native threads NOT changed ({exc})'
    for tid in tids:
        try:
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(int(fifo_priority)))
            done += 1
        except (AttributeError, OSError) as exc:
            failed = f', {exc.__class__.__name__}: {getattr(exc, "strerror", exc)}'
    return f'{done} of {len(tids)} middleware threads at SCHED_FIFO {fifo_priority}{failed}'


def _thread_name(tid: int) -> str:
    try:
        with open(f'/proc/self/task/{tid}/comm') as fh:
            return fh.read().strip()
    except OSError:
        return ''

"""Process-wide real-time settings, each checked in a spawned child (never in the test runner):
memory locking and SCHED_FIFO for middleware threads. This module imports no torch, so the children
start fast on a loaded machine."""
import multiprocessing
import os
import time

import numpy as np

from vla_ros.os_realtime import lock_memory, realtime_native_threads

CHILD_TIMEOUT_S = 180


def _memory_child(q) -> None:
    line = lock_memory()
    with open('/proc/self/status') as fh:
        locked_kb = next(int(row.split()[1]) for row in fh if row.startswith('VmLck:'))
    block = np.ones(4 << 20, dtype=np.uint8)   # touched after mlockall(MCL_FUTURE|MCL_ONFAULT): locked too
    with open('/proc/self/status') as fh:
        locked_after_kb = next(int(row.split()[1]) for row in fh if row.startswith('VmLck:'))
    q.put((line, locked_kb, locked_after_kb, int(block.sum())))


def test_lock_memory_locks_touched_pages_or_says_why():
    ctx = multiprocessing.get_context('spawn')   # never lock the test runner itself
    q = ctx.Queue()
    p = ctx.Process(target=_memory_child, args=(q,))
    p.start()
    line, locked_kb, after_kb, total = q.get(timeout=CHILD_TIMEOUT_S)
    p.join(10)
    assert total == 4 << 20
    if line.startswith('memory locked'):
        assert locked_kb > 0 and after_kb >= locked_kb + 4096 - 64   # the new 4 MiB block is locked
    else:
        assert 'NOT locked' in line and 'CAP_IPC_LOCK' in line


def _native_thread_child(q) -> None:
    import ctypes
    import ctypes.util
    # A native thread Python did not start, named like a Fast DDS thread (pthread_create on sleep(30)).
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    tid = ctypes.c_ulong()
    sleep = ctypes.cast(libc.sleep, ctypes.c_void_p)
    assert libc.pthread_create(ctypes.byref(tid), None, sleep, ctypes.c_void_p(30)) == 0
    libc.pthread_setname_np(tid, b'dds.test.0')
    time.sleep(0.2)
    line = realtime_native_threads(7)
    policies = {}
    for t in os.listdir('/proc/self/task'):
        with open(f'/proc/self/task/{t}/comm') as fh:
            policies[fh.read().strip()] = os.sched_getscheduler(int(t))
    q.put((line, policies, os.sched_getscheduler(0)))


def test_middleware_threads_get_fifo_python_threads_do_not():
    ctx = multiprocessing.get_context('spawn')
    q = ctx.Queue()
    p = ctx.Process(target=_native_thread_child, args=(q,))
    p.start()
    line, policies, main_policy = q.get(timeout=CHILD_TIMEOUT_S)
    p.terminate()
    p.join(10)
    assert main_policy == os.SCHED_OTHER                     # the Python thread is left alone
    if 'SCHED_FIFO 7' in line and not line.startswith('0 of'):
        assert policies['dds.test.0'] == os.SCHED_FIFO
    else:
        assert 'Error' in line

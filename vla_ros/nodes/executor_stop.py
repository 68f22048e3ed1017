"""Stopping an rclpy executor without abandoning the callbacks it already handed out.

rclpy's `MultiThreadedExecutor.shutdown()` destroys the executor's guard condition first and only
then lets its thread pool finish: a callback handed to the pool just before (one per `spin_once`)
then runs, takes its message and fails in the executor's own `gc.trigger()` with InvalidHandle.
Nobody reads that task's result, so at garbage collection rclpy prints "The following exception
was never retrieved: cannot use Destroyable because destruction was requested" (and a callback
could equally run against an entity the node destroyed meanwhile). So: stop handing out work,
wait until everything handed out is done, and only then shut the executor down.
"""
from __future__ import annotations

import threading
import time
from typing import Iterable, List

from rclpy.executors import Executor

SPIN_POLL_S = 0.1      # longest a stop request waits for the executor's wait to return
_WAIT_STEP_S = 0.005


def spin_until(executor: Executor, stop: threading.Event, poll_s: float = SPIN_POLL_S) -> None:
    """Spin until `stop` is set; returns between two spin_once calls (never mid-dispatch)."""
    while not stop.is_set():
        executor.spin_once(timeout_sec=poll_s)


def handed_out(executor: Executor) -> List:
    """Callback tasks the executor has dispatched and not yet reaped (rclpy keeps them privately)."""
    tasks = list(getattr(executor, '_futures', ()))
    lock = getattr(executor, '_tasks_lock', None)
    if lock is not None:
        with lock:
            tasks += [entry[0] for entry in getattr(executor, '_tasks', ())]
    return tasks


def wait_done(tasks: Iterable, timeout_sec: float) -> bool:
    """Wait until every task is done (True) or `timeout_sec` passed (False)."""
    tasks = list(tasks)
    end = time.monotonic() + timeout_sec
    while any(not t.done() for t in tasks):
        if time.monotonic() >= end:
            return False
        time.sleep(_WAIT_STEP_S)
    return True


def stop_executor(executor: Executor, timeout_sec: float = 2.0) -> bool:
    """Let the dispatched callbacks finish (up to `timeout_sec`), then shut the executor down.

    Call it once nothing spins the executor any more (after spin_until returned / its thread joined).
    Returns False if some callback was still running at the timeout. Exceptions of the reaped
    tasks are read here (re-raising is the spinner's job while it spins; at shutdown they would
    only surface as 'never retrieved' noise).
    """
    end = time.monotonic() + timeout_sec
    finished = wait_done(handed_out(executor), timeout_sec)
    executor.shutdown(timeout_sec=max(0.0, end - time.monotonic()))
    for task in handed_out(executor):
        if task.done():
            task.exception()       # marks it retrieved
    return finished

"""The shared-memory seqlock under contention: a writer process and a reader process hammer one slot
and no torn snapshot is ever accepted (every value of a snapshot comes from one write)."""
import multiprocessing
import time

import numpy as np

from vla_ros.action.shm import ATOMICS, SeqSlot

LAYOUT = {'actions': (16, 7), 'weights': (16,), 'data': (512,), 'meta': (8,)}
DISTINCT_WRITES = 2000   # the reader stops after seeing this many different writes ...
READ_LIMIT_S = 60.0      # ... or after this long


def _writer(slot: SeqSlot, started, stop) -> None:
    started.set()
    k = 0
    while not stop.is_set():
        k += 1
        with slot.writing() as arrays:     # array by array: a reader can catch it half done
            for name in LAYOUT:
                arrays[name][...] = k      # write k has every value == k == its version


def _reader(slot: SeqSlot, q, started, stop, validated: bool) -> None:
    """Read until enough distinct writes were seen while the writer runs (CPU time on a loaded machine
    decides how long that takes), at most READ_LIMIT_S; the unvalidated control stops at its first tear."""
    out = slot.buffers()
    reads = torn = busy = 0
    versions = set()
    started.wait(READ_LIMIT_S)
    deadline = time.monotonic() + READ_LIMIT_S
    while time.monotonic() < deadline and len(versions) < DISTINCT_WRITES and not (torn and not validated):
        if validated:
            got = slot.read_into(out)
        else:   # negative control: copy without the seqlock's validation
            got = slot.version
            for name, dst in out.items():
                np.copyto(dst, slot.arrays[name])
        if got is None:
            busy += 1
            continue
        reads += 1
        versions.add(got)
        if any(not np.all(out[name] == got) for name in LAYOUT):
            torn += 1
    stop.set()
    q.put((reads, torn, busy, len(versions)))


def _hammer(validated: bool):
    ctx = multiprocessing.get_context('spawn')
    slot = SeqSlot(LAYOUT)
    started, stop, q = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(slot, q, started, stop, validated))
    writer = ctx.Process(target=_writer, args=(slot, started, stop))
    reader.start()
    writer.start()
    reads, torn, busy, distinct = q.get(timeout=READ_LIMIT_S + 120)
    writer.join(120)
    reader.join(120)                 # exiting flushes the queue: slow on a loaded machine
    assert writer.exitcode == 0 and reader.exitcode == 0
    final = slot.buffers()
    version = slot.read_into(final)
    assert version is not None and version >= distinct and np.all(final['actions'] == version)
    return reads, torn, distinct


def test_two_processes_never_read_a_torn_chunk():
    reads, torn, distinct = _hammer(validated=True)
    assert torn == 0, f'{torn} torn snapshots accepted out of {reads} ({ATOMICS.kind})'
    assert distinct > 20, (reads, distinct)      # it did read while the writer was writing


def test_hammer_catches_unvalidated_reads():
    """The same hammer without the seqlock's validation does see torn snapshots (the check has teeth)."""
    reads, torn, distinct = _hammer(validated=False)
    assert torn > 0, (reads, distinct)


def test_read_new_only_after_a_newer_write():
    slot = SeqSlot({'v': (3,)})
    out = slot.buffers()
    assert slot.read_new(out, 0) is None           # never written
    slot.write(v=(1, 2, 3))
    assert slot.read_new(out, 0) == 1 and list(out['v']) == [1, 2, 3]
    assert slot.read_new(out, 1) is None           # nothing newer than what we saw
    with slot.writing() as arrays:                 # a write in progress is not new data yet
        arrays['v'][0] = 9
        assert slot.read_new(out, 1) is None and out['v'][0] == 1
    assert slot.read_new(out, 1) == 2 and out['v'][0] == 9

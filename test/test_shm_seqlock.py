"""The shared-memory seqlock under contention: a writer process and a reader process hammer one slot
and no torn snapshot is ever accepted (every value of a snapshot comes from one write)."""
import multiprocessing
import time

import numpy as np

from vla_ros.action.shm import ATOMICS, SeqSlot

LAYOUT = {'actions': (16, 7), 'weights': (16,), 'data': (512,), 'meta': (8,)}


def _writer(slot: SeqSlot, seconds: float, started) -> None:
    started.set()
    end = time.monotonic() + seconds
    k = 0
    while time.monotonic() < end:
        k += 1
        with slot.writing() as arrays:     # element by element: a reader can catch it half done
            for name in LAYOUT:
                arrays[name][...] = k      # write k has every value == k == its version


def _reader(slot: SeqSlot, result, started, validated: bool) -> None:
    out = slot.buffers()
    reads = torn = busy = 0
    versions = set()
    started.wait(30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if validated:
            got = slot.read_into(out)
        else:   # negative control: copy without the seqlock's validation
            got = slot.version
            for name, dst in out.items():
                np.copyto(dst, slot.arrays[name])
        if got is None:
            busy += 1
        else:
            reads += 1
            versions.add(got)
            if any(not np.all(out[name] == got) for name in LAYOUT):
                torn += 1
        if result['stop'].is_set():
            break
    result['q'].put((reads, torn, busy, len(versions)))


def _hammer(validated: bool):
    ctx = multiprocessing.get_context('spawn')
    slot = SeqSlot(LAYOUT)
    started, stop, q = ctx.Event(), ctx.Event(), ctx.Queue()
    reader = ctx.Process(target=_reader, args=(slot, {'stop': stop, 'q': q}, started, validated))
    writer = ctx.Process(target=_writer, args=(slot, 2.0, started))
    reader.start()
    writer.start()
    writer.join(60)
    stop.set()
    reads, torn, busy, distinct = q.get(timeout=60)
    reader.join(10)
    assert writer.exitcode == 0 and reader.exitcode == 0
    final = slot.buffers()
    version = slot.read_into(final)
    assert version is not None and version > 100 and np.all(final['actions'] == version)
    assert reads > 100 and distinct > 20, (reads, distinct)
    return reads, torn


def test_two_processes_never_read_a_torn_chunk():
    reads, torn = _hammer(validated=True)
    assert torn == 0, f'{torn} torn snapshots accepted out of {reads} ({ATOMICS.kind})'


def test_hammer_catches_unvalidated_reads():
    """The same hammer without the seqlock's validation does see torn snapshots (the check has teeth)."""
    reads, torn = _hammer(validated=False)
    assert torn > 0, reads


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

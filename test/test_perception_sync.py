"""Pure-Python approximate-time pairing of images with joint states (the fallback for message_filters)."""
from types import SimpleNamespace

from vla_ros.perception.sync import ApproxTimePairer

MS = 1_000_000


def _msg(kind, t_ms):
    return SimpleNamespace(kind=kind, t=t_ms * MS)


def _pairer(slop_s=0.02, queue=5):
    pairs = []
    p = ApproxTimePairer(slop_s, queue, lambda img, js: pairs.append((img.t // MS, js.t // MS)),
                         stamp_ns=lambda m: m.t)
    return p, pairs


def test_pairs_each_image_with_nearest_joint_state():
    p, pairs = _pairer(queue=20)
    for t in range(0, 100, 10):                   # joint states every 10 ms
        p.add_joint_state(_msg('js', t))
    p.add_image(_msg('img', 33))                  # nearest js: 30 (20 and 40 are farther)
    p.add_image(_msg('img', 57))                  # nearest: 60
    assert pairs == [(33, 30), (57, 60)]


def test_waits_for_a_later_joint_state_before_pairing():
    p, pairs = _pairer()
    p.add_joint_state(_msg('js', 100))
    p.add_image(_msg('img', 108))
    assert pairs == []                            # 110 may still come and be closer
    p.add_joint_state(_msg('js', 110))
    assert pairs == [(108, 110)]


def test_image_without_joint_state_within_slop_is_dropped():
    p, pairs = _pairer(slop_s=0.01)
    p.add_joint_state(_msg('js', 0))
    p.add_image(_msg('img', 50))
    p.add_joint_state(_msg('js', 100))            # 50 ms either way > 10 ms slop
    assert pairs == [] and p.dropped_images == 1
    p.add_image(_msg('img', 105))
    p.add_joint_state(_msg('js', 110))
    assert pairs == [(105, 100)]


def test_queue_is_bounded_when_joint_states_stop():
    p, pairs = _pairer(queue=3)
    p.add_joint_state(_msg('js', 0))
    for t in range(10, 60, 10):
        p.add_image(_msg('img', t))               # joint states stalled: images wait, oldest fall out
    assert len(p.images) == 3 and p.dropped_images == 2
    p.add_joint_state(_msg('js', 45))
    assert pairs == [(30, 45), (40, 45)]          # 50 waits for a joint state at/after it

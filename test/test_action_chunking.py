"""ActionBuffer time line, interpolation and seam smoothing, without ROS."""
import numpy as np
import pytest

from vla_ros.action.chunking import ActionBuffer, rtc_soft_weights


def _ramp(start_value, slope, horizon=10, dt=0.1, dim=2):
    steps = start_value + slope * dt * np.arange(horizon)
    return np.repeat(steps[:, None], dim, axis=1)


def test_interpolates_between_steps_and_holds_last_step():
    buf = ActionBuffer('none')
    assert buf.target(0.0) is None
    buf.add(_ramp(0.0, 1.0), start_time=1.0, dt=0.1)
    np.testing.assert_allclose(buf.target(1.0), [0.0, 0.0])
    np.testing.assert_allclose(buf.target(1.25), [0.25, 0.25])  # halfway between steps 2 and 3
    np.testing.assert_allclose(buf.target(1.9), [0.9, 0.9])
    np.testing.assert_allclose(buf.target(5.0), [0.9, 0.9])     # past the end: hold the last step
    assert buf.target(0.5) is None                               # not active yet


def test_none_mode_newest_active_chunk_replaces():
    buf = ActionBuffer('none')
    buf.add(_ramp(0.0, 1.0), start_time=0.0, dt=0.1)
    buf.add(_ramp(5.0, 0.0), start_time=0.3, dt=0.1, active_from=0.35)
    np.testing.assert_allclose(buf.target(0.34), [0.34, 0.34])
    np.testing.assert_allclose(buf.target(0.36), [5.0, 5.0])


def test_ensemble_weights_oldest_first_exponentially():
    decay = 0.5
    buf = ActionBuffer('ensemble', ensemble_decay=decay)
    buf.add(np.zeros((10, 1)), start_time=0.0, dt=0.1)
    buf.add(np.ones((10, 1)), start_time=0.2, dt=0.1)
    buf.add(np.full((10, 1), 4.0), start_time=0.4, dt=0.1)
    w = np.exp(-decay * np.arange(3))
    np.testing.assert_allclose(buf.target(0.5), [(w @ [0.0, 1.0, 4.0]) / w.sum()])
    # At 0.3 only the first two chunks are active.
    np.testing.assert_allclose(buf.target(0.3), [(w[:2] @ [0.0, 1.0]) / w[:2].sum()])
    # After the first chunk ends (t > 0.9) it no longer votes.
    np.testing.assert_allclose(buf.target(1.0), [(w[:2] @ [1.0, 4.0]) / w[:2].sum()])


def test_ensemble_smooths_seam_jump_compared_to_none():
    seams = {}
    for mode in ('none', 'ensemble'):
        buf = ActionBuffer(mode, ensemble_decay=0.5)
        buf.add(np.zeros((10, 1)), 0.0, 0.1)
        buf.add(np.ones((10, 1)), 0.3, 0.1)
        seams[mode] = float(abs(buf.target(0.3)[0] - buf.target(0.299)[0]))
    assert seams['none'] == pytest.approx(1.0)
    assert seams['ensemble'] < 0.5 * seams['none']


def test_rtc_soft_weights_shape():
    w = rtc_soft_weights(10, frozen_steps=3, overlap_steps=7)
    assert np.all(w[:3] == 1.0)
    assert np.all(np.diff(w[3:7]) < 0) and 0 < w[6] < w[3] < 1
    assert np.all(w[7:] == 0.0)
    np.testing.assert_array_equal(rtc_soft_weights(5, 0, 0), np.zeros(5))


def test_rtc_prefix_samples_committed_timeline_and_freezes_inference_window():
    buf = ActionBuffer('rtc')
    prefix, weights = buf.rtc_prefix(0.0, 0.05, horizon=6, dt=0.1)
    assert prefix is None and not weights.any()
    buf.add(_ramp(0.0, 1.0, horizon=10, dt=0.1), start_time=0.0, dt=0.1)
    prefix, weights = buf.rtc_prefix(0.35, delay_s=0.12, horizon=10, dt=0.1)
    np.testing.assert_allclose(prefix[:, 0], np.minimum(0.35 + 0.1 * np.arange(10), 0.9))
    # 0.12 s delay covers steps 0 and 1; the step the take-over interpolates towards (2) is frozen too.
    assert weights[:3].tolist() == [1.0, 1.0, 1.0] and weights[3] < 1.0
    # Old chunk ends at 0.9 s -> steps at 0.35..0.85 overlap (6 steps), the rest are free.
    assert weights[5] > 0 and np.all(weights[6:] == 0)


def test_buffer_rejects_bad_chunks_and_prunes():
    buf = ActionBuffer('none', max_chunks=3)
    with pytest.raises(ValueError):
        buf.add(np.full((4, 2), np.nan), 0.0, 0.1)
    with pytest.raises(ValueError):
        buf.add(np.zeros(4), 0.0, 0.1)
    with pytest.raises(ValueError):
        ActionBuffer('bogus')
    for k in range(5):
        buf.add(np.full((3, 1), float(k)), start_time=float(k), dt=0.1)
    assert len(buf) == 3
    buf.prune(10.0)
    assert len(buf) == 1 and buf.target(10.0)[0] == 4.0

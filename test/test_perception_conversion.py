"""Image <-> numpy for every supported encoding, and clear errors for malformed images."""
import numpy as np
import pytest

pytest.importorskip('sensor_msgs')
from sensor_msgs.msg import Image  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402

from vla_ros.perception.image_conversion import (ImageConversionError, image_msg_to_numpy,  # noqa: E402
                                                 image_msg_to_rgb, numpy_to_image_msg)

RNG = np.random.default_rng(0)
H, W = 5, 7


def test_rgb8_and_bgr8_round_trip_to_rgb():
    rgb = RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)
    msg = numpy_to_image_msg(rgb, 'rgb8', stamp=Time(sec=3, nanosec=4), frame_id='cam')
    assert (msg.height, msg.width, msg.step) == (H, W, W * 3)
    assert msg.header.stamp.sec == 3 and msg.header.frame_id == 'cam'
    np.testing.assert_array_equal(image_msg_to_numpy(msg), rgb)
    np.testing.assert_array_equal(image_msg_to_rgb(msg), rgb)
    bgr = numpy_to_image_msg(np.ascontiguousarray(rgb[..., ::-1]), 'bgr8')
    np.testing.assert_array_equal(image_msg_to_rgb(bgr), rgb)       # channels swapped back


def test_mono8_replicated_to_three_channels():
    mono = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    out = image_msg_to_rgb(numpy_to_image_msg(mono, 'mono8'))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], mono)


def test_depth_16uc1_millimetres_and_32fc1_metres_scaled_to_grey():
    mm = np.array([[0, 1500, 3000, 6000]], np.uint16)
    msg = numpy_to_image_msg(mm, '16UC1')
    np.testing.assert_array_equal(image_msg_to_numpy(msg), mm)
    grey = image_msg_to_rgb(msg, depth_max_m=3.0)[..., 0]
    np.testing.assert_array_equal(grey, [[0, 128, 255, 255]])       # 1.5 m of 3 m -> mid grey, clipped beyond
    metres = np.array([[0.0, 0.75, 3.0]], np.float32)
    grey = image_msg_to_rgb(numpy_to_image_msg(metres, '32FC1'), depth_max_m=3.0)[..., 0]
    np.testing.assert_array_equal(grey, [[0, 64, 255]])


def test_row_padding_and_big_endian_are_honoured():
    depth = np.arange(H * W, dtype=np.uint16).reshape(H, W) * 97
    msg = Image(height=H, width=W, encoding='16UC1', is_bigendian=1, step=W * 2 + 6)
    rows = [depth[r].astype('>u2').tobytes() + b'\xff' * 6 for r in range(H)]
    msg.data = b''.join(rows)
    np.testing.assert_array_equal(image_msg_to_numpy(msg), depth)


@pytest.mark.parametrize('make, reason', [
    (lambda: Image(height=2, width=2, encoding='yuv422', step=4, data=bytes(8)), 'unsupported_encoding'),
    (lambda: Image(height=0, width=4, encoding='rgb8', step=12, data=b''), 'zero_size'),
    (lambda: Image(height=2, width=4, encoding='rgb8', step=12, data=bytes(20)), 'size_mismatch'),
    (lambda: Image(height=2, width=4, encoding='rgb8', step=8, data=bytes(16)), 'size_mismatch'),
    (lambda: numpy_to_image_msg(np.array([[1.0, np.nan]], np.float32), '32FC1'), 'non_finite'),
])
def test_bad_images_raise_with_reason(make, reason):
    msg = make()
    with pytest.raises(ImageConversionError) as err:
        image_msg_to_rgb(msg)
    assert err.value.reason == reason and str(err.value)


def test_numpy_to_image_msg_rejects_mismatched_arrays():
    with pytest.raises(ImageConversionError):
        numpy_to_image_msg(np.zeros((4, 4), np.uint8), 'rgb8')          # 1 channel for a 3-channel encoding
    with pytest.raises(ImageConversionError):
        numpy_to_image_msg(np.zeros((4, 4), np.float64), '32FC1')       # wrong dtype
    with pytest.raises(ImageConversionError):
        numpy_to_image_msg(np.zeros((4, 4, 3), np.uint8), 'jpeg')

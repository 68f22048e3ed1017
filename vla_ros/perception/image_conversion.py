"""sensor_msgs/Image <-> numpy with validation (cv_bridge is used for decoding when importable).

`image_msg_to_numpy` gives the raw array (HxW or HxWxC, native dtype); `image_msg_to_rgb` turns
any supported encoding into the HxWx3 uint8 RGB the encoder needs (mono replicated, depth scaled
0..depth_max_m -> 0..255, near = dark). Anything malformed raises ImageConversionError.
"""
from __future__ import annotations

import sys

import numpy as np

try:  # present on real ROS 2 installs; not in the PyPI wheel set
    from cv_bridge import CvBridge  # type: ignore
except ImportError:  # pragma: no cover - depends on the install
    CvBridge = None

# encoding -> (dtype, channels)
ENCODINGS = {
    'rgb8': (np.uint8, 3), 'bgr8': (np.uint8, 3), 'rgba8': (np.uint8, 4), 'bgra8': (np.uint8, 4),
    'mono8': (np.uint8, 1), '8UC1': (np.uint8, 1), '8UC3': (np.uint8, 3),
    'mono16': (np.uint16, 1), '16UC1': (np.uint16, 1), '32FC1': (np.float32, 1),
}
DEPTH_ENCODINGS = ('16UC1', '32FC1')
MM_PER_M = 1000.0


class ImageConversionError(ValueError):
    """`reason` is a short drop-counter key: unsupported_encoding, zero_size, size_mismatch, non_finite."""

    def __init__(self, message: str, reason: str = 'bad_image'):
        super().__init__(message)
        self.reason = reason


def image_msg_to_numpy(msg) -> np.ndarray:
    """Raw pixel array of a sensor_msgs/Image, honouring step padding and endianness."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageConversionError(f'unsupported image encoding {enc!r}; supported: {sorted(ENCODINGS)}',
                                   'unsupported_encoding')
    dtype, channels = ENCODINGS[enc]
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h == 0 or w == 0:
        raise ImageConversionError(f'zero-size image ({w}x{h})', 'zero_size')
    itemsize = np.dtype(dtype).itemsize
    row_bytes = w * channels * itemsize
    if step < row_bytes:
        raise ImageConversionError(f'step {step} < width*channels*bytes {row_bytes} for {enc}', 'size_mismatch')
    data = msg.data
    buf = data.tobytes() if hasattr(data, 'tobytes') else bytes(data)
    if len(buf) != step * h:
        raise ImageConversionError(f'data has {len(buf)} bytes, expected step*height = {step * h}',
                                   'size_mismatch')
    rows = np.frombuffer(buf, np.uint8).reshape(h, step)[:, :row_bytes]
    big = bool(msg.is_bigendian)
    arr = rows.copy().view(np.dtype(dtype).newbyteorder('>' if big else '<')).astype(dtype, copy=False)
    arr = arr.reshape(h, w, channels) if channels > 1 else arr.reshape(h, w)
    if arr.dtype.kind == 'f' and not np.all(np.isfinite(arr)):
        raise ImageConversionError(f'{enc} image contains NaN/Inf', 'non_finite')
    return arr


def image_msg_to_rgb(msg, depth_max_m: float = 3.0) -> np.ndarray:
    """Any supported encoding -> HxWx3 uint8 RGB for the vision encoder."""
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise ImageConversionError(f'unsupported image encoding {enc!r}; supported: {sorted(ENCODINGS)}',
                                   'unsupported_encoding')
    if CvBridge is not None and enc in ('rgb8', 'bgr8', 'mono8'):
        _validate_header(msg)
        try:
            return np.ascontiguousarray(CvBridge().imgmsg_to_cv2(msg, desired_encoding='rgb8'))
        except Exception as exc:  # cv_bridge raises its own error type
            raise ImageConversionError(f'cv_bridge: {exc}') from exc
    arr = image_msg_to_numpy(msg)
    if enc in ('rgb8', '8UC3'):
        return arr
    if enc == 'bgr8':
        return np.ascontiguousarray(arr[..., ::-1])
    if enc == 'rgba8':
        return np.ascontiguousarray(arr[..., :3])
    if enc == 'bgra8':
        return np.ascontiguousarray(arr[..., 2::-1])
    if enc in ('mono8', '8UC1'):
        return np.repeat(arr[..., None], 3, axis=2)
    if enc == 'mono16':
        return np.repeat((arr >> 8).astype(np.uint8)[..., None], 3, axis=2)
    metres = arr.astype(np.float32) / MM_PER_M if enc == '16UC1' else arr
    grey = np.clip(metres / depth_max_m, 0.0, 1.0) * 255.0
    return np.repeat(np.round(grey).astype(np.uint8)[..., None], 3, axis=2)


def _validate_header(msg) -> None:
    if int(msg.height) == 0 or int(msg.width) == 0:
        raise ImageConversionError(f'zero-size image ({msg.width}x{msg.height})', 'zero_size')
    dtype, channels = ENCODINGS[msg.encoding]
    need = int(msg.width) * channels * np.dtype(dtype).itemsize
    if int(msg.step) < need or len(msg.data) != int(msg.step) * int(msg.height):
        raise ImageConversionError(f'step/size mismatch: step {msg.step}, {len(msg.data)} bytes, '
                                   f'{msg.width}x{msg.height} {msg.encoding}', 'size_mismatch')


def numpy_to_image_msg(arr: np.ndarray, encoding: str, stamp=None, frame_id: str = ''):
    """numpy -> sensor_msgs/Image (native byte order, no row padding)."""
    from sensor_msgs.msg import Image
    if encoding not in ENCODINGS:
        raise ImageConversionError(f'unsupported image encoding {encoding!r}; supported: {sorted(ENCODINGS)}')
    dtype, channels = ENCODINGS[encoding]
    arr = np.asarray(arr)
    if arr.size == 0:
        raise ImageConversionError('zero-size array')
    expected_ndim = 2 if channels == 1 else 3
    if arr.ndim == 3 and channels == 1 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim != expected_ndim or (channels > 1 and arr.shape[2] != channels):
        raise ImageConversionError(f'array shape {arr.shape} does not fit {encoding} ({channels} channel(s))')
    if arr.dtype != dtype:
        raise ImageConversionError(f'array dtype {arr.dtype} does not fit {encoding} ({np.dtype(dtype)})')
    msg = Image()
    if stamp is not None:
        msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(arr.shape[0]), int(arr.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(sys.byteorder == 'big')
    msg.step = int(arr.shape[1] * channels * np.dtype(dtype).itemsize)
    msg.data = np.ascontiguousarray(arr).tobytes()
    return msg

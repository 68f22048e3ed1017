"""sensor_msgs/CompressedImage payloads (JPEG / PNG) <-> numpy, as compressed_image_transport writes them.

The `format` string follows compressed_image_transport: "<raw encoding>; <jpeg|png> compressed <target>",
where the target is bgr8 for colour images (what cv2.imdecode returns) and mono8 for grey ones.
The recorder compresses camera frames with `compress`; offline replay and dataset export decode
them with `decompress_to_rgb`.
"""
from __future__ import annotations

from typing import Tuple

import cv2
import numpy as np

FORMATS = ('jpeg', 'png')
COLOUR_ENCODINGS = ('rgb8', 'bgr8')
GREY_ENCODINGS = ('mono8',)


class ImageCodecError(ValueError):
    pass


def compress(array: np.ndarray, encoding: str, fmt: str = 'jpeg', jpeg_quality: int = 90,
             png_level: int = 3) -> Tuple[str, bytes]:
    """HxWx3 rgb8/bgr8 or HxW mono8 uint8 -> (CompressedImage.format, payload bytes)."""
    if fmt not in FORMATS:
        raise ImageCodecError(f'compression format {fmt!r} not one of {FORMATS}')
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ImageCodecError(f'only 8-bit images are compressed, got {array.dtype}')
    if encoding in COLOUR_ENCODINGS:
        if array.ndim != 3 or array.shape[2] != 3:
            raise ImageCodecError(f'{encoding} needs HxWx3, got {array.shape}')
        bgr = array[..., ::-1] if encoding == 'rgb8' else array
        target = 'bgr8'
    elif encoding in GREY_ENCODINGS:
        if array.ndim != 2:
            raise ImageCodecError(f'{encoding} needs HxW, got {array.shape}')
        bgr, target = array, 'mono8'
    else:
        raise ImageCodecError(f'cannot compress encoding {encoding!r}; supported: '
                              f'{COLOUR_ENCODINGS + GREY_ENCODINGS}')
    params = ([cv2.IMWRITE_JPEG_QUALITY, int(jpeg_quality)] if fmt == 'jpeg'
              else [cv2.IMWRITE_PNG_COMPRESSION, int(png_level)])
    ok, buf = cv2.imencode('.jpg' if fmt == 'jpeg' else '.png', np.ascontiguousarray(bgr), params)
    if not ok:
        raise ImageCodecError(f'cv2 could not encode a {array.shape} {encoding} image as {fmt}')
    return f'{encoding}; {fmt} compressed {target}', buf.tobytes()


def decompress_to_rgb(fmt: str, data) -> np.ndarray:
    """CompressedImage (format, data) -> HxWx3 uint8 RGB."""
    buf = np.frombuffer(bytes(data), dtype=np.uint8)
    if buf.size == 0:
        raise ImageCodecError('empty compressed image')
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise ImageCodecError(f'cv2 could not decode a {fmt!r} image of {buf.size} bytes')
    if decoded.ndim == 2:
        return np.repeat(decoded[..., None], 3, axis=2)
    if decoded.shape[2] == 4:
        decoded = decoded[..., :3]
    return np.ascontiguousarray(decoded[..., ::-1])  # cv2 decodes colour to BGR

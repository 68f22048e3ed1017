"""Instruction -> per-patch relevance, without a text encoder.

Two honest, cheap signals:
* colour words ("touch the red cube") -> fraction of each patch's pixels with that hue
  (saturated enough to be a coloured object, not the table). Useful for the demo task.
* any other text -> a hashed character-trigram bag projected by a fixed seeded matrix into the
  encoder's hidden space, used as an attention query on layer 0. With real weights this is a crude
  stand-in for a text tower; with random weights it is merely deterministic, so colour words win.
"""
from __future__ import annotations

import functools
import re
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np

try:
    import cv2
except ImportError:  # a bare GPU image without OpenCV: the numpy conversion below stands in
    cv2 = None

# OpenCV hue centres (0..180 scale).
COLOUR_HUES: Dict[str, float] = {
    'red': 0.0, 'orange': 15.0, 'yellow': 30.0, 'green': 60.0, 'cyan': 90.0,
    'blue': 120.0, 'purple': 140.0, 'violet': 140.0, 'magenta': 155.0, 'pink': 165.0,
}
HUE_TOLERANCE = 12.0          # +- hue units that still count as the named colour
MIN_SATURATION = 90           # of 255: below this a pixel is grey/white/black, not "coloured"
MIN_VALUE = 40                # of 255: too dark to judge hue
TEXT_HASH_DIM = 512
TEXT_PROJECTION_SEED = 1234


def colour_words(text: str) -> List[str]:
    return [w for w in re.findall(r'[a-z]+', (text or '').lower()) if w in COLOUR_HUES]


def colour_relevance(resized_rgb: np.ndarray, grid_hw, colours: List[str]) -> Optional[np.ndarray]:
    """[N] fraction of pixels in each patch matching any named colour; None without colour words."""
    if not colours:
        return None
    hsv = rgb_to_hsv_u8(resized_rgb)
    table = _hue_table(tuple(colours))
    if cv2 is not None:   # same test in OpenCV's vectorised kernels (~10x faster than strided numpy)
        coloured = cv2.inRange(hsv, (0, MIN_SATURATION, MIN_VALUE), (255, 255, 255))
        hue_ok = cv2.LUT(cv2.extractChannel(hsv, 0), _hue_lut(tuple(colours)))
        match = cv2.bitwise_and(coloured, hue_ok)                      # uint8 1 = match, 0 = not
    else:
        match = (table[hsv[..., 0]] & (hsv[..., 1] >= MIN_SATURATION) & (hsv[..., 2] >= MIN_VALUE)).view(np.uint8)
    gh, gw = grid_hw
    ph, pw = match.shape[0] // gh, match.shape[1] // gw
    # Count per patch: first sum the ph rows of each patch row (contiguous, vectorised), then the pw columns.
    rows = match[:gh * ph, :gw * pw].reshape(gh, ph, gw * pw).sum(axis=1, dtype=np.int32)
    counts = rows.reshape(gh, gw, pw).sum(axis=2, dtype=np.int64)
    return (counts / float(ph * pw)).reshape(-1).astype(np.float32)    # = the mean, exactly


@functools.lru_cache(maxsize=32)
def _hue_table(colours: Tuple[str, ...]) -> np.ndarray:
    """[256] bool: does uint8 hue h lie within HUE_TOLERANCE of any named colour (circular, 0..180)."""
    hue = np.arange(256, dtype=np.float32)
    table = np.zeros(256, bool)
    for name in colours:
        d = np.abs(hue - COLOUR_HUES[name])
        d = np.minimum(d, 180.0 - d)               # hue is circular
        table |= d <= HUE_TOLERANCE
    table.setflags(write=False)
    return table


@functools.lru_cache(maxsize=32)
def _hue_lut(colours: Tuple[str, ...]) -> np.ndarray:
    """_hue_table as a uint8 0/1 lookup table for cv2.LUT."""
    return _hue_table(colours).astype(np.uint8)


def rgb_to_hsv_u8(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB -> OpenCV-convention uint8 HSV (H 0..180). OpenCV when installed; else the same
    formula in numpy (OpenCV's fixed-point tables can differ from it by 1 in H or S)."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if cv2 is not None:
        return cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    x = rgb.astype(np.float64)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(axis=-1)
    delta = v - x.min(axis=-1)
    s = np.where(v > 0, 255.0 * delta / np.where(v > 0, v, 1.0), 0.0)
    d = np.where(delta > 0, delta, 1.0)
    h = np.where(v == r, 60.0 * (g - b) / d, np.where(v == g, 120.0 + 60.0 * (b - r) / d, 240.0 + 60.0 * (r - g) / d))
    h = np.where(delta > 0, np.where(h < 0, h + 360.0, h), 0.0)
    out = np.stack([np.round(h / 2.0) % 180, np.round(s), v], axis=-1)
    return out.astype(np.uint8)


def text_query_embedding(text: str, dim: int) -> np.ndarray:
    """Deterministic unit vector in R^dim from hashed character trigrams of `text`."""
    bag = np.zeros(TEXT_HASH_DIM, np.float32)
    padded = f'  {(text or "").lower().strip()}  '
    for i in range(len(padded) - 2):
        bag[zlib.crc32(padded[i:i + 3].encode()) % TEXT_HASH_DIM] += 1.0
    rng = np.random.default_rng(TEXT_PROJECTION_SEED + dim)
    projection = rng.standard_normal((TEXT_HASH_DIM, dim)).astype(np.float32) / np.sqrt(TEXT_HASH_DIM)
    vec = bag @ projection
    norm = float(np.linalg.norm(vec))
    return vec / norm * np.sqrt(dim) if norm > 0 else vec

"""Synthetic tabletop frames (red/green/blue cubes on a textured table) for tests and benches."""
from __future__ import annotations

from typing import Dict, Iterator, Optional, Tuple

import numpy as np

CUBE_RGB: Dict[str, Tuple[int, int, int]] = {'red': (220, 30, 30), 'green': (30, 200, 40), 'blue': (30, 50, 220)}
TABLE_RGB = (150, 120, 90)


def tabletop_frame(size: int = 128, cubes: Optional[Dict[str, Tuple[int, int]]] = None, cube_px: int = 16,
                   seed: int = 0) -> np.ndarray:
    """HxWx3 uint8: low-contrast table texture (fixed by `seed`) + solid squares at (row, col) corners."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = TABLE_RGB
    img += rng.normal(0.0, 6.0, size=(size, size, 1))
    if cubes is None:
        cubes = {'red': (size // 8, size // 8), 'green': (size // 2, size - size // 4),
                 'blue': (size - size // 4, size // 4)}
    for name, (r, c) in cubes.items():
        img[r:r + cube_px, c:c + cube_px] = CUBE_RGB[name]
    return np.clip(img, 0, 255).astype(np.uint8)


def moving_object_sequence(frames: int, size: int = 128, seed: int = 0,
                           step_px: int = 2) -> Iterator[np.ndarray]:
    """Mostly static scene: fixed cubes, a small grey 'gripper' square sweeping across, sensor noise."""
    rng = np.random.default_rng(seed + 1)
    base = tabletop_frame(size, seed=seed)
    obj = max(size // 12, 4)
    for t in range(frames):
        img = base.astype(np.int16)
        r = size // 3
        c = (t * step_px) % (size - obj)
        img[r:r + obj, c:c + obj] = (60, 60, 60)
        img += rng.integers(-1, 2, size=img.shape, dtype=np.int16)     # +-1 LSB camera noise
        yield np.clip(img, 0, 255).astype(np.uint8)

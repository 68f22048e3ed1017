"""Per-episode visual randomisation of the tabletop scene (lighting, object colours, camera pose).

Off by default (every amount 0 leaves the MJCF's values untouched). The draws come from their own
generator seeded by the episode seed, so a layout does not change when jitter is switched on.
"""
from __future__ import annotations

import mujoco
import numpy as np

JITTER_STREAM = 7    # second seed word: the jitter stream, independent of the layout stream


class SceneJitter:
    def __init__(self, model: mujoco.MjModel, config):
        self.model = model
        self.config = config
        self._light_diffuse = model.light_diffuse.copy()
        self._headlight = model.vis.headlight.diffuse.copy()
        self._colour_geoms = [i for i in range(model.ngeom)
                              if (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_GEOM, i) or '').startswith(('cube_', 'pad_'))]
        self._rgba = model.geom_rgba[self._colour_geoms].copy()
        self._camera = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, config.camera_name)
        self._cam_pos = model.cam_pos[self._camera].copy() if self._camera >= 0 else None

    @property
    def active(self) -> bool:
        c = self.config
        return c.light_jitter > 0 or c.colour_jitter > 0 or c.camera_jitter_m > 0

    def apply(self, seed: int) -> None:
        """Restore the MJCF values, then jitter them for this episode."""
        m, c = self.model, self.config
        m.light_diffuse[:] = self._light_diffuse
        m.vis.headlight.diffuse[:] = self._headlight
        m.geom_rgba[self._colour_geoms] = self._rgba
        if self._cam_pos is not None:
            m.cam_pos[self._camera] = self._cam_pos
        if not self.active:
            return
        rng = np.random.default_rng([int(seed), JITTER_STREAM])
        if c.light_jitter > 0:
            scale = 1.0 + rng.uniform(-c.light_jitter, c.light_jitter, size=(len(self._light_diffuse), 1))
            m.light_diffuse[:] = np.clip(self._light_diffuse * scale, 0.0, 1.0)
            m.vis.headlight.diffuse[:] = np.clip(
                self._headlight * (1.0 + rng.uniform(-c.light_jitter, c.light_jitter)), 0.0, 1.0)
        if c.colour_jitter > 0:
            delta = rng.uniform(-c.colour_jitter, c.colour_jitter, size=(len(self._colour_geoms), 3))
            rgba = self._rgba.copy()
            rgba[:, :3] = np.clip(rgba[:, :3] + delta, 0.0, 1.0)
            m.geom_rgba[self._colour_geoms] = rgba
        if c.camera_jitter_m > 0 and self._cam_pos is not None:
            m.cam_pos[self._camera] = self._cam_pos + rng.uniform(-c.camera_jitter_m, c.camera_jitter_m, size=3)

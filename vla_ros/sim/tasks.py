"""Tasks of the tabletop sim: episode layout, instruction, goal and success test (`sim.task`).

touch       "touch the <colour> cube": the fingertip rests on the named cube's top face.
pick_place  "put the <colour> cube on the <colour> pad": the named cube rests on the named pad,
            released (no finger touches it); the other cubes and pad are distractors.

A task only reads and writes the env's MuJoCo state; `ArmEnv` owns physics and rendering.
"""
from __future__ import annotations

from typing import Dict, List, Tuple

import mujoco
import numpy as np

CUBE_COLOURS = ('red', 'green', 'blue')
PAD_COLOURS = ('yellow', 'purple')
TASKS = ('touch', 'pick_place')
TOUCH_TEMPLATES = (
    'touch the {colour} cube',
    'touch the {colour} block',
    'reach out and touch the {colour} cube',
    'put your gripper on the {colour} cube',
)
# The cube's colour always comes first (the lightweight planner's colour slot names the object to grasp).
PICK_PLACE_TEMPLATES = (
    'put the {colour} cube on the {pad} pad',
    'place the {colour} block on the {pad} pad',
    'move the {colour} cube onto the {pad} pad',
    'pick up the {colour} cube and put it on the {pad} pad',
)
HIDDEN_Z = -0.2          # pads of the touch task sit inside the table, out of sight


def sample_separated(rng: np.random.Generator, n: int, x_range, y_range, min_sep: List[float],
                     placed: List[np.ndarray] = None, radius_range=(0.0, np.inf)) -> List[np.ndarray]:
    """n points in the box, each at least min_sep[i] from every point placed before it and at a distance
    from the base (origin) within radius_range (rejection)."""
    (x0, x1), (y0, y1) = x_range, y_range
    r0, r1 = radius_range
    placed = list(placed or [])
    seps = [0.0] * len(placed)
    out: List[np.ndarray] = []
    for i in range(n):
        for _ in range(2000):
            xy = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
            if (r0 <= float(np.linalg.norm(xy)) <= r1
                    and all(np.linalg.norm(xy - p) >= max(min_sep[i], s) for p, s in zip(placed, seps))):
                break
        else:
            raise ValueError('sim ranges too small for the requested object separations')
        placed.append(xy)
        seps.append(min_sep[i])
        out.append(xy)
    return out


class TouchTask:
    name = 'touch'

    def __init__(self, env):
        self.env = env
        self.target_cube = ''
        for colour in PAD_COLOURS:                     # no pads in this task
            env.model.body_pos[env.pad_body[colour]] = (0.0, 0.0, HIDDEN_Z)

    def reset(self, rng: np.random.Generator) -> str:
        env, cfg = self.env, self.env.config
        xys = sample_separated(rng, len(CUBE_COLOURS), cfg.cube_x_range, cfg.cube_y_range,
                               [cfg.cube_min_separation_m] * len(CUBE_COLOURS), radius_range=cfg.reach_range_m)
        for colour, (x, y) in zip(CUBE_COLOURS, xys):
            env.place_cube(colour, x, y, rng.uniform(-np.pi / 4, np.pi / 4))
        self.target_cube = CUBE_COLOURS[int(rng.integers(len(CUBE_COLOURS)))]
        template = TOUCH_TEMPLATES[int(rng.integers(len(TOUCH_TEMPLATES)))]
        return template.format(colour=self.target_cube)

    def goal_position(self) -> np.ndarray:
        """Top centre of the target cube."""
        return self.env.cube_position(self.target_cube) + np.array([0.0, 0.0, self.env.cube_half_size])

    def distance_to_goal(self) -> float:
        return float(np.linalg.norm(self.env.ee_position() - self.goal_position()))

    def satisfied(self) -> bool:
        return self.distance_to_goal() <= self.env.config.success_threshold_m


class PickPlaceTask:
    name = 'pick_place'

    def __init__(self, env):
        self.env = env
        self.target_cube = ''
        self.target_pad = ''
        m = env.model
        geom = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, 'pad_yellow_geom')
        self.pad_radius = float(m.geom_size[geom][0])
        self.pad_top = float(2 * m.geom_size[geom][1])
        self._finger_geoms = set(env.finger_geom.values())

    def reset(self, rng: np.random.Generator) -> str:
        env, cfg = self.env, self.env.config
        pad_sep = 2 * self.pad_radius + 0.02
        obj_sep = self.pad_radius + env.cube_half_size * 1.5 + 0.01
        pads = sample_separated(rng, len(PAD_COLOURS), cfg.pad_x_range, cfg.pad_y_range, [pad_sep] * len(PAD_COLOURS),
                                radius_range=cfg.reach_range_m)
        for colour, (x, y) in zip(PAD_COLOURS, pads):
            env.model.body_pos[env.pad_body[colour]] = (x, y, 0.0)
        cubes = sample_separated(rng, len(CUBE_COLOURS), cfg.cube_x_range, cfg.cube_y_range,
                                 [max(cfg.cube_min_separation_m, obj_sep)] * len(CUBE_COLOURS), placed=pads,
                                 radius_range=cfg.reach_range_m)
        for colour, (x, y) in zip(CUBE_COLOURS, cubes):
            env.place_cube(colour, x, y, rng.uniform(-cfg.cube_yaw_range, cfg.cube_yaw_range))
        self.target_cube = CUBE_COLOURS[int(rng.integers(len(CUBE_COLOURS)))]
        self.target_pad = PAD_COLOURS[int(rng.integers(len(PAD_COLOURS)))]
        template = PICK_PLACE_TEMPLATES[int(rng.integers(len(PICK_PLACE_TEMPLATES)))]
        return template.format(colour=self.target_cube, pad=self.target_pad)

    def pad_position(self, colour: str = '') -> np.ndarray:
        return self.env.model.body_pos[self.env.pad_body[colour or self.target_pad]].copy()

    def goal_position(self) -> np.ndarray:
        """Centre of the target cube when it rests on the centre of the target pad."""
        return self.pad_position() + np.array([0.0, 0.0, self.pad_top + self.env.cube_half_size])

    def distance_to_goal(self) -> float:
        return float(np.linalg.norm(self.env.cube_position(self.target_cube) - self.goal_position()))

    def cube_on_pad(self) -> bool:
        """Target cube resting (low, slow) with its centre over the target pad."""
        env = self.env
        cube = env.cube_position(self.target_cube)
        goal = self.goal_position()
        return (float(np.linalg.norm(cube[:2] - goal[:2])) <= env.config.place_tolerance_m
                and abs(float(cube[2] - goal[2])) <= 0.01
                and float(np.linalg.norm(env.cube_velocity(self.target_cube))) <= 0.05)

    def finger_contacts(self, colour: str = '') -> Tuple[bool, bool]:
        """(left finger touches the cube, right finger touches it)."""
        env = self.env
        cube_geom = env.cube_geom[colour or self.target_cube]
        left = right = False
        for i in range(env.data.ncon):
            c = env.data.contact[i]
            pair = {int(c.geom1), int(c.geom2)}
            if cube_geom in pair and pair & self._finger_geoms:
                other = (pair - {cube_geom}).pop()
                left |= other == env.finger_geom['left']
                right |= other == env.finger_geom['right']
        return left, right

    def satisfied(self) -> bool:
        return self.cube_on_pad() and not any(self.finger_contacts())


def make_task(env):
    name = env.config.task
    if name == 'touch':
        return TouchTask(env)
    if name == 'pick_place':
        return PickPlaceTask(env)
    raise ValueError(f'unknown sim.task {name!r}; known: {TASKS}')


def task_summary(task) -> Dict[str, object]:
    out: Dict[str, object] = {'task': task.name, 'target_cube': task.target_cube}
    if isinstance(task, PickPlaceTask):
        out['target_pad'] = task.target_pad
    return out

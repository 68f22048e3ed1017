"""CPU-cheap deterministic planner for the simulated demo ("touch the red cube" and rephrasings).

It parses the target (colour + object) from the instruction and encodes it, the instruction words
and the pooled scene tokens into plan tokens through fixed seeded projections. The action head is
trained on these tokens, so everything here must stay deterministic across processes.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from vla_ros.config.planning import PlannerConfig
from vla_ros.planning.base import (PlanOutput, Planner, PlanRequest, register_planner, seeded_projection,
                                   stable_seed)

COLOURS = ('red', 'green', 'blue', 'yellow', 'orange', 'purple', 'white', 'black')
OBJECTS = ('cube', 'block', 'box', 'ball', 'cylinder', 'object', 'target')
# Synonyms -> canonical object so "block" and "cube" give the same plan tokens.
CANONICAL_OBJECT = {'block': 'cube', 'box': 'cube', 'cube': 'cube', 'ball': 'ball', 'cylinder': 'cylinder',
                    'object': 'object', 'target': 'target'}
VERBS = {'touch': 'touch', 'tap': 'touch', 'poke': 'touch', 'reach': 'reach', 'go': 'reach', 'move': 'reach',
         'approach': 'reach', 'push': 'push', 'pick': 'pick up', 'grasp': 'pick up', 'grab': 'pick up',
         'lift': 'pick up', 'place': 'place', 'put': 'place'}
# Fixed slots of the plan-token layout; further tokens carry pooled scene regions.
SLOTS = ('colour', 'object', 'verb', 'words', 'scene')


@dataclass
class ParsedInstruction:
    colour: Optional[str]
    obj: str
    verb: str
    words: List[str]

    @property
    def target(self) -> str:
        return f'{self.colour} {self.obj}' if self.colour else self.obj


def parse_instruction(text: str) -> ParsedInstruction:
    """Target = first colour word (and the object noun after it, else the first object noun)."""
    words = re.findall(r'[a-z]+', text.lower())
    colour_idx = next((i for i, w in enumerate(words) if w in COLOURS), None)
    colour = words[colour_idx] if colour_idx is not None else None
    search_from = colour_idx + 1 if colour_idx is not None else 0
    obj_word = next((w for w in words[search_from:] if w in CANONICAL_OBJECT), None) \
        or next((w for w in words if w in CANONICAL_OBJECT), 'object')
    verb = next((VERBS[w] for w in words if w in VERBS), 'reach')
    return ParsedInstruction(colour=colour, obj=CANONICAL_OBJECT[obj_word], verb=verb, words=words)


@register_planner('lightweight')
class LightweightPlanner(Planner):
    type_name = 'lightweight'

    def __init__(self, cfg: PlannerConfig, visual_dim: int = 0):
        super().__init__(cfg, visual_dim)
        self._dim = cfg.plan_token_dim
        self._scene_proj: Dict[int, np.ndarray] = {}
        self._word_cache: Dict[Tuple[str, str], np.ndarray] = {}

    def _embed(self, kind: str, word: str) -> np.ndarray:
        """Seeded standard-normal vector per (slot, word): unit per-element variance, stable across runs."""
        key = (kind, word)
        vec = self._word_cache.get(key)
        if vec is None:
            rng = np.random.default_rng(stable_seed(self.cfg.seed, 'lightweight', kind, word))
            vec = rng.standard_normal(self._dim).astype(np.float32)
            self._word_cache[key] = vec
        return vec

    def _project_scene(self, tokens: np.ndarray) -> np.ndarray:
        dim = tokens.shape[1]
        proj = self._scene_proj.get(dim)
        if proj is None:
            proj = seeded_projection(dim, self._dim, stable_seed(self.cfg.seed, 'lightweight-scene', dim))
            self._scene_proj[dim] = proj
        # Normalise each pooled feature so plan-token scale does not depend on the encoder's scale.
        feats = tokens - tokens.mean(axis=1, keepdims=True)
        feats = feats / (feats.std(axis=1, keepdims=True) + 1e-6)
        return (feats @ proj).astype(np.float32)

    def _scene_slots(self, req: PlanRequest, regions: int) -> Tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(req.visual_tokens, dtype=np.float32)
        zeros = np.zeros((max(regions, 0), self._dim), np.float32)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            return np.zeros(self._dim, np.float32), zeros
        if self.visual_dim and tokens.shape[1] != self.visual_dim:
            raise ValueError(f'visual token dim {tokens.shape[1]} != planner visual_dim {self.visual_dim}')
        order = np.arange(tokens.shape[0])
        if req.kept_indices is not None and len(req.kept_indices) == tokens.shape[0]:
            order = np.argsort(np.asarray(req.kept_indices), kind='stable')  # raster order of the patches
        ordered = tokens[order]
        pooled = [ordered.mean(axis=0)]
        if regions > 0:
            pooled += [ordered[g].mean(axis=0) if len(g) else ordered.mean(axis=0)
                       for g in np.array_split(np.arange(ordered.shape[0]), regions)]
        projected = self._project_scene(np.stack(pooled))
        return projected[0], projected[1:]

    def subtask_for(self, parsed: ParsedInstruction) -> str:
        if parsed.colour is None and parsed.obj == 'object':
            return 'look for a target: no object named in the instruction'
        return f'{parsed.verb} the {parsed.target}'

    def plan(self, req: PlanRequest) -> PlanOutput:
        start = time.perf_counter()
        parsed = parse_instruction(req.instruction)
        n = self.cfg.num_plan_tokens
        regions = max(n - len(SLOTS), 0)
        scene_global, scene_regions = self._scene_slots(req, regions)
        word_vecs = [self._embed('word', w) for w in parsed.words]
        slots = {
            'colour': self._embed('colour', parsed.colour) if parsed.colour else np.zeros(self._dim, np.float32),
            'object': self._embed('object', parsed.obj),
            'verb': self._embed('verb', parsed.verb),
            'words': np.mean(word_vecs, axis=0) if word_vecs else np.zeros(self._dim, np.float32),
            'scene': scene_global,
        }
        tokens = np.zeros((n, self._dim), np.float32)
        for i, name in enumerate(SLOTS):  # fewer tokens than slots: fold the extra slots in
            tokens[i % n] += slots[name]
        if regions:
            tokens[len(SLOTS):] = scene_regions
        out = PlanOutput(subtask=self.subtask_for(parsed), plan_tokens=tokens,
                         latency_ms=(time.perf_counter() - start) * 1e3)
        return self.check_output(out)

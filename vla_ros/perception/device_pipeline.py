"""Perception on the encoder's device: the same decisions as PerceptionPipeline, no numpy mid-frame.

Per frame: resize + colour relevance on the host (cv2 on the host image; no device data involved),
one non-blocking upload from pinned memory, then on the device: normalise, patch embedding, layer-0
scores, budget, selection (torch_ops), the reuse mask against a device-resident cache, the encoder
on the positions being recomputed (attending to the cached keys/values of the reused ones), the
cache scatter and the gather of the kept tokens. Host synchronisation per frame: reading the
recompute count (one int, to pick the graph bucket; only on reuse frames), the adaptive budget (one
int, only with adaptive_budget), and the final copy of the tokens to publish.

Static shapes for CUDA graphs: a fixed keep ratio is one shape already; an adaptive budget is
rounded up to one of `keep_buckets` (the selection runs with that budget, so a few more tokens are
kept than the exact adaptive budget); with
`recompute_buckets` the recompute set is padded to a bucket with rows that are computed but masked
out of every attention and scattered to a trash row, so the kept tokens' features equal the exact
(unpadded) computation. The stages run through GraphCache (cuda_graphs=True): one graph per bucket.
"""
from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from vla_ros.config.perception import PerceptionConfig
from vla_ros.models.graphs import GraphCache
from vla_ros.perception import torch_ops
from vla_ros.perception.encoder import VisionEncoder
from vla_ros.perception.pipeline import PerceptionPipeline, PerceptionResult
from vla_ros.perception.relevance import MIN_SATURATION, MIN_VALUE, _hue_table, colour_relevance

LOG = logging.getLogger(__name__)


def bucket_up(count: int, total: int, fractions: Sequence[float]) -> int:
    """Smallest ceil(f * total) >= count over the bucket fractions (count itself with no buckets)."""
    if not fractions:
        return count
    sizes = sorted({min(total, max(1, int(math.ceil(f * total)))) for f in fractions} | {total})
    for size in sizes:
        if size >= count:
            return size
    return total


class DeviceFeatureCache:
    """Per-position pixels / features / per-layer keys|values (one [L, N+1, 2D] tensor, so the context
    gather and the cache scatter are one kernel each) on the device; row N is a trash row that padded
    recompute slots scatter into."""

    def __init__(self, n: int, num_layers: int, hidden: int, patch_dim: int, device, dtype):
        self.n = n
        self.pixels = torch.zeros(n + 1, patch_dim, device=device, dtype=torch.float32)
        self.valid = torch.zeros(n + 1, device=device, dtype=torch.bool)
        self.features = torch.zeros(n + 1, hidden, device=device, dtype=dtype)
        self.kv = torch.zeros(num_layers, n + 1, 2 * hidden, device=device, dtype=dtype)
        self.keys, self.values = self.kv[..., :hidden], self.kv[..., hidden:]
        self.any_valid = False            # host-side mirror of valid.any(): no sync to read it

    def invalidate(self) -> None:
        with torch.inference_mode():          # the cache tensors are inference tensors
            self.valid.zero_()
        self.any_valid = False


class DevicePerceptionPipeline(PerceptionPipeline):
    compile_backend = 'inductor'      # (tests: 'aot_eager', the same tracing without a C++/Triton compiler)

    def __init__(self, encoder: VisionEncoder, cfg: Optional[PerceptionConfig] = None):
        super().__init__(encoder, cfg)
        cfg = self.cfg
        self.device = encoder.device
        self.graphs = GraphCache('perception', enabled=cfg.cuda_graphs and self.device.type == 'cuda')
        if self.device.type == 'cuda':
            encoder.fuse_qkv()            # one q/k/v matmul per layer (same weights, views)
        self.staggered = cfg.reuse_enabled and cfg.refresh == 'staggered' and cfg.keyframe_interval > 0
        self._phase = torch.zeros(1, dtype=torch.long, device=self.device)
        self.cache: Optional[DeviceFeatureCache] = None
        self.frames_since_keyframe = 0
        s = encoder.image_size
        pin = cfg.pinned_upload and self.device.type == 'cuda'
        self._host_img = torch.empty((s, s, 3), dtype=torch.uint8, pin_memory=pin)
        self._host_rel = torch.empty(encoder.num_patches, dtype=torch.float32, pin_memory=pin)
        self._mean = torch.tensor(encoder._mean.reshape(3), device=self.device, dtype=torch.float32)
        self._std = torch.tensor(encoder._std.reshape(3), device=self.device, dtype=torch.float32)
        self.last_plan_counts = (0, 0)    # (recomputed, reused) of the latest frame
        self.last_device_tokens: Optional[torch.Tensor] = None
        self.last_device_kept: Optional[torch.Tensor] = None
        self.syncs_last_frame = 0
        self._force_recompute: Optional[int] = None
        self.profile: Optional[Dict[str, list]] = None   # set to {} to time each stage (adds syncs)
        self._mark_t = 0.0
        # Colour relevance on the device (inside the selection graph) where the host does not need it
        # to pick the graph: every strategy but 'query', fixed budget.
        self.device_relevance = cfg.device_relevance and cfg.pruning != 'query' and not cfg.adaptive_budget
        self._hue_dev: Optional[torch.Tensor] = None
        self._zero_rel = torch.zeros(encoder.num_patches, device=self.device)
        # Speculative bucket: selection + encoder (+ the tokens to publish) as ONE graph sized by the
        # recent recompute counts; the count is checked after the frame's one sync (overflow: rerun).
        self.speculate = cfg.speculative_bucket and cfg.reuse_enabled and cfg.static_shapes
        self._recent_counts: deque = deque(maxlen=3)
        self._spec_next: Optional[int] = None      # precapture: force the speculative bucket
        self.spec_overflows = 0
        # torch.compile'd encoder layers inside the captured graphs (the encoder keeps one CompiledFn).
        self.compiled = bool(cfg.compile_layers) and encoder.compile_layers(self.compile_backend)

    def set_instruction(self, text: str) -> None:
        super().set_instruction(text)
        self._text_query_dev = None if self._text_query is None else self._text_query.to(self.device)
        self._hue_dev = (torch.from_numpy(_hue_table(tuple(self._colours)).copy()).to(self.device)
                         if self._colours else None)

    def reset(self) -> None:
        super().reset()
        if self.cache is not None:
            self.cache.invalidate()
        self.frames_since_keyframe = 0
        self._recent_counts.clear()

    # ------------------------------------------------------------------ stages (fixed shapes per key)
    def _embed_and_score(self, image, relevance, use_attention: bool, use_text: bool):
        enc = self.encoder
        x = (torch_ops.div255(image.to(torch.float32)) - self._mean) / self._std
        embeddings = enc.embed(x.permute(2, 0, 1).unsqueeze(0).to(enc.dtype))
        attention = None
        if use_attention:
            query = self._text_query_dev if use_text else None
            attention = enc.attention_scores_t(embeddings, query)
        return embeddings, attention

    def _select(self, image, relevance, phase, budget: int, flags: tuple):
        has_rel, use_attention, use_text, reuse, keyframe, dev_rel = flags
        cfg, enc = self.cfg, self.encoder
        rel_any = None
        if dev_rel:      # colour relevance from the uploaded image, on the device (same values as the host)
            rel = torch_ops.colour_relevance(image, enc.grid_hw, self._hue_dev, MIN_SATURATION, MIN_VALUE)
            rel_any = rel.max() > 0
        else:
            rel = relevance if has_rel else None
        embeddings, attention = self._embed_and_score(image, rel, use_attention, use_text)
        if cfg.pruning == 'none':
            kept = torch.arange(enc.num_patches, device=self.device)
        else:
            # An all-zero relevance adds exactly 0 to the spatial-coverage saliency, as none does.
            kept = torch_ops.select_tokens(cfg.pruning, budget, enc.grid_hw, attention, rel,
                                           cfg.coverage_salient_fraction, device=self.device)
        out = dict(embeddings=embeddings, kept=kept)
        if dev_rel:
            out['relevance'] = rel
        if reuse:
            pixels = torch_ops.patchify(image, enc.grid_hw, enc.patch_size)
            out['pixels'] = pixels
            if keyframe:
                static = torch.zeros(kept.shape[0], dtype=torch.bool, device=self.device)
            else:
                c = self.cache
                if dev_rel:
                    scores = torch.where(rel_any, rel, attention) if attention is not None else rel
                else:
                    scores = rel if rel is not None else attention
                static = torch_ops.reuse_static_mask(kept, pixels, c.pixels, c.valid, cfg.reuse_similarity,
                                                     scores, cfg.task_relevant_ratio)
                if self.staggered:       # this frame's slice of positions is refreshed
                    static = static & (torch.remainder(kept, cfg.keyframe_interval) != phase)
            out['static'] = static
            out['count'] = (~static).sum()
            # Positions to recompute first (ascending grid order within each group).
            out['order'] = torch_ops.recompute_first(static)
        return out

    def _encode_subset(self, embeddings, kept, pixels, static, order, count, r_bucket: int, with_context: bool,
                       ok=None):
        """Recompute `r_bucket` slots (the first `count` real), scatter into the cache, gather kept tokens.
        Keys = [own rows, kept context rows, padding to a multiple of 16 (aligned mask rows for the
        fused attention kernels)]; padding, recomputed-context and padded own rows are masked out.
        `ok` (device bool, speculative bucket): False = count > r_bucket, every write goes to the trash
        row so the cache is untouched and the frame can be rerun at the right bucket."""
        enc, c = self.encoder, self.cache
        slots = order[:r_bucket]
        real = torch.arange(r_bucket, device=self.device) < count
        positions = kept[slots]
        write = real if ok is None else real & ok
        rows = torch.where(write, positions, torch.full_like(positions, c.n))
        hidden = embeddings[positions]
        if with_context:
            k = kept.shape[0]
            pad = (-(r_bucket + k)) % 16
            context = torch.cat([kept, torch.full((pad,), c.n, dtype=kept.dtype, device=self.device)])
            key_ok = torch.cat([real, static, torch.zeros(pad, dtype=torch.bool, device=self.device)])
            bias = torch.zeros(key_ok.shape, dtype=enc.dtype, device=self.device).masked_fill(~key_ok, -math.inf)
            feats, kv = enc.forward_kv(hidden, c.kv[:, context], bias, compiled=self.compiled)
        else:
            feats, kv = enc.forward_kv(hidden, compiled=self.compiled)
        c.features.index_copy_(0, rows, feats)
        c.kv.index_copy_(1, rows, kv)
        c.pixels.index_copy_(0, rows, pixels[positions])
        c.valid.index_fill_(0, rows, True)
        return c.features[kept]

    @staticmethod
    def _publish(tokens) -> Dict[str, torch.Tensor]:
        """What the frame publishes, computed on the device: float32 tokens and the unit scene embedding."""
        tokens_f = tokens.float()
        mean = tokens_f.mean(dim=0)
        return dict(tokens=tokens, tokens_f=tokens_f, scene=mean / (torch.linalg.vector_norm(mean) + 1e-12))

    def _encode_plain(self, embeddings, kept):
        return self._publish(self.encoder.forward_kv(embeddings[kept], compiled=self.compiled)[0])

    def _select_encode(self, image, relevance, phase, budget: int, flags: tuple, r_bucket: int):
        """Speculative frame: selection + encoder at `r_bucket` + publish values, one graph."""
        sel = self._select(image, relevance, phase, budget, flags)
        ok = sel['count'] <= r_bucket
        tokens = self._encode_subset(sel['embeddings'], sel['kept'], sel['pixels'], sel['static'], sel['order'],
                                     sel['count'], r_bucket=r_bucket, with_context=True, ok=ok)
        out = dict(sel, ok=ok)
        out.update(self._publish(tokens))
        return out

    def _run_reuse(self, sel, count, r_bucket: int, with_ctx: bool):
        return self.graphs.run(
            ('reuse', int(sel['kept'].shape[0]), r_bucket, with_ctx),
            lambda **kw: self._publish(self._encode_subset(**kw, r_bucket=r_bucket, with_context=with_ctx)),
            dict({name: sel[name] for name in ('embeddings', 'kept', 'pixels', 'static', 'order')}, count=count))

    # ------------------------------------------------------------------ per frame
    def process(self, rgb: np.ndarray) -> PerceptionResult:
        cfg, enc = self.cfg, self.encoder
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0 or rgb.dtype != np.uint8:
            raise ValueError(f'expected an HxWx3 uint8 RGB image, got {rgb.dtype} {rgb.shape}')
        start = time.perf_counter()
        self._mark_t = start
        syncs = 0
        grid = enc.grid_hw
        n = grid[0] * grid[1]
        resized = enc.resize(rgb)
        dev_rel = self.device_relevance and self._hue_dev is not None
        relevance_np = None
        if not dev_rel:
            relevance_np = colour_relevance(resized, grid, self._colours)
            if relevance_np is not None and relevance_np.max() <= 0:
                relevance_np = None
        self._host_img.numpy()[...] = resized
        image = self._host_img.to(self.device, non_blocking=True)
        has_rel = relevance_np is not None
        if has_rel:
            self._host_rel.numpy()[...] = relevance_np
            relevance = self._host_rel.to(self.device, non_blocking=True)
        else:
            relevance = self._zero_rel
        use_attention = cfg.pruning in ('attention_topk', 'spatial_coverage') or cfg.adaptive_budget \
            or (cfg.pruning == 'query' and not has_rel) or cfg.reuse_enabled
        use_text = cfg.pruning == 'query' and not has_rel and self._text_query is not None
        self._mark('host_pre')

        with torch.inference_mode():
            if cfg.pruning == 'none':
                budget = n
            else:
                budget = torch_ops.budget_cap(n, cfg.keep_ratio)
                if cfg.adaptive_budget:
                    _, attention = self._embed_and_score(image, relevance, True, use_text)
                    scores = relevance if (cfg.pruning == 'query' and has_rel) else attention
                    budget = int(torch_ops.adaptive_budget(scores, budget, cfg.adaptive_mass, cfg.min_tokens))
                    syncs += 1
                    # A fixed budget is already one shape; an adaptive one is rounded up to a bucket.
                    budget = bucket_up(budget, n, cfg.keep_buckets if cfg.static_shapes else ())
            reuse = cfg.reuse_enabled
            keyframe = True
            if reuse:
                if self.cache is None:
                    self.cache = DeviceFeatureCache(n, enc.num_layers, enc.hidden_size,
                                                    enc.patch_size * enc.patch_size * 3, self.device, enc.dtype)
                keyframe = (not self.cache.any_valid or (cfg.keyframe_interval > 0 and not self.staggered and
                                                         self.frames_since_keyframe >= cfg.keyframe_interval))
                if keyframe:
                    self.cache.invalidate()
                    self.frames_since_keyframe = 1
                else:
                    self.frames_since_keyframe += 1
                    if self.staggered:   # same phase rule as TemporalReuse.refresh_phase
                        self._phase.fill_((self.frames_since_keyframe - 1) % cfg.keyframe_interval)
            flags = (has_rel, use_attention, use_text, reuse, keyframe, dev_rel)
            inputs = dict(image=image, relevance=relevance, phase=self._phase)
            k = min(budget, n)
            spec = self.speculate and reuse and not keyframe and self._force_recompute is None
            if spec:
                r_spec = self._spec_next if self._spec_next is not None else self._predict_bucket(k)
                out = self.graphs.run(('select+encode', budget, r_spec) + flags,
                                      lambda **kw: self._select_encode(**kw, budget=budget, flags=flags,
                                                                       r_bucket=r_spec), inputs)
                sel = out
                self._mark('select+encode')
            else:
                sel = self.graphs.run(('select', budget) + flags,
                                      lambda image, relevance, phase: self._select(image, relevance, phase,
                                                                                   budget, flags), inputs)
                k = int(sel['kept'].shape[0])
                self._mark('select')
                if not reuse:
                    out = self.graphs.run(('encode', k), self._encode_plain,
                                          dict(embeddings=sel['embeddings'], kept=sel['kept']))
                    recomputed = k
                else:
                    recomputed = k if keyframe else int(sel['count'])
                    syncs += 0 if keyframe else 1
                    count = sel['count']
                    if self._force_recompute is not None and not keyframe:
                        recomputed = max(recomputed, min(self._force_recompute, k))
                        count = torch.full_like(count, recomputed)
                    if recomputed == 0:
                        out = self._publish(self.cache.features[sel['kept']])
                    else:
                        r_bucket = k if keyframe else bucket_up(recomputed, k, cfg.recompute_buckets
                                                                if cfg.static_shapes else ())
                        out = self._run_reuse(sel, count, r_bucket, not keyframe)
                        self.cache.any_valid = True
                    if not keyframe:
                        self._recent_counts.append(recomputed)
                self._mark('encode')
            # The one copy to publish (tokens, kept indices, scene, and on a speculative frame the
            # recompute count): into fresh pinned buffers from torch's caching host allocator, so the
            # returned arrays are views (no host copy) that stay valid while they live. One sync.
            host = self._copy_out(out, sel, spec, dev_rel)
            syncs += 1
            if spec:
                recomputed = int(host['count'][0])
                self._recent_counts.append(recomputed)
                if not bool(host['count'][1]):          # overflow: rerun the encoder at the right bucket
                    self.spec_overflows += 1
                    r_bucket = bucket_up(recomputed, k, cfg.recompute_buckets)
                    LOG.debug('speculative bucket %d < %d recomputed: rerun at %d', r_spec, recomputed, r_bucket)
                    out = self._run_reuse(sel, sel['count'], r_bucket, True)
                    host = self._copy_out(out, sel, False, False, host)
                    syncs += 1
                self.cache.any_valid = True
            self.last_device_tokens = out['tokens']
            self.last_device_kept = sel['kept']
            self._mark('copy_out')
            self.last_plan_counts = (recomputed, k - recomputed)
        if dev_rel:
            relevance_np = host['relevance'].numpy()
            if relevance_np.max() <= 0:
                relevance_np = None
        self.syncs_last_frame = syncs
        self.frames += 1
        self._mark('host_post')
        return PerceptionResult(tokens=host['tokens'].numpy(), kept_indices=host['kept'].numpy().astype(np.int32),
                                grid_hw=grid, keep_ratio=k / n,
                                reuse_ratio=(k - recomputed) / k if (reuse and k) else 0.0,
                                is_keyframe=keyframe, compute_ms=(time.perf_counter() - start) * 1e3,
                                scene_embedding=host['scene'].numpy(), relevance=relevance_np)

    def _predict_bucket(self, k: int) -> int:
        """Recompute bucket for a speculative frame: the bucket of the largest of the last few counts plus
        10% (an overflow reruns the whole encoder; a bigger bucket costs little at batch 1), all of k with
        no history yet."""
        if not self._recent_counts:
            return k
        return bucket_up(int(math.ceil(1.1 * max(self._recent_counts))), k, self.cfg.recompute_buckets)

    def _copy_out(self, out, sel, spec: bool, dev_rel: bool, host=None) -> Dict[str, torch.Tensor]:
        pin = self.device.type == 'cuda'
        host = dict(host or {})

        def fetch(name, src, dtype=None):
            dst = torch.empty(src.shape, dtype=dtype or src.dtype, pin_memory=pin)
            dst.copy_(src, non_blocking=True)
            host[name] = dst

        fetch('tokens', out['tokens_f'])
        fetch('scene', out['scene'])
        if 'kept' not in host:
            fetch('kept', sel['kept'])
        if dev_rel:
            fetch('relevance', sel['relevance'])
        if spec:
            fetch('count', torch.stack([sel['count'], sel['ok'].to(sel['count'].dtype)]))
        if self.device.type == 'cuda':
            torch.cuda.current_stream(self.device).synchronize()
        return host

    def _mark(self, stage: str) -> None:
        if self.profile is None:
            return
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.profile.setdefault(stage, []).append((now - self._mark_t) * 1e3)
        self._mark_t = now

    def precapture(self, rgb: np.ndarray) -> int:
        """Capture every graph a run of this config can need (keyframe, and each recompute bucket on a
        reuse frame) on `rgb`, so no capture lands mid-run; then reset. Returns the graphs captured."""
        cfg = self.cfg
        self.process(rgb)
        if cfg.reuse_enabled:
            k = int(self.last_device_tokens.shape[0])
            sizes = sorted({bucket_up(max(1, int(math.ceil(f * k))), k, cfg.recompute_buckets)
                            for f in cfg.recompute_buckets}) if cfg.static_shapes else []
            for size in [0] + sizes:
                self._force_recompute = size
                try:
                    self.process(rgb)
                finally:
                    self._force_recompute = None
            if self.speculate:
                for size in sizes:
                    self._spec_next = size
                    try:
                        self.process(rgb)
                    finally:
                        self._spec_next = None
        self.reset()
        return self.graphs.captures


def use_device_ops(cfg: PerceptionConfig) -> bool:
    return cfg.ops == 'torch' or (cfg.ops == 'auto' and cfg.device == 'cuda')


def make_pipeline(encoder: VisionEncoder, cfg: Optional[PerceptionConfig] = None) -> PerceptionPipeline:
    """The device pipeline where the config asks for it (ops='torch', or 'auto' on cuda), else numpy."""
    cfg = cfg or PerceptionConfig()
    if use_device_ops(cfg):
        return DevicePerceptionPipeline(encoder, cfg)
    return PerceptionPipeline(encoder, cfg)

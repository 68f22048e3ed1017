"""Vision encoder wrapper that can run the transformer on a SUBSET of patch positions.

Where pruning and reuse happen (the design other modules rely on):

* `embed()` = patch embedding + position embedding for all N grid positions (one conv, cheap).
  Position embeddings are added here, BEFORE any token is dropped, so every kept token still
  carries its position (and `kept_indices` + grid size travel with the tokens as well).
* `attention_scores()` scores every position with the FIRST layer's own query/key projections
  (mean attention received, FastV-style, or attention from a text-query vector). It costs about
  one fifth of a layer, so pruning happens before layer 0 and every layer runs on kept tokens only
  (pruning "after layer k" would make those k layers run on all N tokens each frame).
* `forward_subset()` runs all layers for the positions being recomputed, attending to the cached
  per-layer keys/values of the positions being reused (VLA-Cache-style token reuse). With no
  context it is exactly the HF tower applied to the given tokens (tested against `model(...)`).

Supported towers: SigLIP-style layouts (`embeddings.patch_embedding/position_embedding`,
`encoder.layers[*].{layer_norm1,self_attn.{q,k,v,out}_proj,layer_norm2,mlp}`, `post_layernorm`):
SigLIP vision models and the vision towers of Idefics3 / SmolVLM / PaliGemma-style VLMs.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F


class EncoderLoadError(RuntimeError):
    pass


@dataclass
class SubsetOutput:
    features: torch.Tensor   # [R, D] final (post-layernorm) features of the computed positions
    keys: torch.Tensor       # [L, R, D] per-layer keys, for later reuse as attention context
    values: torch.Tensor     # [L, R, D]


def _find_vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    for module in model.modules():
        emb = getattr(module, 'embeddings', None)
        enc = getattr(module, 'encoder', None)
        if (emb is not None and hasattr(emb, 'patch_embedding') and hasattr(emb, 'position_embedding')
                and enc is not None and hasattr(enc, 'layers')):
            return module
    raise EncoderLoadError(f'no SigLIP-style vision tower found in {type(model).__name__}')


def siglip_layer(h, context_kv, bias, ln1_w, ln1_b, qkv_w, qkv_b, o_w, o_b, ln2_w, ln2_b, fc1_w, fc1_b, fc2_w,
                 fc2_b, eps1: float, eps2: float, heads: int, tanh: bool):
    """One SigLIP encoder layer over rows `h` [R, D] (fused q/k/v weights), attending to its own rows
    and `context_kv` [C, 2D] under `bias`; returns (h, own keys|values [R, 2D]). A plain function of
    tensors, so one torch.compile serves every layer (VisionEncoder.forward_kv(compiled=...))."""
    d = h.shape[-1]
    x = F.layer_norm(h, (d,), ln1_w, ln1_b, eps1)
    qkv = F.linear(x, qkv_w, qkv_b)
    q, kv = qkv[:, :d], qkv[:, d:]
    kv_all = kv if context_kv is None else torch.cat([kv, context_kv], dim=0)
    hd = d // heads

    def split(t):
        return t.reshape(t.shape[0], heads, hd).transpose(0, 1).unsqueeze(0)

    out = F.scaled_dot_product_attention(split(q), split(kv_all[:, :d]), split(kv_all[:, d:]), attn_mask=bias)
    out = out[0].transpose(0, 1).reshape(h.shape[0], d)
    h = h + F.linear(out, o_w, o_b)
    x = F.linear(F.layer_norm(h, (d,), ln2_w, ln2_b, eps2), fc1_w, fc1_b)
    x = F.gelu(x, approximate='tanh' if tanh else 'none')
    return h + F.linear(x, fc2_w, fc2_b), kv


class VisionEncoder:
    def __init__(self, tower: torch.nn.Module, image_mean=(0.5,) * 3, image_std=(0.5,) * 3,
                 device: str = 'cpu', name: str = 'vision', dtype: torch.dtype = torch.float32):
        self.tower = tower.to(device=device, dtype=dtype).eval()
        self.device = torch.device(device)
        self.name = name
        cfg = tower.config
        self._image_size = int(cfg.image_size)
        self.patch_size = int(cfg.patch_size)
        self._hidden = int(cfg.hidden_size)
        self.layers = list(tower.encoder.layers)
        self.num_heads = int(self.layers[0].self_attn.num_heads)
        self.dtype = tower.embeddings.patch_embedding.weight.dtype
        self._mean = np.asarray(image_mean, np.float32).reshape(1, 1, 3)
        self._std = np.asarray(image_std, np.float32).reshape(1, 1, 3)
        self._post_ln = getattr(tower, 'post_layernorm', None)
        self._fused = None                 # per-layer (qkv weight, bias) after fuse_qkv()
        self._compiled_layer = None        # CompiledFn of siglip_layer (compile_layers())
        self._layer_args = None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str, device: str = 'cpu', dtype: torch.dtype = torch.float32) -> 'VisionEncoder':
        """Load a vision model (or a full VLM / dual-encoder checkpoint: its vision tower) from `path`."""
        cfg_file = os.path.join(path or '', 'config.json')
        if not path or not os.path.isfile(cfg_file):
            raise EncoderLoadError(f'vision encoder path {path!r} has no config.json (save_pretrained layout)')
        from transformers import AutoConfig, AutoModel
        config = AutoConfig.from_pretrained(path)
        try:
            model = AutoModel.from_pretrained(path, dtype=torch.float32)
        except ValueError:  # VLMs that only register a conditional-generation class
            from transformers import AutoModelForImageTextToText
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
        tower = _find_vision_tower(model)
        mean, std = (0.5,) * 3, (0.5,) * 3
        proc_file = os.path.join(path, 'preprocessor_config.json')
        if os.path.isfile(proc_file):
            with open(proc_file) as fh:
                proc = json.load(fh)
            mean, std = proc.get('image_mean', mean), proc.get('image_std', std)
        return cls(tower, mean, std, device=device, name=str(config.model_type), dtype=dtype)

    # ------------------------------------------------------------------ geometry
    @property
    def image_size(self) -> int:
        return self._image_size

    @property
    def hidden_size(self) -> int:
        return self._hidden

    @property
    def grid_hw(self) -> Tuple[int, int]:
        g = self._image_size // self.patch_size
        return g, g

    @property
    def num_patches(self) -> int:
        h, w = self.grid_hw
        return h * w

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    # ------------------------------------------------------------------ input
    def resize(self, rgb: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> image_size x image_size x 3 uint8 (what the encoder and the reuse test see)."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
            raise ValueError(f'expected an HxWx3 image, got shape {rgb.shape}')
        s = self._image_size
        if rgb.shape[:2] == (s, s):
            return np.ascontiguousarray(rgb, dtype=np.uint8)
        import cv2   # only when the frame needs resizing (a bare GPU image may lack OpenCV)
        interp = cv2.INTER_AREA if rgb.shape[0] > s else cv2.INTER_LINEAR
        return cv2.resize(np.ascontiguousarray(rgb, dtype=np.uint8), (s, s), interpolation=interp)

    def preprocess(self, rgb: np.ndarray) -> torch.Tensor:
        """HxWx3 uint8 RGB -> normalised [1, 3, S, S] tensor on the encoder device."""
        img = self.resize(rgb).astype(np.float32) / 255.0
        img = (img - self._mean) / self._std
        return torch.from_numpy(img.transpose(2, 0, 1)).unsqueeze(0).to(self.device, self.dtype)

    def patchify(self, resized_rgb: np.ndarray) -> np.ndarray:
        """Resized uint8 image -> [N, p*p*3] float32 in [0, 1], row-major over the patch grid."""
        h, w = self.grid_hw
        p = self.patch_size
        # Pixels past the last full patch (image_size not a multiple of patch_size) are ignored, as the conv does.
        x = resized_rgb[:h * p, :w * p].astype(np.float32).reshape(h, p, w, p, 3) / 255.0
        return x.transpose(0, 2, 1, 3, 4).reshape(h * w, p * p * 3)

    # ------------------------------------------------------------------ model pieces
    @torch.inference_mode()
    def embed(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[1,3,S,S] -> [N, D] patch embeddings with position embeddings already added."""
        emb = self.tower.embeddings
        patches = emb.patch_embedding(pixel_values).flatten(2).transpose(1, 2)[0]
        positions = torch.arange(patches.shape[0], device=patches.device)
        return patches + emb.position_embedding(positions)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], self.num_heads, -1).transpose(0, 1)   # [H, T, hd]

    @torch.inference_mode()
    def attention_scores(self, embeddings: torch.Tensor, query: Optional[torch.Tensor] = None) -> np.ndarray:
        """Layer-0 attention each position receives: mean over heads and over all queries
        (no CLS in SigLIP), or from one query vector in hidden space (text-query-driven). Sums to 1."""
        return self.attention_scores_t(embeddings, query).cpu().numpy()

    @torch.inference_mode()
    def forward_subset(self, hidden: torch.Tensor, context_keys: Optional[torch.Tensor] = None,
                       context_values: Optional[torch.Tensor] = None) -> SubsetOutput:
        """Run every layer on `hidden` [R, D]; tokens also attend to context keys/values [L, C, D]
        (cached from earlier frames) without those context tokens being recomputed."""
        context = None
        if context_keys is not None and context_keys.shape[1] > 0:
            context = torch.cat([context_keys, context_values], dim=-1)
        feats, kv = self.forward_kv(hidden, context)
        d = self._hidden
        return SubsetOutput(feats, kv[..., :d], kv[..., d:])

    def fuse_qkv(self) -> None:
        """One q/k/v matmul per layer from now on (the modules' weights become views into the stacked
        tensors: same values, no copy). For the GPU path, where each launch counts."""
        from vla_ros.models.fused import fuse_linears
        self._fused = [fuse_linears([l.self_attn.q_proj, l.self_attn.k_proj, l.self_attn.v_proj])
                       for l in self.layers]

    def compile_layers(self, backend: str = 'inductor') -> bool:
        """Prepare `forward_kv(compiled=True)`: every layer through one torch.compile'd `siglip_layer`
        (fused q/k/v; layer norms, residuals, GELU fused by inductor). False (logged) where the layers
        do not fit that function (activation other than GELU / tanh-GELU, no biases)."""
        import logging
        from vla_ros.models.graphs import CompiledFn
        if self._compiled_layer is not None:
            return not self._compiled_layer.failed
        if self._fused is None:
            self.fuse_qkv()
        probe = torch.linspace(-4, 4, 101, device=self.device, dtype=torch.float32)
        args = []
        tanh = None
        for li, layer in enumerate(self.layers):
            attn, mlp = layer.self_attn, layer.mlp
            act = mlp.activation_fn(probe)
            kinds = [t for t, ref in ((True, F.gelu(probe, approximate='tanh')), (False, F.gelu(probe)))
                     if torch.allclose(act, ref, atol=1e-6)]
            biases = (self._fused[li][1], attn.out_proj.bias, mlp.fc1.bias, mlp.fc2.bias,
                      layer.layer_norm1.bias, layer.layer_norm2.bias)
            if not kinds or any(b is None for b in biases) or (tanh is not None and kinds[0] != tanh):
                logging.getLogger(__name__).warning('%s: layers do not fit siglip_layer; compile_layers off', self.name)
                return False
            tanh = kinds[0]
            args.append((layer.layer_norm1.weight, layer.layer_norm1.bias, self._fused[li][0], self._fused[li][1],
                         attn.out_proj.weight, attn.out_proj.bias, layer.layer_norm2.weight, layer.layer_norm2.bias,
                         mlp.fc1.weight, mlp.fc1.bias, mlp.fc2.weight, mlp.fc2.bias,
                         float(layer.layer_norm1.eps), float(layer.layer_norm2.eps), self.num_heads, tanh))
        self._layer_args = args
        self._compiled_layer = CompiledFn(siglip_layer, f'{self.name} encoder layer', backend)
        return not self._compiled_layer.failed

    @torch.inference_mode()
    def forward_kv(self, hidden: torch.Tensor, context_kv: Optional[torch.Tensor] = None,
                   attn_bias: Optional[torch.Tensor] = None, compiled: bool = False):
        """The layer loop every subset forward shares. `hidden` [R, D]; `context_kv` [L, C, 2D]
        (per-layer keys | values of tokens that are attended to but not recomputed); `attn_bias`
        [R + C] additive (0 or -inf) over the keys [own rows, context rows], or None.
        Returns (final features [R, D], own keys | values [L, R, 2D])."""
        kv_rows: List[torch.Tensor] = []
        d = self._hidden
        bias = None if attn_bias is None else attn_bias.to(hidden.dtype).view(1, 1, 1, -1)
        fused = self._fused
        h = hidden
        if compiled and self._compiled_layer is not None:
            for li, args in enumerate(self._layer_args):
                h, kv = self._compiled_layer(h, None if context_kv is None else context_kv[li], bias, *args)
                kv_rows.append(kv)
            feats = self._post_ln(h) if self._post_ln is not None else h
            return feats, torch.stack(kv_rows)
        for li, layer in enumerate(self.layers):
            attn = layer.self_attn
            x = layer.layer_norm1(h)
            if fused is not None:
                qkv = F.linear(x, *fused[li])
                q, kv = qkv[:, :d], qkv[:, d:]
            else:
                q, kv = attn.q_proj(x), torch.cat([attn.k_proj(x), attn.v_proj(x)], dim=-1)
            kv_rows.append(kv)
            if context_kv is not None:
                kv = torch.cat([kv, context_kv[li]], dim=0)
            out = F.scaled_dot_product_attention(self._heads(q).unsqueeze(0), self._heads(kv[:, :d]).unsqueeze(0),
                                                 self._heads(kv[:, d:]).unsqueeze(0), attn_mask=bias)
            out = out[0].transpose(0, 1).reshape(h.shape[0], -1)
            h = h + attn.out_proj(out)
            h = h + layer.mlp(layer.layer_norm2(h))
        feats = self._post_ln(h) if self._post_ln is not None else h
        return feats, torch.stack(kv_rows)

    @torch.inference_mode()
    def attention_scores_t(self, embeddings: torch.Tensor, query: Optional[torch.Tensor] = None) -> torch.Tensor:
        """attention_scores() as a float32 tensor on the encoder device (no host copy); both paths use it."""
        layer = self.layers[0]
        attn = layer.self_attn
        x = layer.layer_norm1(embeddings)
        k = self._heads(attn.k_proj(x))
        q_in = x if query is None else layer.layer_norm1(query.to(x).view(1, -1))
        q = self._heads(attn.q_proj(q_in))
        weights = torch.softmax(q @ k.transpose(1, 2) * (k.shape[-1] ** -0.5), dim=-1)
        scores = weights.mean(dim=(0, 1))
        return (scores / scores.sum()).float()

    @torch.inference_mode()
    def forward_masked(self, hidden: torch.Tensor, context_keys: torch.Tensor, context_values: torch.Tensor,
                       key_mask: torch.Tensor) -> SubsetOutput:
        """forward_subset() with FIXED shapes: `hidden` [R, D] (R a bucket; padding rows allowed),
        context [L, C, D] (C a bucket), `key_mask` [R + C] bool, True = this key takes part (padding
        rows and context rows being recomputed are False). Masked keys get exactly zero weight, so on
        the real rows this equals forward_subset(real hidden, real context)."""
        bias = torch.zeros(key_mask.shape, dtype=hidden.dtype, device=hidden.device).masked_fill(~key_mask, -math.inf)
        feats, kv = self.forward_kv(hidden, torch.cat([context_keys, context_values], dim=-1), bias)
        d = self._hidden
        return SubsetOutput(feats, kv[..., :d], kv[..., d:])

    @torch.inference_mode()
    def encode(self, rgb: np.ndarray) -> torch.Tensor:
        """Reference path: all tokens through all layers -> [N, D] (no pruning, no reuse)."""
        return self.forward_subset(self.embed(self.preprocess(rgb))).features

"""Planner prefill that keeps the LM's keys/values across frames (VLA-Cache-style KV reuse).

Each visual token lives in a FIXED cache slot: its patch index p (position id p), the instruction
in slots N..N+T-1 (positions N+t), plan decode in the slots after it; pruned patches' slots are
masked out. On a new frame only the visual tokens whose features changed (perception recomputed
them, or the slot holds nothing yet) and the instruction tokens are run through the LM, written
into their slots; every other kept slot keeps last frame's keys/values. With nothing reused
(`reuse=False`, or every token changed) this is exactly a causal prefill of [kept visual tokens in
grid order, instruction] at those positions (tested against the transformers model).

The decoder forward is our own over the transformers module's weights (Qwen2 / Llama layouts:
`input_layernorm`, `self_attn.{q,k,v,o}_proj`, `post_attention_layernorm`, `mlp.{gate,up,down}_proj`),
with q/k/v and gate/up each one matmul (the module's weights become views into the fused tensors, so
the transformers model still works and no memory is duplicated), residuals fused into the output
matmuls, and one additive mask per frame shared by every layer: at batch 1 the cost is kernel
count, not arithmetic. Fixed shapes per (kept, recompute-bucket) key, so each runs as a CUDA graph;
the host reads one int per frame (the changed-token count, to pick the bucket).
`quantize='int8'`: the decoder matmuls read int8 weight-only copies (planning/int8.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from vla_ros.models.fused import fuse_linears
from vla_ros.models.graphs import GraphCache
from vla_ros.planning.int8 import Int8Weight, int8_linear
from vla_ros.planning.prefill import find_text_decoder, make_projector


def _bucket(count: int, total: int, fractions: Sequence[float]) -> int:
    if count <= 0:
        return 0
    sizes = sorted({min(total, max(1, int(math.ceil(f * total)))) for f in fractions} | {total})
    return next((s for s in sizes if s >= count), total)


def lm_layer_pre(h, ln1, qkv_w, qkv_b, cos, sin, eps: float, heads: int, kv_heads: int, head_dim: int):
    """RMSNorm, fused q/k/v matmul and RoPE of rows `h` [S, H] (cos/sin [S, hd] at their positions):
    q [1, heads, S, hd], k and v [kv_heads, S, hd]. A plain function of tensors: one torch.compile
    serves every layer."""
    s = h.shape[0]
    nq, nk = heads * head_dim, kv_heads * head_dim
    x = F.rms_norm(h, (h.shape[-1],), ln1, eps)
    qkv = F.linear(x, qkv_w, qkv_b)
    qk = qkv[:, :nq + nk].reshape(s, heads + kv_heads, head_dim)
    half = head_dim // 2
    qk = qk * cos[:, None] + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin[:, None]
    q = qk[:, :heads].transpose(0, 1).unsqueeze(0)
    k = qk[:, heads:].transpose(0, 1)
    v = qkv[:, nq + nk:].reshape(s, kv_heads, head_dim).transpose(0, 1)
    return q, k, v


def lm_layer_post(h, attn, o_w, o_b, ln2, gate_up_w, down_w, eps: float):
    """Output projection + residual, RMSNorm, SwiGLU MLP + residual; `attn` [1, heads, S, hd]."""
    s = h.shape[0]
    h = h + F.linear(attn[0].transpose(0, 1).reshape(s, -1), o_w, o_b)
    gate, up = F.linear(F.rms_norm(h, (h.shape[-1],), ln2, eps), gate_up_w).chunk(2, dim=-1)
    return h + F.linear(F.silu(gate) * up, down_w)


@dataclass
class _LayerWeights:
    ln1: torch.Tensor
    ln2: torch.Tensor
    qkv: torch.Tensor
    qkv_bias: Optional[torch.Tensor]
    o: torch.Tensor
    o_bias: Optional[torch.Tensor]
    gate_up: torch.Tensor
    down: torch.Tensor


_INT8 = {}


def _int8(weight: torch.Tensor) -> Int8Weight:
    """One int8 copy per weight tensor, shared by every SlotKVPrefill over the same model (the entry
    holds the weight too, so its storage, and with it the key, cannot be reused by another tensor)."""
    key = (weight.data_ptr(), tuple(weight.shape), str(weight.device))
    if key not in _INT8:
        _INT8[key] = (weight, Int8Weight(weight))
    return _INT8[key][1]


class SlotKVPrefill:
    def __init__(self, lm, instruction_ids: torch.Tensor, vis_dim: int, num_patches: int,
                 decode_tokens: int = 8, cuda_graphs: bool = True, reuse: bool = True,
                 recompute_buckets: Sequence[float] = (0.0625, 0.125, 0.25, 0.5, 1.0),
                 seed: int = 0, projector=None, quantize: str = 'none', speculate: bool = True,
                 compile_layers: str = 'none', prefix_ids: Optional[torch.Tensor] = None,
                 compact_positions: bool = False, query_embeds: Optional[torch.Tensor] = None,
                 capture_layer: Optional[int] = None, refresh_interval: int = 0):
        """Layout of the cache slots: [prefix text P | visual N | instruction T | decode | queries Q | trash].
        prefix_ids: static text before the visual tokens (computed once after each reset).
        compact_positions: the visual tokens are kept = 0..K-1 (in order) and everything after them sits
        at contiguous positions (P + K + t), as a prompt [prefix, K visual, instruction] is laid out;
        default: position = slot (each patch at its own position, the instruction after all N).
        query_embeds [Q, H]: extra rows after the instruction (e.g. a planner's action queries) whose
        hidden states after `capture_layer` (0 = embeddings .. L = final-normed output, as transformers'
        hidden_states) come back as 'query_hidden'; the plan decode never sees them.
        refresh_interval R > 0 (with reuse): each prefill also recomputes the visual tokens at grid
        indices p with p % R == prefill count % R, so no slot keeps keys/values older than R prefills."""
        if quantize not in ('none', 'int8'):
            raise ValueError(f"SlotKVPrefill: quantize must be 'none' or 'int8', not {quantize!r}")
        self.lm = lm.eval()
        param = next(lm.parameters())
        self.device, self.dtype = param.device, param.dtype
        base = find_text_decoder(lm)
        cfg = getattr(base, 'config', None) or lm.config          # (a VLM's text config)
        self.hidden = int(cfg.hidden_size)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, 'num_key_value_heads', None) or self.heads)
        self.head_dim = int(getattr(cfg, 'head_dim', None) or self.hidden // self.heads)
        self.eps = float(getattr(cfg, 'rms_norm_eps', 1e-6))
        self.layers: List[_LayerWeights] = []
        for layer in base.layers:
            at, mlp = layer.self_attn, layer.mlp
            qkv, qkv_b = fuse_linears([at.q_proj, at.k_proj, at.v_proj])
            gate_up, _ = fuse_linears([mlp.gate_proj, mlp.up_proj])
            self.layers.append(_LayerWeights(
                ln1=layer.input_layernorm.weight, ln2=layer.post_attention_layernorm.weight, qkv=qkv,
                qkv_bias=qkv_b, o=at.o_proj.weight, o_bias=at.o_proj.bias, gate_up=gate_up,
                down=mlp.down_proj.weight))
        # int8 weight-only copies of the decoder matmuls (the LM head stays bf16: one row per frame).
        self.int8 = None
        if quantize == 'int8':
            self.int8 = [dict(qkv=_int8(w.qkv), o=_int8(w.o), gate_up=_int8(w.gate_up), down=_int8(w.down))
                         for w in self.layers]
        self.final_norm = base.norm.weight
        self.lm_head = lm.get_output_embeddings().weight
        self.embed_tokens = lm.get_input_embeddings()
        self.projector = (projector or make_projector(self.hidden, vis_dim, seed)).to(self.device, self.dtype).eval()
        ids = torch.as_tensor(instruction_ids, dtype=torch.long, device=self.device).view(-1)
        with torch.inference_mode():
            self.instruction_embeds = self.embed_tokens(ids).detach()
        self.n = int(num_patches)
        self.num_text = int(ids.shape[0])
        self.decode_tokens = int(decode_tokens)
        with torch.inference_mode():
            pre = (torch.zeros(0, dtype=torch.long) if prefix_ids is None else
                   torch.as_tensor(prefix_ids, dtype=torch.long).view(-1)).to(self.device)
            self.prefix_embeds = self.embed_tokens(pre).detach()
        self.p = int(pre.shape[0])
        self.compact = bool(compact_positions)
        self.query_embeds = None if query_embeds is None else query_embeds.to(self.device, self.dtype)
        self.num_queries = 0 if query_embeds is None else int(query_embeds.shape[0])
        num_layers = len(self.layers)
        if capture_layer is not None and not -(num_layers + 1) <= int(capture_layer) <= num_layers:
            raise ValueError(f'capture_layer {capture_layer} out of range for {num_layers} layers')
        self.capture_layer = None if capture_layer is None else int(capture_layer) % (num_layers + 1)
        self.text_start = self.p + self.n                                   # first instruction slot
        self.decode_start = self.text_start + self.num_text
        self.query_start = self.decode_start + self.decode_tokens
        self._prefix_done = self.p == 0
        used = self.query_start + self.num_queries + 1                    # + one trash slot
        self.slots = int(math.ceil(used / 16) * 16)                       # mask rows aligned for SDPA kernels
        self.trash = self.slots - 1
        self.reuse = bool(reuse)
        self.recompute_buckets = tuple(recompute_buckets)
        # RoPE table over slot positions (the module's own inv_freq, so scaled variants match).
        rotary = base.rotary_emb
        inv_freq = rotary.inv_freq.to(self.device, torch.float32)
        pos = torch.arange(self.slots, device=self.device, dtype=torch.float32)
        freqs = torch.outer(pos, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        scaling = float(getattr(rotary, 'attention_scaling', 1.0))
        self.cos = (emb.cos() * scaling).to(self.dtype)
        self.sin = (emb.sin() * scaling).to(self.dtype)
        group = self.heads // self.kv_heads
        shape = (len(self.layers), self.kv_heads, group, self.slots, self.head_dim)
        # Keys/values stored per query head (written expanded), so one masked SDPA kernel serves GQA.
        self.k_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.v_cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.slot_features = torch.zeros(self.n + 1, vis_dim, device=self.device, dtype=self.dtype)
        self.slot_valid = torch.zeros(self.n + 1, dtype=torch.bool, device=self.device)
        self.key_valid = torch.zeros(self.slots, dtype=torch.bool, device=self.device)
        self.text_slots = torch.arange(self.text_start, self.decode_start, device=self.device)
        self.query_slots = torch.arange(self.query_start, self.query_start + self.num_queries, device=self.device)
        self.prefix_slots = torch.arange(self.p, device=self.device)
        self.slot_index = torch.arange(self.slots, device=self.device)
        self.graphs = GraphCache('kv_prefill', enabled=cuda_graphs and self.device.type == 'cuda')
        self.last_recomputed = 0
        # Speculative bucket: the change test and the prefill as ONE graph sized by the recent counts;
        # the count is read with the result (overflow: rerun at the right bucket, nothing was written).
        self.speculate = bool(speculate) and self.reuse
        self._recent: List[int] = []
        self._spec_next: Optional[int] = None
        self.spec_overflows = 0
        self.refresh_interval = int(refresh_interval)
        self._phase = torch.zeros((), dtype=torch.long, device=self.device)
        self._prefills = 0
        # compile_layers='inductor': each layer's pointwise work fused by torch.compile around the
        # matmuls (two compiled functions shared by every layer; cache writes and attention stay eager).
        self.compiled = None
        if compile_layers != 'none' and self.int8 is None:
            from vla_ros.models.graphs import CompiledFn
            self.compiled = (CompiledFn(lm_layer_pre, 'kv_prefill layer (pre)', compile_layers),
                             CompiledFn(lm_layer_post, 'kv_prefill layer (post)', compile_layers))

    def reset(self) -> None:
        with torch.inference_mode():
            self.slot_valid.zero_()
        self._recent = []
        self._prefills = 0
        self._prefix_done = self.p == 0

    def _shift(self, k: int) -> int:
        """Slot minus position for the slots after the visual ones (compact positions, k visual tokens)."""
        return self.n - k if self.compact else 0

    # ------------------------------------------------------------------ the decoder over given rows
    @staticmethod
    def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x [S, heads, hd] rotated by cos/sin [S, 1, hd] (gathered once per forward, not per layer)."""
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _decoder(self, h: torch.Tensor, slots: torch.Tensor, bias: torch.Tensor,
                 positions: Optional[torch.Tensor] = None, capture: Optional[list] = None) -> torch.Tensor:
        """Rows `h` [S, H] at cache `slots` [S] (position ids `positions`, default the slots): every
        layer writes its keys/values into the slots and attends over the whole cache under `bias`
        [1, 1, S, slots]. Returns [S, H]; with `capture` (a list) the rows entering layer
        `capture_layer` (after the last layer: the final-normed rows) are appended to it."""
        s = h.shape[0]
        nq, nk, hd = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.head_dim
        group = self.heads // self.kv_heads
        positions = slots if positions is None else positions
        grab = self.capture_layer if capture is not None else None
        if self.compiled is not None:
            pre, post = self.compiled
            cos, sin = self.cos[positions], self.sin[positions]
            for li, w in enumerate(self.layers):
                if li == grab:
                    capture.append(h)
                q, k, v = pre(h, w.ln1, w.qkv, w.qkv_bias, cos, sin, self.eps, self.heads, self.kv_heads, hd)
                self.k_cache[li].index_copy_(2, slots, k.unsqueeze(1).expand(self.kv_heads, group, s, hd))
                self.v_cache[li].index_copy_(2, slots, v.unsqueeze(1).expand(self.kv_heads, group, s, hd))
                out = F.scaled_dot_product_attention(q, self.k_cache[li].view(1, self.heads, self.slots, hd),
                                                     self.v_cache[li].view(1, self.heads, self.slots, hd),
                                                     attn_mask=bias)
                h = post(h, out, w.o, w.o_bias, w.ln2, w.gate_up, w.down, self.eps)
            if grab == len(self.layers):
                capture.append(F.rms_norm(h, (self.hidden,), self.final_norm, self.eps))
            return h
        cos_p, sin_p = self.cos[positions][:, None], self.sin[positions][:, None]
        for li, w in enumerate(self.layers):
            if li == grab:
                capture.append(h)
            q8 = self.int8[li] if self.int8 is not None else None
            x = F.rms_norm(h, (self.hidden,), w.ln1, self.eps)
            qkv = F.linear(x, w.qkv, w.qkv_bias) if q8 is None else int8_linear(x, q8['qkv'], w.qkv_bias)
            qk = self._rope(qkv[:, :nq + nk].view(s, self.heads + self.kv_heads, hd), cos_p, sin_p)
            k = qk[:, self.heads:].transpose(0, 1).unsqueeze(1).expand(self.kv_heads, group, s, hd)
            v = qkv[:, nq + nk:].view(s, self.kv_heads, hd).transpose(0, 1).unsqueeze(1).expand(
                self.kv_heads, group, s, hd)
            self.k_cache[li].index_copy_(2, slots, k)
            self.v_cache[li].index_copy_(2, slots, v)
            q = qk[:, :self.heads].transpose(0, 1)[None]
            out = F.scaled_dot_product_attention(q, self.k_cache[li].view(1, self.heads, self.slots, hd),
                                                 self.v_cache[li].view(1, self.heads, self.slots, hd),
                                                 attn_mask=bias)
            out = out[0].transpose(0, 1).reshape(s, nq)
            if q8 is not None:
                h = int8_linear(out, q8['o'], w.o_bias, residual=h)
            elif w.o_bias is None:
                h = torch.addmm(h, out, w.o.t())
            else:
                h = h + F.linear(out, w.o, w.o_bias)
            x = F.rms_norm(h, (self.hidden,), w.ln2, self.eps)
            if q8 is None:
                gate, up = F.linear(x, w.gate_up).chunk(2, dim=-1)
                h = torch.addmm(h, F.silu(gate) * up, w.down.t())
            else:
                gate, up = int8_linear(x, q8['gate_up']).chunk(2, dim=-1)
                h = int8_linear(F.silu(gate) * up, q8['down'], residual=h)
        if grab == len(self.layers):
            capture.append(F.rms_norm(h, (self.hidden,), self.final_norm, self.eps))
        return h

    def _logits(self, h_last: torch.Tensor) -> Dict[str, torch.Tensor]:
        x = F.rms_norm(h_last, (self.hidden,), self.final_norm, self.eps)
        logits = F.linear(x, self.lm_head)[0].float()
        return dict(logits=logits, token=logits.argmax().view(1, 1))

    def _bias(self, query_slots: torch.Tensor) -> torch.Tensor:
        """Additive mask [1,1,S,slots]: a row sees valid slots at or before its own, and itself."""
        idx = self.slot_index[None]
        q = query_slots[:, None]
        allowed = (self.key_valid[None] & (idx <= q)) | (idx == q)
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        return torch.where(allowed, zero, torch.full_like(zero, -math.inf))[None, None]

    # ------------------------------------------------------------------ graph bodies
    def _changes(self, kept: torch.Tensor, tokens: torch.Tensor, phase: torch.Tensor) -> Dict[str, torch.Tensor]:
        tokens = tokens.to(self.dtype)
        if self.reuse:
            changed = ~self.slot_valid[kept] | (self.slot_features[kept] != tokens).any(dim=-1)
            if self.refresh_interval > 0:
                changed = changed | (torch.remainder(kept, self.refresh_interval) == phase)
        else:
            changed = torch.ones(kept.shape[0], dtype=torch.bool, device=self.device)
        k = kept.shape[0]
        order = torch.sort((~changed).to(torch.long) * k + torch.arange(k, device=self.device)).indices
        return dict(order=order, count=changed.sum())

    def _prefill(self, kept, tokens, order, count, r_bucket: int, ok=None) -> Dict[str, torch.Tensor]:
        """`ok` (device bool, speculative bucket): False = more changed tokens than `r_bucket`; every
        visual write then goes to the trash slot / row, so a rerun at the right bucket sees the same state."""
        tokens = tokens.to(self.dtype)
        k = kept.shape[0]
        shift = self._shift(k)
        self.key_valid.zero_()
        if self.p:
            self.key_valid.narrow(0, 0, self.p).fill_(True)
        self.key_valid.index_fill_(0, kept + self.p, True)
        self.key_valid.narrow(0, self.text_start, self.num_text).fill_(True)   # (no host-scalar setitem: capturable)
        if self.num_queries:
            self.key_valid.narrow(0, self.query_start, self.num_queries).fill_(True)
        rows = order[:r_bucket]
        real = torch.arange(r_bucket, device=self.device) < count
        if ok is not None:
            real = real & ok
        vis_idx = kept[rows]
        vis_slots = torch.where(real, vis_idx + self.p, torch.full_like(rows, self.trash))
        vis_in = tokens[rows]
        slots = [vis_slots, self.text_slots]
        positions = [vis_slots, self.text_slots - shift]
        h = [self.projector(vis_in).to(self.dtype), self.instruction_embeds]
        if self.num_queries:
            slots.append(self.query_slots)
            positions.append(self.query_slots - shift - (self.decode_tokens if self.compact else 0))
            h.append(self.query_embeds)
        slots = torch.cat(slots)
        capture = [] if (self.num_queries and self.capture_layer is not None) else None
        h = self._decoder(torch.cat(h, dim=0), slots, self._bias(slots), torch.cat(positions), capture)
        feat_rows = torch.where(real, vis_idx, torch.full_like(vis_idx, self.n))
        self.slot_features.index_copy_(0, feat_rows, vis_in)
        self.slot_valid.index_fill_(0, feat_rows, True)
        self.slot_valid.narrow(0, self.n, 1).fill_(False)
        last = r_bucket + self.num_text
        out = self._logits(h[last - 1:last])
        if capture:
            out['query_hidden'] = capture[0][last:]
        return out

    def _fill_prefix(self) -> None:
        """The static text before the visual tokens: its keys/values once (they depend on nothing else)."""
        self.key_valid.zero_()
        self.key_valid.narrow(0, 0, self.p).fill_(True)
        self._decoder(self.prefix_embeds, self.prefix_slots, self._bias(self.prefix_slots))
        self._prefix_done = True

    def _spec_prefill(self, kept, tokens, phase, r_bucket: int) -> Dict[str, torch.Tensor]:
        ch = self._changes(kept, tokens, phase)
        ok = ch['count'] <= r_bucket
        out = self._prefill(kept, tokens, ch['order'], ch['count'], r_bucket, ok=ok)
        return dict(out, count=ch['count'], ok=ok)

    def _step(self, token: torch.Tensor, slot: torch.Tensor, position: torch.Tensor) -> Dict[str, torch.Tensor]:
        self.key_valid.index_fill_(0, slot, True)
        h = self._decoder(self.embed_tokens(token.view(1)), slot, self._bias(slot), position)
        return self._logits(h)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, kept: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Visual tokens [K, D_vis] at grid indices `kept` [K] (ascending; default 0..K-1) ->
        {'logits': [V] next-token logits after the instruction, 'token': [1,1] argmax}."""
        k = int(tokens.shape[0])
        if kept is None:
            kept = torch.arange(k, device=self.device)
        kept = kept.to(self.device, torch.long)
        if not self._prefix_done:
            self._fill_prefix()
        self._last_k = k
        if self.refresh_interval > 0:
            self._phase.fill_(self._prefills % self.refresh_interval)
        self._prefills += 1
        if self.speculate:
            r = self._spec_next if self._spec_next is not None else (
                _bucket(max(1, max(self._recent)), k, self.recompute_buckets) if self._recent else k)
            out = self.graphs.run(('spec', k, r), lambda **kw: self._spec_prefill(**kw, r_bucket=r),
                                  dict(kept=kept, tokens=tokens, phase=self._phase))
            count, ok = torch.stack([out['count'], out['ok'].to(out['count'].dtype)]).tolist()   # the one read
            self._recent = (self._recent + [count])[-3:]
            if ok:
                self.last_recomputed = count
                return out
            self.spec_overflows += 1
        ch = self.graphs.run(('changes', k), self._changes, dict(kept=kept, tokens=tokens, phase=self._phase))
        count = int(ch['count'])                       # the one host read: picks the bucket
        r_bucket = _bucket(count, k, self.recompute_buckets)
        self.last_recomputed = count
        if self.speculate:
            self._recent = (self._recent[:-1] + [count])[-3:]
        return self.graphs.run(('prefill', k, r_bucket),
                               lambda **kw: self._prefill(**kw, r_bucket=r_bucket),
                               dict(kept=kept, tokens=tokens, order=ch['order'], count=ch['count']))

    @torch.inference_mode()
    def decode(self, first: Dict[str, torch.Tensor], vis_count: int = 0, steps: Optional[int] = None) -> torch.Tensor:
        """Greedy plan after prefill(): [steps + 1] token ids (the prefill's token first), on device."""
        steps = self.decode_tokens if steps is None else min(int(steps), self.decode_tokens)
        tokens = [first['token'].view(1).clone()]
        token = first['token'].clone()
        shift = self._shift(getattr(self, '_last_k', self.n))
        for i in range(steps):
            slot = torch.full((1,), self.decode_start + i, dtype=torch.long, device=self.device)
            out = self.graphs.run(('step',), self._step, dict(token=token, slot=slot, position=slot - shift))
            token = out['token'].clone()
            tokens.append(token.view(1))
        return torch.cat(tokens)

    @torch.inference_mode()
    def precapture(self, kept_counts, vis_dim: int, decode: bool = True) -> None:
        """Capture the change test, every recompute bucket's prefill and (decode=True) the decode step,
        then reset."""
        for k in sorted(set(int(c) for c in kept_counts)):
            kept = torch.arange(k, device=self.device) * (1 if self.compact else max(1, self.n // max(k, 1)))
            kept = kept.clamp(max=self.n - 1).unique()
            if not self._prefix_done:
                self._fill_prefix()
            k = int(kept.shape[0])
            sizes = sorted({_bucket(max(1, int(math.ceil(f * k))), k, self.recompute_buckets)
                            for f in self.recompute_buckets} | {0}) if self.reuse else [k]
            tokens = torch.randn(k, vis_dim, device=self.device, dtype=self.dtype)
            ch = self.graphs.run(('changes', k), self._changes, dict(kept=kept, tokens=tokens, phase=self._phase))
            for r in sizes:
                first = self.graphs.run(('prefill', k, r), lambda r=r, **kw: self._prefill(**kw, r_bucket=r),
                                        dict(kept=kept, tokens=tokens, order=ch['order'], count=ch['count']))
                if self.speculate and r > 0:
                    self.graphs.run(('spec', k, r), lambda r=r, **kw: self._spec_prefill(**kw, r_bucket=r),
                                    dict(kept=kept, tokens=tokens, phase=self._phase))
            if decode:
                self.decode(first, k, steps=1)
        self.reset()

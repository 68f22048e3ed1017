"""VLM planner: a local transformers image-text-to-text checkpoint generates the sub-task text and
exports latent plan tokens from its hidden states.

Perception tokens instead of pixels: the perception node has already encoded and pruned the image,
so the planner never re-encodes it. The pruned LatentTokens are pooled to at most
`max_visual_tokens`, projected into the language model's embedding space (a fixed seeded linear map,
or a learned one saved as `vla_visual_projector.pt` in the checkpoint directory) and spliced into
`inputs_embeds` in front of the prompt text, where the VLM's own image features would go.

Family support (checked at load time by a one-token probe, not by a hard-coded list):
- generate(inputs_embeds=...) works (Idefics3/SmolVLM, Qwen2-VL/Qwen2.5-VL, LLaVA-style): the
  perception tokens condition both the generated text and the plan tokens.
- it does not (e.g. PaliGemma in transformers 5.x): the sub-task text is generated from the text-only
  prompt, and the perception tokens still condition the plan tokens through a forward pass with
  `inputs_embeds` (the fallback, reported as `injection='plan_tokens_only'`).

Fast path (`planner.fast_prefill`, on by default for cuda): the same prompt through SlotKVPrefill,
our own decoder forward over the model's weights with a per-slot KV cache: the static text before the
perception tokens is computed once, the perception tokens own fixed slots (only changed ones are
recomputed with `kv_reuse`), the instruction and the action queries are recomputed per plan, the
greedy sub-task decode runs on the cache; CUDA graphs per token bucket on cuda, eager on cpu. Same
prompt, positions and greedy decode as the transformers path; checked against it at load on a probe
prompt (a family whose decoder it does not reproduce, e.g. Gemma's scaled embeddings, falls back).

Plan tokens: hidden states of layer `plan_layer` either at `num_plan_tokens` appended action-query
positions (fixed seeded embeddings, a learnable slot when fine-tuning) or at the last prompt
positions, normalised and projected (fixed seeded map) to `plan_token_dim`.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Dict, Optional, Tuple

import numpy as np

from vla_ros.config.planning import PlannerConfig
from vla_ros.resources import ResourceError, resolve_path
from vla_ros.planning.base import (PlanOutput, Planner, PlanRequest, pool_tokens, register_planner,
                                   seeded_projection, stable_seed)

LOG = logging.getLogger(__name__)
PROJECTOR_FILE = 'vla_visual_projector.pt'
_VISUAL_MARK = '<<VLA_VISUAL_TOKENS>>'


class VLMLoadError(RuntimeError):
    """The configured checkpoint cannot be used as a planner (missing, wrong layout, unsupported)."""


def resolve_model_path(value: str) -> str:
    """planner.model_path (path or package:// URI) -> directory of a transformers checkpoint, or VLMLoadError."""
    try:
        return resolve_path(value, 'planner.model_path', kind='dir', marker='config.json')
    except ResourceError as exc:
        raise VLMLoadError(str(exc)) from None


def _load_model_and_tokenizer(path: str, device: str):
    import torch
    import transformers

    path = resolve_model_path(path)
    try:
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        tokenizer = getattr(processor, 'tokenizer', processor)
    except Exception as exc:  # e.g. Qwen2-VL's processor needs torchvision; the tokenizer suffices here
        LOG.info('AutoProcessor unavailable for %s (%s); using AutoTokenizer', path, exc)
        processor = None
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    errors = []
    for name in ('AutoModelForImageTextToText', 'AutoModelForVision2Seq', 'AutoModelForCausalLM'):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            model = auto.from_pretrained(path, dtype=torch.float32, local_files_only=True)
            break
        except (ValueError, KeyError, OSError) as exc:
            errors.append(f'{name}: {exc}')
    else:
        raise VLMLoadError(f'cannot load {path!r} as an image-text-to-text model: {"; ".join(errors)}')
    model.eval().to(device)
    return processor, tokenizer, model


@register_planner('vlm')
class VLMPlanner(Planner):
    type_name = 'vlm'

    def __init__(self, cfg: PlannerConfig, visual_dim: int = 0):
        import torch

        super().__init__(cfg, visual_dim)
        self._torch = torch
        if cfg.torch_threads > 0:
            torch.set_num_threads(cfg.torch_threads)
        self.device = cfg.device
        model_path = resolve_model_path(cfg.model_path)
        self.processor, self.tokenizer, self.model = _load_model_and_tokenizer(model_path, cfg.device)
        self._apply_lm_knobs(cfg)
        self.family = getattr(self.model.config, 'model_type', 'unknown')
        embedding = self.model.get_input_embeddings()
        self.hidden_size = int(embedding.embedding_dim)
        self._embed_scale = float(embedding.weight.detach().float().std())
        self._visual_proj: Dict[int, 'torch.Tensor'] = {}
        self._learned_projector = self._load_learned_projector(model_path)
        self._queries = self._seeded_tensor((cfg.num_plan_tokens, self.hidden_size), 'action-queries') \
            * self._embed_scale
        self._plan_proj = torch.from_numpy(seeded_projection(self.hidden_size, cfg.plan_token_dim,
                                                             stable_seed(cfg.seed, 'vlm-plan', self.hidden_size)))
        self._prompt_parts = self._split_prompt()
        self.generate_with_embeds = self._probe_generate_with_embeds()
        self.injection = 'text_and_plan_tokens' if self.generate_with_embeds else 'plan_tokens_only'
        self._fast: Dict[tuple, object] = {}          # (after-text ids, visual dim) -> SlotKVPrefill
        self.fast_reason = ''
        self.fast = self._fast_wanted(cfg) and self._fast_usable()
        LOG.info('VLM planner %s (%s, hidden %d): perception-token injection = %s, prefill = %s', cfg.model_path,
                 self.family, self.hidden_size, self.injection,
                 'slot KV' + (' (CUDA graphs)' if self._on_cuda() else ' (eager: no CUDA graphs on cpu)')
                 if self.fast else f'transformers ({self.fast_reason or "fast_prefill off"})')

    # ------------------------------------------------------------------ setup helpers
    def _apply_lm_knobs(self, cfg: PlannerConfig) -> None:
        """planner.drop_final_layers / planner.quantize on the language model (not the vision tower)."""
        from vla_ros.planning.prefill import drop_final_layers, find_text_decoder
        from vla_ros.planning.quant import quantize_linears
        if cfg.drop_final_layers > 0:
            try:
                kept = drop_final_layers(self.model, cfg.drop_final_layers)
            except ValueError as exc:
                raise VLMLoadError(f'planner.drop_final_layers: {exc}') from exc
            LOG.info('VLM planner: language model cut to its first %d layers', kept)
        if cfg.quantize != 'none':
            replaced = quantize_linears(find_text_decoder(self.model).layers, cfg.quantize)
            LOG.info('VLM planner: %d language-model linears quantised to %s', replaced, cfg.quantize)

    # ------------------------------------------------------------------ fast path (SlotKVPrefill)
    def _on_cuda(self) -> bool:
        return str(self.device).startswith('cuda')

    def _fast_wanted(self, cfg: PlannerConfig) -> bool:
        return cfg.fast_prefill == 'on' or (cfg.fast_prefill == 'auto' and self._on_cuda())

    def _eos_ids(self):
        eos = getattr(self.model.generation_config, 'eos_token_id', None)
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set([] if eos is None else ([eos] if isinstance(eos, int) else list(eos)))

    def _fast_usable(self) -> bool:
        """Whether SlotKVPrefill reproduces this planner's transformers path; the reason when not."""
        cfg, gen = self.cfg, self.model.generation_config
        plain = (float(getattr(gen, 'repetition_penalty', None) or 1.0) == 1.0
                 and not getattr(gen, 'no_repeat_ngram_size', None) and not getattr(gen, 'bad_words_ids', None)
                 and not getattr(gen, 'suppress_tokens', None) and not getattr(gen, 'begin_suppress_tokens', None)
                 and not getattr(gen, 'forced_bos_token_id', None) and not getattr(gen, 'forced_eos_token_id', None)
                 and not getattr(gen, 'min_new_tokens', None) and not getattr(gen, 'sequence_bias', None)
                 and int(getattr(gen, 'min_length', 0) or 0) == 0)
        for reason, bad in (('the model cannot generate from inputs_embeds', not self.generate_with_embeds),
                            ('plan_token_source last_positions', cfg.plan_token_source != 'action_queries'),
                            (f'quantize={cfg.quantize}', cfg.quantize != 'none'),
                            ('generation config is not plain greedy', not plain)):
            if bad:
                self.fast_reason = reason
                return False
        torch = self._torch
        try:       # the probe: both paths on one prompt with random perception tokens
            dim = self.visual_dim or 16
            tokens = np.random.default_rng(0).standard_normal((5, dim)).astype(np.float32)
            req = PlanRequest('probe', tokens)
            slot = self._slot_prefill('probe', dim)
            got = slot.prefill(self._pooled(req), None)
            with torch.inference_mode():
                seq = self._prompt_embeds(req)
                queries = self._queries[None].to(seq.dtype)
                out = self.model(inputs_embeds=torch.cat([seq, queries], dim=1),
                                 attention_mask=torch.ones(seq.shape[1] + queries.shape[1], dtype=torch.long,
                                                           device=self.device)[None], output_hidden_states=True)
            want_logits = out.logits[0, seq.shape[1] - 1].float()
            want_hidden = self._layer(out.hidden_states)[0, seq.shape[1]:].float()
            ok = (torch.allclose(got['logits'].float(), want_logits, atol=2e-3, rtol=2e-3)
                  and torch.allclose(got['query_hidden'].float(), want_hidden, atol=2e-3, rtol=2e-3))
        except Exception as exc:  # noqa: BLE001 - any layout the fast path cannot read
            self.fast_reason = f'fast prefill unavailable ({type(exc).__name__}: {exc})'[:300]
            LOG.warning('VLM planner: %s; using transformers generate', self.fast_reason)
            self._fast.clear()
            return False
        self._fast.clear()
        if not ok:
            self.fast_reason = f'{self.family}: the fast prefill does not reproduce the transformers forward'
            LOG.warning('VLM planner: %s; using transformers generate', self.fast_reason)
        return ok

    def _slot_prefill(self, instruction: str, dim: int):
        from vla_ros.planning.kv_prefill import SlotKVPrefill
        before, after = self._prompt_parts
        after_ids = self._ids(after.replace('{instruction}', instruction))[0]
        key = (tuple(after_ids.tolist()), dim)
        slot = self._fast.get(key)
        if slot is None:
            if len(self._fast) >= 4:                      # a few instructions at most (graphs per instance)
                self._fast.pop(next(iter(self._fast)))
            slot = SlotKVPrefill(
                self.model, after_ids, dim, self.cfg.max_visual_tokens,
                decode_tokens=max(self.cfg.max_new_tokens - 1, 0), cuda_graphs=self._on_cuda(),
                reuse=self.cfg.kv_reuse, projector=_FnModule(self._project), prefix_ids=self._ids(before)[0],
                compact_positions=True, query_embeds=self._queries, capture_layer=self.cfg.plan_layer,
                compile_layers='inductor' if self.cfg.compile_layers else 'none',
                refresh_interval=self.cfg.kv_refresh_interval if self.cfg.kv_reuse else 0)
            self._fast[key] = slot
        return slot

    def _plan_fast(self, req: PlanRequest):
        """(generated ids, plan-layer hidden states of the action queries) through SlotKVPrefill."""
        feats = self._pooled(req)
        slot = self._slot_prefill(req.instruction, int(feats.shape[1]) if feats.shape[0] else (self.visual_dim or 1))
        if feats.shape[0] == 0:
            feats = self._torch.zeros((0, slot.slot_features.shape[1]), device=self.device)
        first = slot.prefill(feats, None)
        hidden = first['query_hidden'].clone()
        ids = slot.decode(first).tolist()
        eos = self._eos_ids()
        for i, t in enumerate(ids):
            if t in eos:
                ids = ids[:i + 1]
                break
        return self._torch.tensor(ids), hidden

    def _seeded_tensor(self, shape, tag: str):
        rng = np.random.default_rng(stable_seed(self.cfg.seed, 'vlm', tag, *shape))
        return self._torch.from_numpy(rng.standard_normal(shape).astype(np.float32)).to(self.device)

    def _load_learned_projector(self, path: str):
        file = os.path.join(path, PROJECTOR_FILE)
        if not os.path.isfile(file):
            return None
        state = self._torch.load(file, map_location=self.device)
        layer = self._torch.nn.Linear(state['weight'].shape[1], state['weight'].shape[0])
        layer.load_state_dict(state)
        return layer.eval().to(self.device)

    def _split_prompt(self) -> Tuple[str, str]:
        """(text before the perception tokens, text after); uses the checkpoint's chat template if any."""
        prompt = _VISUAL_MARK + self.cfg.prompt
        owner = self.processor if getattr(self.processor, 'chat_template', None) else self.tokenizer
        if getattr(owner, 'chat_template', None):
            try:
                messages = [{'role': 'user', 'content': [{'type': 'text', 'text': prompt}]}]
                rendered = owner.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
                if isinstance(rendered, str) and _VISUAL_MARK in rendered:
                    before, after = rendered.split(_VISUAL_MARK, 1)
                    return before, after
            except Exception as exc:  # a template that rejects this message layout: plain prompt
                LOG.info('chat template not usable (%s); using the plain prompt', exc)
        bos = self.tokenizer.bos_token or ''
        return bos, self.cfg.prompt

    def _ids(self, text: str):
        ids = self.tokenizer(text, add_special_tokens=False, return_tensors='pt').input_ids
        return ids.to(self.device)

    def _probe_generate_with_embeds(self) -> bool:
        torch = self._torch
        ids = self._ids(self._prompt_parts[0] + 'a')
        with torch.inference_mode():
            embeds = self.model.get_input_embeddings()(ids)
            try:
                self.model.generate(inputs_embeds=embeds, attention_mask=torch.ones(ids.shape, dtype=torch.long,
                                                                                  device=self.device),
                                    max_new_tokens=1, do_sample=False)
                return True
            except (ValueError, TypeError, NotImplementedError) as exc:
                LOG.info('%s cannot generate from inputs_embeds (%s): text-only generation fallback',
                         self.family, exc)
                return False

    # ------------------------------------------------------------------ per-request pieces
    def _pooled(self, req: PlanRequest):
        """Perception tokens in grid order, pooled to at most max_visual_tokens: [V, D] on the device."""
        torch = self._torch
        tokens = np.asarray(req.visual_tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            return torch.zeros((0, tokens.shape[1] if tokens.ndim == 2 else 0), device=self.device)
        if self.visual_dim and tokens.shape[1] != self.visual_dim:
            raise ValueError(f'visual token dim {tokens.shape[1]} != planner visual_dim {self.visual_dim}')
        if req.kept_indices is not None and len(req.kept_indices) == tokens.shape[0]:
            tokens = tokens[np.argsort(np.asarray(req.kept_indices), kind='stable')]
        return torch.from_numpy(pool_tokens(tokens, self.cfg.max_visual_tokens)).to(self.device)

    def _visual_embeds(self, req: PlanRequest):
        feats = self._pooled(req)
        if feats.shape[0] == 0:
            return self._torch.zeros((0, self.hidden_size), device=self.device)
        return self._project(feats)

    def _project(self, feats):
        """Pooled perception tokens [V, D] -> LM input embeddings [V, H]."""
        torch = self._torch
        feats = feats.float()
        if feats.shape[0] == 0:
            return torch.zeros((0, self.hidden_size), device=self.device)
        if self._learned_projector is not None:
            return self._learned_projector(feats)
        dim = feats.shape[1]
        proj = self._visual_proj.get(dim)
        if proj is None:
            proj = torch.from_numpy(seeded_projection(dim, self.hidden_size,
                                                      stable_seed(self.cfg.seed, 'vlm-visual', dim))).to(self.device)
            self._visual_proj[dim] = proj
        feats = (feats - feats.mean(dim=1, keepdim=True)) / (feats.std(dim=1, keepdim=True) + 1e-6)
        return (feats @ proj) * self._embed_scale  # same scale as the LM's own token embeddings

    def _layer(self, hidden_states):
        return hidden_states[self.cfg.plan_layer]

    def _to_plan_tokens(self, hidden) -> np.ndarray:
        """[L, H] hidden states -> [num_plan_tokens, plan_token_dim] (front-padded by the mean if short)."""
        n = self.cfg.num_plan_tokens
        hidden = hidden[-n:].float()
        if hidden.shape[0] < n:
            pad = hidden.mean(dim=0, keepdim=True).expand(n - hidden.shape[0], -1)
            hidden = self._torch.cat([pad, hidden], dim=0)
        hidden = self._torch.nn.functional.layer_norm(hidden, hidden.shape[-1:])
        return (hidden.cpu() @ self._plan_proj).numpy().astype(np.float32)

    def _prompt_embeds(self, req: PlanRequest):
        """[1, S, H]: [text before, projected perception tokens, prompt with the instruction]."""
        torch = self._torch
        before, after = self._prompt_parts
        before_ids, after_ids = self._ids(before), self._ids(after.replace('{instruction}', req.instruction))
        embed = self.model.get_input_embeddings()
        with torch.inference_mode():
            visual = self._visual_embeds(req).to(embed.weight.dtype)
            return torch.cat([embed(before_ids)[0], visual, embed(after_ids)[0]], dim=0)[None]

    def plan(self, req: PlanRequest) -> PlanOutput:
        torch = self._torch
        start = time.perf_counter()
        if self.fast:
            new_ids, hidden = self._plan_fast(req)
            plan_tokens = self._to_plan_tokens(hidden)
            subtask = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
            out = PlanOutput(subtask=subtask or req.instruction, plan_tokens=plan_tokens,
                             latency_ms=(time.perf_counter() - start) * 1e3)
            return self.check_output(out)
        before, after = self._prompt_parts
        before_ids, after_ids = self._ids(before), self._ids(after.replace('{instruction}', req.instruction))
        with torch.inference_mode():
            prompt_embeds = self._prompt_embeds(req)
            mask = torch.ones(prompt_embeds.shape[:2], dtype=torch.long, device=self.device)
            want_last = self.cfg.plan_token_source == 'last_positions'
            gen_kwargs = dict(max_new_tokens=self.cfg.max_new_tokens, do_sample=False, return_dict_in_generate=True)
            if self.generate_with_embeds:
                out = self.model.generate(inputs_embeds=prompt_embeds, attention_mask=mask,
                                          output_hidden_states=want_last, **gen_kwargs)
                new_ids = out.sequences[0]  # with inputs_embeds only new tokens come back
            else:
                text_ids = torch.cat([before_ids, after_ids], dim=1)
                out = self.model.generate(input_ids=text_ids, attention_mask=torch.ones_like(text_ids),
                                          **gen_kwargs)
                new_ids = out.sequences[0, text_ids.shape[1]:]
            if want_last and self.generate_with_embeds:
                hidden = self._layer(out.hidden_states[0])[0]  # prefill step covers the whole prompt
            else:
                seq = prompt_embeds if want_last else torch.cat([prompt_embeds, self._queries[None]], dim=1)
                fwd = self.model(inputs_embeds=seq, attention_mask=torch.ones(seq.shape[:2], dtype=torch.long,
                                                                               device=self.device),
                                 output_hidden_states=True)
                hidden = self._layer(fwd.hidden_states)[0]
            plan_tokens = self._to_plan_tokens(hidden)
        subtask = self.tokenizer.decode(new_ids, skip_special_tokens=True).strip()
        out = PlanOutput(subtask=subtask or req.instruction, plan_tokens=plan_tokens,
                         latency_ms=(time.perf_counter() - start) * 1e3)
        return self.check_output(out)


class _FnModule:
    """A callable as the `projector` SlotKVPrefill expects (.to / .eval are no-ops)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x):
        return self.fn(x)

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self


def describe(planner: Planner) -> Optional[str]:
    """One-line description for logs/diagnostics."""
    if isinstance(planner, VLMPlanner):
        return (f'vlm:{planner.family} injection={planner.injection} '
                f'prefill={"slot_kv" if planner.fast else "transformers"}')
    return planner.type_name

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
        processor = transformers.AutoProcessor.from_pretrained(path)
        tokenizer = getattr(processor, 'tokenizer', processor)
    except Exception as exc:  # e.g. Qwen2-VL's processor needs torchvision; the tokenizer suffices here
        LOG.info('AutoProcessor unavailable for %s (%s); using AutoTokenizer', path, exc)
        processor = None
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    errors = []
    for name in ('AutoModelForImageTextToText', 'AutoModelForVision2Seq', 'AutoModelForCausalLM'):
        auto = getattr(transformers, name, None)
        if auto is None:
            continue
        try:
            model = auto.from_pretrained(path, dtype=torch.float32)
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
        LOG.info('VLM planner %s (%s, hidden %d): perception-token injection = %s', cfg.model_path, self.family,
                 self.hidden_size, self.injection)

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
    def _visual_embeds(self, req: PlanRequest):
        torch = self._torch
        tokens = np.asarray(req.visual_tokens, dtype=np.float32)
        if tokens.ndim != 2 or tokens.shape[0] == 0:
            return torch.zeros((0, self.hidden_size), device=self.device)
        if self.visual_dim and tokens.shape[1] != self.visual_dim:
            raise ValueError(f'visual token dim {tokens.shape[1]} != planner visual_dim {self.visual_dim}')
        if req.kept_indices is not None and len(req.kept_indices) == tokens.shape[0]:
            tokens = tokens[np.argsort(np.asarray(req.kept_indices), kind='stable')]
        feats = torch.from_numpy(pool_tokens(tokens, self.cfg.max_visual_tokens)).to(self.device)
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

    def plan(self, req: PlanRequest) -> PlanOutput:
        torch = self._torch
        start = time.perf_counter()
        before, after = self._prompt_parts
        after = after.replace('{instruction}', req.instruction)
        before_ids, after_ids = self._ids(before), self._ids(after)
        embed = self.model.get_input_embeddings()
        with torch.inference_mode():
            visual = self._visual_embeds(req).to(embed.weight.dtype)
            prompt_embeds = torch.cat([embed(before_ids)[0], visual, embed(after_ids)[0]], dim=0)[None]
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


def describe(planner: Planner) -> Optional[str]:
    """One-line description for logs/diagnostics."""
    if isinstance(planner, VLMPlanner):
        return f'vlm:{planner.family} injection={planner.injection}'
    return planner.type_name

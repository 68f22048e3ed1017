"""Flow-matching action head: the fast system of the dual-system VLA.

A small transformer decoder whose queries are the H noisy action steps and whose memory is
[projected visual tokens; projected plan tokens; one proprio token]. It is trained with
rectified-flow / conditional flow matching (x_t = (1 - t) x0 + t x1, target velocity x1 - x0)
and sampled by Euler integration from noise (t = 0) to actions (t = 1), so a handful of
steps is enough -- the point of flow heads in efficient VLAs (pi0-style) versus 50-100 step
DDPM heads.

Units: `loss` and `sample` work in NORMALISED model space (proprio and actions already
normalised with the stored statistics, see `normalize_*`). `predict_actions` takes and returns
raw units (rad), which is what the ROS node uses. Pruned (variable-count) visual tokens are
handled with a boolean validity mask (True = real token).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

# Floor for per-dimension std so constant dimensions (e.g. a locked gripper) do not blow up.
_MIN_STD = 1e-3
# The dataset statistics a head carries as buffers, in set_normalization's argument order.
NORMALIZATION_BUFFERS = ('proprio_mean', 'proprio_std', 'action_mean', 'action_std')


@dataclass
class FlowHeadConfig:
    action_dim: int = 7
    horizon: int = 16
    vis_dim: int = 64
    plan_dim: int = 64
    proprio_dim: int = 7
    hidden_dim: int = 128
    num_layers: int = 2
    num_heads: int = 4
    denoising_steps: int = 10
    # Self-attention layers over the conditioning tokens before decoding (0 = none, the original
    # head). They let visual tokens read the plan tokens, e.g. mark themselves as the named target.
    memory_layers: int = 0


def _timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] (scaled so low frequencies still vary)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float()[:, None] * 1000.0) * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class FlowMatchingActionHead(nn.Module):
    """Conditional flow-matching policy head predicting an H-step joint-position chunk."""

    def __init__(self, config: Optional[FlowHeadConfig] = None):
        super().__init__()
        self.config = config or FlowHeadConfig()
        c = self.config
        h = c.hidden_dim
        self.vis_proj = nn.Sequential(nn.LayerNorm(c.vis_dim), nn.Linear(c.vis_dim, h))
        self.plan_proj = nn.Sequential(nn.LayerNorm(c.plan_dim), nn.Linear(c.plan_dim, h))
        self.proprio_proj = nn.Sequential(nn.Linear(c.proprio_dim, h), nn.GELU(), nn.Linear(h, h))
        # Which memory slot a token came from (vision / plan / proprio).
        self.source_embed = nn.Parameter(torch.zeros(3, h))
        self.action_in = nn.Linear(c.action_dim, h)
        self.step_embed = nn.Parameter(torch.randn(c.horizon, h) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(h, h), nn.GELU(), nn.Linear(h, h))
        layer = nn.TransformerDecoderLayer(d_model=h, nhead=c.num_heads, dim_feedforward=4 * h, dropout=0.0,
                                           activation='gelu', batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, num_layers=c.num_layers)
        self.memory_encoder = None
        if c.memory_layers > 0:
            enc_layer = nn.TransformerEncoderLayer(d_model=h, nhead=c.num_heads, dim_feedforward=4 * h, dropout=0.0,
                                                   activation='gelu', batch_first=True, norm_first=True)
            self.memory_encoder = nn.TransformerEncoder(enc_layer, num_layers=c.memory_layers,
                                                        enable_nested_tensor=False)
        self.out_norm = nn.LayerNorm(h)
        self.out = nn.Linear(h, c.action_dim)
        self.register_buffer('proprio_mean', torch.zeros(c.proprio_dim))
        self.register_buffer('proprio_std', torch.ones(c.proprio_dim))
        self.register_buffer('action_mean', torch.zeros(c.action_dim))
        self.register_buffer('action_std', torch.ones(c.action_dim))

    # ------------------------------------------------------------------ normalisation
    def set_normalization(self, proprio_mean, proprio_std, action_mean, action_std) -> None:
        """Install dataset statistics; std is floored so constant dimensions stay finite."""
        for name, value in zip(NORMALIZATION_BUFFERS, (proprio_mean, proprio_std, action_mean, action_std)):
            buf = getattr(self, name)
            tensor = torch.as_tensor(value, dtype=torch.float32).reshape(buf.shape).to(buf.device)
            if name.endswith('std'):
                tensor = tensor.clamp_min(_MIN_STD)
            buf.copy_(tensor)

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.proprio_mean) / self.proprio_std

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def denormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    # ------------------------------------------------------------------ network
    def encode_condition(self, vis_tokens: torch.Tensor, vis_mask: Optional[torch.Tensor],
                         plan_tokens: Optional[torch.Tensor], proprio: torch.Tensor,
                         plan_mask: Optional[torch.Tensor] = None):
        """Project the conditioning once per chunk; returns (memory, key_padding_mask True=ignore)."""
        batch = proprio.shape[0]
        parts, valid = [], []
        vis = self.vis_proj(vis_tokens) + self.source_embed[0]
        parts.append(vis)
        valid.append(vis_mask.bool() if vis_mask is not None
                     else torch.ones(vis.shape[:2], dtype=torch.bool, device=vis.device))
        if plan_tokens is not None and plan_tokens.shape[1] > 0:
            plan = self.plan_proj(plan_tokens) + self.source_embed[1]
            parts.append(plan)
            valid.append(plan_mask.bool() if plan_mask is not None
                         else torch.ones(plan.shape[:2], dtype=torch.bool, device=plan.device))
        prop = (self.proprio_proj(proprio) + self.source_embed[2])[:, None]
        parts.append(prop)
        # The proprio token is always valid, so attention never sees an all-masked row.
        valid.append(torch.ones(batch, 1, dtype=torch.bool, device=prop.device))
        memory, pad = torch.cat(parts, dim=1), ~torch.cat(valid, dim=1)
        if self.memory_encoder is not None:
            memory = self.memory_encoder(memory, src_key_padding_mask=pad)
        return memory, pad

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, memory: torch.Tensor,
                 memory_pad: torch.Tensor) -> torch.Tensor:
        """Predicted flow velocity d x_t / d t for noisy actions x_t [B,H,A] at times t [B]."""
        h = self.config.hidden_dim
        query = self.action_in(x_t) + self.step_embed[None, :x_t.shape[1]]
        query = query + self.time_mlp(_timestep_embedding(t, h))[:, None]
        out = self.decoder(query, memory, memory_key_padding_mask=memory_pad)
        return self.out(self.out_norm(out))

    # ------------------------------------------------------------------ training
    def loss(self, vis_tokens, vis_mask, plan_tokens, proprio, actions, plan_mask=None,
             generator: Optional[torch.Generator] = None, return_memory: bool = False):
        """Conditional flow-matching loss; proprio and actions in normalised units.

        With `return_memory`, (loss, memory [B, tokens, hidden]): the encoded conditioning, whose last
        token is the proprioception token after it attended to vision and plan (auxiliary probes).
        """
        memory, pad = self.encode_condition(vis_tokens, vis_mask, plan_tokens, proprio, plan_mask)
        batch = actions.shape[0]
        noise = torch.randn(actions.shape, generator=generator, device=actions.device, dtype=actions.dtype)
        # Slightly favour noisy times (t near 0, where the velocity field is hardest), as pi0 does.
        u = torch.rand(batch, generator=generator, device=actions.device)
        t = u ** 1.5
        tt = t[:, None, None]
        x_t = (1.0 - tt) * noise + tt * actions
        target = actions - noise
        pred = self.velocity(x_t, t, memory, pad)
        loss = torch.mean((pred - target) ** 2)
        return (loss, memory) if return_memory else loss

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample(self, vis_tokens, vis_mask, plan_tokens, proprio, steps: Optional[int] = None,
               prefix: Optional[torch.Tensor] = None, prefix_weights: Optional[torch.Tensor] = None,
               generator: Optional[torch.Generator] = None, plan_mask=None) -> torch.Tensor:
        """Euler-integrate noise -> actions (normalised units).

        Real-time chunking: with `prefix` [B,H,A] (normalised, already-committed actions) and
        `prefix_weights` [H] in [0, 1], after every step the trajectory is pulled towards the
        flow path of the prefix (same noise), w=1 replaces, w=0 leaves the model free. Because
        the model sees the guided steps through self-attention, the free steps continue
        smoothly from the frozen ones instead of jumping.
        """
        steps = int(steps or self.config.denoising_steps)
        memory, pad = self.encode_condition(vis_tokens, vis_mask, plan_tokens, proprio, plan_mask)
        batch = proprio.shape[0]
        shape = (batch, self.config.horizon, self.config.action_dim)
        noise = torch.randn(shape, generator=generator, device=proprio.device, dtype=torch.float32)
        guide = None
        if prefix is not None:
            if prefix_weights is None:
                raise ValueError('prefix needs prefix_weights')
            weights = torch.as_tensor(prefix_weights, dtype=torch.float32, device=proprio.device)
            guide = (prefix.to(torch.float32).expand(shape), weights.reshape(1, -1, 1).clamp(0.0, 1.0))
        x = noise
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((batch,), i * dt, device=proprio.device)
            x = x + dt * self.velocity(x, t, memory, pad)
            if guide is not None:
                t_next = (i + 1) * dt
                target_path = (1.0 - t_next) * noise + t_next * guide[0]
                x = guide[1] * target_path + (1.0 - guide[1]) * x
        return x

    @torch.no_grad()
    def predict_actions(self, vis_tokens, vis_mask, plan_tokens, proprio, steps: Optional[int] = None,
                        prefix=None, prefix_weights=None, generator: Optional[torch.Generator] = None,
                        plan_mask=None) -> torch.Tensor:
        """Raw-unit interface used by the controller: proprio [B,P] rad in, actions [B,H,A] rad out."""
        device = self.action_mean.device
        as_t = lambda x: None if x is None else torch.as_tensor(x, dtype=torch.float32, device=device)  # noqa: E731
        vis_tokens, plan_tokens, proprio = as_t(vis_tokens), as_t(plan_tokens), as_t(proprio)
        vis_mask = None if vis_mask is None else torch.as_tensor(vis_mask, dtype=torch.bool, device=device)
        plan_mask = None if plan_mask is None else torch.as_tensor(plan_mask, dtype=torch.bool, device=device)
        norm_prefix = None
        if prefix is not None:
            norm_prefix = self.normalize_actions(as_t(prefix))
        out = self.sample(vis_tokens, vis_mask, plan_tokens, self.normalize_proprio(proprio), steps=steps,
                          prefix=norm_prefix, prefix_weights=as_t(prefix_weights), generator=generator,
                          plan_mask=plan_mask)
        return self.denormalize_actions(out)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str) -> None:
        """One .pt with weights, config and normalisation (buffers are part of the state dict)."""
        torch.save({'format': 'vla_ros.flow_head/1', 'config': dataclasses.asdict(self.config),
                    'state_dict': {k: v.detach().cpu() for k, v in self.state_dict().items()}}, path)

    @classmethod
    def load(cls, path: str, map_location='cpu') -> 'FlowMatchingActionHead':
        blob = torch.load(path, map_location=map_location, weights_only=True)
        if not isinstance(blob, dict) or 'config' not in blob or 'state_dict' not in blob:
            raise ValueError(f'{path}: not a FlowMatchingActionHead checkpoint')
        head = cls(FlowHeadConfig(**blob['config']))
        head.load_state_dict(blob['state_dict'])
        if isinstance(map_location, (str, torch.device)):
            head.to(map_location)
        head.eval()
        return head

"""Joint training of the vision encoder and the flow-matching action head on episode data.

The dataset lives on the training device as uint8 frames + joint data, one sample per decision;
each step augments the frames, runs the encoder on a pruning-like token subset, builds the plan
tokens from an earlier frame of the same episode (the planner is slower than the head and caches
plans) and takes a flow-matching step through head and encoder together. With observation_lag_s
the visual tokens also come from an earlier frame than the joints and labels (the stack's latency).
"""
from __future__ import annotations

import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from vla_ros.action.flow_head import NORMALIZATION_BUFFERS
from vla_ros.config.sim import TASK_TARGETS_DIM
from vla_ros.training.config import TrainConfig
from vla_ros.training.policy import PlanTokens, augment, build_encoder, build_head, encode_subset, sample_kept


class EpisodeData:
    """Episodes (dicts with images, proprio, actions, relevance, instruction) as flat device tensors."""

    def __init__(self, device: str):
        self.device = torch.device(device)
        self.instructions: List[str] = []
        self._parts: Dict[str, List[np.ndarray]] = {k: [] for k in
                                                     ('images', 'proprio', 'actions', 'relevance', 'colours', 'step',
                                                      'instr', 'targets', 'dt')}
        self.tensors: Dict[str, torch.Tensor] = {}
        self.episodes = 0

    def add(self, episodes: Sequence[dict]) -> None:
        for ep in episodes:
            n = len(ep['proprio'])
            if n == 0:
                continue
            if ep['instruction'] not in self.instructions:
                self.instructions.append(ep['instruction'])
            self._parts['images'].append(np.asarray(ep['images'], np.uint8))
            self._parts['proprio'].append(np.asarray(ep['proprio'], np.float32))
            self._parts['actions'].append(np.asarray(ep['actions'], np.float32))
            self._parts['relevance'].append(np.asarray(ep['relevance'], np.float32))
            self._parts['colours'].append(np.asarray(ep['colours'], np.float16))
            targets = ep.get('targets')          # sim ground truth; NaN (no auxiliary loss) where absent
            self._parts['targets'].append(np.asarray(targets, np.float32) if targets is not None
                                          else np.full((n, TASK_TARGETS_DIM), np.nan, np.float32))
            self._parts['step'].append(np.arange(n, dtype=np.int64))
            # seconds between the episode's decisions (0 = unknown: no observation lag for it)
            self._parts['dt'].append(np.full(n, float(ep.get('decision_dt', 0.0)), np.float32))
            self._parts['instr'].append(np.full(n, self.instructions.index(ep['instruction']), np.int64))
            self.episodes += 1
        self.tensors = {k: torch.from_numpy(np.concatenate(v)).to(self.device) for k, v in self._parts.items()}

    def __len__(self) -> int:
        return int(self.tensors['proprio'].shape[0]) if self.tensors else 0

    def statistics(self):
        proprio = self.tensors['proprio'].double()
        actions = self.tensors['actions'].double().reshape(-1, self.tensors['actions'].shape[-1])
        return (proprio.mean(0).cpu(), proprio.std(0).cpu(), actions.mean(0).cpu(), actions.std(0).cpu())


def observation_index(idx: torch.Tensor, step: torch.Tensor, dt: torch.Tensor, lag_s: float,
                      gen: torch.Generator) -> torch.Tensor:
    """Sample indices of the frames the visual tokens come from: up to `lag_s` seconds (uniform in whole
    decisions of the sample's episode, `dt` s apart) before each sample in `idx`, never before the
    episode's first decision (`step` = decision number in its episode). dt <= 0 (unknown) or lag_s = 0:
    the sample's own frame."""
    if lag_s <= 0:
        return idx
    d = dt[idx]
    max_lag = torch.where(d > 0, torch.floor(lag_s / d.clamp_min(1e-6) + 1e-4), torch.zeros_like(d))
    max_lag = torch.minimum(max_lag, step[idx].to(d.dtype))
    return idx - (torch.rand(idx.shape, device=idx.device, generator=gen) * (max_lag + 1)).long()


class Policy(torch.nn.Module):
    """Encoder + flow head (+ training-only probes), fresh or from `cfg.init_from`.

    A checkpoint of another task or arm (another number of joints: the head's action or proprio size differs)
    is a warm start: the encoder and every head tensor of the same name and shape are copied into a fresh
    head (`transfer` names them), whose normalisation then comes from the data.
    """

    def __init__(self, cfg: TrainConfig, action_dim: int, horizon: int, proprio_dim: int):
        super().__init__()
        self.initialised_from = cfg.init_from
        self.transfer: Dict[str, List[str]] = {}
        if cfg.init_from:
            import os

            from transformers import SiglipVisionModel

            from vla_ros.action.flow_head import FlowMatchingActionHead
            self.encoder = SiglipVisionModel.from_pretrained(os.path.join(cfg.init_from, 'vision_encoder'))
            if self.encoder.config.hidden_size != cfg.encoder_hidden:
                raise ValueError(f'{cfg.init_from}: encoder width {self.encoder.config.hidden_size} != '
                                 f'--encoder-hidden {cfg.encoder_hidden}')
            self.head = FlowMatchingActionHead.load(os.path.join(cfg.init_from, 'action_head.pt'))
            c = self.head.config
            if (c.action_dim, c.horizon, c.proprio_dim) != (action_dim, horizon, proprio_dim):
                self.head, self.transfer = transfer_head(self.head, build_head(cfg, action_dim, horizon, proprio_dim))
        else:
            self.encoder = build_encoder(cfg)
            self.head = build_head(cfg, action_dim, horizon, proprio_dim)
        # Training-only probe: which cube colour each token's patch shows (not saved).
        from vla_ros.training.policy import task_colours
        self.colour_probe = torch.nn.Linear(cfg.encoder_hidden, len(task_colours(cfg.task)))
        # Training-only probe: the named cube's and the goal's position from the head's proprio token.
        self.target_probe = torch.nn.Sequential(torch.nn.Linear(cfg.head_hidden, cfg.head_hidden), torch.nn.GELU(),
                                                torch.nn.Linear(cfg.head_hidden, TASK_TARGETS_DIM))

    @property
    def head_statistics_needed(self) -> bool:
        """The head's normalisation must come from the training data (a fresh or warm-started head)."""
        return not self.initialised_from or bool(self.transfer)


def transfer_head(source, fresh):
    """Copy every tensor of `source` whose name and shape `fresh` shares into `fresh` (a head for another
    action/proprio size): returns (fresh, {'copied': [...], 'fresh': [...]}) with the tensor names."""
    mine = fresh.state_dict()
    theirs = source.state_dict()
    copied = [k for k, v in mine.items() if k in theirs and theirs[k].shape == v.shape
              and k not in NORMALIZATION_BUFFERS]
    fresh.load_state_dict({**mine, **{k: theirs[k] for k in copied}})
    return fresh, {'copied': copied, 'fresh': [k for k in mine if k not in copied]}


def train_policy(policy: Policy, data: EpisodeData, cfg: TrainConfig, epochs: int, desc: str = 'train',
                 lr: float = None, seed: int = 0, budget_s: float = 0.0,
                 on_checkpoint: Optional[Callable[[], None]] = None) -> Dict[str, object]:
    """Joint flow-matching training of encoder + head; returns per-epoch losses and timing.

    With `budget_s` > 0 the cosine schedule runs on max(step fraction, time fraction) and training
    stops when either reaches 1, so a time-boxed run still ends with a decayed learning rate.
    `on_checkpoint` is called after an epoch whose loss is the lowest so far, once `cfg.checkpoint_every_s`
    has passed since the last call (the policy is left in train mode on its device).
    """
    device = data.device
    policy.to(device).train()
    plan = PlanTokens(cfg.encoder_hidden)
    language = torch.stack([plan.language(i) for i in data.instructions]).to(device)   # [I, T, Dp]
    t = data.tensors
    n = len(data)
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = epochs * steps_per_epoch
    peak = lr or cfg.lr
    opt = torch.optim.AdamW(policy.parameters(), lr=peak, weight_decay=cfg.weight_decay)
    warmup = max(1, int(0.03 * total))
    t_start = time.perf_counter()
    known = ~torch.isnan(t['targets']).any(dim=1)
    target_mean = (t['targets'][known].mean(0) if bool(known.any())
                   else torch.zeros(TASK_TARGETS_DIM, device=device))
    target_std = (t['targets'][known].std(0).clamp_min(1e-3) if int(known.sum()) > 1
                  else torch.ones(TASK_TARGETS_DIM, device=device))

    def fraction(step: int) -> float:
        frac = step / total
        if budget_s > 0:
            frac = max(frac, (time.perf_counter() - t_start) / budget_s)
        return min(1.0, frac)

    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * fraction(s))))
    gen = torch.Generator(device=device).manual_seed(seed)
    cpu_gen = np.random.default_rng(seed)
    autocast = torch.autocast('cuda', dtype=torch.bfloat16, enabled=cfg.bf16) if device.type == 'cuda' else \
        torch.autocast('cpu', enabled=False)
    if device.type == 'cuda' and not cfg.bf16:
        torch.backends.cuda.matmul.allow_tf32 = True
    # Exponential moving average of the floating-point weights and buffers, updated after every step.
    live = [v for v in policy.state_dict().values() if v.dtype.is_floating_point]   # share the weights' storage
    ema = [v.detach().clone() for v in live] if cfg.ema_decay > 0 else None
    from tqdm import tqdm

    losses: List[float] = []            # flow-matching loss (the auxiliary losses are logged apart)
    target_losses: List[float] = []
    t0 = time.perf_counter()
    last_save = t0
    bar = tqdm(range(epochs), desc=desc, unit='epoch', disable=not cfg.progress)
    step = 0
    # The lowest-loss epoch's weights (epoch 0 = as the phase began), restored if the phase diverges.
    def snapshot() -> Dict[str, torch.Tensor]:
        return {k: v.detach().to('cpu', copy=True) for k, v in policy.state_dict().items()}

    best_state = snapshot() if cfg.divergence_factor > 0 else None
    best_epoch, best_loss = 0, math.inf
    for _ in bar:
        if fraction(step) >= 1.0:
            break
        perm = torch.randperm(n, device=device, generator=gen)
        running, running_target, done = 0.0, 0.0, 0
        for s in range(steps_per_epoch):
            if step and fraction(step) >= 1.0:
                break
            idx = perm[s * batch:(s + 1) * batch]
            keep = int(cfg.keep_tokens[cpu_gen.integers(len(cfg.keep_tokens))])
            obs_idx = observation_index(idx, t['step'], t['dt'], cfg.observation_lag_s, gen)
            lag = (torch.rand(idx.shape, device=device, generator=gen)
                   * (torch.clamp(t['step'][obs_idx], max=cfg.plan_staleness) + 1).float()).long()
            plan_idx = obs_idx - lag                   # same episode: step >= lag
            with autocast:
                kept = sample_kept(t['relevance'][obs_idx], keep, gen)
                vis = encode_subset(policy.encoder, augment(t['images'][obs_idx], cfg, gen), kept)
                with torch.no_grad():
                    plan_vis = encode_subset(policy.encoder, augment(t['images'][plan_idx], cfg, gen),
                                             sample_kept(t['relevance'][plan_idx], keep, gen))
                    plan_tokens = language[t['instr'][idx]] + plan.scene(plan_vis.float())
                head = policy.head
                loss, memory = head.loss(vis.float(), None, plan_tokens, head.normalize_proprio(t['proprio'][idx]),
                                         head.normalize_actions(t['actions'][idx]), return_memory=True)
                flow_loss = loss.detach()
                if cfg.target_aux_weight > 0:
                    # MSE over the rows with ground truth (NaN rows weigh 0), without a host sync per step
                    targets = (t['targets'][idx] - target_mean) / target_std
                    rows = (~torch.isnan(targets).any(dim=1)).float()[:, None]
                    pred = policy.target_probe(memory[:, -1].float())
                    squared = (pred - torch.nan_to_num(targets)) ** 2 * rows
                    target_loss = squared.sum() / (rows.sum() * targets.shape[1]).clamp_min(1.0)
                    loss = loss + cfg.target_aux_weight * target_loss
                    running_target += target_loss.detach()
                if cfg.colour_aux_weight > 0:
                    colour_target = torch.gather(t['colours'][obs_idx].float(), 2,
                                                 kept[:, None, :].expand(-1, t['colours'].shape[1], -1)
                                                 ).transpose(1, 2)
                    aux = torch.nn.functional.binary_cross_entropy_with_logits(
                        policy.colour_probe(vis.float()), colour_target)
                    loss = loss + cfg.colour_aux_weight * aux
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
            sched.step()
            if ema is not None:
                with torch.no_grad():
                    torch._foreach_lerp_(ema, live, 1.0 - cfg.ema_decay)
            step += 1
            done += 1
            running += float(flow_loss)
        losses.append(running / max(1, done))
        target_losses.append(float(running_target) / max(1, done))
        # False for a NaN loss, and for weights already gone non-finite (the loss is the epoch's running mean)
        is_best = losses[-1] <= best_loss and all(bool(torch.isfinite(p).all()) for p in policy.parameters())
        if is_best:
            best_epoch, best_loss = len(losses), losses[-1]
            if cfg.divergence_factor > 0:
                best_state = snapshot()
        bar.set_postfix(loss=f'{losses[-1]:.4f}', samples=n)
        if not cfg.progress:
            aux = f' target-aux {target_losses[-1]:.4f}' if cfg.target_aux_weight > 0 else ''
            print(f'[{desc}] epoch {len(losses)}/{epochs} loss {losses[-1]:.4f}{aux} '
                  f'({time.perf_counter() - t0:.0f} s, {n} samples)', flush=True)
        # Periodic saves keep the best epoch so far: a loss spike late in a run never overwrites a better policy.
        if on_checkpoint is not None and cfg.checkpoint_every_s > 0 and is_best and \
                time.perf_counter() - last_save >= cfg.checkpoint_every_s:
            on_checkpoint()
            policy.to(device).train()
            last_save = time.perf_counter()
    bar.close()
    restored = None
    if best_state is not None and losses and not losses[-1] <= cfg.divergence_factor * best_loss:   # NaN too
        # Diverged (a loss spike the cosine decay did not recover from): keep the best epoch's weights.
        policy.load_state_dict(best_state)
        restored = best_epoch
        print(f'[{desc}] loss {losses[-1]:.4f} > {cfg.divergence_factor:g} x best {best_loss:.4f}: '
              f'diverged, restored the weights of epoch {best_epoch}', flush=True)
    elif ema is not None and step:
        with torch.no_grad():
            for average, weight in zip(ema, live):
                weight.copy_(average)
    policy.eval()
    return {'epoch_losses': [round(x, 5) for x in losses], 'final_loss': losses[-1], 'restored_epoch': restored,
            'ema': ema is not None and restored is None and step > 0,
            'epoch_target_losses': [round(x, 5) for x in target_losses] if cfg.target_aux_weight > 0 else [],
            'samples': n, 'steps': step,
            'episodes': data.episodes, 'seconds': round(time.perf_counter() - t0, 1)}

"""Train the flow-matching action head (console script `vla_train`).

Dataset file format (written by `save_dataset`, read by `load_dataset`), one sample per control
decision, N samples. Token counts may differ per sample (pruned visual tokens), so tokens are
stored concatenated with per-sample lengths:

    vis_tokens    float32 [sum_i Nv_i, Dv]   visual tokens of all samples, back to back
    vis_lengths   int64   [N]                Nv_i
    plan_tokens   float32 [sum_i Np_i, Dp]   latent plan tokens, back to back
    plan_lengths  int64   [N]                Np_i
    proprio       float32 [N, P]             joint positions when the chunk was requested (rad)
    actions       float32 [N, H, A]          absolute joint targets for the next H steps (rad),
                                             step k applies k * action_dt after the request

`.npz` (numpy.savez_compressed) or `.pt` (torch.save of the same dict of tensors) both work.
In memory a dataset is a sequence of dicts with keys vis_tokens [Nv,Dv], plan_tokens [Np,Dp],
proprio [P], actions [H,A] (numpy or torch).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Dict, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead

_KEYS = ('vis_tokens', 'plan_tokens', 'proprio', 'actions')


def save_dataset(path: str, samples: Sequence[Dict[str, np.ndarray]]) -> None:
    """Write samples (dicts with vis_tokens, plan_tokens, proprio, actions) to .npz or .pt."""
    if not samples:
        raise ValueError('no samples to save')
    arrays = {k: [np.asarray(s[k], dtype=np.float32) for s in samples] for k in _KEYS}
    blob = {
        'vis_tokens': np.concatenate(arrays['vis_tokens'], axis=0),
        'vis_lengths': np.array([a.shape[0] for a in arrays['vis_tokens']], dtype=np.int64),
        'plan_tokens': np.concatenate(arrays['plan_tokens'], axis=0),
        'plan_lengths': np.array([a.shape[0] for a in arrays['plan_tokens']], dtype=np.int64),
        'proprio': np.stack(arrays['proprio']),
        'actions': np.stack(arrays['actions']),
    }
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if path.endswith('.pt'):
        torch.save({k: torch.from_numpy(v) for k, v in blob.items()}, path)
    else:
        with open(path, 'wb') as fh:  # a file handle stops numpy from appending '.npz'
            np.savez_compressed(fh, **blob)


def load_dataset(path: str) -> List[Dict[str, np.ndarray]]:
    if path.endswith('.pt'):
        raw = {k: v.numpy() for k, v in torch.load(path, map_location='cpu', weights_only=True).items()}
    else:
        with np.load(path) as data:
            raw = {k: data[k] for k in data.files}
    missing = {'vis_tokens', 'vis_lengths', 'plan_tokens', 'plan_lengths', 'proprio', 'actions'} - set(raw)
    if missing:
        raise ValueError(f'{path}: missing arrays {sorted(missing)}')
    n = raw['proprio'].shape[0]
    vis_splits = np.split(raw['vis_tokens'], np.cumsum(raw['vis_lengths'])[:-1])
    plan_splits = np.split(raw['plan_tokens'], np.cumsum(raw['plan_lengths'])[:-1])
    if len(vis_splits) != n or len(plan_splits) != n or raw['actions'].shape[0] != n:
        raise ValueError(f'{path}: inconsistent sample counts')
    return [{'vis_tokens': vis_splits[i], 'plan_tokens': plan_splits[i], 'proprio': raw['proprio'][i],
             'actions': raw['actions'][i]} for i in range(n)]


def _pad(seqs: List[torch.Tensor]):
    longest = max(s.shape[0] for s in seqs)
    out = torch.zeros(len(seqs), longest, seqs[0].shape[1])
    mask = torch.zeros(len(seqs), longest, dtype=torch.bool)
    for i, s in enumerate(seqs):
        out[i, :s.shape[0]] = s
        mask[i, :s.shape[0]] = True
    return out, mask


def collate_samples(samples: Sequence[Dict]) -> Dict[str, torch.Tensor]:
    """Pad variable token counts; masks are True for real tokens."""
    as_t = lambda x: torch.as_tensor(np.asarray(x), dtype=torch.float32)  # noqa: E731
    vis, vis_mask = _pad([as_t(s['vis_tokens']) for s in samples])
    plan, plan_mask = _pad([as_t(s['plan_tokens']) for s in samples])
    return {'vis_tokens': vis, 'vis_mask': vis_mask, 'plan_tokens': plan, 'plan_mask': plan_mask,
            'proprio': torch.stack([as_t(s['proprio']) for s in samples]),
            'actions': torch.stack([as_t(s['actions']) for s in samples])}


def dataset_statistics(dataset: Sequence[Dict]):
    proprio = np.stack([np.asarray(s['proprio'], dtype=np.float64) for s in dataset])
    actions = np.concatenate([np.asarray(s['actions'], dtype=np.float64) for s in dataset], axis=0)
    return proprio.mean(0), proprio.std(0), actions.mean(0), actions.std(0)


def config_for_dataset(dataset: Sequence[Dict], **overrides) -> FlowHeadConfig:
    """FlowHeadConfig whose dimensions match the data (other fields from overrides/defaults)."""
    s = dataset[0]
    dims = dict(action_dim=int(np.shape(s['actions'])[1]), horizon=int(np.shape(s['actions'])[0]),
                vis_dim=int(np.shape(s['vis_tokens'])[1]), plan_dim=int(np.shape(s['plan_tokens'])[1]),
                proprio_dim=int(np.shape(s['proprio'])[0]))
    dims.update(overrides)
    return FlowHeadConfig(**dims)


def train_action_head(dataset: Sequence[Dict], cfg: FlowHeadConfig, epochs: int = 50, batch_size: int = 64,
                      lr: float = 3e-4, device: str = 'cpu', out_path: str = '', seed: int = 0,
                      progress: bool = True) -> Dict[str, object]:
    """Fit normalisation + flow-matching loss; saves to out_path (if given). Returns metrics."""
    if len(dataset) == 0:
        raise ValueError('empty dataset')
    torch.manual_seed(seed)
    head = FlowMatchingActionHead(cfg)
    head.set_normalization(*dataset_statistics(dataset))
    head.to(device).train()
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(list(dataset), batch_size=min(batch_size, len(dataset)), shuffle=True,
                        collate_fn=collate_samples, generator=gen, drop_last=False)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    total_steps = max(1, epochs * len(loader))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total_steps, pct_start=0.05)
    epoch_losses: List[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(epochs), desc='train action head', disable=not progress)
    for _ in bar:
        running, count = 0.0, 0
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = head.loss(batch['vis_tokens'], batch['vis_mask'], batch['plan_tokens'],
                             head.normalize_proprio(batch['proprio']), head.normalize_actions(batch['actions']),
                             plan_mask=batch['plan_mask'])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
            sched.step()
            running += float(loss.detach()) * batch['actions'].shape[0]
            count += batch['actions'].shape[0]
        epoch_losses.append(running / count)
        bar.set_postfix(loss=f'{epoch_losses[-1]:.4f}')
    head.eval()
    if out_path:
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        head.cpu().save(out_path)
        head.to(device)
    return {'epoch_losses': epoch_losses, 'final_loss': epoch_losses[-1], 'num_samples': len(dataset),
            'train_seconds': time.perf_counter() - t0, 'out_path': out_path, 'head': head}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description='Train the flow-matching action head on a demo dataset.')
    ap.add_argument('--data', required=True, help='dataset .npz or .pt (format: see vla_ros.action.train)')
    ap.add_argument('--out', default='checkpoints/action_head.pt')
    ap.add_argument('--epochs', type=int, default=50)
    ap.add_argument('--batch-size', type=int, default=64)
    ap.add_argument('--lr', type=float, default=3e-4)
    ap.add_argument('--device', default='cpu')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--hidden-dim', type=int, default=FlowHeadConfig.hidden_dim)
    ap.add_argument('--num-layers', type=int, default=FlowHeadConfig.num_layers)
    ap.add_argument('--denoising-steps', type=int, default=FlowHeadConfig.denoising_steps)
    args = ap.parse_args(argv)
    data = load_dataset(args.data)
    cfg = config_for_dataset(data, hidden_dim=args.hidden_dim, num_layers=args.num_layers,
                             denoising_steps=args.denoising_steps)
    metrics = train_action_head(data, cfg, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                device=args.device, out_path=args.out, seed=args.seed)
    metrics.pop('head')
    print(json.dumps({k: v for k, v in metrics.items() if k != 'epoch_losses'}, indent=2))


if __name__ == '__main__':
    main()

"""Flow-matching action head and its training entry point, without ROS."""
import numpy as np
import pytest
import torch

from vla_ros.action.flow_head import FlowHeadConfig, FlowMatchingActionHead
from vla_ros.action.train import (collate_samples, config_for_dataset, load_dataset, main as train_main,
                                  save_dataset, train_action_head)

torch.set_num_threads(1)
H, A = 8, 3


def _synthetic_samples(n=4, seed=0):
    """Reach-to-goal chunks whose goal is only visible through the conditioning tokens."""
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        q = rng.uniform(-1, 1, A)
        goal = rng.uniform(-1, 1, A)
        vis = rng.normal(size=(5 + i, 16))
        vis[0, :A] = goal  # goal is encoded in the first visual token
        samples.append(dict(vis_tokens=vis.astype(np.float32), plan_tokens=rng.normal(size=(2, 8)).astype(np.float32),
                            proprio=q.astype(np.float32),
                            actions=(q + (goal - q) * np.linspace(0.1, 1, H)[:, None]).astype(np.float32)))
    return samples


@pytest.fixture(scope='module')
def overfit():
    samples = _synthetic_samples()
    cfg = config_for_dataset(samples, hidden_dim=64, num_layers=2, num_heads=4, denoising_steps=10)
    metrics = train_action_head(samples, cfg, epochs=500, batch_size=4, lr=3e-3, seed=0, progress=False)
    return samples, metrics


def _predict(head, s, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return head.predict_actions(s['vis_tokens'][None], None, s['plan_tokens'][None], s['proprio'][None],
                                generator=g, **kw)[0].numpy()


def test_loss_decreases_and_sample_reproduces_training_chunks(overfit):
    samples, metrics = overfit
    losses = metrics['epoch_losses']
    assert np.mean(losses[-20:]) < 0.2 * np.mean(losses[:5])
    head = metrics['head']
    targets = np.stack([s['actions'] for s in samples])
    errors = []
    for i, s in enumerate(samples):
        pred = _predict(head, s, seed=i)
        dists = np.abs(targets - pred[None]).mean(axis=(1, 2))
        assert int(np.argmin(dists)) == i, f'sample {i} reproduced another chunk: {dists}'
        errors.append(dists[i])
    spread = np.abs(targets - targets.mean(0)).mean()
    assert np.mean(errors) < 0.25 * spread


def test_save_load_round_trip_is_exact(tmp_path, overfit):
    samples, metrics = overfit
    head = metrics['head']
    path = str(tmp_path / 'head.pt')
    head.save(path)
    loaded = FlowMatchingActionHead.load(path)
    assert loaded.config == head.config
    for name in ('proprio_mean', 'proprio_std', 'action_mean', 'action_std'):
        torch.testing.assert_close(getattr(loaded, name), getattr(head, name))
    np.testing.assert_array_equal(_predict(loaded, samples[1], seed=3), _predict(head, samples[1], seed=3))


def test_padding_tokens_are_ignored():
    torch.manual_seed(0)
    head = FlowMatchingActionHead(FlowHeadConfig(action_dim=A, horizon=H, vis_dim=16, plan_dim=8, proprio_dim=A,
                                                 hidden_dim=32, num_heads=2)).eval()
    s = _synthetic_samples(1)[0]
    base = _predict(head, s, seed=5)
    vis = np.concatenate([s['vis_tokens'], 100 * np.ones((4, 16), np.float32)])[None]
    mask = np.array([[True] * len(s['vis_tokens']) + [False] * 4])
    g = torch.Generator().manual_seed(5)
    padded = head.predict_actions(vis, mask, s['plan_tokens'][None], s['proprio'][None], generator=g)[0].numpy()
    np.testing.assert_allclose(padded, base, atol=1e-5)
    g = torch.Generator().manual_seed(5)
    unmasked = head.predict_actions(vis, None, s['plan_tokens'][None], s['proprio'][None], generator=g)[0].numpy()
    assert np.abs(unmasked - base).max() > 1e-3  # the mask really is what hides the garbage


def test_rtc_inpainting_matches_frozen_prefix(overfit):
    samples, metrics = overfit
    head = metrics['head']
    s = samples[0]
    committed = _predict(head, samples[2])  # an unrelated chunk plays the role of the old commitment
    weights = np.zeros(H, np.float32)
    weights[:3] = 1.0
    weights[3:6] = [0.6, 0.3, 0.1]
    naive = _predict(head, s, seed=7)
    rtc = _predict(head, s, seed=7, prefix=committed[None], prefix_weights=weights)
    naive_err = np.abs(naive[:3] - committed[:3]).max()
    rtc_err = np.abs(rtc[:3] - committed[:3]).max()
    assert rtc_err < 1e-4 < naive_err
    # Soft region: pulled towards the commitment, but not replaced by it.
    mid_naive = np.abs(naive[3] - committed[3]).mean()
    mid_rtc = np.abs(rtc[3] - committed[3]).mean()
    assert 1e-4 < mid_rtc < mid_naive
    # Free region keeps the model's own plan: goal of sample 0, not of the committed chunk.
    assert np.abs(rtc[-1] - s['actions'][-1]).mean() < np.abs(rtc[-1] - committed[-1]).mean()


def test_dataset_round_trip_and_collate(tmp_path):
    samples = _synthetic_samples(3, seed=1)
    for ext in ('npz', 'pt'):
        path = str(tmp_path / f'data.{ext}')
        save_dataset(path, samples)
        back = load_dataset(path)
        assert len(back) == 3
        for a, b in zip(samples, back):
            for key in a:
                np.testing.assert_array_equal(np.asarray(b[key]), a[key])
    batch = collate_samples(samples)
    assert batch['vis_tokens'].shape == (3, 7, 16)
    assert batch['vis_mask'].sum(1).tolist() == [5, 6, 7]
    assert batch['actions'].shape == (3, H, A)


def test_train_cli_writes_loadable_checkpoint(tmp_path):
    data = str(tmp_path / 'demo.npz')
    out = str(tmp_path / 'ckpt' / 'head.pt')
    save_dataset(data, _synthetic_samples(3))
    train_main(['--data', data, '--out', out, '--epochs', '2', '--hidden-dim', '32', '--num-layers', '1'])
    head = FlowMatchingActionHead.load(out)
    assert (head.config.horizon, head.config.action_dim, head.config.vis_dim) == (H, A, 16)
    actions = np.stack([s['actions'] for s in _synthetic_samples(3)]).reshape(-1, A)
    np.testing.assert_allclose(head.action_mean.numpy(), actions.mean(0), rtol=1e-5, atol=1e-6)

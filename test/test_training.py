"""vla_train: batched encoder/plan-token replicas match the run-time code, and a tiny pipeline run ships
checkpoints the perception pipeline and the action head load and drive the sim with."""
import json
import os

import numpy as np
import pytest
import torch

from vla_ros.config import PlannerConfig
from vla_ros.planning.base import PlanRequest
from vla_ros.training.config import TrainConfig, config_from_args
from vla_ros.training.policy import (PlanTokens, build_encoder, encode_subset, normalise_pixels, sample_kept,
                                     save_encoder)

torch.set_num_threads(1)
SMALL = dict(encoder_hidden=32, encoder_layers=2, encoder_heads=2)


@pytest.fixture(scope='module')
def encoder_pair(tmp_path_factory):
    from vla_ros.perception.encoder import VisionEncoder

    torch.manual_seed(0)
    model = build_encoder(TrainConfig(**SMALL)).eval()
    path = save_encoder(model, str(tmp_path_factory.mktemp('enc') / 'vision_encoder'))
    return model, VisionEncoder.from_pretrained(path)


def test_batched_subset_encoder_matches_runtime_forward_subset(encoder_pair):
    model, runtime = encoder_pair
    rng = np.random.default_rng(0)
    images = (rng.random((2, 128, 128, 3)) * 255).astype(np.uint8)
    kept = np.stack([np.sort(rng.choice(64, 32, replace=False)) for _ in range(2)])
    with torch.no_grad():
        batched = encode_subset(model, normalise_pixels(torch.from_numpy(images)), torch.from_numpy(kept))
    for i in range(2):
        ref = runtime.forward_subset(runtime.embed(runtime.preprocess(images[i]))[torch.from_numpy(kept[i])]).features
        torch.testing.assert_close(batched[i], ref, atol=1e-5, rtol=1e-5)


def test_plan_token_replica_matches_lightweight_planner():
    plan = PlanTokens(32)
    rng = np.random.default_rng(1)
    for instruction, k in (('touch the red cube', 32), ('reach out and touch the blue block', 64)):
        tokens = rng.standard_normal((k, 32)).astype(np.float32)
        kept = np.sort(rng.choice(64, k, replace=False))
        ref = plan.planner.plan(PlanRequest(instruction=instruction, visual_tokens=tokens, kept_indices=kept,
                                            grid_hw=(8, 8))).plan_tokens
        ours = plan([instruction], torch.from_numpy(tokens)[None])[0].numpy()
        assert ours.shape == (PlannerConfig().num_plan_tokens, PlannerConfig().plan_token_dim)
        np.testing.assert_allclose(ours, ref, atol=1e-4)
    red, blue = plan.language('touch the red cube'), plan.language('touch the blue cube')
    assert not torch.allclose(red, blue)  # the colour reaches the head


def test_sampled_subsets_keep_the_instruction_relevant_patches():
    relevance = torch.zeros(4, 64)
    relevance[:, [9, 10, 17]] = torch.tensor([0.5, 1.0, 0.2])
    gen = torch.Generator().manual_seed(0)
    kept = sample_kept(relevance, 32, gen)
    assert kept.shape == (4, 32)
    for row in kept:
        assert torch.all(row[1:] > row[:-1])                 # ascending, unique
        assert {9, 10, 17} <= set(row.tolist())
    assert torch.equal(sample_kept(relevance, 64, gen)[0], torch.arange(64))


def test_observation_index_lags_within_the_episode():
    from vla_ros.training.trainer import observation_index

    gen = torch.Generator().manual_seed(0)
    # two episodes: 10 decisions 0.05 s apart, then 5 decisions of unknown spacing (no lag)
    step = torch.cat([torch.arange(10), torch.arange(5)])
    dt = torch.cat([torch.full((10,), 0.05), torch.zeros(5)])
    idx = torch.arange(15).repeat(400)
    obs = observation_index(idx, step, dt, 0.2, gen)
    lag = idx - obs
    assert int(lag.min()) == 0 and int(lag.max()) == 4          # 0.2 s / 0.05 s = up to 4 decisions back
    assert torch.all(lag <= step[idx])                          # never into the previous episode
    assert torch.all(lag[idx >= 10] == 0)                       # dt unknown: the sample's own frame
    assert set(lag[idx == 9].tolist()) == {0, 1, 2, 3, 4}       # uniform over whole decisions
    assert torch.equal(observation_index(idx, step, dt, 0.0, gen), idx)


def test_config_flags_round_trip():
    cfg = config_from_args(['--episodes', '7', '--noise-levels', '0,0.05', '--keep-tokens', '32,64',
                            '--progress', 'false'])
    assert cfg.episodes == 7 and cfg.noise_levels == [0.0, 0.05] and cfg.keep_tokens == [32, 64]
    assert cfg.progress is False
    with pytest.raises(ValueError):
        TrainConfig(keep_tokens=[65]).validate()
    slow = config_from_args(['--rollout-inference-delay-s', '0.3', '--rollout-smoothing', 'none'])
    assert slow.rollout_inference_delay_s == 0.3 and slow.rollout_smoothing == 'none'
    for bad in (['--rollout-smoothing', 'rtcc'], ['--rollout-inference-delay-s', '-1']):
        with pytest.raises(ValueError):
            config_from_args(bad)


def test_perception_set_reaches_the_rollout_pipeline_on_top_of_the_task_preset():
    from vla_ros.config import PerceptionConfig
    from vla_ros.config.tasks import task_config

    def perception_config(task, overrides=None):
        return task_config(PerceptionConfig, 'perception', task, overrides)

    cfg = config_from_args(['--perception-set', 'keep_ratio=0.75, pruning=none', '--task', 'pick_place'])
    assert cfg.perception_overrides() == {'keep_ratio': 0.75, 'pruning': 'none'}
    for bad in ('keep_ratoi=1.0', 'keep_ratio=2.0', 'pruning'):
        with pytest.raises(ValueError):
            config_from_args(['--perception-set', bad])
    # The stack's settings for the task (its params file: defaults + preset), then the overrides.
    assert perception_config('touch').pruning == 'spatial_coverage'
    assert perception_config('pick_place').pruning == 'query'
    assert perception_config('pick_place').joint_names[-1] == 'finger_joint1'
    over = perception_config('pick_place', cfg.perception_overrides())
    assert (over.pruning, over.keep_ratio, over.joint_names[-1]) == ('none', 0.75, 'finger_joint1')


def test_tiny_training_run_ships_loadable_checkpoints(tmp_path):
    """Expert demos -> joint training -> one DAgger round -> closed-loop eval, all in miniature."""
    from vla_ros.action.flow_head import FlowMatchingActionHead
    from vla_ros.perception.encoder import VisionEncoder
    from vla_ros.training.cli import run

    cfg = TrainConfig(out_dir=str(tmp_path / 'ckpt'), work_dir=str(tmp_path / 'work'), device='cpu', workers=1,
                      episodes=2, max_steps=30, epochs=2, batch_size=16, dagger_rounds=1, dagger_episodes=1,
                      dagger_epochs=1, eval_episodes=1, episode_timeout_s=1.5, progress=False, head_hidden=32,
                      head_layers=1, head_memory_layers=1, target_aux_weight=1.0, checkpoint_every_s=1e-6,
                      observation_lag_s=0.1, rollout_observation_delay_s=0.1, **SMALL)
    saves = []
    import vla_ros.training.cli as cli
    real_save = cli.save_policy
    cli.save_policy = lambda policy, out: saves.append(out) or real_save(policy, out)
    try:
        report = run(cfg)
    finally:
        cli.save_policy = real_save
    # --checkpoint-every-s: saved to out_dir after every epoch here, before the final save.
    assert saves.count(cfg.out_dir) >= 1 + 2 + 1
    # The auxiliary target loss (named cube + goal from the head's proprio token) ran on every epoch.
    target_losses = report['train'][0]['epoch_target_losses']
    assert len(target_losses) == 2 and all(np.isfinite(target_losses)) and all(x > 0 for x in target_losses)
    assert report['expert']['episodes'] == 2 and report['expert']['samples'] > 20
    losses = report['train'][0]['epoch_losses']
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert report['dagger'][0]['samples'] > 0          # the policy's own states, expert-labelled
    assert report['dagger'][0]['train']['samples'] > report['train'][0]['samples']
    assert report['eval']['episodes'] == 1 and 0.0 <= report['eval']['wilson95'][0] <= report['eval']['wilson95'][1]
    encoder = VisionEncoder.from_pretrained(str(tmp_path / 'ckpt' / 'vision_encoder'))
    head = FlowMatchingActionHead.load(str(tmp_path / 'ckpt' / 'action_head.pt'))
    assert encoder.hidden_size == head.config.vis_dim == 32 and head.config.memory_layers == 1
    saved = json.loads((tmp_path / 'ckpt' / 'train_metrics.json').read_text())
    assert saved['checkpoint']['bytes'] == report['checkpoint']['bytes'] > 0
    assert os.path.getsize(tmp_path / 'ckpt' / 'action_head.pt') < 30e6
    assert report['eval']['observation_delay_s'] == 0.1
    # --eval-only: no demos, no training; the checkpoint's own training report stays as it was.
    import dataclasses
    again = run(dataclasses.replace(cfg, eval_only=True, init_from=cfg.out_dir, out_dir=str(tmp_path / 'ev'),
                                    eval_episodes=2))
    assert 'expert' not in again and 'train' not in again
    assert again['eval']['episodes'] == 2 and again['eval']['model_dir'] == os.path.abspath(cfg.out_dir)
    assert json.loads((tmp_path / 'ev' / 'eval_metrics.json').read_text())['eval']['episodes'] == 2
    assert json.loads((tmp_path / 'ckpt' / 'train_metrics.json').read_text())['eval']['episodes'] == 1
    # --perception-set: the evaluation's perception pipeline (this process: workers=1) runs those settings.
    from vla_ros.training.rollouts import _STATE
    pruned = run(dataclasses.replace(cfg, eval_only=True, init_from=cfg.out_dir, out_dir=str(tmp_path / 'ev2'),
                                     perception_set='pruning=none,reuse_enabled=false'))
    assert pruned['eval']['perception'] == {'pruning': 'none', 'reuse_enabled': False}
    pipeline_cfg = _STATE['policy']['pipeline'].cfg
    assert (pipeline_cfg.pruning, pipeline_cfg.reuse_enabled) == ('none', False)


def _random_episode_data(seed: int, n: int, horizon: int, joints: int):
    """One random pick-and-place episode of n samples in an EpisodeData (CPU), for trainer unit tests."""
    from vla_ros.training.trainer import EpisodeData

    rng = np.random.default_rng(seed)
    episode = {'instruction': 'put the red cube on the yellow pad',
               'images': rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8),
               'proprio': rng.normal(size=(n, joints)).astype(np.float32),
               'actions': rng.normal(size=(n, horizon, joints)).astype(np.float32),
               'relevance': rng.random((n, 4)).astype(np.float32), 'colours': rng.random((n, 5, 4)),
               'targets': rng.normal(size=(n, 6)).astype(np.float32)}
    data = EpisodeData('cpu')
    data.add([episode])
    return data


def test_a_diverging_phase_restores_its_best_epoch():
    """A loss that blows up (here: an absurd learning rate) does not leave the diverged weights behind."""
    from vla_ros.training.trainer import Policy, train_policy

    horizon, joints = 4, 8
    data = _random_episode_data(0, 48, horizon, joints)
    cfg = TrainConfig(task='pick_place', device='cpu', image_size=32, patch_size=16, head_hidden=32, head_layers=1,
                      head_memory_layers=1, batch_size=16, keep_tokens=[4], progress=False, **SMALL)
    torch.manual_seed(0)
    policy = Policy(cfg, action_dim=joints, horizon=horizon, proprio_dim=joints)
    policy.head.set_normalization(*data.statistics())
    calm = train_policy(policy, data, cfg, epochs=3, lr=1e-3, seed=1)
    assert calm['restored_epoch'] is None
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    wild = train_policy(policy, data, cfg, epochs=4, lr=3.0, seed=2)
    losses = wild['epoch_losses']
    finite = [x for x in losses if np.isfinite(x)]
    best = wild['restored_epoch']
    assert best is not None                  # diverged: the last loss is NaN or far above the best
    after = policy.state_dict()
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    if best == 0:                            # no epoch left finite weights: those the phase started from
        assert all(torch.equal(before[k], after[k]) for k in before)
    else:                                    # a finite earlier epoch's weights, not the last's
        assert best < len(losses) and np.isfinite(losses[best - 1])


def test_ema_phase_ends_on_the_weight_average():
    """With ema_decay the phase ends on the running average of its weights: between the start and the last
    step's weights (decay 0.5 over a few steps: close to the last), and decay ~1 keeps the start weights."""
    import dataclasses

    from vla_ros.training.trainer import Policy, train_policy

    horizon, joints = 4, 8
    data = _random_episode_data(1, 32, horizon, joints)
    cfg = TrainConfig(task='pick_place', device='cpu', image_size=32, patch_size=16, head_hidden=32, head_layers=1,
                      head_memory_layers=1, batch_size=16, keep_tokens=[4], progress=False, divergence_factor=0,
                      **SMALL)

    def trained(ema_decay):
        torch.manual_seed(0)
        policy = Policy(cfg, action_dim=joints, horizon=horizon, proprio_dim=joints)
        policy.head.set_normalization(*data.statistics())
        start = {k: v.clone() for k, v in policy.state_dict().items()}
        report = train_policy(policy, data, dataclasses.replace(cfg, ema_decay=ema_decay), epochs=3, lr=1e-3,
                              seed=1)
        return start, policy.state_dict(), report

    start, raw, plain = trained(0.0)
    _, frozen, frozen_report = trained(1.0 - 1e-9)
    _, averaged, report = trained(0.5)
    assert not plain['ema'] and report['ema'] and frozen_report['ema']
    key = 'head.decoder.layers.0.linear1.weight'
    moved = (raw[key] - start[key]).norm()
    assert moved > 0
    assert torch.allclose(frozen[key], start[key], atol=1e-6)          # decay ~1: the average never moved
    assert 0 < (averaged[key] - start[key]).norm() <= moved * 1.05      # the average trails the weights
    assert not torch.equal(averaged[key], raw[key])


def test_a_checkpoint_of_another_arm_warm_starts_encoder_and_matching_head_weights(tmp_path):
    """--init-from a policy with another joint count (the SO-101 touch head: 5 values, pick-and-place: 6) copies
    the encoder and every head tensor of the same shape; the joint-sized layers start fresh, the data's
    normalisation is installed and the warm-started policy trains. The same joint count continues as before."""
    import dataclasses

    from vla_ros.training.cli import save_policy
    from vla_ros.training.trainer import Policy, train_policy

    horizon = 4
    cfg = TrainConfig(task='pick_place', device='cpu', image_size=32, patch_size=16, head_hidden=32, head_layers=1,
                      head_memory_layers=1, batch_size=16, keep_tokens=[4], progress=False, **SMALL)
    torch.manual_seed(0)
    source = Policy(cfg, action_dim=5, horizon=horizon, proprio_dim=5)
    source.head.set_normalization(np.zeros(5), np.full(5, 2.0), np.zeros(5), np.full(5, 3.0))
    save_policy(source, str(tmp_path / 'touch'))

    data = _random_episode_data(2, 32, horizon, 6)
    warm = Policy(dataclasses.replace(cfg, init_from=str(tmp_path / 'touch')), action_dim=6, horizon=horizon,
                  proprio_dim=6)
    assert warm.head_statistics_needed
    assert set(warm.transfer['fresh']) == {'proprio_proj.0.weight', 'action_in.weight', 'out.weight', 'out.bias',
                                           'proprio_mean', 'proprio_std', 'action_mean', 'action_std'}
    theirs = source.head.state_dict()
    mine = warm.head.state_dict()
    for k in warm.transfer['copied']:
        assert torch.equal(mine[k], theirs[k]), k
    assert mine['out.weight'].shape == (6, 32) and mine['proprio_proj.0.weight'].shape == (32, 6)
    for k, v in source.encoder.state_dict().items():
        assert torch.equal(warm.encoder.state_dict()[k], v), k
    warm.head.set_normalization(*data.statistics())
    assert torch.allclose(warm.head.action_std, data.tensors['actions'].reshape(-1, 6).std(0).clamp_min(1e-3),
                          rtol=1e-3)
    report = train_policy(warm, data, cfg, epochs=2, lr=1e-3, seed=1)
    assert np.isfinite(report['final_loss'])

    same = Policy(dataclasses.replace(cfg, init_from=str(tmp_path / 'touch')), action_dim=5, horizon=horizon,
                  proprio_dim=5)
    assert not same.head_statistics_needed and not same.transfer
    assert torch.equal(same.head.action_std, torch.full((5,), 3.0))

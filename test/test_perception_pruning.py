"""Token pruning strategies: budgets, index invariants, spatial spread, instruction relevance."""
import numpy as np
import pytest
import torch

from vla_ros.perception.pruning import (STRATEGIES, attention_topk, select_tokens, spatial_coverage,
                                        token_budget)
from vla_ros.perception.relevance import colour_relevance, colour_words, text_query_embedding
from vla_ros.perception.synthetic import tabletop_frame

GRID = (8, 8)
N = 64


def _coverage_radius(kept, grid=GRID):
    """Largest distance (in patches) from any grid cell to its nearest kept token."""
    rows, cols = np.divmod(np.arange(grid[0] * grid[1]), grid[1])
    pts = np.stack([rows, cols], 1).astype(float)
    return np.linalg.norm(pts[:, None] - pts[kept][None], axis=2).min(axis=1).max()


@pytest.mark.parametrize('strategy', STRATEGIES)
@pytest.mark.parametrize('budget', [1, 7, 32, 64])
def test_every_strategy_respects_budget_and_returns_sorted_unique_indices(strategy, budget):
    rng = np.random.default_rng(budget)
    tokens = torch.randn(N, 16)
    attn = rng.random(N)
    rel = rng.random(N)
    idx, kept = select_tokens(tokens, strategy, budget, GRID, attention=attn, relevance=rel)
    expected = N if strategy == 'none' else budget
    assert len(idx) == expected and kept.shape == (expected, 16)
    assert np.all(np.diff(idx) > 0) and idx.min() >= 0 and idx.max() < N
    assert torch.equal(kept, tokens[idx])                # tokens follow their (position-carrying) indices


def test_attention_topk_keeps_the_highest_scores():
    scores = np.zeros(N)
    scores[[5, 17, 40, 63]] = [4.0, 3.0, 2.0, 1.0]
    assert list(attention_topk(scores, 3)) == [5, 17, 40]


def test_spatial_coverage_spreads_tokens_over_the_grid_while_keeping_salient_ones():
    scores = np.zeros(N)
    for r in range(4):                                   # all saliency in the top-left quadrant
        for c in range(4):
            scores[r * 8 + c] = 1.0 + r + c
    topk = attention_topk(scores, 16)
    cover = spatial_coverage(scores, 16, GRID, salient_fraction=0.25)
    rows, cols = np.divmod(cover, 8)
    quadrants = {(r // 4, c // 4) for r, c in zip(rows, cols)}
    assert quadrants == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert set(attention_topk(scores, 4)) <= set(cover)  # most salient tokens survive
    assert _coverage_radius(cover) <= 2.0 < 4.0 <= _coverage_radius(topk)


def test_adaptive_budget_shrinks_only_for_concentrated_scores():
    uniform = np.ones(N)
    peaked = np.full(N, 1e-4)
    peaked[:6] = 1.0
    assert token_budget(N, 0.5, uniform, adaptive=True, mass=0.9, min_tokens=4) == 32
    assert token_budget(N, 0.5, peaked, adaptive=True, mass=0.9, min_tokens=4) == 6
    assert token_budget(N, 0.5, peaked, adaptive=True, mass=0.9, min_tokens=10) == 10
    assert token_budget(N, 0.5, peaked, adaptive=False) == 32
    assert token_budget(N, 0.001) == 1


def test_query_selection_prefers_patches_of_the_named_colour():
    img = tabletop_frame(128, cubes={'red': (0, 0), 'green': (64, 64), 'blue': (96, 16)}, cube_px=32)
    assert colour_words('Touch the RED cube, not the green one') == ['red', 'green']
    rel = colour_relevance(img, (8, 8), ['red'])
    red_patches = {0, 1, 8, 9}                           # 32 px cube at the corner = 2x2 patches of 16 px
    assert set(np.flatnonzero(rel > 0.99)) == red_patches
    assert rel.sum() == pytest.approx(4.0)               # no table / green / blue pixel counts as red
    idx, _ = select_tokens(torch.zeros(N, 4), 'query', 4, GRID, attention=np.random.default_rng(0).random(N),
                           relevance=rel)
    assert set(idx) == red_patches
    blue = colour_relevance(img, (8, 8), ['blue'])
    assert set(np.flatnonzero(blue > 0.99)) == {49, 50, 57, 58}     # rows 96-127, cols 16-47


def test_text_query_embedding_is_deterministic_and_text_dependent():
    a = text_query_embedding('pick up the mug', 64)
    assert a.shape == (64,) and np.array_equal(a, text_query_embedding('pick up the mug', 64))
    b = text_query_embedding('open the drawer', 64)
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) < 0.9

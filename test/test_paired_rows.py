"""Rows compared on the same seeds: Newcombe's paired interval and vla_compare_rows over both output formats."""
import json
import math

import numpy as np
import pytest

from vla_ros.eval.paired import compare_rows, load_rows, main, rows_of_episodes
from vla_ros.eval.stats import paired_difference_interval, wilson_interval


def test_paired_interval_is_the_unpaired_square_and_add_when_rows_are_uncorrelated():
    # both*neither == only_a*only_b: phi = 0, so the interval is the two Wilson half-widths added in quadrature
    diff, lo, hi = paired_difference_interval(20, 20, 20, 20)
    la, ua = wilson_interval(40, 80)
    assert diff == 0.0
    assert math.isclose(hi, math.hypot(ua - 0.5, 0.5 - la)) and math.isclose(lo, -hi)


def test_paired_interval_shrinks_with_agreement_and_flips_with_the_rows():
    # same marginals (88 vs 77 of 100): agreeing seeds make the interval narrower than disagreeing ones
    agree = paired_difference_interval(77, 11, 0, 12)
    mixed = paired_difference_interval(66, 22, 11, 1)
    assert math.isclose(agree[0], -0.11) and math.isclose(mixed[0], -0.11)
    assert agree[2] - agree[1] < mixed[2] - mixed[1]
    assert agree[1] < -0.11 < agree[2] < 0           # 11 seeds lost, none gained: the loss is significant
    swapped = paired_difference_interval(77, 0, 11, 12)
    assert np.allclose(swapped, (0.11, -agree[2], -agree[1]))
    assert paired_difference_interval(0, 0, 0, 0) == (0.0, -1.0, 1.0)
    with pytest.raises(ValueError):
        paired_difference_interval(1, -1, 0, 0)


def test_paired_interval_covers_the_true_difference_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    p_both, p_a, p_b = 0.80, 0.06, 0.03          # true difference p_b - p_a = -0.03
    hits, trials = 0, 1500
    for _ in range(trials):
        cells = rng.multinomial(200, [p_both, p_a, p_b, 1 - p_both - p_a - p_b])
        _, lo, hi = paired_difference_interval(*cells)
        hits += lo <= -0.03 <= hi
    assert 0.93 <= hits / trials <= 0.985


def test_rows_pair_by_seed_and_pool_runs(tmp_path):
    per_episode = [dict(row=row, seed=s, success=ok) for row, s, ok in [
        ('full', 1, True), ('full', 2, True), ('full', 3, False),
        ('pruning', 1, True), ('pruning', 2, False), ('pruning', 3, True), ('pruning', 4, True)]]
    [c] = compare_rows(rows_of_episodes(per_episode))
    assert (c['row'], c['paired_episodes'], c['only_base'], c['only_row'], c['difference']) == ('pruning', 3, 1, 1, 0)
    harness_dir = tmp_path / 'stack'
    harness_dir.mkdir()
    (harness_dir / 'episodes.json').write_text(json.dumps({'per_episode': per_episode}))
    for row, outcomes in [('full', [True, True]), ('reuse_off', [False, True])]:
        (tmp_path / 'noros' / row).mkdir(parents=True)
        (tmp_path / 'noros' / row / 'eval_metrics.json').write_text(json.dumps(
            {'eval': {'per_episode': [{'seed': 1 + i, 'success': ok} for i, ok in enumerate(outcomes)]}}))
    assert sorted(load_rows(str(tmp_path / 'noros'))) == ['full', 'reuse_off']
    out = tmp_path / 'cmp.md'
    # the same seeds in two runs are two pairs each
    assert main([str(harness_dir), str(harness_dir), '--out', str(out)]) == 0
    result = json.loads((tmp_path / 'cmp.json').read_text())
    assert result['rows'][0]['paired_episodes'] == 6 and '| pruning | full | 6 |' in out.read_text()
    assert main([str(tmp_path / 'noros'), '--base', 'nope']) == 2

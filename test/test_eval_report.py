"""vla_evaluate writes JSON/Markdown/PNG/self-contained HTML reports and a labelled comparison table."""
import base64
import json
import re

import pytest

pytest.importorskip('rclpy')
from test_eval_metrics import build_synthetic_bag  # noqa: E402

from vla_ros.eval.evaluate import main as evaluate_main  # noqa: E402

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
EXPECTED_PLOTS = ('latency_hist', 'commands', 'control_jitter', 'tokens', 'plan_cache', 'episodes')


def test_single_bag_report_files(tmp_path, capsys):
    bag = build_synthetic_bag(tmp_path / 'bag')
    out = tmp_path / 'report'
    assert evaluate_main([str(bag), '--out', str(out), '--no-progress']) == 0

    report = json.loads((out / 'report.json').read_text())
    assert report['success']['success_rate'] == pytest.approx(2 / 3)
    assert report['plan_cache']['hit_rate'] == pytest.approx(0.5)
    for name in EXPECTED_PLOTS:
        assert (out / f'{name}.png').read_bytes().startswith(PNG_MAGIC), name

    html = (out / 'report.html').read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(embedded) == len(EXPECTED_PLOTS)
    assert all(base64.b64decode(data).startswith(PNG_MAGIC) for data in embedded)
    assert 'image stamp -&gt; first command' in html and '<table>' in html
    assert 'src="' + 'latency_hist.png' not in html  # self-contained: no file references

    md = (out / 'report.md').read_text()
    assert '| success | success rate | 0.667 |' in md
    assert '![episodes](episodes.png)' in md
    printed = capsys.readouterr().out
    assert 'plan cache hit rate' in printed and 'report.html' in printed


def test_compare_mode_builds_side_by_side_table(tmp_path):
    on = build_synthetic_bag(tmp_path / 'on_bag')
    off = build_synthetic_bag(tmp_path / 'off_bag', with_trajectory=False)
    out = tmp_path / 'cmp'
    assert evaluate_main([str(on), str(off), '--label', 'on', '--label', 'off', '--out', str(out),
                          '--no-progress']) == 0
    table = (out / 'comparison.md').read_text().splitlines()
    assert table[0] == '| metric | on | off |'
    rows = {line.split('|')[1].strip(): [c.strip() for c in line.split('|')[2:-1]] for line in table[2:]}
    assert rows['success rate'] == ['0.667', '0.667']
    assert rows['end-to-end p50 [ms]'] == ['31', '31']
    assert rows['plan cache hit rate'] == ['0.5', '0.5']
    # 'off' has no stamped trajectory: its control rate comes from receive times (still 100 Hz here).
    assert rows['control rate [Hz]'] == ['100', '100']
    for label in ('on', 'off'):
        assert (out / label / 'report.html').is_file()
    index = json.loads((out / 'comparison.json').read_text())
    assert set(index) == {'on', 'off'}


def test_bad_bag_is_reported_not_raised(tmp_path, capsys):
    assert evaluate_main([str(tmp_path / 'missing'), '--out', str(tmp_path / 'r'), '--no-progress']) == 1
    assert 'cannot evaluate' in capsys.readouterr().err


def test_label_count_must_match(tmp_path):
    with pytest.raises(SystemExit):
        evaluate_main(['a', 'b', '--label', 'x', '--out', str(tmp_path)])

"""Per-episode stack counters: growth between episode ends, the bringup line format, failed vs succeeded."""
from vla_ros.eval.episode_diagnostics import CounterDeltas, compare_outcomes, format_line, parse_lines
from vla_ros.eval.harness import parse_episode_lines


def test_counters_grow_per_episode_and_only_the_configured_ones_count():
    c = CounterDeltas({'action': ('restarts', 'safety_stale'), 'planner': ('results',)})
    c.update('/vla/action', {'restarts': '2', 'safety_stale': '10', 'mode': 'running', 'other': '5'})
    c.update('/vla/planner', {'results': 'n/a'})                  # not a number: ignored
    assert c.episode_end() == {'action.restarts': 2.0, 'action.safety_stale': 10.0}
    c.update('/vla/action', {'restarts': '3', 'safety_stale': '10'})
    c.update('/vla/planner', {'results': '7'})
    assert c.episode_end() == {'action.restarts': 1.0, 'action.safety_stale': 0.0, 'planner.results': 7.0}
    assert c.episode_end() == {'action.restarts': 0.0, 'action.safety_stale': 0.0, 'planner.results': 0.0}
    assert format_line(0, {}) is None


def test_stack_lines_attach_to_their_episodes_and_split_by_outcome():
    text = ('episode 0: SUCCESS in 2.0s (touch the red cube)\n'
            + format_line(0, {'action.restarts': 1, 'perception.frames_processed': 30}) + '\n'
            + '[bar] episode 1: fail in 20.0s (touch the blue cube)\n'
            + format_line(1, {'action.restarts': 5, 'perception.frames_processed': 12}) + '[INFO] [x]: y\n')
    assert parse_lines(text)[1] == {'action.restarts': 5.0, 'perception.frames_processed': 12.0}
    eps = parse_episode_lines(text, seed=100)
    assert [e['stack']['action.restarts'] for e in eps] == [1.0, 5.0]
    rows = {r['counter']: r for r in compare_outcomes(eps + [{'success': True}])}   # no counters: skipped
    assert rows['action.restarts']['failed'] == 5.0 and rows['action.restarts']['succeeded'] == 1.0
    assert rows['perception.frames_processed']['succeeded_episodes'] == 1

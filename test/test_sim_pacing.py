"""RealtimePacer: simulated time never runs ahead of the wall clock, across resets and stalls."""
import pytest

from vla_ros.sim.pacing import RealtimePacer

DT = 0.002


def _drive(pacer, events, wall_step=0.004, duration=4.0, max_steps=50):
    """Run a fake sim loop; `events` maps wall time -> a stall (seconds the loop is blocked)."""
    wall, elapsed_sim, worst_lead = 0.0, 0.0, 0.0
    pending = dict(events)
    while wall < duration:
        for t in [t for t in pending if t <= wall]:
            wall += pending.pop(t)
        n = pacer.steps_due(wall, max_steps)
        elapsed_sim += n * DT
        worst_lead = max(worst_lead, elapsed_sim - wall * pacer.realtime_factor)
        wall += wall_step
    return elapsed_sim, wall, worst_lead


def test_tracks_wall_clock_in_steady_state():
    elapsed, wall, lead = _drive(RealtimePacer(DT), {})
    assert elapsed == pytest.approx(wall, abs=0.02)
    assert lead <= DT + 1e-9


def test_stall_drops_backlog_beyond_catch_up():
    pacer = RealtimePacer(DT, max_catch_up_s=0.1)
    elapsed, wall, lead = _drive(pacer, {1.0: 1.0})
    assert pacer.achieved_factor(wall) == pytest.approx(elapsed / wall)
    # One second lost to the stall is not replayed (only 0.1 s of catch-up), and sim never leads.
    assert wall - elapsed == pytest.approx(0.9, abs=0.03)
    assert lead <= DT + 1e-9


def test_realtime_factor_scales_sim_speed():
    pacer = RealtimePacer(DT, realtime_factor=2.0)
    elapsed, wall, _ = _drive(pacer, {}, max_steps=200)
    assert elapsed == pytest.approx(2.0 * wall, abs=0.03)

"""Keeps simulated time in step with the wall clock.

The pacer counts the physics time it has handed out rather than reading MuJoCo's clock,
which jumps back to zero at every episode reset; a loop that falls behind (slow render,
busy CPU) drops the backlog beyond `max_catch_up_s` instead of racing ahead to repay it.
The simulation therefore never runs ahead of `realtime_factor` x wall time.
"""


class RealtimePacer:
    def __init__(self, timestep: float, realtime_factor: float = 1.0, max_catch_up_s: float = 0.1):
        self.timestep = float(timestep)
        self.realtime_factor = float(realtime_factor)
        self.max_catch_up_s = float(max_catch_up_s)
        self._wall0 = None
        self._granted_s = 0.0   # physics time handed out so far
        self._dropped_s = 0.0   # backlog given up after stalls

    def steps_due(self, wall_now: float, max_steps: int) -> int:
        """Physics steps to run now (at most `max_steps`); the caller must run exactly these."""
        if self._wall0 is None:
            self._wall0 = wall_now
        due = (wall_now - self._wall0) * self.realtime_factor - self._dropped_s - self._granted_s
        if due > self.max_catch_up_s:
            self._dropped_s += due - self.max_catch_up_s
            due = self.max_catch_up_s
        n = max(0, min(int(due / self.timestep), int(max_steps)))
        self._granted_s += n * self.timestep
        return n

    def achieved_factor(self, wall_now: float) -> float:
        """Sim seconds per wall second since the start (below realtime_factor after stalls)."""
        if self._wall0 is None or wall_now <= self._wall0:
            return 0.0
        return self._granted_s / (wall_now - self._wall0)

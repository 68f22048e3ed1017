"""Small statistics helpers for success rates."""
from __future__ import annotations

import math
from typing import Tuple

Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default); (0, 1) for no trials."""
    if trials <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= trials:
        raise ValueError(f'successes={successes} outside 0..{trials}')
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_difference_interval(both: int, only_a: int, only_b: int, neither: int,
                               z: float = Z_95) -> Tuple[float, float, float]:
    """Difference of two success rates measured on the same seeds, rate(b) - rate(a), with Newcombe's
    hybrid score interval for paired proportions (Newcombe 1998, method 10; 95% by default).

    both / only_a / only_b / neither: seeds that succeeded in both rows, only in row a, only in row b, in
    neither. Only the discordant seeds move the difference, so on shared seeds this interval is narrower
    than the two rows' Wilson intervals side by side. Returns (difference, low, high); (0, -1, 1) for no seeds."""
    counts = (both, only_a, only_b, neither)
    if any(c < 0 for c in counts):
        raise ValueError(f'negative count in {counts}')
    n = sum(counts)
    if n == 0:
        return 0.0, -1.0, 1.0
    pa, pb = (both + only_a) / n, (both + only_b) / n
    la, ua = wilson_interval(both + only_a, n, z)
    lb, ub = wilson_interval(both + only_b, n, z)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    cross = both * neither - only_a * only_b
    cross = cross - n / 2 if cross > n / 2 else (cross if cross < 0 else 0.0)   # Newcombe's correction of phi
    phi = cross / math.sqrt(margins) if margins else 0.0
    diff = pb - pa
    low = diff - math.sqrt(max(0.0, (pb - lb) ** 2 - 2 * phi * (pb - lb) * (ua - pa) + (ua - pa) ** 2))
    high = diff + math.sqrt(max(0.0, (ub - pb) ** 2 - 2 * phi * (ub - pb) * (pa - la) + (pa - la) ** 2))
    return diff, max(-1.0, low), min(1.0, high)

"""Weight schedules over a run, shared by the methods (step -> weight, pure functions)."""

from __future__ import annotations


def ramp_weight(step: int, total: int, start: float, end: float, final: float) -> float:
    """0 until `start` of the run, then a linear ramp to `final` at `end` (fractions of `total` steps); Lee
    (2013) ramps the pseudo-label weight this way."""
    t1, t2 = start * total, end * total
    if step < t1:
        return 0.0
    if step >= t2 or t2 <= t1:
        return final
    return final * (step - t1) / (t2 - t1)


def kl_weight(step: int, total: int, warmup: float) -> float:
    """Linear KL warm-up over the first `warmup` fraction of the run (1.0 when warmup is 0)."""
    if warmup <= 0:
        return 1.0
    return min(1.0, (step + 1) / max(1.0, warmup * total))

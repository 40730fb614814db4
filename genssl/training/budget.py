"""The clock of equal-cost budgets (`train.budgets_s`): seconds a run has spent training and validating.

On a CPU it is the process's CPU time: with train.threads=1 that is seconds of one core, and a second job on
the machine does not inflate it (wall time would). On a GPU it is wall time. The oracle's test scoring is study
overhead, so `paused()` leaves it out.
"""

from __future__ import annotations

import contextlib
import time


class BudgetClock:
    def __init__(self, kind: str, before: float = 0.0):
        if kind not in ("cpu", "wall"):
            raise ValueError(f"budget clock kind must be cpu or wall, got {kind!r}")
        self.kind = kind
        self._read = time.process_time if kind == "cpu" else time.perf_counter
        self._start = self._read()
        self._before = before     # seconds spent before a resume
        self._excluded = 0.0

    def elapsed(self) -> float:
        return self._before + self._read() - self._start - self._excluded

    @contextlib.contextmanager
    def paused(self):
        t0 = self._read()
        try:
            yield
        finally:
            self._excluded += self._read() - t0


def clock_kind(device) -> str:
    return "wall" if getattr(device, "type", str(device)) == "cuda" else "cpu"

"""The clock of equal-cost budgets (`train.budgets_s`): seconds a run has spent on its training steps.

What is on the clock, and nothing else: the training steps, including drawing their batches and augmenting
them, and the per-log-interval loss check (a host sync that realizes the steps' queued work). Off the clock:
validation (with its readout fit), the oracle's test scoring, checkpoint writes, TensorBoard image and embedding
logging, and the final test scoring. `train.budget_counts_validation: true` puts validation (and the readout
fit before it) on the clock, as a user who trains and validates on one machine pays for both. The pool filter's
own cost (training its model is another run; scoring the pool is this one's) is recorded as `filter_cost_s` and
charged only with `train.budget_counts_filter: true`.

On a CPU the clock is the process's CPU time: with train.threads=1 that is seconds of one core, and a second job
on the machine does not inflate it (wall time would). On a GPU it is wall time, read after a synchronize, so
queued kernels are charged to the work that launched them and not to whatever is timed next.
"""

from __future__ import annotations

import contextlib
import time

import torch


class BudgetClock:
    def __init__(self, kind: str, before: float = 0.0, device=None):
        if kind not in ("cpu", "wall"):
            raise ValueError(f"budget clock kind must be cpu or wall, got {kind!r}")
        self.kind = kind
        self._sync = (torch.cuda.synchronize if getattr(device, "type", device) == "cuda"
                      and torch.cuda.is_available() else None)
        self._timer = time.process_time if kind == "cpu" else time.perf_counter
        self._start = self._read()
        self._before = before     # seconds spent before a resume (and a charged pool filter)
        self._excluded = 0.0
        self._paused_depth = 0    # nested pauses exclude their time once
        self._paused_at: float | None = None

    def _read(self) -> float:
        if self._sync is not None:
            self._sync()
        return self._timer()

    def elapsed(self) -> float:
        """Seconds on the clock; inside a pause, those at the pause's start."""
        if self._paused_at is not None:
            return self._paused_at
        return self._before + self._read() - self._start - self._excluded

    @contextlib.contextmanager
    def paused(self):
        """Work inside is left off the clock (nested pauses count once)."""
        outermost = self._paused_depth == 0
        if outermost:
            self._paused_at = self.elapsed()
            t0 = self._read()
        self._paused_depth += 1
        try:
            yield
        finally:
            self._paused_depth -= 1
            if outermost:
                self._excluded += self._read() - t0
                self._paused_at = None

    def counted_if(self, charged: bool):
        """A context that charges its work to the clock when `charged`, and pauses the clock otherwise."""
        return contextlib.nullcontext() if charged else self.paused()


def clock_kind(device) -> str:
    return "wall" if getattr(device, "type", str(device)) == "cuda" else "cpu"

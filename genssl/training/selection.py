"""Which evaluated weights a run keeps: the selection policies of `train.select`, applied online as evaluations
arrive, with the same code replayable over a recorded validation curve (`replay`).

With 5,000 validation images the highest validation accuracy is a fair pick. With the ~10 per class a user
has, accuracies of one run's evaluations differ by less than their noise, so "best" mostly picks the luckiest
evaluation, often an early one (Oliver et al. 2018, sec. 4.6). The policies:

- ``best``: the highest validation accuracy (the earliest among ties).
- ``last``: the latest evaluation.
- ``within_se``: the latest evaluation whose accuracy a is within one binomial standard error of the best so
  far b: a >= b - sqrt(b (1 - b) / n_val). Online equals offline: once the best is reached, every later
  candidate is judged against it.
- ``smoothed``: the highest mean accuracy over the last `window` evaluations (trailing), keeping the weights at
  the window's end.
"""

from __future__ import annotations

import math

SELECT_WINDOW = 3


def standard_error(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy measured on n images."""
    return math.sqrt(max(acc * (1.0 - acc), 0.0) / n) if n > 0 else float("inf")


class Selector:
    """Online selection: `offer(step, val_acc)` says whether these weights become the pick."""

    def __init__(self, policy: str, n_val: int, window: int = SELECT_WINDOW):
        self.policy, self.n_val, self.window = policy, n_val, window
        self.pick_step, self.pick_val = -1, -1.0
        self.best_val = -1.0          # best single accuracy so far (best, within_se)
        self.best_score = -math.inf   # best trailing mean so far (smoothed)
        self.recent: list[float] = []

    def offer(self, step: int, val_acc: float) -> bool:
        take = False
        if self.policy == "best":
            take = val_acc > self.best_val
        elif self.policy == "last":
            take = True
        elif self.policy == "within_se":
            best = max(self.best_val, val_acc)
            take = val_acc >= best - standard_error(best, self.n_val)
        elif self.policy == "smoothed":
            self.recent = (self.recent + [val_acc])[-self.window:]
            score = sum(self.recent) / len(self.recent)
            take = score > self.best_score
            self.best_score = max(self.best_score, score)
        else:
            raise ValueError(f"unknown selection policy {self.policy!r}")
        if not math.isnan(val_acc):
            self.best_val = max(self.best_val, val_acc)
        if take:
            self.pick_step, self.pick_val = step, val_acc
        return take

    def state_dict(self) -> dict:
        return {"policy": self.policy, "n_val": self.n_val, "window": self.window, "pick_step": self.pick_step,
                "pick_val": self.pick_val, "best_val": self.best_val, "best_score": self.best_score,
                "recent": list(self.recent)}

    def load_state_dict(self, state: dict) -> None:
        if state["policy"] != self.policy:
            raise ValueError(f"selector state is for policy {state['policy']!r}, not {self.policy!r}")
        for key in ("n_val", "window", "pick_step", "pick_val", "best_val", "best_score"):
            setattr(self, key, state[key])
        self.recent = list(state["recent"])


def replay(curve: list[tuple[int, float]], policy: str, n_val: int) -> tuple[int, float]:
    """(step, val_acc) that `policy` picks from a recorded validation curve of (step, val_acc), in order; the
    pick the run would have made online."""
    sel = Selector(policy, n_val)
    for step, acc in curve:
        sel.offer(step, acc)
    return sel.pick_step, sel.pick_val

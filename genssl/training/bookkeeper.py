"""What one lane has picked: the selectors (the run's pick, best.pt, and one per budget), the validation curve
with the oracle's scores, the last step reached within each budget, the budget clock before a resume and, with
train.oracle, each evaluation's validation outcomes.

The `Bookkeeper` is the only source of truth for every pick, and its `state_dict` is what a checkpoint carries
and what resume restores. It does no I/O and reads no clock: the Trainer tells it what happened and when.
"""

from __future__ import annotations

import torch

from genssl.fileio import CheckpointError
from genssl.training.selection import Selector


class Bookkeeper:
    def __init__(self, select: str, n_val: int, budgets_s=(), clock_before: float = 0.0):
        self.budgets = sorted(budgets_s)
        self.selectors = {b: Selector(select, n_val) for b in (None, *budgets_s)}  # None: the run's pick, best.pt
        self.curve: list[dict] = []          # one dict per evaluation: step, clock_s, val_acc, [oracle_test_acc]
        self.budget_steps: dict = {}         # budget -> the last step reached within it
        self.clock_before = clock_before     # budget-clock seconds before a resume (and a charged pool filter)
        self.val_outcomes: list = []         # with train.oracle: (n_val,) bool per evaluation

    # ------------------------------------------------------------------ the run's own pick (best.pt)
    @property
    def main(self) -> Selector:
        return self.selectors[None]

    @property
    def best_val(self) -> float:
        return self.main.pick_val

    @property
    def best_step(self) -> int:
        return self.main.pick_step

    def set_pick(self, step: int, val_acc: float) -> None:
        self.main.pick_step, self.main.pick_val = step, val_acc

    # ------------------------------------------------------------------ what the loop reports
    def reach(self, step: int, spent_s: float) -> None:
        """`step` ended with `spent_s` seconds on the budget clock: it is within every budget not yet spent."""
        self.budget_steps.update({b: step for b in self.budgets if spent_s <= b})

    def record(self, point: dict, clock_s: float) -> list:
        """An evaluation's curve point (step, clock_s, val_acc, ...), offered to every selector whose budget
        `clock_s` has not passed; returns the budgets (None: the run's pick) that took these weights."""
        self.curve.append(point)
        taken = []
        for budget, selector in self.selectors.items():
            if budget is not None and clock_s > budget:
                continue  # these weights were reached after the budget was spent
            if selector.offer(point["step"], point["val_acc"]):
                taken.append(budget)
        return taken

    def adopt(self, step: int, val_acc: float) -> None:
        """A best.pt newer than the checkpoint resumed from becomes the incumbent pick."""
        self.set_pick(step, val_acc)
        self.main.best_val = max(self.main.best_val, val_acc)

    def budget_rows(self, spent_s: float, score) -> list[dict]:
        """The report's row per budget; `score(budget)` tests the weights picked within it."""
        rows = []
        for b in self.budgets:
            sel = self.selectors[b]
            picked = sel.pick_step >= 0
            at = next((p for p in self.curve if p["step"] == sel.pick_step), {})
            rows.append({
                "budget_s": b, "spent": spent_s >= b, "steps_within": self.budget_steps.get(b, 0),
                "step": sel.pick_step if picked else None, "clock_s": at.get("clock_s"),
                "val_acc": sel.pick_val if picked else None, "test_acc": score(b) if picked else None})
        return rows

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self, clock_s: float) -> dict:
        """The checkpoint's selection keys; `clock_s` is the budget clock now. best_val/best_step repeat the
        main selector's pick for readers of older checkpoints."""
        return {
            "best_val": self.best_val, "best_step": self.best_step,
            "selection": {str(b): sel.state_dict() for b, sel in self.selectors.items()},
            "curve": self.curve, "budget_steps": {str(b): s for b, s in self.budget_steps.items()},
            "budget_clock_s": clock_s,
            "val_outcomes": torch.stack(self.val_outcomes) if self.val_outcomes else None,
        }

    def load_state_dict(self, ckpt: dict, where) -> None:
        """Selectors, curve and budget clock from a checkpoint (`where` names it in errors); one written before
        they existed carries only best_val/best_step, which is the state of the `best` policy."""
        states = ckpt.get("selection")
        if states is None:
            self.main.pick_val = self.main.best_val = ckpt["best_val"]
            self.main.pick_step = ckpt["best_step"]
        else:
            for b, sel in self.selectors.items():
                if str(b) not in states:
                    raise CheckpointError(f"{where}: no selection state for budget {b}; the run began with "
                                          f"other train.budgets_s")
                sel.load_state_dict(states[str(b)])
        self.curve = list(ckpt.get("curve", []))
        self.budget_steps = {float(b): s for b, s in ckpt.get("budget_steps", {}).items()}
        self.clock_before = ckpt.get("budget_clock_s", 0.0)
        outcomes = ckpt.get("val_outcomes")
        self.val_outcomes = list(outcomes.cpu()) if outcomes is not None else []

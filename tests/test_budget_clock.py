"""What the budget clock counts (genssl.training.budget): training steps, and nothing else by default.

The clock is driven by real work (a busy loop on the CPU clock) or by a fake clock that only the work under
test advances, so each test fails if `BudgetClock.paused()` stops excluding what it should."""

from __future__ import annotations

import time

import pytest

from conftest import tiny_run_config
from genssl import Trainer
from genssl.data.batching import SSLBatcher
from genssl.runs.run_dir import RunDir
from genssl.training import budget as budget_mod
from genssl.training import trainer as trainer_mod
from genssl.training.budget import BudgetClock
from genssl.training.monitor import Monitor


def _busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_paused_work_of_known_length_is_excluded_and_the_rest_counted():
    clock = BudgetClock("cpu")
    _busy(0.15)
    with clock.paused():
        _busy(0.3)
        with clock.paused():  # nested pauses exclude their time once, not twice
            _busy(0.1)
        assert clock.elapsed() == pytest.approx(0.15, abs=0.05)  # frozen at the pause's start
    _busy(0.15)
    assert clock.elapsed() == pytest.approx(0.3, abs=0.06)
    with clock.counted_if(True):
        _busy(0.1)
    with clock.counted_if(False):
        _busy(0.2)
    assert clock.elapsed() == pytest.approx(0.4, abs=0.08)


class FakeTime:
    """A process clock that only `advance` moves."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def fake_time(monkeypatch):
    clock = FakeTime()
    monkeypatch.setattr(budget_mod.time, "process_time", clock)
    real_next = SSLBatcher.next

    def a_training_step_costs_one_second(self, *args, **kwargs):
        clock.advance(1.0)
        return real_next(self, *args, **kwargs)

    monkeypatch.setattr(SSLBatcher, "next", a_training_step_costs_one_second)
    return clock


def _slow(monkeypatch, owner, name: str, clock: FakeTime, seconds: float) -> None:
    real = getattr(owner, name)

    def slowed(*args, **kwargs):
        clock.advance(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, slowed)


def _run(tmp_path, name, tiny_data, **train):
    cfg = tiny_run_config("supervised", tmp_path / name, {"hidden": [16]}, train={
        "steps": 20, "eval_every": 2, "ckpt_every": 4, "log_every": 2, "select": "last", "oracle": True,
        "budgets_s": [7.5, 13.5], **train})
    res = Trainer(cfg, run_dir=tmp_path / name, data=tiny_data).fit()
    return [(b["step"], b["steps_within"], b["spent"]) for b in res["budgets"]], res


def test_validation_oracle_checkpoints_and_images_do_not_move_the_budget_picks(tiny_data, tmp_path, fake_time,
                                                                               monkeypatch):
    fast, fast_res = _run(tmp_path, "fast", tiny_data)
    assert fast == [(6, 7, True), (12, 13, True)]  # one second a step: the last evaluation within 7.5 s is step 6
    _slow(monkeypatch, trainer_mod.Trainer, "_validate", fake_time, 100.0)
    _slow(monkeypatch, trainer_mod, "accuracy", fake_time, 100.0)  # the oracle (and the final test scoring)
    _slow(monkeypatch, RunDir, "save_checkpoint", fake_time, 50.0)
    _slow(monkeypatch, Monitor, "images", fake_time, 30.0)
    slow, slow_res = _run(tmp_path, "slow", tiny_data)
    assert slow == fast
    assert [p["clock_s"] for p in slow_res["curve"]] == [p["clock_s"] for p in fast_res["curve"]]
    assert slow_res["budget_clock_s"] == fast_res["budget_clock_s"] == 20.0


def test_budget_counts_validation_puts_validation_on_the_clock(tiny_data, tmp_path, fake_time, monkeypatch):
    _slow(monkeypatch, trainer_mod.Trainer, "_validate", fake_time, 2.0)
    picks, res = _run(tmp_path, "counted", tiny_data, budget_counts_validation=True)
    # each evaluation (every 2 steps) now costs 2 s beside the two steps' 2 s
    clocks = [p["clock_s"] for p in res["curve"]]
    assert clocks[:3] == [4.0, 8.0, 12.0]
    assert picks == [(2, 4, True), (6, 7, True)]

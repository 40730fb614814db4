"""The realistic-evaluation options (Oliver et al. 2018): small validation sets with a selection policy, a
subsampled unlabeled pool, class mismatch at a fixed pool size, equal-cost budgets and the study-only oracle.
Exact counts and class sets per seed; no held-out class reaches the labeled, validation or test data; clear
errors for impossible requests; and test images that change no selection decision."""

from __future__ import annotations

import itertools
import json
import random

import pytest
import torch
import yaml

from conftest import synthetic_images, tiny_run_config
from genssl import Trainer
from genssl.compare.report import markdown_table, summarize
from genssl.compare.runner import run_grid
from genssl.config import ConfigError
from genssl.data.datasets import ImageData
from genssl.data.split import make_split
from genssl.data.task import restrict_to_task
from genssl.runs.run_dir import RunDir
from genssl.training import budget as budget_mod
from genssl.training.selection import Selector, replay, standard_error
from test_exact_resume import assert_same

TASK = [0, 2, 3, 5]  # four of ten classes; 1, 4, 6, 7, 8, 9 are held out


def _labels(per_class=200, num_classes=10, seed=0):
    y = torch.arange(num_classes).repeat_interleave(per_class)
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


# ------------------------------------------------------------------------------------------------ the split
@pytest.mark.parametrize("seed, mismatch", list(itertools.product([0, 1, 2], [0.0, 0.25, 0.5, 0.75, 1.0])))
def test_mismatch_split_exact_counts_and_class_sets(seed, mismatch):
    y = _labels()
    relabeled, _ = restrict_to_task(ImageData(torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8), y, 10),
                                    ImageData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10), 10),
                                    TASK)
    s = make_split(relabeled.labels, 10, n_labels=20, n_val=40, seed=seed, labeled_in_unlabeled=False,
                   n_unlabeled=400, classes=list(range(len(TASK))), mismatch=mismatch)
    original = y  # relabeled.labels[i] is TASK.index(y[i]) for task images
    assert len(s.labeled) == 20 and len(s.val) == 40 and len(s.unlabeled) == 400
    for name in ("labeled", "val"):  # a held-out class never reaches the labeled or validation images
        assert set(original[getattr(s, name)].tolist()) == set(TASK), name
        assert relabeled.labels[getattr(s, name)].max() < len(TASK)
    assert torch.bincount(relabeled.labels[s.labeled], minlength=4).tolist() == [5, 5, 5, 5]
    assert torch.bincount(relabeled.labels[s.val], minlength=4).tolist() == [10, 10, 10, 10]
    out_of_task = (~torch.isin(original[s.unlabeled], torch.tensor(TASK))).sum().item()
    assert out_of_task == round(mismatch * 400)
    lab, unl, val = set(s.labeled.tolist()), set(s.unlabeled.tolist()), set(s.val.tolist())
    assert not lab & unl and not lab & val and not unl & val
    again = make_split(relabeled.labels, 10, 20, 40, seed, False, 400, list(range(4)), mismatch)
    assert all(torch.equal(getattr(s, k), getattr(again, k)) for k in ("labeled", "unlabeled", "val"))


def test_task_test_set_holds_only_the_task_classes_relabeled_in_order():
    train, test = synthetic_images(300, seed=0), synthetic_images(200, seed=1)
    t_train, t_test = restrict_to_task(train, test, [7, 2, 5])
    assert set(t_test.labels.tolist()) == {0, 1, 2}
    assert len(t_test) == int(torch.isin(test.labels, torch.tensor([7, 2, 5])).sum())
    for new, old in enumerate([7, 2, 5]):  # same images, new names
        assert torch.equal(t_test.images[t_test.labels == new], test.images[test.labels == old])
        assert torch.equal(t_train.labels[train.labels == old], torch.full(((train.labels == old).sum(),), new))
    assert t_train.labels[~torch.isin(train.labels, torch.tensor([7, 2, 5]))].min() >= 3


def test_n_unlabeled_draws_a_seeded_pool_with_labeled_images_on_top():
    y = _labels(100)
    s = make_split(y, 10, n_labels=20, n_val=50, seed=3, labeled_in_unlabeled=True, n_unlabeled=300)
    assert len(s.unlabeled) == 320 and set(s.labeled.tolist()) <= set(s.unlabeled.tolist())
    assert not set(s.val.tolist()) & set(s.unlabeled.tolist())
    other = make_split(y, 10, n_labels=20, n_val=50, seed=4, labeled_in_unlabeled=True, n_unlabeled=300)
    assert set(s.unlabeled.tolist()) != set(other.unlabeled.tolist())


def test_the_default_split_is_unchanged_by_the_new_options():
    """n_unlabeled/classes left at None draw exactly the split earlier releases drew (same runs, same numbers)."""
    y = _labels(50)
    a = make_split(y, 10, 20, 30, seed=5)
    b = make_split(y, 10, 20, 30, seed=5, n_unlabeled=None, classes=None, mismatch=0.0)
    assert all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("labeled", "unlabeled", "val"))
    assert len(a.unlabeled) == len(y) - 30


FOUR = [0, 1, 2, 3]  # 800 images; the other six classes hold 1,200


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_labels=1000, classes=FOUR), "only 800 images of classes"),                      # more labels than exist
    (dict(n_labels=20, classes=FOUR, n_unlabeled=900), "only 780 are outside"),             # pool larger than left
    (dict(n_labels=20, classes=FOUR, n_unlabeled=1400, mismatch=1.0), "hold only 1200"),   # too few other images
    (dict(n_labels=20, mismatch=0.5), "needs classes outside the task"),                    # nothing to mismatch with
    (dict(n_labels=20, classes=[0, 10]), "not class indices"),
    (dict(n_labels=20, n_unlabeled=0), "n_unlabeled must be a positive"),
    (dict(n_labels=20, mismatch=1.5), "mismatch must be a share"),
])
def test_impossible_requests_name_the_problem(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_split(_labels(), 10, n_val=0, seed=0, **kwargs)


@pytest.mark.parametrize("data, train, match", [
    ({"mismatch": 0.5}, {}, "set data.classes"),
    ({"mismatch": 0.5, "classes": [0, 1]}, {}, "data.n_unlabeled"),
    ({"classes": [3, 3]}, {}, "distinct"),
    ({"n_val": 0}, {}, "train.select: last"),
    ({"n_unlabeled": -5}, {}, "data.n_unlabeled must be positive"),
    ({}, {"select": "oracle"}, "is not one of best, last, within_se, smoothed"),
    ({}, {"budgets_s": [60, -1]}, "positive number of seconds"),
    ({}, {"stop_at_budget": True}, "needs train.budgets_s"),
])
def test_config_rejects_impossible_options(tmp_path, data, train, match):
    with pytest.raises(ConfigError, match=match):
        tiny_run_config("supervised", tmp_path, data=data, train=train)


# ------------------------------------------------------------------------------------------------ selection
CURVE = [(100, 0.70), (200, 0.74), (300, 0.72), (400, 0.735), (500, 0.73), (600, 0.71)]


@pytest.mark.parametrize("policy, n_val, pick", [
    ("best", 100, 200),
    ("last", 100, 600),
    ("within_se", 100, 600),     # se(0.74, 100) = 0.044: everything after the best is within it
    ("within_se", 5000, 400),    # se(0.74, 5000) = 0.006: 0.735 is, 0.73 is not
    ("smoothed", 100, 400),      # trailing means of 3: 0.715 at 300, 0.732 at 400, 0.728 at 500
])
def test_policies_pick_as_documented(policy, n_val, pick):
    assert replay(CURVE, policy, n_val)[0] == pick


def test_within_se_online_equals_the_offline_rule():
    """Online (against the best so far) picks the latest evaluation within one standard error of the best of
    the whole curve."""
    rng = random.Random(0)
    for _ in range(200):
        curve = [(i, rng.choice([0.5, 0.6, 0.7, 0.72, 0.75, 0.8])) for i in range(rng.randint(1, 12))]
        n = rng.choice([10, 100, 5000])
        best = max(a for _, a in curve)
        offline = max(s for s, a in curve if a >= best - standard_error(best, n))
        assert replay(curve, "within_se", n)[0] == offline


def test_selector_state_round_trips():
    a = Selector("smoothed", 100)
    for s, acc in CURVE[:3]:
        a.offer(s, acc)
    b = Selector("smoothed", 100)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    for s, acc in CURVE[3:]:
        assert a.offer(s, acc) == b.offer(s, acc)
    assert (a.pick_step, a.pick_val) == (b.pick_step, b.pick_val)


# ------------------------------------------------------------------------------------------------ training
class StepClock:
    """A budget clock that advances one 'second' per reading: deterministic, so two runs' budget decisions can
    be compared exactly."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def _realistic_cfg(out, select="within_se", **train):
    return tiny_run_config(
        "supervised", out, {"hidden": [32]},
        data={"classes": [1, 3, 5, 7], "n_unlabeled": 120, "mismatch": 0.5, "n_val": 12, "n_labels": 8},
        train={"steps": 16, "eval_every": 2, "ckpt_every": 4, "log_every": 2, "select": select,
               "budgets_s": [15.0, 40.0], "oracle": True, **train})


@pytest.mark.parametrize("select", ["best", "within_se", "smoothed"])
def test_changing_only_the_test_images_changes_no_selection_decision(tiny_data, tmp_path, monkeypatch, select):
    train, test = tiny_data
    other_test = synthetic_images(200, seed=99)  # other images, other labels
    runs = []
    for name, t in (("a", test), ("b", other_test)):
        monkeypatch.setattr(budget_mod.time, "process_time", StepClock())
        res = Trainer(_realistic_cfg(tmp_path / name, select), run_dir=tmp_path / name, data=(train, t)).fit()
        runs.append((res, RunDir(tmp_path / name)))
    (a, ra), (b, rb) = runs
    assert [p["oracle_test_acc"] for p in a["curve"]] != [p["oracle_test_acc"] for p in b["curve"]]
    for key in ("best_val_acc", "best_step", "steps", "stopped_at_budget"):
        assert a[key] == b[key], key
    strip = lambda curve: [{k: v for k, v in p.items() if k != "oracle_test_acc"} for p in curve]  # noqa: E731
    assert strip(a["curve"]) == strip(b["curve"])
    for pa, pb in zip(a["budgets"], b["budgets"]):
        assert {k: v for k, v in pa.items() if k != "test_acc"} == {k: v for k, v in pb.items() if k != "test_acc"}
    for name in ["best.pt", *(RunDir.budget_checkpoint(x) for x in (15.0, 40.0))]:
        if ra.has(name) or rb.has(name):
            assert_same(ra.load_checkpoint(name)["model"], rb.load_checkpoint(name)["model"], name)


def test_budgets_are_picked_within_their_time_and_scored_once(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(budget_mod.time, "process_time", StepClock())
    res = Trainer(_realistic_cfg(tmp_path, "last", stop_at_budget=True), run_dir=tmp_path / "r",
                  data=tiny_data).fit()
    assert res["stopped_at_budget"] and res["steps"] < 16 and res["scheduled_steps"] == 16
    assert res["budget_clock"] == "cpu" and res["budget_clock_s"] > 40
    by_step = {p["step"]: p for p in res["curve"]}
    for b in res["budgets"]:
        assert by_step[b["step"]]["clock_s"] <= b["budget_s"] and b["spent"]
        later = [p for p in res["curve"] if p["step"] > b["step"]]
        assert all(p["clock_s"] > b["budget_s"] for p in later)  # `last`: the latest evaluation within it
        assert b["test_acc"] == pytest.approx(by_step[b["step"]]["oracle_test_acc"])
        assert b["step"] <= b["steps_within"]
    assert res["n_val"] == 12 and res["n_unlabeled"] == 128 and res["classes"] == [1, 3, 5, 7]
    ckpt = RunDir(tmp_path / "r").load_checkpoint("best.pt")
    assert ckpt["data_spec"]["num_classes"] == 4 and ckpt["class_names"] == ["1", "3", "5", "7"]
    outcomes = RunDir(tmp_path / "r").read_val_outcomes()
    assert outcomes["hits"].shape == (len(res["curve"]), 12)
    assert outcomes["hits"].float().mean(1).tolist() == pytest.approx([p["val_acc"] for p in res["curve"]])


def test_an_interrupted_budgeted_run_resumes_its_selection(tiny_data, tmp_path, monkeypatch):
    from test_exact_resume import interrupt_at

    cfg = _realistic_cfg(tmp_path, "smoothed")
    full = Trainer(cfg, run_dir=tmp_path / "full", data=tiny_data).fit()
    with monkeypatch.context() as m:
        interrupt_at(m, 10)
        with pytest.raises(KeyboardInterrupt):
            Trainer(cfg, run_dir=tmp_path / "part", data=tiny_data).fit()
    part = Trainer(cfg, run_dir=tmp_path / "part", data=tiny_data, resume=True).fit()
    assert [p["step"] for p in part["curve"]] == [p["step"] for p in full["curve"]]
    assert [p["val_acc"] for p in part["curve"]] == [p["val_acc"] for p in full["curve"]]
    assert part["best_step"] == full["best_step"] and part["test_acc"] == full["test_acc"]
    assert part["curve"][-1]["clock_s"] > 0


def test_a_grid_reports_equal_cost_budgets(tmp_path, tiny_data, monkeypatch):
    monkeypatch.setattr(budget_mod.time, "process_time", StepClock())
    grid = {"out": str(tmp_path / "out"),
            "overrides": {"data": {"dataset": "synthetic", "n_val": 20, "n_unlabeled": 200},
                          "train": {"steps": 8, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 2,
                                    "log_every": 2, "ckpt_every": 4, "progress": False, "select": "within_se",
                                    "budgets_s": [10, 1000]}},
            "methods": {"supervised": {"method": {"name": "supervised", "hidden": [32]}}},
            "n_labels": [20], "seeds": [0, 1]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    table = run_grid(str(path), data=tiny_data, progress=False)
    (row,) = table
    assert set(row["budgets"]) == {10.0, 1000.0} and row["budgets"][1000.0]["seeds"] == 2
    assert row["budgets"][1000.0]["unspent"] == 2  # the schedule ended before 1000 s
    text = (tmp_path / "out" / "results.md").read_text()
    assert "≤ 10s" in text and "≤ 16m40s" in text and "schedule ended first" in text
    assert "train.select=within_se picked on 20 validation images" in text
    runs_csv = (tmp_path / "out" / "runs.csv").read_text()
    assert "within_se" in runs_csv and "10s:" in runs_csv


def test_markdown_table_without_budgets_has_no_budget_table():
    assert "Equal cost" not in markdown_table(summarize([], []))

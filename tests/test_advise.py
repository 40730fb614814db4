"""`genssl advise` (genssl.advise): the budget and the plan's arithmetic, the recommendation rule, the errors a bad
folder gets, and one tiny advice end to end on a synthetic folder with a planted signal (three classes of distinct
patterns): the --dry-run plan, then the advice (internally consistent, budgets respected, a final run that
`genssl predict` reads), then a resume after runs were lost. Its test/ folder holds only unreadable files, so
reading it at any point would fail the run."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import threading
import time

import numpy as np
import pytest

from genssl.advise import AdviseError, advise, parse_budget
from genssl.advise.command import PLAN_FILE, SESSIONS_FILE, write_grid
from genssl.advise.evidence import nadeau_bengio, recommend
from genssl.advise.folder import read_user_data
from genssl.advise.plan import make_plan, min_detectable_effect, other_busy_cores, run_wall
from genssl.cli import main
from genssl.compare.grid import load_grid
from genssl.compare.stats import seeds_to_decide
from imagefiles import save

CLASSES = ("hstripes", "vstripes", "square")
RUN_BUDGET = 0.4  # seconds of the budget clock per run


def pattern(k: int, rng, size: int = 12) -> np.ndarray:
    x = rng.integers(0, 50, (size, size)).astype(np.int32)
    if k == 0:
        x[::3, :] += 180
    elif k == 1:
        x[:, ::3] += 180
    else:
        x[size // 4:3 * size // 4, size // 4:3 * size // 4] += 180
    return np.clip(x, 0, 255).astype(np.uint8)


def write_folder(root, per_class: int = 8, n_unlabeled: int = 30, classes=CLASSES, val: int = 0):
    rng = np.random.default_rng(0)
    for k, name in enumerate(classes):
        for i in range(per_class):
            save(pattern(k, rng), root / "labeled" / name / f"{i}.png")
        for i in range(val):
            save(pattern(k, rng), root / "val" / name / f"{i}.png")
        (root / "test" / name).mkdir(parents=True, exist_ok=True)
        (root / "test" / name / "0.png").write_bytes(b"not an image: advise must never read test/")
    for i in range(n_unlabeled):
        save(pattern(i % len(classes), rng), root / "unlabeled" / f"u{i}.png")
    return root


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


# ------------------------------------------------------------------------------------------------ arithmetic
def test_budget_units():
    assert parse_budget("90s") == 90 and parse_budget("20m") == 1200 and parse_budget("1.5h") == 5400
    for bad in ("20", "fast", "-3m", "0m"):
        with pytest.raises(AdviseError, match="--budget"):
            parse_budget(bad)


def test_plan_fits_the_budget_and_leaves_out_what_cannot_train():
    costs = {"supervised": 0.005, "fixmatch": 0.05, "conv-fixmatch": 2.0}
    kw = dict(elapsed_s=30, slots=2, factor=1.0, costs=costs, names=list(costs), reference="supervised",
              caps={n: 10**6 for n in costs}, filter_budget_s=5, heldout=40, repeats=None, min_steps=200, base_of={})
    plan = make_plan(budget_s=600, **kw)
    assert plan["candidates"] == ["supervised", "fixmatch"]  # 200 conv steps would take 400 s a run
    assert "conv-fixmatch: left out" in plan["left_out"][0]
    assert plan["planned_wall_s"] <= 600
    waves = math.ceil(plan["repeats"] * 2 / 2) + 1
    assert 30 + waves * run_wall(plan["run_budget_s"], 1.0) <= 600
    assert plan["steps"]["fixmatch"] == int(plan["run_budget_s"] / 0.05)
    big = make_plan(budget_s=72000, **kw)  # twenty hours: every candidate, ten repeats
    assert big["candidates"] == list(costs) and big["repeats"] == 10
    with pytest.raises(AdviseError, match="too small.*--budget"):
        make_plan(budget_s=40, **kw)


def test_plan_takes_the_repeats_its_candidates_need_to_be_decided():
    """Four candidates against supervised share one Holm family, so 6 repeats could call none of them (smallest
    p 4 x 2/2^6 = 0.125): the plan takes 8, or leaves candidates out, before it takes fewer."""
    costs = {"supervised": 0.005, "a": 0.01, "b": 0.01, "c": 0.01, "d": 0.01}
    kw = dict(elapsed_s=30, slots=2, factor=1.0, costs=costs, names=list(costs), reference="supervised",
              caps={n: 10**6 for n in costs}, filter_budget_s=5, heldout=40, repeats=None, min_steps=200, base_of={})
    plan = make_plan(budget_s=300, **kw)  # 6 repeats would give each 1,000+ steps; 8 give them ~840
    assert plan["candidates"] == list(costs) and plan["repeats"] == plan["repeats_to_decide"] == 8
    assert plan["min_detectable_effect"] is not None and plan["planned_wall_s"] <= 300
    for budget in (80, 120, 200, 600, 3600):
        plan = make_plan(budget_s=budget, **kw)
        decidable = plan["repeats"] >= plan["repeats_to_decide"] == seeds_to_decide(max(1, len(plan["candidates"]) - 1))
        assert decidable == (plan["min_detectable_effect"] is not None), budget
        assert decidable or plan["candidates"] == ["supervised", "a"] or plan["repeats"] < 6, budget
    # --repeats is the user's: taken as given, and the plan says it cannot decide.
    plan = make_plan(budget_s=3600, **{**kw, "repeats": 6})
    assert plan["repeats"] == 6 and plan["min_detectable_effect"] is None and plan["repeats_to_decide"] == 8


def test_min_detectable_effect_formula():
    assert min_detectable_effect(40, 5) is None  # below 6 repeats no p < 0.05 exists
    mde = min_detectable_effect(50, 6)
    assert mde == pytest.approx(100 * 2.8016 * math.sqrt(2 * 0.8 * 0.2 / 50) / math.sqrt(6), rel=1e-3)
    assert min_detectable_effect(50, 10) < mde
    # Bonferroni over 4 candidates: a larger effect, and none below the 8 repeats four need
    assert min_detectable_effect(50, 8, 4) > min_detectable_effect(50, 8) and min_detectable_effect(50, 7, 4) is None


def test_recommendation_rule():
    rows = [{"candidate": "supervised", "repeats": 6},
            {"candidate": "a", "verdict": "better", "diff_mean": 2.0, "ci_low": 0.5, "ci_high": 3.5, "p": 0.03,
             "p_holm": 0.03, "cost_vs_reference": 3.0, "corrected_ci": [-1.0, 5.0], "repeats": 6},
            {"candidate": "b", "verdict": "better", "diff_mean": 4.0, "ci_low": 1.0, "ci_high": 6.0, "p": 0.03,
             "p_holm": 0.03, "cost_vs_reference": 5.0, "corrected_ci": [0.5, 7.5], "repeats": 6},
            {"candidate": "c", "verdict": "undecided", "diff_mean": 9.0, "ci_low": -1.0, "ci_high": 20.0, "p": 0.2,
             "p_holm": 0.4, "seeds_needed": 14, "repeats": 6}]
    rec = recommend(rows, "supervised")
    assert rec["choice"] == "b" and rec["sentence"].startswith("use b: +4.0 points over supervised")
    assert "at 5.0x its cost" in rec["sentence"] and "about 14 repeats" in rec["more"]
    rec = recommend([rows[0], rows[3]], "supervised")
    assert rec["choice"] == "supervised" and "no candidate is distinguishable" in rec["sentence"]
    lo, hi = nadeau_bengio([1.0, 2.0, 3.0], n_heldout=10, n_train=30)
    assert lo < 2.0 < hi


# ------------------------------------------------------------------------------------------------ bad folders
@pytest.mark.parametrize("case, message", [
    ("one class", "single class .*at least 2 classes"),
    ("few labels", r"too few labels for a held-out split: 1 class\(es\) have fewer than 3 .*'square' \(2\)"),
    ("no unlabeled folder", "no unlabeled folder .*nothing to compare"),
    ("empty unlabeled", "no unlabeled images in"),
    ("no labeled folder", "no labeled/ folder"),
])
def test_bad_folders_get_a_message_not_a_traceback(tmp_path, capsys, case, message):
    root = tmp_path / "data"
    if case == "one class":
        write_folder(root, classes=("only",))
    elif case == "few labels":
        write_folder(root)
        for f in sorted((root / "labeled" / "square").iterdir())[2:]:
            f.unlink()
    else:
        write_folder(root)
        if case == "no unlabeled folder":
            shutil.rmtree(root / "unlabeled")
        elif case == "empty unlabeled":
            shutil.rmtree(root / "unlabeled")
            (root / "unlabeled" / "sub").mkdir(parents=True)
        else:
            shutil.rmtree(root / "labeled")
    rc = main(["advise", str(root), "--budget", "1m", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc != 0 and "Traceback" not in err
    assert err.startswith("genssl advise: error: ")
    assert re.search(message, err), err


def test_a_config_file_names_the_folders_and_its_test_source_is_not_read(tmp_path):
    write_folder(tmp_path / "data", val=2)
    (tmp_path / "my.yaml").write_text(
        "method: {name: supervised}\n"
        f"data: {{dataset: folder, root: {tmp_path / 'data'}, labeled: labeled, val: val, unlabeled: unlabeled, "
        "test: test, image_size: [10, 10], channels: 1}\n")
    user = read_user_data(tmp_path / "my.yaml")
    assert user.per_class() == {c: 10 for c in CLASSES} and user.image_size == (10, 10) and user.channels == 1
    assert user.ignored == [str(tmp_path / "data" / "test")] and user.n_unlabeled == 30
    (tmp_path / "builtin.yaml").write_text("method: {name: supervised}\ndata: {dataset: mnist}\n")
    with pytest.raises(ValueError, match="advise reads image folders"):
        read_user_data(tmp_path / "builtin.yaml")


def test_the_grid_of_filtered_candidates_is_valid(tmp_path):
    """--filtered adds <candidate>+filtered entries whose data.filter_run names the repeat's own M1 run."""
    user = read_user_data(write_folder(tmp_path / "data"))
    state = {"plan": {"repeats": 2, "run_budget_s": 1.0, "candidates": ["supervised", "fixmatch", "fixmatch+filtered"],
                      "steps": {"supervised": 50, "fixmatch": 20, "fixmatch+filtered": 20}, "filter_budget_s": 1.0,
                      "filter_steps": 30, "factor": 1.0},
             "base_of": {"fixmatch+filtered": "fixmatch"}, "n_train": 18}
    out = tmp_path / "out"
    _, runs = load_grid(write_grid(state, user, out), out=str(out))
    by_name = {r.name: r for r in runs}
    run = by_name["fixmatch+filtered-n18-s1"]
    assert run.raw["data"]["filter_run"] == str(out / "runs" / "pool_m1-n18-s1") and run.deps == ["pool_m1-n18-s1"]
    assert run.raw["data"]["labeled"].endswith("splits/r1/train.csv")
    assert run.raw["data"]["test"].endswith("splits/r1/heldout.csv")
    assert "filter_run" not in by_name["fixmatch-n18-s1"].raw["data"]


# ------------------------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def advised(tmp_path_factory):
    """A --dry-run, then the advice itself, in one output folder (the second reuses the plan of the first)."""
    tmp = tmp_path_factory.mktemp("advise")
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp / "cache"))
    data, out = write_folder(tmp / "data", val=1), tmp / "out"
    # --budget 1m: the per-run budget is fixed (RUN_BUDGET), so the budget sets only the pilot's length (0.3 s a
    # candidate; 1.5 s at 10m) and what the advice must fit within (checked: within_budget_and_margin).
    kw = dict(budget="1m", out=out, jobs=1, candidates=["fixmatch"], repeats=2, min_steps=5, run_budget_s=RUN_BUDGET)
    plan_lines, advice_lines = [], []
    state = advise(data, dry_run=True, echo=plan_lines.append, **kw)
    no_runs_after_dry_run = not (out / "runs").exists()
    result = advise(data, echo=advice_lines.append, **kw)
    yield {"data": data, "out": out, "kw": kw, "state": state, "plan": "\n".join(plan_lines),
           "advice": result, "printed": "\n".join(advice_lines), "no_runs_after_dry_run": no_runs_after_dry_run}
    mp.undo()


def test_dry_run_prints_the_plan_and_trains_no_candidate(advised):
    plan, state, data = advised["plan"], advised["state"], advised["data"]
    assert advised["no_runs_after_dry_run"] and (advised["out"] / PLAN_FILE).is_file()
    assert f"never read: {data / 'test'}" in plan
    assert "27 labeled images in 3 classes" in plan  # labeled/ and val/ pooled
    assert "2 repeats" in plan and "6 held out to score it" in plan and "21 to train on" in plan
    assert "supervised" in plan and "fixmatch" in plan and f"per run: {RUN_BUDGET:.1f} s" in plan
    assert "smallest detectable effect: none: 2 repeats cannot reach p < 0.05" in plan
    assert "pool check: ~" in plan and "Caveat:" in plan
    assert "pilot, one thread" in plan and state["plan"]["candidates"] == ["supervised", "fixmatch"]


def test_advice_is_internally_consistent(advised):
    advice, out, printed = advised["advice"], advised["out"], advised["printed"]
    rows = {r["candidate"]: r for r in advice["candidates"]}
    assert list(rows) == ["supervised", "fixmatch"] and all(r["repeats"] == 2 for r in rows.values())
    fix = rows["fixmatch"]
    assert fix["ci_low"] <= fix["diff_mean"] <= fix["ci_high"]
    assert fix["corrected_ci"][0] <= fix["diff_mean"] <= fix["corrected_ci"][1]
    assert fix["diff_mean"] == pytest.approx(
        sum(fix["per_repeat"][s] - rows["supervised"]["per_repeat"][s] for s in fix["per_repeat"]) / 2)
    assert fix["verdict"] == "undecided"  # 2 repeats can call nothing
    rec = advice["recommendation"]
    assert rec["choice"] == "supervised" and not rec["better"] and rec["sentence"] in printed
    # budgets: every run stopped at its budget (one step may cross it) and within its planned steps
    plan = advice["plan"]
    _, runs = load_grid(out / "grid.yaml", out=str(out))
    assert len(runs) == 4
    for run in runs:
        res = json.loads((run.run_dir / "results.json").read_text())
        assert res["budget_clock_s"] <= RUN_BUDGET + 3 * plan["s_per_step"][run.label] + 0.2
        assert res["steps"] <= plan["steps"][run.label] and res["budget_clock"] == "cpu"
        assert run.raw["data"]["test"].endswith(f"splits/r{run.seed}/heldout.csv")  # scored on the held-out part
    t = advice["time"]
    assert t["spent_s"] > 0 and t["sessions"] == 2 and t["within_budget_and_margin"]
    assert set(t["phases"]) >= {"grid", "final run"}
    md = (out / "advice.md").read_text()
    assert rec["sentence"][1:] in md and "| fixmatch |" in md and "Caveat:" in md
    final = advice["final_run"]
    assert final["candidate"] == "supervised" and f"genssl predict {final['path']}" in md
    assert f"genssl export {final['path']}" in md
    assert (out / "accuracy_vs_time.png").is_file()
    for csv in (out / "splits").rglob("*.csv"):
        assert "/test/" not in csv.read_text()


def test_the_final_run_is_a_normal_run_that_predict_reads(advised, capsys):
    final = advised["advice"]["final_run"]
    rc = main(["predict", final["path"], str(advised["data"] / "unlabeled" / "u0.png"), "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "u0.png" in out


def test_resume_continues_and_reuses_finished_runs(advised):
    out, kw = advised["out"], advised["kw"]
    runs = sorted((out / "runs").iterdir())
    killed, lost = runs[0], runs[1]
    (killed / "results.json").unlink()  # killed after its last checkpoint: resumes from last.pt
    shutil.rmtree(lost)                  # killed before it began
    kept = {r.name: (r / "results.json").stat().st_mtime_ns for r in runs[2:]}
    lines = []
    again = advise(advised["data"], echo=lines.append, **kw)
    assert (killed / "results.json").is_file() and (lost / "results.json").is_file()
    assert {r.name: (r / "results.json").stat().st_mtime_ns for r in runs[2:]} == kept  # reused, not retrained
    assert "continuing the advice" in "\n".join(lines)
    assert again["time"]["sessions"] == 3 and len(json.loads((out / SESSIONS_FILE).read_text())) == 3
    assert again["recommendation"]["choice"] == advised["advice"]["recommendation"]["choice"]
    with pytest.raises(AdviseError, match="other arguments .*budget_s"):
        advise(advised["data"], **{**kw, "budget": "20m"})


def test_other_busy_cores_counts_other_processes_not_this_one():
    """The contention advise plans with is measured over a short window from /proc/stat, less this process's own
    CPU time: a core this process keeps busy is not 'another process's load' (the load average would count it, and
    a minute of processes that already ended)."""
    def spin(stop: threading.Event) -> None:
        while not stop.is_set():
            pass

    # Median of three pairs: on a machine whose cores other processes keep busy, one window can be off by half a
    # core either way; counting our own core would add ~1.0 to every pair.
    gaps = []
    for _ in range(3):
        idle = other_busy_cores(0.5)
        stop = threading.Event()
        worker = threading.Thread(target=spin, args=(stop,))
        worker.start()
        try:
            spinning = other_busy_cores(0.5)
        finally:
            stop.set()
            worker.join()
        assert idle is not None and spinning is not None
        gaps.append(spinning - idle)
    assert sorted(gaps)[1] < 0.5, gaps  # our busy core left out


def test_other_busy_cores_subtracts_this_process_from_the_machine(monkeypatch):
    """The arithmetic on fixed counters: 3 busy CPU-seconds over a 2 s window, 1 of them ours -> 1 other core."""
    ticks = os.sysconf("SC_CLK_TCK")
    stats = iter([f"cpu  {100 * ticks} 0 0 {500 * ticks} 0 0 0 0 0 0\n",
                  f"cpu  {103 * ticks} 0 0 {501 * ticks} 0 0 0 0 0 0\n"])
    own = iter([os.times_result((10.0, 0.0, 0.0, 0.0, 0.0)), os.times_result((11.0, 0.0, 0.0, 0.0, 0.0))])
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: io.StringIO(next(stats)) if path == "/proc/stat"
                        else real_open(path, *a, **k))
    monkeypatch.setattr(os, "times", lambda: next(own))
    monkeypatch.setattr(time, "sleep", lambda s: None)
    assert other_busy_cores(2.0) == pytest.approx(1.0)

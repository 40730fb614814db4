"""`genssl compare`: the grid runs, its report matches the runs' results.json, and a second call reuses them."""

from __future__ import annotations

import csv
import json
import re
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from genssl import list_methods
from genssl.cli import demo_grid, main
from genssl.compare.runner import load_grid, run_grid
from genssl.config import ConfigError
from genssl.runs.run_dir import RunDir

from datafiles import write_idx_dataset
from method_recipes import recipe

TINY_TRAIN = {"steps": 4, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 2, "log_every": 2,
              "ckpt_every": 2, "eval_batch_size": 128, "progress": False}


def write_grid(tmp_path, methods: dict, **extra) -> str:
    grid = {"out": str(tmp_path / "out"), "overrides": {"train": TINY_TRAIN},
            "methods": methods, "n_labels": [20], "seeds": [0, 1], **extra}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return str(path)


def synthetic(method: str, **method_cfg) -> dict:
    return {"method": {"name": method, **method_cfg}, "data": {"dataset": "synthetic", "n_val": 100}}


def test_grid_report_matches_runs_and_second_call_reuses(tmp_path, tiny_data, monkeypatch, capsys):
    (tmp_path / "pl.yaml").write_text(yaml.safe_dump(synthetic("pseudo_label")))
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised"),
                                 "pl": {"config": "pl.yaml", "overrides": {"method": {"alpha_final": 1.0}}}})
    table = run_grid(grid, data=tiny_data, progress=False)
    out = tmp_path / "out"

    # The numbers of the table are the runs' own results.json, averaged over the two seeds.
    csv_rows = {r["method"]: r for r in csv.DictReader((out / "results.csv").read_text().splitlines())}
    markdown = (out / "results.md").read_text()
    assert [r["method"] for r in table] == ["supervised", "pl"]
    for row in table:
        runs = [json.loads((out / "runs" / f"{row['method']}-n20-s{s}" / "results.json").read_text())
                for s in (0, 1)]
        accs = [100 * r["test_acc"] for r in runs]
        assert row["seeds"] == 2 and row["n_labels"] == 20
        assert row["test_acc_mean"] == pytest.approx(statistics.fmean(accs))
        assert row["test_acc_std"] == pytest.approx(statistics.stdev(accs))
        assert row["wall_time_s_mean"] == pytest.approx(statistics.fmean(r["wall_time_s"] for r in runs))
        assert float(csv_rows[row["method"]]["test_acc_mean"]) == pytest.approx(row["test_acc_mean"], abs=1e-4)
        assert float(csv_rows[row["method"]]["test_acc_std"]) == pytest.approx(row["test_acc_std"], abs=1e-4)
        assert f"| {row['method']} | 20 | {row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f} | 2 |" in markdown
    assert json.loads((out / "runs" / "pl-n20-s1" / "results.json").read_text())["method"] == "pseudo_label"
    assert yaml.safe_load((out / "runs" / "pl-n20-s1" / "config.yaml").read_text())["method"]["alpha_final"] == 1.0

    for name in ("accuracy_vs_labels.png", "accuracy_vs_time.png"):
        with Image.open(out / name) as im:
            im.verify()
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100

    # One HParams session per run, readable by TensorBoard's own reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sessions = sorted(p.name for p in (out / "tb").iterdir())
    assert sessions == ["pl-n20-s0", "pl-n20-s1", "supervised-n20-s0", "supervised-n20-s1"]
    acc = EventAccumulator(str(out / "tb" / "pl-n20-s0"))
    acc.Reload()
    assert acc.PluginTagToContent("hparams")  # experiment + session-start summaries
    assert "hparam/test_acc" in acc.Tags()["scalars"] and "hparam/wall_time_s" in acc.Tags()["scalars"]

    # A second call trains nothing: every run is reused from its results.json.
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}
    monkeypatch.setattr("genssl.training.trainer.Trainer.fit", lambda self: pytest.fail("a finished run was retrained"))
    capsys.readouterr()
    again = run_grid(grid, data=tiny_data, progress=False)
    assert "reusing 4 finished run(s)" in capsys.readouterr().out
    assert again == table
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert sorted(p.name for p in (out / "tb").iterdir()) == sessions  # rewritten, not duplicated

    # Another grid (another report folder) that shares the runs folder reuses them too.
    other = yaml.safe_load(Path(grid).read_text())
    other.update(out=str(tmp_path / "other"), runs=str(out / "runs"))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other, sort_keys=False))
    assert run_grid(str(tmp_path / "other.yaml"), data=tiny_data, progress=False) == table
    assert (tmp_path / "other" / "results.md").read_text() == markdown


def test_a_finished_run_with_another_config_is_not_reused(tmp_path, tiny_data):
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised")}, seeds=[0])
    run_grid(grid, data=tiny_data, progress=False)
    with pytest.raises(ConfigError, match=r"method\.lr: 0\.001 -> 0\.5.*--out"):
        run_grid(grid, overrides=["--method.lr=0.5"], data=tiny_data, progress=False)
    # Keys that do not change the computation (threads, progress, ...) do not block reuse.
    run_grid(grid, overrides=["--train.threads=1"], data=tiny_data, progress=False)


def test_under_budgets_a_run_timed_otherwise_is_not_reused(tmp_path, tiny_data):
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised")}, seeds=[0])
    budgets = ["--train.budgets_s=[100]", "--train.precision=fp32"]
    run_grid(grid, overrides=budgets, data=tiny_data, progress=False)
    run_grid(grid, overrides=budgets, data=tiny_data, progress=False)  # timed alike: reused
    with pytest.raises(ConfigError, match=r"threads: 0 -> 1 \(equal-cost budgets reuse only runs timed alike\)"):
        run_grid(grid, overrides=[*budgets, "--train.threads=1"], data=tiny_data, progress=False)


def test_a_key_the_run_predates_is_reused_only_at_its_default_and_the_report_says_so(tmp_path, tiny_data):
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised")}, seeds=[0])
    run_grid(grid, data=tiny_data, progress=False)
    config = tmp_path / "out" / "runs" / "supervised-n20-s0" / "config.yaml"
    saved = yaml.safe_load(config.read_text())
    del saved["data"]["mismatch_mode"]  # as written before the key existed
    config.write_text(yaml.safe_dump(saved))
    run_grid(grid, data=tiny_data, progress=False)
    assert "taken at today's defaults: data.mismatch_mode='replace'" in (tmp_path / "out" / "results.md").read_text()
    del saved["train"]["select"]
    saved["train"]["retired_key"] = 3  # a key that no longer exists counts as a difference
    config.write_text(yaml.safe_dump(saved))
    with pytest.raises(ConfigError, match=r"train\.retired_key: 3 -> absent"):
        run_grid(grid, data=tiny_data, progress=False)


def test_a_failed_run_is_reported_and_the_rest_is_tabulated(tmp_path, tiny_data, monkeypatch):
    from genssl.training.trainer import DivergenceError, Trainer

    fit = Trainer.fit

    def flaky(self):
        if self.cfg.method_name == "pseudo_label":
            raise DivergenceError("loss is nan (simulated)")
        return fit(self)

    monkeypatch.setattr(Trainer, "fit", flaky)
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised"), "pl": synthetic("pseudo_label")},
                      seeds=[0])
    with pytest.raises(RuntimeError, match=r"(?s)1 of 2 runs failed.*pl-n20-s0.*simulated"):
        run_grid(grid, data=tiny_data, progress=False)
    markdown = (tmp_path / "out" / "results.md").read_text()
    assert "| pl | 20 | — | 0 (1 failed) |" in markdown and "| supervised | 20 |" in markdown


def test_runs_that_need_other_runs_m1_m2_and_generated_samples(tmp_path, monkeypatch):
    # Real IDX files this time (M1+M2 reloads its M1 run from the folder, dataset included).
    write_idx_dataset(tmp_path / "data" / "mnist", n_train=300, n_test=100)
    monkeypatch.setenv("GENSSL_DATA", str(tmp_path / "data"))
    mnist = {"data": {"dataset": "mnist", "n_val": 100, "download": False}}
    # m1+m2 is listed first but names the m1 run's folder, so it runs after it; sgan+samples trains a fresh
    # classifier on the labels plus the finished sgan run's generated samples. Small networks (method_recipes):
    # what is checked is the grid's dependencies, reuse and report, the same at any width.
    grid = write_grid(tmp_path, {
        "m1+m2": {**synthetic("vae_m2", encoder="{runs}/m1-n{n_labels}-s{seed}", **recipe("vae_m2")), **mnist},
        "m1": {**synthetic("vae_m1", **recipe("vae_m1")), **mnist},
        "sgan": {**synthetic("sgan", **recipe("sgan")), **mnist},
        "sgan+samples": {"samples_from": "sgan", "classifier": {"steps": 4, "eval_every": 2, "batch_size": 16,
                                                                "labeled_batch_size": 8, "threshold": 0.0}},
    }, seeds=[0])
    out_dir, runs = load_grid(grid)
    assert [r.name for r in runs] == ["m1-n20-s0", "m1+m2-n20-s0", "sgan-n20-s0", "sgan+samples-n20-s0"]
    assert runs[1].deps == ["m1-n20-s0"] and runs[3].deps == ["sgan-n20-s0"]
    assert runs[1].raw["method"]["encoder"] == str(out_dir / "runs" / "m1-n20-s0")
    table = run_grid(grid, progress=False)
    samples = json.loads((out_dir / "runs" / "sgan+samples-n20-s0" / "results.json").read_text())
    sgan = json.loads((out_dir / "runs" / "sgan-n20-s0" / "results.json").read_text())
    assert samples["method"] == "sample_classifier" and samples["source_method"] == "sgan"
    assert samples["wall_time_s"] > sgan["wall_time_s"]  # the samples cost the GAN's training too
    row = next(r for r in table if r["method"] == "sgan+samples")
    assert row["test_acc_mean"] == pytest.approx(100 * samples["test_acc"])
    # The samples run is a run like the others: TensorBoard events, a best.pt that predict and export read.
    samples_dir = out_dir / "runs" / "sgan+samples-n20-s0"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(samples_dir / "tb"))
    events.Reload()
    assert {"train/loss", "train/kept_fraction", "val/acc"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("val/acc")] == [2, 4]
    best = RunDir(samples_dir).load_checkpoint("best.pt")
    assert best["method"] == "supervised" and best["step"] == samples["best_step"]
    assert best["val_acc"] == samples["best_val_acc"] and best["sample_classifier"]["source_method"] == "sgan"
    (tmp_path / "imgs").mkdir()
    for k in range(3):
        Image.fromarray((torch.rand(28, 28) * 255).to(torch.uint8).numpy()).save(tmp_path / "imgs" / f"{k}.png")
    preds = tmp_path / "preds.csv"
    assert main(["predict", str(samples_dir), str(tmp_path / "imgs"), "--out", str(preds), "--no-progress"]) == 0
    rows = list(csv.reader(preds.read_text().splitlines()))
    assert len(rows) == 4 and "typicality" in rows[0]  # its gate too
    assert main(["export", str(samples_dir), "--out", str(tmp_path / "exported")]) == 0
    assert {"encoder.yaml", "feature_density.pt"} <= {f.name for f in (tmp_path / "exported").iterdir()}
    # M1+M2's cost in the table includes its M1's training.
    walls = {n: json.loads((out_dir / "runs" / f"{n}-n20-s0" / "results.json").read_text())["wall_time_s"]
             for n in ("m1", "m1+m2")}
    row = next(r for r in table if r["method"] == "m1+m2")
    assert row["wall_time_s_mean"] == pytest.approx(walls["m1"] + walls["m1+m2"])
    assert "includes that run's" in (out_dir / "results.md").read_text()
    assert run_grid(grid, progress=False) == table  # all four reused, the samples run included
    # A rerun GAN (or a removed M1) leaves the runs built on it stale: the grid refuses to reuse them.
    sgan_path = out_dir / "runs" / "sgan-n20-s0" / "results.json"
    sgan_path.write_text(json.dumps({**sgan, "test_acc": sgan["test_acc"] / 2}))
    with pytest.raises(ConfigError, match=r"sgan\+samples-n20-s0 was built on runs that changed \(sgan-n20-s0 "
                                          r"has been rerun since\), so its results are stale"):
        run_grid(grid, progress=False)
    shutil.rmtree(out_dir / "runs" / "sgan+samples-n20-s0")
    shutil.rmtree(out_dir / "runs" / "m1-n20-s0")
    with pytest.raises(ConfigError, match=r"m1\+m2-n20-s0 was built on runs that changed \(m1-n20-s0 has no "
                                          r"results.json now\)"):
        run_grid(grid, progress=False)
    with pytest.raises(ConfigError, match=r"samples_from='nope' must name an earlier model entry"):
        load_grid(write_grid(tmp_path, {"s": synthetic("supervised"), "x": {"samples_from": "nope"}}))


def test_parallel_jobs_give_the_same_runs_as_serial_ones(tmp_path, tiny_data, monkeypatch):
    """Two worker processes train the grid's two runs: each run's results and final checkpoint equal those of
    the same grid trained serially in this process."""
    import os

    from genssl.runs.run_dir import RunDir

    # A machine of 2 usable cores, whichever count the runner reads, so that a --jobs 2 worker gets 1 thread
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised")})
    serial = run_grid(grid, out=str(tmp_path / "serial"), jobs=1, data=tiny_data, progress=False)
    parallel = run_grid(grid, out=str(tmp_path / "parallel"), jobs=2, data=tiny_data, progress=False)
    assert [r["seeds"] for r in parallel] == [r["seeds"] for r in serial] == [2]
    assert parallel[0]["test_acc_mean"] == serial[0]["test_acc_mean"]
    assert parallel[0]["test_acc_std"] == serial[0]["test_acc_std"]
    for s in (0, 1):
        a, b = (RunDir(tmp_path / out / "runs" / f"supervised-n20-s{s}") for out in ("serial", "parallel"))
        ra, rb = a.read_results(), b.read_results()
        for key in ("test_acc", "best_val_acc", "best_step", "steps", "seed"):
            assert ra[key] == rb[key], f"seed {s}: {key}"
        ca, cb = (yaml.safe_load(r.config_path.read_text()) for r in (a, b))
        assert (ca["train"].pop("threads"), cb["train"].pop("threads")) == (0, 1)  # a worker takes one thread
        assert ca == cb
        la, lb = a.load_checkpoint("last.pt"), b.load_checkpoint("last.pt")
        for k, v in la["method_state"]["model"].items():
            assert torch.equal(v, lb["method_state"]["model"][k]), f"seed {s}: {k}"
        assert la["step"] == lb["step"] == TINY_TRAIN["steps"]


@pytest.mark.parametrize("methods, message", [
    ({"x": synthetic("no_such_method")}, r"entry 'x'.*unknown method 'no_such_method'; registered methods: "),
    ({"x": {"config": "missing.yaml"}}, r"config file not found"),
    ({"x": {"config": "a.yaml", "steps": 3}}, r"only `overrides`, `seeds` and `n_labels` may be given"),
    ({"bad/name": synthetic("supervised")}, r"'bad/name' must be letters"),
    ({"x": synthetic("supervised", no_such_key=1)}, r"unknown key method\.no_such_key"),
])
def test_bad_grids_fail_before_any_run_naming_the_problem(tmp_path, methods, message):
    with pytest.raises((ConfigError, FileNotFoundError), match=message):
        load_grid(write_grid(tmp_path, methods))


def test_bad_grid_axes(tmp_path):
    with pytest.raises(ConfigError, match=r"`seeds` must be an integer or a list of integers, got 'zero'"):
        load_grid(write_grid(tmp_path, {"s": synthetic("supervised")}, seeds="zero"))
    with pytest.raises(ConfigError, match=r"unknown grid key\(s\) metods"):
        load_grid(write_grid(tmp_path, {"s": synthetic("supervised")}, metods={}))


def test_without_label_counts_or_seeds_each_entry_keeps_its_own(tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"methods": {
        "a": {**synthetic("supervised"), "data": {"dataset": "synthetic", "n_labels": 30}, "train": {"seed": 4}},
        "b": synthetic("supervised")}}, sort_keys=False))
    _, runs = load_grid(path)
    assert [(r.name, r.n_labels, r.seed) for r in runs] == [("a-n30-s4", 30, 4), ("b-n100-s0", 100, 0)]


def test_an_entry_sets_its_own_seeds_and_label_counts(tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(synthetic("supervised")))
    path = write_grid(tmp_path, {"a": "s.yaml", "b": {"config": "s.yaml", "seeds": [1], "n_labels": 30},
                                 "c": {"config": "s.yaml", "seeds": [0, 2]}})
    _, runs = load_grid(path)
    assert [r.name for r in runs] == ["a-n20-s0", "a-n20-s1", "b-n30-s1", "c-n20-s0", "c-n20-s2"]
    with pytest.raises(ConfigError, match=r"`methods\.b\.seeds` must be an integer or a list of integers"):
        load_grid(write_grid(tmp_path, {"b": {"config": "s.yaml", "seeds": "one"}}))


def test_mismatch_modes_are_entry_overrides_and_the_report_names_them(tmp_path, tiny_data):
    """experiments/realistic/mismatch.yaml's form: each mismatch level and mode is an entry's data override; the
    runs' results.json and runs.csv say which mode drew the pool (replace: 30 of 60 in-class images swapped for
    strays; add: the 60 in-class images kept and 60 strays added)."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(synthetic("supervised")))
    pool = {"classes": [0, 1, 2, 3, 4], "n_unlabeled": 60, "mismatch": 0.5, "labeled_in_unlabeled": False}
    grid = write_grid(tmp_path, {"mm50": {"config": "s.yaml", "overrides": {"data": pool}},
                                 "ma50": {"config": "s.yaml", "overrides": {"data": {**pool, "mismatch_mode": "add"}}}},
                      seeds=[0])
    run_grid(grid, data=tiny_data, progress=False)
    rows = {r["method"]: r for r in csv.DictReader((tmp_path / "out" / "runs.csv").read_text().splitlines())}
    assert {k: (rows[k]["mismatch"], rows[k]["mismatch_mode"], rows[k]["n_unlabeled"]) for k in rows} == {
        "mm50": ("0.5000", "replace", "60"), "ma50": ("0.5000", "add", "120")}
    res = json.loads((tmp_path / "out" / "runs" / "ma50-n20-s0" / "results.json").read_text())
    assert (res["mismatch"], res["mismatch_mode"]) == (0.5, "add")


def test_the_demo_grid_is_packaged_and_runs_every_registered_method():
    out_dir, runs = load_grid(demo_grid())
    names = {r.raw["method"]["name"] for r in runs if r.samples is None}
    assert names == set(list_methods()), "add the missing methods to experiments/demo.yaml (short schedules)"
    assert {r.n_labels for r in runs} == {100} and {r.seed for r in runs} == {0}
    assert all(r.raw["data"]["dataset"] == "fashion_mnist" for r in runs if r.samples is None)


def test_grid_workers_end_when_the_grid_process_is_killed(tmp_path):
    """A grid process killed without cleanup must not leave its workers training on (they would write the run
    folders a restarted grid resumes)."""
    import os
    import select
    import signal
    import subprocess
    import sys

    script = tmp_path / "owner.py"
    script.write_text(
        "import multiprocessing as mp, os, signal\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from genssl.compare.executors import exit_when_gone\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=mp.get_context('spawn'), initializer=exit_when_gone,\n"
        "                               initargs=(os.getpid(),))\n"
        "    print(pool.submit(os.getpid).result(), flush=True)\n"
        "    pool.submit(signal.pause)\n"  # the worker blocks (until a signal), as in a long training run
        "    signal.pause()\n")
    owner = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(owner.stdout.readline())
        exited = os.pidfd_open(worker)  # readable once the worker has exited: an event, no polling
        try:
            owner.send_signal(signal.SIGKILL)
            owner.wait(10)
            ready, _, _ = select.select([exited], [], [], 20)
            if not ready:
                os.kill(worker, signal.SIGKILL)
                raise AssertionError("the worker outlived the grid process by 20 s")
        finally:
            os.close(exited)
    finally:
        owner.kill()
        owner.wait()
        owner.stdout.close()


def test_seeds_runs_part_of_a_grid_and_reports_what_finished_before(tmp_path, tiny_data, capsys):
    grid = write_grid(tmp_path, {"supervised": synthetic("supervised"), "pl": synthetic("pseudo_label")},
                      seeds=[0, 1, 2], reference="supervised")
    runs_dir = tmp_path / "out" / "runs"
    table = run_grid(grid, data=tiny_data, progress=False, seeds=[0])
    assert sorted(p.name for p in runs_dir.iterdir()) == ["pl-n20-s0", "supervised-n20-s0"]
    assert {row["seeds"] for row in table} == {1}
    out = capsys.readouterr().out
    assert "--seeds 0: 2 run(s); 0 finished run(s) of other seeds are reported beside them; 4 run(s) of other " \
           "seeds are left for later" in out
    # The grid as a whole (3 seeds, one entry against the reference) can decide nothing, and says so first.
    assert "verdicts: 20 labels: 1 entry against supervised over at most 3 paired seeds can reach no verdict" in out
    table = run_grid(grid, data=tiny_data, progress=False, seeds=[1, 2])
    assert {row["seeds"] for row in table} == {3} and len(list(runs_dir.iterdir())) == 6
    assert "2 finished run(s) of other seeds are reported beside them" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"--seeds: 7 not among the grid's seeds \(0, 1, 2\)"):
        run_grid(grid, data=tiny_data, progress=False, seeds=[2, 7])


def test_compare_seeds_flag_is_parsed_with_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path / "grid.yaml"), "--seeds", "a-b"])
    assert "--seeds: expected a list like 0,1,2 or a range like 0-4, got 'a-b'" in capsys.readouterr().err


def test_dry_run_sizes_a_grid_from_its_budgets_and_finished_runs(tmp_path, tiny_data, capsys):
    budget = {"train": {**TINY_TRAIN, "budgets_s": [30], "stop_at_budget": True}}
    grid = write_grid(tmp_path, {"supervised": {**synthetic("supervised"), **budget},
                                 "pl": synthetic("pseudo_label")}, seeds=[0, 1, 2], reference="supervised")
    run_grid(grid, data=tiny_data, progress=False, seeds=[0])
    capsys.readouterr()
    assert main(["compare", grid, "--dry-run"]) == 0
    out = capsys.readouterr().out
    spent = json.loads((tmp_path / "out/runs/supervised-n20-s0/results.json").read_text())["budget_clock_s"]
    # supervised: its finished run's clock; pl: 4 steps and no budget, bounded by nothing but its finished run
    assert re.search(r"supervised +3 run\(s\), +1 finished; stops at 30 s on the budget clock; its finished runs "
                     r"took \d+ s", out)
    assert "4 of 6 run(s) to go" in out and "verdicts: 20 labels: 1 entry against supervised" in out
    assert not (tmp_path / "out/runs/supervised-n20-s1").exists()  # ran nothing
    assert spent > 0

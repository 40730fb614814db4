"""The paired columns of every `genssl compare` report (genssl.compare.verdicts, report.py): the reference is
named, each entry is compared seed by seed at the end of its run and at each budget, and the verdict follows the
statistics of genssl.compare.stats."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from genssl.compare.grid import GridRun
from genssl.compare.report import write_report
from genssl.compare.verdicts import undecidable_tables


def _result(method: str, acc: float, budgets: dict[float, float | None] | None = None) -> dict:
    return {"method": method, "test_acc": acc / 100, "best_val_acc": 0.5, "best_step": 10, "steps": 10,
            "wall_time_s": 1.0, "n_val": 100, "device": "cpu (test)",
            "budgets": [{"budget_s": b, "test_acc": None if a is None else a / 100, "steps_within": 5,
                         "spent": True} for b, a in (budgets or {}).items()]}


def _grid(tmp_path: Path, entries: dict[str, tuple[str, list[float], list[float]]]):
    runs, results = [], []
    for label, (method, accs, at_60) in entries.items():
        for seed, (acc, a60) in enumerate(zip(accs, at_60)):
            runs.append(GridRun(label, 100, seed, {}, tmp_path / "runs" / f"{label}-n100-s{seed}"))
            results.append(_result(method, acc, {60.0: a60}))
    return runs, results


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_constant_gain_over_eight_seeds_is_better_against_the_default_reference(tmp_path):
    base = [70.0, 72.0, 71.0, 69.0, 73.0, 70.5, 71.5, 72.5]
    runs, results = _grid(tmp_path, {
        "fixmatch": ("fixmatch", [a + 2 for a in base], [a - 3 for a in base]),
        "supervised+strong": ("supervised", base, base),
        "sgan": ("sgan", [a + (0.5 if i % 2 else -0.5) for i, a in enumerate(base)], base),
    })
    report = write_report(tmp_path / "out", runs, results)
    assert report["reference"].name == "supervised+strong"  # the entry that uses no unlabeled data, not the first
    md = (tmp_path / "out" / "results.md").read_text()
    assert "vs supervised+strong, paired" in md and "the first entry that uses no unlabeled data" in md
    summary = {r["method"]: r for r in _rows(tmp_path / "out" / "results.csv")}
    assert summary["fixmatch"]["verdict"] == "better"
    assert float(summary["fixmatch"]["diff_mean"]) == pytest.approx(2.0)
    assert float(summary["fixmatch"]["p"]) == pytest.approx(2 / 256, abs=1e-4)
    assert summary["sgan"]["verdict"] == "undecided"
    assert summary["supervised+strong"]["verdict"] == ""
    paired = {(r["method"], r["budget_s"]): r for r in _rows(tmp_path / "out" / "paired.csv")}
    assert paired[("fixmatch", "60.0000")]["verdict"] == "worse"  # -3 at every seed within the budget
    assert paired[("fixmatch", "end")]["verdict"] == "better"
    assert "Equal cost, paired against supervised+strong" in md


def test_named_reference_and_three_seeds_decide_nothing(tmp_path):
    runs, results = _grid(tmp_path, {
        "supervised": ("supervised", [70.0, 71.0, 72.0], [70.0, 71.0, 72.0]),
        "fixmatch": ("fixmatch", [80.0, 81.0, 82.0], [80.0, 81.0, 82.0]),
    })
    write_report(tmp_path / "out", runs, results, reference="fixmatch")
    summary = {r["method"]: r for r in _rows(tmp_path / "out" / "results.csv")}
    assert summary["supervised"]["reference"] == "fixmatch"
    assert summary["supervised"]["verdict"] == "undecided"  # -10 at every seed, but 3 seeds cannot decide
    assert "at least 6 are needed" in (tmp_path / "out" / "results.md").read_text()
    with pytest.raises(ValueError, match="'nope' is not an entry of this grid; entries: supervised, fixmatch"):
        write_report(tmp_path / "out", runs, results, reference="nope")


def test_a_grid_too_small_to_decide_is_told_before_it_runs(tmp_path):
    def runs(entries: dict[str, range], n_labels: int = 100) -> list[GridRun]:
        return [GridRun(e, n_labels, s, {}, tmp_path / f"{e}-n{n_labels}-s{s}") for e, seeds in entries.items()
                for s in seeds]

    # Four entries against the reference at 6 seeds: the smallest Holm p is 4 x 2/64 = 0.125; 8 seeds would do.
    grid = runs({"sup": range(6), "a": range(6), "b": range(6), "c": range(6), "d": range(6)})
    (note,) = undecidable_tables(grid, "sup")
    assert note.startswith("100 labels: 4 entries against sup over at most 6 paired seeds can reach no verdict")
    assert "4 x 2/2^6 = 0.125" in note and note.endswith("8 seeds would allow one")
    # One entry at 6 seeds can decide; so can four at 8; a label count is judged on its own; no reference, no note.
    assert undecidable_tables(runs({"sup": range(6), "a": range(6)}), "sup") == []
    assert undecidable_tables(runs({"sup": range(8), "a": range(8), "b": range(8), "c": range(8)}), "sup") == []
    mixed = runs({"sup": range(6), "a": range(6)}) + runs({"sup": range(3), "a": range(3)}, n_labels=1000)
    assert [n.split(":")[0] for n in undecidable_tables(mixed, "sup")] == ["1000 labels"]
    assert undecidable_tables(grid, None) == []


def test_reports_written_at_once_by_two_processes_leave_one_whole_tensorboard_folder(tmp_path):
    """Two `genssl compare` processes on one grid both write its report at the end; each builds its HParams
    folder apart and swaps it in, so neither deletes what the other is writing (it once failed with
    FileNotFoundError inside TensorBoard's writer thread)."""
    import threading

    from genssl.compare.report import write_hparams

    runs, results = _grid(tmp_path, {"supervised": ("supervised", [70.0, 71.0], [70.0, 71.0]),
                                     "fixmatch": ("fixmatch", [72.0, 73.0], [72.0, 73.0])})
    for r in results:
        r["best_val_acc"], r["steps"] = 0.5, 10
    errors = []

    def write():
        try:
            write_hparams(tmp_path / "tb", runs, results)
        except Exception as e:  # noqa: BLE001 - the test reports any failure of a writer
            errors.append(e)

    writers = [threading.Thread(target=write) for _ in range(4)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert errors == []
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == sorted(r.name for r in runs)
    assert all(any(p.iterdir()) for p in (tmp_path / "tb").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tb")) == []  # nothing left behind

"""The re-measured study's tables are data: experiments/realistic/results.md and the README's generated sections
equal what experiments/realistic/report.py renders from the committed CSVs, and collecting a grid's runs writes
one CSV row per run and point of comparison, with the paired verdicts rendered from them."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import yaml

from genssl.compare.runner import run_grid

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("study_report", ROOT / "experiments/realistic/report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_tables_are_what_the_committed_csvs_generate():
    report = _report()
    assert (ROOT / "experiments/realistic/results.md").read_text() == report.render()
    readme = (ROOT / "experiments/README.md").read_text()
    assert "<!-- study:default -->" in readme
    assert readme == report.render_readme(readme)


def test_collect_writes_rows_per_run_and_budget_and_renders_verdicts(tmp_path, tiny_data):
    grid = {"reference": "sup", "overrides": {"train": {
                "steps": 4, "batch_size": 32, "labeled_batch_size": 16, "eval_every": 2, "log_every": 2,
                "ckpt_every": 2, "eval_batch_size": 128, "progress": False, "budgets_s": [1000]}},
            "methods": {"sup": {"method": {"name": "supervised"}, "data": {"dataset": "synthetic", "n_val": 100}},
                        "pl": {"method": {"name": "pseudo_label"}, "data": {"dataset": "synthetic", "n_val": 100}}},
            "n_labels": [20], "seeds": [0, 1]}
    (tmp_path / "toy.yaml").write_text(yaml.safe_dump(grid))
    run_grid(tmp_path / "toy.yaml", out=str(tmp_path / "root" / "toy"), data=tiny_data, progress=False)
    report = _report()
    assert report.collect("toy", tmp_path / "root", here=tmp_path) == 4
    with open(tmp_path / "toy.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["entry"], r["seed"], r["budget"]) for r in rows) == sorted(
        (e, s, b) for e in ("sup", "pl") for s in ("0", "1") for b in ("end", "1000"))
    text = report.render_study("toy", "Toy", here=tmp_path)
    assert "| vs sup (points, 95% BCa) |" in text and "| sup | 2 |" in text and "reference" in text
    assert "undecided (2 seeds cannot reach p < 0.05: at least 6 are needed)" in text

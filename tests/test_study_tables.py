"""The re-measured study's tables are data: experiments/realistic/results.md and the README's generated sections
equal what experiments/realistic/report.py renders from the committed CSVs, and collecting a grid's runs writes
one CSV row per run and point of comparison, with the paired verdicts rendered from them. The main Fashion-MNIST
table is generated the same way from experiments/fmnist_table.csv, whose per-seed figures are the ones the
HISTORY.md section named on each row records."""

from __future__ import annotations

import csv
import importlib.util
import re
from pathlib import Path

import pytest
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


def test_committed_typicality_tables_are_what_the_committed_csv_generates():
    spec = importlib.util.spec_from_file_location("typicality_study", ROOT / "experiments/typicality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.read_rows(ROOT / "experiments/typicality.csv")
    pools = ROOT / "experiments/typicality_pools.csv"
    expected = module.render(rows, module.read_rows(pools) if pools.is_file() else None)
    assert (ROOT / "experiments/typicality.md").read_text() == expected


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
    # A study split into questions renders one table (one Holm family) per question, each with the reference.
    report.FAMILIES = {"toy": lambda entry: f"question {entry}"}
    split = report.render_study("toy", "Toy", here=tmp_path)
    block = split.split("**20 labels, within 1000 s of the budget clock, question pl**")[1].split("**")[0]
    assert "| sup | 2 |" in block and "| pl | 2 |" in block and "question sup" not in split
    assert report.FAMILY_NOTE in split and report.FAMILY_NOTE not in text
    # The headline quotes the study table's own cell (same pairs, same Holm family) and says what has not run.
    report.HEADLINE = (("toy", "1000", "Toy point", None, None, None),
                       ("toy", "1000", "Toy, sup as FixMatch", ("pl",), "pl", "sup"),
                       ("absent", "60", "Absent point", None, None, None))
    report.ALSO_AGAINST = {"toy": ("pl",)}
    headline = report.render_headline(here=tmp_path)
    pl_row = next(line for line in headline.splitlines() if line.startswith("| Toy point | pl | 2 |"))
    pl_cell = re.search(r"\| pl \| 2 \| [^|]+ \| [^|]+ \| ([+-][\d.]+ \[[^]]+\] \(t \[[^]]+\]\))",
                        text.split("within 1000 s")[1])  # under 6 seeds the t interval is quoted beside the BCa
    assert pl_cell is not None and pl_cell.group(1) in pl_row and pl_row.endswith("| reference |  |")
    assert "| Toy point | sup | 2 |" in headline and "Not run yet: Absent point." in headline
    # A point may show some entries, each against references other than the grid's (the long budget's ConvNets).
    swapped = [line for line in headline.splitlines() if line.startswith("| Toy, sup as FixMatch |")]
    assert len(swapped) == 1 and swapped[0].endswith(f"| reference |  | {pl_cell.group(1)} | undecided |")


def test_committed_fmnist_table_is_what_its_csv_generates():
    report = _report()
    readme = (ROOT / "experiments/README.md").read_text()
    section = re.search(r"<!-- table:fmnist -->\n(.*?)<!-- /table:fmnist -->", readme, re.S)
    assert section is not None
    assert section.group(1) == report.render_fmnist_table()


def _history_sections() -> dict[str, str]:
    text = (ROOT / "experiments/HISTORY.md").read_text()
    parts = re.split(r"^#+ (.+)$", text, flags=re.M)  # [preamble, heading, body, heading, body, ...]
    return dict(zip(parts[1::2], parts[2::2]))


def test_fmnist_table_figures_are_those_history_records():
    """Each measured cell's seeds 0 / 1 / 2 (and best validation steps, where the CSV has them) are written so in
    the HISTORY.md section its rows name."""
    sections = _history_sections()
    for (row, n), runs in _report().fmnist_cells().items():
        if not runs[0]["test_acc_pct"]:
            continue
        runs = sorted(runs, key=lambda r: int(r["seed"]))
        assert [int(r["seed"]) for r in runs] == list(range(len(runs))), (row, n)
        body = sections[runs[0]["history_section"]]
        assert " / ".join(f"{float(r['test_acc_pct']):.2f}" for r in runs) in body, (row, n)
        if runs[0]["best_val_step"]:
            assert " / ".join(f"{int(r['best_val_step']):,}" for r in runs) in body, (row, n)
        assert re.fullmatch(r"[0-9a-f]{7,40}", runs[0]["commit"]), (row, n)


def test_fmnist_table_renders_cells_and_rejects_a_cell_that_disagrees(tmp_path):
    report = _report()
    cols = ["row", "entry", "n_labels", "seed", "test_acc_pct", "steps", "best_val_step", "precision", "machine",
            "date", "wall_per_run", "measured_note", "note", "history_section", "commit"]
    run = {"row": "a", "entry": "a", "n_labels": "100", "precision": "fp32", "machine": "M", "date": "2026-01-01",
           "wall_per_run": "1 s", "history_section": "S", "commit": "abcdef0"}
    rows = [{**run, "seed": s, "test_acc_pct": acc} for s, acc in ((0, "70.00"), (1, "72.00"))]
    rows += [{"row": "b", "entry": "b", "n_labels": n, "note": "later"} for n in ("100", "1000")]
    path = tmp_path / "t.csv"

    def write(rows):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, cols, restval="")
            writer.writeheader()
            writer.writerows(rows)

    write(rows)
    text = report.render_fmnist_table(path)
    assert "| a | 100 | 71.00 ± 1.41 | 1 s | 2026-01-01, M, fp32 | |" in text
    assert "| b | 100, 1000 | not measured | | | later |" in text
    assert "(2 runs in 1 measured cells, seeds 0, 1;" in text
    rows[1]["machine"] = "N"
    write(rows)
    with pytest.raises(ValueError, match="disagree on 'machine'"):
        report.render_fmnist_table(path)


def test_readme_answer_is_short_and_quotes_only_generated_figures():
    """The README's answer is at most 600 characters, and every figure in it (a difference, an interval end, an
    accuracy) is one that experiments/realistic/results.md, generated from the CSVs, prints."""
    readme = (ROOT / "README.md").read_text()
    answer = next(p for p in readme.split("\n\n") if p.startswith("**The answer so far**"))
    assert len(answer) <= 600, len(answer)
    results = (ROOT / "experiments/realistic/results.md").read_text()
    figures = re.findall(r"[+-]?\d+\.\d+", answer)
    assert figures, "the answer quotes no figure"
    assert [f for f in figures if f not in results] == []

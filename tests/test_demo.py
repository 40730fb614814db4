"""`genssl demo`: one run per usable core, the full table's figure beside each preview row, and plots whose every
method can be told apart."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

import genssl.cli as cli
from genssl.cli import demo_grid, demo_reference
from genssl.compare import plots
from genssl.compare.runner import load_grid

EXPERIMENTS = Path(__file__).resolve().parent.parent / "experiments"


def summary_rows(grid) -> list[dict]:
    """The summary rows a grid's report would plot (method, method_name, source_method), without running it."""
    _, runs = load_grid(grid)
    by_name = {r.name: r for r in runs}
    return [{"method": r.label, "method_name": r.raw["method"]["name"]} if r.samples is None else
            {"method": r.label, "method_name": "sample_classifier",
             "source_method": by_name[r.deps[0]].raw["method"]["name"]} for r in runs]


@pytest.mark.parametrize("grid", [demo_grid(), EXPERIMENTS / "table_fmnist.yaml"], ids=["demo", "table_fmnist"])
def test_no_two_methods_share_colour_and_marker(grid):
    rows = summary_rows(grid)
    style = plots.styles(rows)
    assert len(style) == len({r["method"] for r in rows})
    assert len(set(style.values())) == len(style), style
    families = {r["method"]: plots.family(r) for r in rows}
    assert families["sgan"] == families["sgan+samples"] == "GAN"
    assert families["vae_m2"] == families["m1+m2"] == families["m2+samples"] == "VAE family"
    assert families["supervised"] == families["fixmatch"] == "baselines"
    assert {colour for colour, _ in style.values()} == {plots.FAMILY_COLOURS[f] for f in families.values()}


def readme_table_at_100_labels() -> dict[str, str]:
    """{method: test accuracy cell} of the 100-label rows of experiments/README.md's current table."""
    text = (EXPERIMENTS / "README.md").read_text()
    section = text.split("<!-- table:fmnist -->", 1)[1].split("<!-- /table:fmnist -->", 1)[0]  # generated
    table = [line for line in section.splitlines() if line.startswith("|")]
    out = {}
    for line in table[2:]:
        method, labels, acc = (c.strip() for c in line.strip("|").split("|")[:3])
        if labels.split(",")[0] == "100":
            out[method.split()[0]] = re.sub(r"[¹²³⁴⁵⁶⁷⁸⁹*\s]+$", "", acc)
    return out


def test_every_demo_row_has_the_full_tables_figure():
    reference, readme = demo_reference(), readme_table_at_100_labels()
    entries = {r["method"] for r in summary_rows(demo_grid())}
    assert set(reference) == entries, "experiments/demo_reference.yaml needs one figure per demo.yaml entry"
    for method, figure in reference.items():
        assert figure.startswith(readme[method]), (method, figure, readme[method])


def test_demo_trains_one_run_per_usable_core_and_prints_the_full_figures(monkeypatch, capsys):
    seen = {}

    def fake_run_grid(grid, overrides=None, out=None, jobs=None):
        seen["jobs"] = jobs
        return [{"method": "sgan", "n_labels": 100, "seeds": 1, "test_acc_mean": 70.5, "test_acc_std": 0.0}]

    monkeypatch.setattr(cli, "run_grid", fake_run_grid)
    assert cli.main(["demo"]) == 0
    assert seen["jobs"] == (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    assert f"| sgan | 100 | 70.50 | {demo_reference()['sgan']} |" in capsys.readouterr().out
    cli.main(["demo", "--jobs", "1"])
    assert seen["jobs"] == 1

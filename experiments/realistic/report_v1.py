"""The report of the first realistic-evaluation study (issues 29-30, 3 seeds, 5,000 validation images re-selected
on 10-per-class subsets; its tables are experiments/realistic/results_v1.md), rebuilt from its run folders alone.
The re-measured study (issue 38) is experiments/realistic/report.py.

    python experiments/realistic/report_v1.py [--runs checkpoints/realistic/runs] [--out experiments/realistic]

What it reads of each run (results.json, written with train.oracle): the validation curve (step, budget-clock
seconds, validation accuracy), the oracle curve (test accuracy of the same weights at each evaluation) and, for
the default point, val_outcomes.pt (which of the 5,000 validation images each evaluation got right).

How a number is made: a selection policy (genssl.training.selection.replay, the code the Trainer runs online)
picks an evaluation from the validation curve, restricted to the evaluations reached within a budget; the
number is the test accuracy of those weights, read from the oracle curve. The oracle curve is the test set
scored at each evaluation, so this equals scoring the picked weights once; the selection never reads it. For
the default point, "10 per class" re-selects on `--subsets` random stratified subsets of 10 validation images
per class drawn from the run's 5,000 (so the training data is that of the 5,000-image run: 4,900 fewer
unlabeled images than a run with 100, <9% of the pool). "oracle" is the best test accuracy among the
evaluations within the budget: what a perfect selection would get, and what each policy loses against it.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from genssl.compare.stats import compare_to_reference
from genssl.training.selection import replay

POLICIES = ("best", "last", "within_se", "smoothed")
# the axis grids' entries: mismatch (mm: mismatch_mode replace, ma: add), unlabeled pool, filtered
AXIS = re.compile(r"^(mm\d*|ma\d+|u\d+|f\d+|g\d+)-")
DEFAULT_LABELS = ("supervised+strong", "self_training", "fixmatch", "sgan", "vae_m2")  # default.yaml's entries
MATCHED = (("supervised+strong", "conv-supervised+strong"), ("fixmatch", "conv-fixmatch"), ("sgan", "conv-sgan"),
           ("vae_m2", "conv-vae_m2"), ("adgm", "conv-adgm"), ("sdgm", "conv-sdgm"))  # matched.yaml: (MLP, ConvNet)
FAMILY_COLOURS = {"supervised": "#444444", "self_training": "#1f77b4", "fixmatch": "#2ca02c", "sgan": "#d62728",
                  "vae_m2": "#9467bd"}
MARKERS = {"supervised": "s", "self_training": "v", "fixmatch": "o", "sgan": "^", "vae_m2": "D"}


def load_runs(runs_dir: Path) -> list[dict]:
    out = []
    for folder in sorted(runs_dir.iterdir()):
        res_path = folder / "results.json"
        if not res_path.is_file():
            continue
        res = json.loads(res_path.read_text())
        if not res.get("curve") or "oracle_test_acc" not in res["curve"][0]:
            continue
        entry, _, seed = folder.name.rpartition("-s")
        label, _, n_labels = entry.rpartition("-n")
        res.update(folder=folder, label=label, seed_=int(seed), n_labels_=int(n_labels))
        out.append(res)
    return out


def method_of(label: str) -> str:
    base = label.split("-", 1)[1] if AXIS.match(label) else label
    return base.split("+")[0]


def pick(curve: list[dict], policy: str, n_val: int, budget: float | None, val_accs=None) -> float:
    """Test accuracy (%) of the weights `policy` picks among the evaluations within `budget`."""
    points = [(i, p) for i, p in enumerate(curve) if budget is None or p["clock_s"] <= budget]
    if not points:
        return float("nan")
    vals = [(p["step"], p["val_acc"] if val_accs is None else float(val_accs[i])) for i, p in points]
    step, _ = replay(vals, policy, n_val)
    return 100 * next(p["oracle_test_acc"] for _, p in points if p["step"] == step)


def oracle(curve: list[dict], budget: float | None) -> float:
    accs = [p["oracle_test_acc"] for p in curve if budget is None or p["clock_s"] <= budget]
    return 100 * max(accs) if accs else float("nan")


_HITS: dict = {}


def _hits(folder: Path) -> np.ndarray:
    if folder not in _HITS:
        _HITS[folder] = torch.load(folder / "val_outcomes.pt", weights_only=True)["hits"].numpy()
    return _HITS[folder]


def subset_pick(res: dict, policy: str, budget: float | None, per_class: int, subsets: int, val_labels,
                seed: int = 0) -> float:
    """Mean over random stratified validation subsets of `per_class` images per class of the pick's test acc."""
    hits = _hits(res["folder"])  # (evals, n_val)
    rng = np.random.default_rng(seed)
    classes = np.unique(val_labels)
    by_class = [np.flatnonzero(val_labels == k) for k in classes]
    accs = []
    for _ in range(subsets):
        idx = np.concatenate([rng.choice(ix, per_class, replace=False) for ix in by_class])
        accs.append(pick(res["curve"], policy, len(idx), budget, hits[:, idx].mean(1)))
    return float(np.mean(accs))


def mean_sd(xs: list[float]) -> str:
    xs = [x for x in xs if x == x]
    if not xs:
        return "—"
    return f"{statistics.fmean(xs):.2f} ± {statistics.stdev(xs):.2f}" if len(xs) > 1 else f"{xs[0]:.2f}"


@functools.lru_cache(maxsize=None)
def _train_labels(dataset: str, classes: tuple | None) -> np.ndarray:
    """The run's training labels as its task sees them (loaded once per dataset and class set)."""
    from genssl.config import DataConfig
    from genssl.data.source import load_train_test, task_data

    d = DataConfig(dataset=dataset, classes=list(classes) if classes else None)
    return task_data(*load_train_test(d, progress=False), d)[0].labels.numpy()


def val_labels_of(res: dict) -> np.ndarray:
    val = torch.load(res["folder"] / "val_outcomes.pt", weights_only=True)["val"]
    classes = res.get("classes")
    return _train_labels(res["dataset"], tuple(classes) if classes else None)[val.numpy()]


# ------------------------------------------------------------------------------------------------ tables
def default_point(runs: list[dict]) -> list[dict]:
    """default.yaml's runs: its entries at the smallest label count they have (matched.yaml adds 1000 labels)."""
    runs = [r for r in runs if r["label"] in DEFAULT_LABELS]
    return [r for r in runs if r["n_labels_"] == min(x["n_labels_"] for x in runs)]


def default_tables(runs: list[dict], subsets: int, per_class: int) -> tuple[str, dict]:
    runs = default_point(runs)
    if not runs:
        return "", {}
    budgets = sorted({b["budget_s"] for r in runs for b in r["budgets"]})
    labels_cache: dict = {}
    by_method = defaultdict(list)
    for r in runs:
        by_method[r["label"]].append(r)
    lines = [f"### Selection: 5,000 validation images against {per_class} per class (default point, "
             f"≤ {budgets[-1]:g} s)", "",
             "| method | oracle | best (5,000) | " + " | ".join(f"{p} ({per_class}/class)" for p in POLICIES)
             + " |", "|---|" + "---:|" * (2 + len(POLICIES))]
    loss = defaultdict(list)  # policy -> [oracle - pick] over runs and budgets, at realistic validation
    run_of = defaultdict(list)  # policy -> the run folder of each loss
    curves = {}
    for label, rs in by_method.items():
        row = {"oracle": [oracle(r["curve"], None) for r in rs],
               "best5000": [pick(r["curve"], "best", r["n_val"], None) for r in rs]}
        for p in POLICIES:
            row[p] = []
            for r in rs:
                key = str(r["folder"])
                if key not in labels_cache:
                    labels_cache[key] = val_labels_of(r)
                row[p].append(subset_pick(r, p, None, per_class, subsets, labels_cache[key]))
        lines.append(f"| {label} | {mean_sd(row['oracle'])} | {mean_sd(row['best5000'])} | "
                     + " | ".join(mean_sd(row[p]) for p in POLICIES) + " |")
        for b in [*budgets]:
            for r in rs:
                o = oracle(r["curve"], b)
                for p in POLICIES:
                    loss[p].append(o - subset_pick(r, p, b, per_class, subsets, labels_cache[str(r["folder"])]))
                    run_of[p].append(str(r["folder"]))
        curves[label] = {b: [subset_pick(r, "within_se", b, per_class, subsets, labels_cache[str(r["folder"])])
                             for r in rs] for b in budgets}
    lines += ["", f"Test accuracy (%), mean ± sd over seeds. Each policy column averages {subsets} random "
              f"stratified validation subsets of {per_class} images per class per run.", ""]
    lines += ["### What each policy loses against the oracle, at realistic validation", ""]
    lines += policy_loss_table(loss, run_of)
    lines += ["", f"Over every default-point run and every budget ({', '.join(f'{b:g}' for b in budgets)} s).", ""]
    lines += ["### Equal cost (default point, within_se on 10 per class)", "",
              "| method | " + " | ".join(f"≤ {b:g} s" for b in budgets) + " | steps in " + f"{budgets[-1]:g} s |",
              "|---|" + "---:|" * (len(budgets) + 1)]
    for label, rs in by_method.items():
        steps = statistics.fmean(next(b["steps_within"] for b in r["budgets"] if b["budget_s"] == budgets[-1])
                                 for r in rs)
        lines.append(f"| {label} | " + " | ".join(mean_sd(curves[label][b]) for b in budgets) + f" | {steps:.0f} |")
    return "\n".join(lines) + "\n", {"budget": curves, "budgets": budgets, "loss": loss}


def axis_table(runs: list[dict], prefix: str, values: dict[str, float], title: str, axis_name: str,
               supervised: list[float] | None = None, policy: str = "within_se",
               extra: dict | None = None) -> tuple[str, dict]:
    """Rows: methods; columns: the axis values (entry prefixes like mm0/mm50 or u1000). `extra`: {method: {x:
    [(policy pick, best pick, oracle)]}} from other runs (the default point as the unlabeled axis's "all")."""
    cells = defaultdict(dict)
    for m, by_x in (extra or {}).items():
        for x, vs in by_x.items():
            cells[m].setdefault(x, []).extend(vs)
    budget = None
    for r in runs:
        head, _, rest = r["label"].partition("-")
        if head not in values or not head.startswith(prefix):
            continue
        budget = max(b["budget_s"] for b in r["budgets"])
        cells[method_of(r["label"])].setdefault(values[head], []).append(
            (pick(r["curve"], policy, r["n_val"], budget), pick(r["curve"], "best", r["n_val"], budget),
             oracle(r["curve"], budget)))
    if not cells:
        return "", {}
    budget = budget or 120.0
    xs = sorted({x for c in cells.values() for x in c})
    lines = [f"### {title}", "", f"| method | " + " | ".join(f"{axis_name} {x:g}" for x in xs) + " |",
             "|---|" + "---:|" * len(xs)]
    sup = supervised
    if supervised:
        lines.append(f"| supervised+strong (ignores the pool) | " + " | ".join(mean_sd(sup) for _ in xs) + " |")
    for m, c in cells.items():
        lines.append(f"| {m} | " + " | ".join(mean_sd([v[0] for v in c.get(x, [])]) for x in xs) + " |")
    lines += ["", f"Test accuracy (%) of the weights {policy} picks on the run's own small validation set within "
              f"{budget:g} s of one CPU thread; mean ± sd over seeds. With `best` instead: "
              + "; ".join(f"{m} " + ", ".join(mean_sd([v[1] for v in c.get(x, [])]).split(' ±')[0] for x in xs)
                          for m, c in cells.items()) + ".", ""]
    return "\n".join(lines) + "\n", {"cells": {m: {x: [v[0] for v in c[x]] for x in c} for m, c in cells.items()},
                                     "supervised": sup if supervised else None}


def policy_loss_table(loss: dict[str, list[float]], run_of: dict[str, list[str]], against: str = "within_se"
                      ) -> list[str]:
    """Each policy's loss against the oracle, and its paired difference with `against`'s: a run's losses are
    averaged over its budgets first (they are not independent), then paired over runs (genssl.compare.stats)."""
    per_run = {p: defaultdict(list) for p in POLICIES}
    for p in POLICIES:
        for run, value in zip(run_of[p], loss[p]):
            per_run[p][run].append(value)
    mean_of = {p: {run: statistics.fmean(v) for run, v in per_run[p].items()} for p in POLICIES}
    verdicts = compare_to_reference({p: dict(enumerate(mean_of[p][run] for run in sorted(mean_of[p])))
                                     for p in POLICIES}, against)
    lines = [f"| policy | mean loss (points) | worst loss | loss minus {against}'s, paired over runs [95% BCa] | "
             "p (Holm) | verdict |", "|---|---:|---:|---:|---:|---|"]
    for p in POLICIES:
        v = verdicts.get(p)
        paired = (f"{v.mean:+.2f} [{v.ci_low:+.2f}, {v.ci_high:+.2f}] | {v.p:.3g} ({v.p_holm:.3g}) | {v.verdict}"
                  if v is not None else "reference | | ")
        lines.append(f"| {p} | {statistics.fmean(loss[p]):.2f} | {max(loss[p]):.2f} | {paired} |")
    return lines + ["", "A verdict `better` here means a larger loss than " + against + "'s; `worse`, a smaller one."]


def axis_policy_losses(runs: list[dict]) -> str:
    """What each policy loses against the oracle on the axis runs, which select on their own small validation set."""
    axis = [r for r in runs if AXIS.match(r["label"])]
    if not axis:
        return ""
    loss, run_of = defaultdict(list), defaultdict(list)
    for r in axis:
        for b in sorted({p["budget_s"] for p in r["budgets"]}):
            for p in POLICIES:
                loss[p].append(oracle(r["curve"], b) - pick(r["curve"], p, r["n_val"], b))
                run_of[p].append(str(r["folder"]))
    lines = [f"### What each policy loses against the oracle on the {len(axis)} axis runs (their own 10 validation "
             "images per class)", ""]
    lines += policy_loss_table(loss, run_of)
    return "\n".join(lines) + "\n"


FILTERS = {"f": "M2's ELBO, two-sided, central 80% kept", "g": "M1's ELBO, two-sided, central 80% kept"}


def filter_table(runs: list[dict], policy: str = "within_se") -> str:
    """Mismatch with and without the pool filters, and what each filter kept."""
    by = defaultdict(list)
    for r in runs:
        head = r["label"].split("-", 1)[0]
        if re.fullmatch(r"(mm|f|g)(50|100)", head):
            by[(method_of(r["label"]), head)].append(r)
    if not any(k[1][0] in FILTERS for k in by):
        return ""
    heads = [f"{p}{mm}" for mm in (50, 100) for p in ("mm", "f", "g")]
    names = {"mm": "unfiltered", "f": "M2 filter", "g": "M1 filter"}
    lines = ["### Filtering the unlabeled pool by typicality (data.filter_run)", "",
             "| method | " + " | ".join(f"{h.lstrip('mfg')}%: {names[h.rstrip('0123456789')]}" for h in heads) + " |",
             "|---|" + "---:|" * len(heads)]
    for m in sorted({k[0] for k in by}):
        cells = [mean_sd([pick(r["curve"], policy, r["n_val"], max(b["budget_s"] for b in r["budgets"]))
                          for r in by.get((m, h), [])]) for h in heads]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += ["", f"Test accuracy (%), {policy} on 10 validation images per class, ≤ 120 s. The filters: "
              + "; ".join(f"{names[k]}: {v}" for k, v in FILTERS.items()) + ". What each kept:"]
    for h in [h for h in heads if not h.startswith("mm")]:
        kept = []
        for (m, hh), rs in by.items():
            for r in rs:
                f = r.get("filter")
                if hh == h and f:
                    ood, ind = f["out_of_task_scored"], f["scored"] - f["out_of_task_scored"]
                    kept.append((f["out_of_task_kept"] / ood if ood else float("nan"),
                                 (f["kept"] - f["out_of_task_kept"]) / ind if ind else float("nan"), f["kept"],
                                 f["scored"]))
        if kept:
            ins = [k[1] for k in kept if k[1] == k[1]]
            lines.append(f"- {names[h.rstrip('0123456789')]}, {h.lstrip('mfg')}% mismatch: "
                         f"{100 * statistics.fmean(k[0] for k in kept):.0f}% of the out-of-class images"
                         + (f", {100 * statistics.fmean(ins):.0f}% of the in-class ones" if ins else "")
                         + f" ({statistics.fmean(k[2] for k in kept):.0f} of {kept[0][3]} on average).")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ plots
def plot_lines(data: dict, xlabel: str, title: str, path: Path, logx: bool = False, reference=None) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, by_x in data.items():
        xs = sorted(by_x)
        means = [np.mean(by_x[x]) for x in xs]
        sds = [np.std(by_x[x], ddof=1) if len(by_x[x]) > 1 else 0 for x in xs]
        m = method_of(label)
        ax.errorbar(xs, means, yerr=sds, label=label, color=FAMILY_COLOURS.get(m, "black"),
                    marker=MARKERS.get(m, "x"), capsize=3,
                    linestyle="--" if label.startswith("supervised") else "-")
    if reference is not None:
        ax.axhline(np.mean(reference), color="#444444", linestyle=":", label="supervised+strong")
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)


def matched_table(runs: list[dict], subsets: int, per_class: int) -> str:
    """Each method with the MLP against the same method with the classifiers' ConvNet (matched.yaml), per label
    count: test accuracy at the last budget under within_se on 10-per-class subsets and under best on all 5,000,
    the steps reached within the budget, and each run's wall time (validation and oracle scoring included)."""
    by = defaultdict(list)
    for r in runs:
        by[r["label"], r["n_labels_"]].append(r)
    if not any(label.startswith("conv-") for label, _ in by):
        return ""
    counts = sorted({n for (label, n) in by if any(label in pair for pair in MATCHED)})
    budget = max(b["budget_s"] for rs in by.values() for r in rs for b in r["budgets"])
    lines = [f"### Matched networks: MLP against ConvNet at equal cost (≤ {budget:g} s of one CPU thread)", "",
             f"| method | net | labels | seeds | within_se ({per_class}/class) | best (5,000) | steps / scheduled | "
             "ms/step | "
             "wall s/run |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for mlp, conv in MATCHED:
        for n in counts:
            for label, net in ((mlp, "MLP"), (conv, "ConvNet")):
                rs = by.get((label, n), [])
                if not rs:
                    continue
                sel = [subset_pick(r, "within_se", budget, per_class, subsets, val_labels_of(r)) for r in rs]
                best = [pick(r["curve"], "best", r["n_val"], budget) for r in rs]
                steps = [next(b["steps_within"] for b in r["budgets"] if b["budget_s"] == budget) for r in rs]
                ms = statistics.fmean(1000 * r["budget_clock_s"] / r["steps"] for r in rs)
                wall = statistics.median(r["wall_time_s"] for r in rs)
                lines.append(f"| {mlp.split('+')[0]} | {net} | {n} | {len(rs)} | {mean_sd(sel)} | {mean_sd(best)} | "
                             f"{statistics.fmean(steps):.0f} / {rs[0]['scheduled_steps']} | {ms:.0f} | {wall:.0f} |")
    lines += ["", f"Test accuracy (%), mean ± sd over seeds; within_se averages {subsets} stratified subsets of "
              f"{per_class} validation images per class per run. steps: reached within the budget, where a run "
              "stops unless its schedule ended first; ms/step: CPU time of one thread per step, validation excluded for ConvNet rows and "
              "included for MLP rows (< 3% of their budget). Wall s/run: median wall time of a run, its "
              "validation and oracle test scoring included, on a shared machine (not an idle timing).", ""]
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="checkpoints/realistic/runs")
    ap.add_argument("--out", default="experiments/realistic")  # writes results_v1.md there
    ap.add_argument("--subsets", type=int, default=200)
    ap.add_argument("--per-class", type=int, default=10)
    args = ap.parse_args(argv)
    runs = load_runs(Path(args.runs))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text, default = default_tables(runs, args.subsets, args.per_class)
    supervised = [pick(r["curve"], "within_se", r["n_val"], max(b["budget_s"] for b in r["budgets"]))
                  for r in runs if r["label"] == "mm-supervised+strong"]
    mm_text, mm = axis_table(runs, "mm", {"mm0": 0, "mm50": 50, "mm100": 100},
                             "Class mismatch, mismatch_mode replace (six garments, a fixed pool of 20,000 unlabeled "
                             "images, 10 validation images per class)", "mismatch %", supervised)
    ma_text = axis_table(runs, "m", {"mm0": 0, "ma50": 50},
                         "Class mismatch, mismatch_mode add (six garments, the 20,000 in-class images of 0% kept and "
                         "out-of-class images added, 10 validation images per class)", "mismatch %",
                         supervised)[0] if any(r["label"].startswith("ma") for r in runs) else ""
    pool = {"u1000": 1000, "u10000": 10000}
    # "all": the default point's runs (5,000 validation images kept), re-selected on 10-per-class subsets at 120 s
    everything, sup_all = defaultdict(dict), []
    for r in default_point(runs):
        if r["label"] in ("fixmatch", "sgan", "vae_m2", "supervised+strong"):
            labels = val_labels_of(r)
            v = (subset_pick(r, "within_se", 120, args.per_class, args.subsets, labels),
                 subset_pick(r, "best", 120, args.per_class, args.subsets, labels), oracle(r["curve"], 120))
            if r["label"] == "supervised+strong":
                sup_all.append(v[0])
            else:
                everything[r["label"]].setdefault(4900 + 55000, []).append(v)
    u_text, u = axis_table(runs, "u", pool, "Unlabeled pool size (10 validation images per class; the 59,900 "
                           "column is the default point's runs re-selected on 10-per-class subsets)", "n_unlabeled",
                           sup_all or None, extra=everything)
    matched = matched_table(runs, args.subsets, args.per_class)
    report = "\n".join(t for t in (text, matched, axis_policy_losses(runs), mm_text, ma_text, filter_table(runs),
                                    u_text) if t)
    (out / "results_v1.md").write_text(report)
    print(report)
    if default:
        plot_lines({k: v for k, v in default["budget"].items()}, "budget (s of one CPU thread)",
                   "Fashion-MNIST-100: accuracy against budget", out / "accuracy_vs_budget.png")
    if mm:
        plot_lines(mm["cells"], "out-of-class share of the unlabeled pool (%)",
                   "Six garments, 100 labels: accuracy against class mismatch", out / "accuracy_vs_mismatch.png",
                   reference=mm["supervised"])
    if u:
        plot_lines(u["cells"], "unlabeled images", "Fashion-MNIST-100: accuracy against unlabeled pool size",
                   out / "accuracy_vs_unlabeled.png", logx=True)


if __name__ == "__main__":
    main()

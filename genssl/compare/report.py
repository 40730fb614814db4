"""The report of a grid (`genssl compare`): summary table (Markdown, CSV), per-run CSV, the two plots and the
TensorBoard HParams sessions, all rewritten from the runs' results.json into one folder."""

from __future__ import annotations

import csv
import io
import os
import shutil
import statistics
import uuid
from pathlib import Path

from genssl.compare import plots
from genssl.compare.stats import STATS_NOTE, PairedResult, format_difference
from genssl.compare.verdicts import END, Reference, choose_reference, paired_verdicts
from genssl.fileio import atomic_write_text


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:  # None or NaN
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def summarize(runs: list, results: list[dict | None]) -> list[dict]:
    """One row per (method entry, label count) in grid order; failed runs (None) are counted, not averaged."""
    rows: dict[tuple[str, int], list[dict | None]] = {}
    for run, res in zip(runs, results):
        rows.setdefault((run.label, run.n_labels), []).append(res)
    table = []
    for (label, n), rs in rows.items():
        ok = [r for r in rs if r is not None]
        accs = [100 * r["test_acc"] for r in ok]
        table.append({
            "method": label, "method_name": ok[0]["method"] if ok else "", "n_labels": n, "seeds": len(ok),
            "source_method": ok[0].get("source_method", "") if ok else "",  # a samples classifier's generator
            "failed": len(rs) - len(ok),
            "test_acc_mean": statistics.fmean(accs) if accs else float("nan"),
            "test_acc_std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "val_acc_mean": statistics.fmean(100 * r["best_val_acc"] for r in ok) if ok else float("nan"),
            "wall_time_s_mean": statistics.fmean(r["wall_time_s"] for r in ok) if ok else float("nan"),
            "includes_deps": any(r.get("own_wall_time_s", r["wall_time_s"]) != r["wall_time_s"] for r in ok),
            "select": "/".join(sorted({r.get("select", "best") for r in ok})),
            "n_val": "/".join(str(v) for v in sorted({r["n_val"] for r in ok if "n_val" in r})),
            "budgets": _budget_summary(ok),
        })
    return table


def _budget_summary(results: list[dict]) -> dict[float, dict]:
    """{budget seconds: mean/std test accuracy (%) of the weights picked within it, mean steps reached, how many
    seeds had a pick}, over the runs that were given that budget (train.budgets_s)."""
    out = {}
    for b in sorted({p["budget_s"] for r in results for p in r.get("budgets", [])}):
        points = [p for r in results for p in r.get("budgets", []) if p["budget_s"] == b]
        accs = [100 * p["test_acc"] for p in points if p["test_acc"] is not None]
        out[b] = {"mean": statistics.fmean(accs) if accs else float("nan"),
                  "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "seeds": len(accs),
                  "steps": statistics.fmean(p["steps_within"] for p in points),
                  "unspent": sum(not p["spent"] for p in points)}
    return out


def budget_table(table: list[dict], reference: str | None = None) -> str:
    """Markdown: test accuracy of each method at each equal-cost budget, next to the end of its run."""
    budgets = sorted({b for r in table for b in r.get("budgets", {})})
    if not budgets:
        return ""
    head = " | ".join(f"≤ {fmt_duration(b)}" for b in budgets)
    lines = [f"| method | labels | {head} | end of run |", "|---|---:|" + "---:|" * (len(budgets) + 1)]
    for r in table:
        cells = []
        for b in budgets:
            p = r.get("budgets", {}).get(b)
            if p is None or not p["seeds"]:
                cells.append("—")
                continue
            acc = f"{p['mean']:.2f} ± {p['std']:.2f}" if p["seeds"] > 1 else f"{p['mean']:.2f}"
            cells.append(f"{acc} ({p['steps']:.0f} steps{', schedule ended first' if p['unspent'] else ''})")
        own = f"{r['test_acc_mean']:.2f}" if r["seeds"] else "—"
        lines.append(f"| {r['method']} | {r['n_labels']} | {' | '.join(cells)} | {own} |")
    if reference:
        lines += ["", f"Equal cost, paired against {reference} (points, 95% interval, p with Holm's adjustment "
                      "across the entries at each budget, verdict):", "",
                  f"| method | labels | {head} |", "|---|---:|" + "---:|" * len(budgets)]
        for r in table:
            cells = [" ".join(c for c in _verdict_cells(r, b) if c) for b in budgets]
            lines.append(f"| {r['method']} | {r['n_labels']} | {' | '.join(cells)} |")
    lines.append("")
    lines.append("Equal cost: each cell scores once on the test set the weights that the run's selection policy "
                 "picked among the evaluations reached within the budget (seconds of the budget clock: CPU time "
                 "of the run's process on a CPU, wall time on a GPU; training steps only, genssl.training.budget); the "
                 "steps are those reached within it. End of run: the run's own pick at its last step (its "
                 "schedule's end, or where train.stop_at_budget stopped it).")
    return "\n".join(lines) + "\n"


def _accuracy_cell(r: dict) -> str:
    """mean ± std over seeds, the one seed's figure, or — when every seed failed."""
    if r["seeds"] > 1:
        return f"{r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f}"
    return f"{r['test_acc_mean']:.2f}" if r["seeds"] else "—"


def _verdict_cells(r: dict, budget: float | None = END) -> tuple[str, str, str]:
    """(paired difference with its interval, p (Holm), verdict) of a row against the reference."""
    res: PairedResult | None = r.get("paired", {}).get(budget)
    if res is None:
        return ("reference", "", "") if r.get("is_reference") else ("—", "", "")
    diff = f"{res.mean:+.2f} [{res.ci_low:.2f}, {res.ci_high:.2f}]"
    if res.t_low is not None:
        diff += f" (t: [{res.t_low:.2f}, {res.t_high:.2f}])"
    p = f"{res.p:.3g}" + (f" ({res.p_holm:.3g})" if res.p_holm is not None else "")
    verdict = res.verdict + (f": {res.note}" if res.note else "")
    return diff, p, verdict


def markdown_table(table: list[dict], devices: list[str] = (), reference: Reference | None = None,
                   notes: list[str] = ()) -> str:
    ref = reference.name if reference is not None else None
    paired_head = f" vs {ref}, paired (points) | p (Holm) | verdict |" if ref else ""
    lines = [f"| method | labels | test accuracy (%) | seeds | wall time / run |{paired_head}",
             "|---|---:|---:|---:|---:|" + ("---:|---:|---|" if ref else "")]
    for r in table:
        acc = _accuracy_cell(r)
        seeds = f"{r['seeds']}" + (f" ({r['failed']} failed)" if r["failed"] else "")
        wall = fmt_duration(r["wall_time_s_mean"]) if r["seeds"] else "—"
        paired = (" " + " | ".join(_verdict_cells(r)) + " |") if ref else ""
        lines.append(f"| {r['method']} | {r['n_labels']} | {acc} | {seeds} | {wall} |{paired}")
    lines.append("")
    policies = sorted({r.get("select", "") for r in table if r["seeds"]} - {""})
    sizes = sorted({r.get("n_val", "") for r in table if r["seeds"]} - {""})
    lines.append("Mean ± sample standard deviation over seeds; the test set is evaluated once per run, with the "
                 f"checkpoint that train.select={'/'.join(policies) or 'best'} picked on "
                 f"{'/'.join(sizes) or 'the'} validation images.")
    if reference is not None:
        lines.append(f"Reference of the paired columns: {reference.how}. " + (STATS_NOTE if ref else ""))
    if any(r.get("includes_deps") for r in table):
        lines.append("The wall time of a run that builds on another (M1+M2 on its M1, a generated-samples "
                     "classifier on its generator) includes that run's.")
    if devices:
        lines.append(f"Ran on: {'; '.join(devices)}.")
    lines.extend(notes)
    budgets = budget_table(table, ref)
    return "\n".join(lines) + "\n" + ("\n" + budgets if budgets else "")


def beside_reference(table: list[dict], reference: dict[str, str], what: str) -> str:
    """Markdown: each row's test accuracy next to a reference figure for its method (`reference`: method ->
    text), e.g. the full table's beside a short-schedule preview; `what` heads the reference column."""
    lines = [f"| method | labels | test accuracy (%) here | {what} |", "|---|---:|---:|---|"]
    for r in table:
        acc = _accuracy_cell(r)
        lines.append(f"| {r['method']} | {r['n_labels']} | {acc} | {reference.get(r['method'], '—')} |")
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], keys: list[str]) -> str:

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(keys)
    for r in rows:
        writer.writerow([f"{r[k]:.4f}" if isinstance(r[k], float) else r[k] for k in keys])
    return buf.getvalue()


SUMMARY_KEYS = ["method", "method_name", "n_labels", "seeds", "failed", "test_acc_mean", "test_acc_std",
                "val_acc_mean", "wall_time_s_mean", "reference", "diff_mean", "diff_ci_low", "diff_ci_high",
                "diff_t_low", "diff_t_high", "p", "p_holm", "verdict", "seeds_needed"]
PAIRED_KEYS = ["method", "n_labels", "budget_s", "reference", "n_pairs", "diff_mean", "diff_ci_low",
               "diff_ci_high", "ci_method", "diff_t_low", "diff_t_high", "p", "p_holm", "verdict", "seeds_needed",
               "note"]


def _paired_fields(res: PairedResult | None) -> dict:
    if res is None:
        return {k: "" for k in ("diff_mean", "diff_ci_low", "diff_ci_high", "diff_t_low", "diff_t_high", "p",
                                "p_holm", "verdict", "seeds_needed", "n_pairs", "ci_method", "note")}
    blank = lambda v: "" if v is None else v  # noqa: E731
    return {"diff_mean": res.mean, "diff_ci_low": res.ci_low, "diff_ci_high": res.ci_high,
            "diff_t_low": blank(res.t_low), "diff_t_high": blank(res.t_high), "p": res.p,
            "p_holm": blank(res.p_holm), "verdict": res.verdict, "seeds_needed": blank(res.seeds_needed),
            "n_pairs": res.n, "ci_method": res.ci_method, "note": res.note}


def _summary_rows(table: list[dict], reference: Reference) -> list[dict]:
    return [{**r, "reference": reference.name or "", **_paired_fields(r.get("paired", {}).get(END))}
            for r in table]


def _paired_rows(table: list[dict], reference: Reference) -> list[dict]:
    """One row per entry, label count and point of comparison (end of run, or a budget)."""
    return [{"method": r["method"], "n_labels": r["n_labels"], "budget_s": "end" if b is END else b,
             "reference": reference.name, **_paired_fields(res)}
            for r in table for b, res in r.get("paired", {}).items()]
RUN_KEYS = ["method", "method_name", "n_labels", "seed", "test_acc", "best_val_acc", "best_step", "steps",
            "wall_time_s", "select", "n_val", "n_unlabeled", "mismatch", "mismatch_mode", "budget_test_acc", "device",
            "run_dir"]


def _run_rows(runs: list, results: list[dict | None]) -> list[dict]:
    return [{"method": run.label, "method_name": res["method"], "n_labels": run.n_labels, "seed": run.seed,
             "test_acc": res["test_acc"], "best_val_acc": res["best_val_acc"], "best_step": res["best_step"],
             "steps": res["steps"], "wall_time_s": res["wall_time_s"], "select": res.get("select", "best"),
             "n_val": res.get("n_val", ""), "n_unlabeled": res.get("n_unlabeled", ""),
             "mismatch": res.get("mismatch", 0.0),
             "mismatch_mode": res.get("mismatch_mode", "replace"),  # results.json before the mode: replace
             "budget_test_acc": ";".join(f"{p['budget_s']:g}s:{'' if p['test_acc'] is None else round(p['test_acc'], 4)}"
                                         for p in res.get("budgets", [])),
             "device": res.get("device", ""),
             "run_dir": str(run.run_dir)}
            for run, res in zip(runs, results) if res is not None]


def write_hparams(tb_dir: Path, runs: list, results: list[dict | None]) -> None:
    """One HParams session per run under tb_dir/<run name>: the grid's axes as hparams, test and validation
    accuracy and wall time as metrics. Rewritten on every report, so reused runs never appear twice: written
    into a folder of its own, then swapped in, because two `genssl compare` processes sharing a grid both write
    its report, and one must not delete the folder the other is writing."""
    from torch.utils.tensorboard import SummaryWriter

    tag = f"{os.getpid()}.{uuid.uuid4().hex[:8]}"
    fresh, stale = tb_dir.with_name(f".{tb_dir.name}.new.{tag}"), tb_dir.with_name(f".{tb_dir.name}.old.{tag}")
    try:
        _write_hparams_into(fresh, runs, results, SummaryWriter)
        try:
            os.rename(tb_dir, stale)
        except FileNotFoundError:
            pass
        try:
            os.rename(fresh, tb_dir)
        except OSError:  # another report swapped its own in between our renames: as new as ours, keep it
            pass
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def _write_hparams_into(tb_dir: Path, runs: list, results: list[dict | None], SummaryWriter) -> None:
    tb_dir.mkdir(parents=True)
    for run, res in zip(runs, results):
        if res is None:
            continue
        with SummaryWriter(str(tb_dir / run.name)) as w:
            w.add_hparams({"method": run.label, "method_name": res["method"], "n_labels": run.n_labels,
                           "seed": run.seed, "steps": res["steps"], "dataset": res.get("dataset", "")},
                          {"hparam/test_acc": res["test_acc"], "hparam/best_val_acc": res["best_val_acc"],
                           "hparam/wall_time_s": res["wall_time_s"]}, run_name=".")


def attach_verdicts(table: list[dict], runs: list, results: list[dict | None], reference: Reference) -> None:
    """Each summary row gains `paired`: {budget or END: its PairedResult against the reference}."""
    verdicts = paired_verdicts(runs, results, reference)
    for r in table:
        r["is_reference"] = r["method"] == reference.name
        r["paired"] = {b: res for (entry, n, b), res in sorted(verdicts.items(), key=lambda kv: (kv[0][2] or 0))
                       if entry == r["method"] and n == r["n_labels"]}


def write_report(out_dir: Path, runs: list, results: list[dict | None], reference: str | None = None,
                 reference_source: str = "--reference", failures: dict[str, str] | None = None) -> dict:
    """Every output of a grid, rewritten from scratch; returns {"table": rows, "paths": {kind: path},
    "reference": Reference}. `reference` names the entry the paired columns compare against (default: the
    first entry that uses no unlabeled data). `failures`: {run name: its error}, listed under the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table = summarize(runs, results)
    ref = choose_reference(runs, results, reference, reference_source)
    attach_verdicts(table, runs, results, ref)
    devices = sorted({r.get("device", "") for r in results if r} - {""})
    datasets = sorted({r.get("dataset", "") for r in results if r} - {""})
    assumed = sorted({k for r in results if r for k in r.get("reused_with_defaults", [])})
    notes = [f"Runs reused from before these config keys existed, taken at today's defaults: {', '.join(assumed)}."
             ] if assumed else []
    if failures:
        notes += ["", f"Failed runs ({len(failures)}):", "",
                  *(f"- {name}: {error}" for name, error in failures.items())]
    atomic_write_text(markdown_table(table, devices, ref, notes), out_dir / "results.md")
    atomic_write_text(csv_table(_summary_rows(table, ref), SUMMARY_KEYS), out_dir / "results.csv")
    atomic_write_text(csv_table(_paired_rows(table, ref), PAIRED_KEYS), out_dir / "paired.csv")
    atomic_write_text(csv_table(_run_rows(runs, results), RUN_KEYS), out_dir / "runs.csv")
    done = [r for r in table if r["seeds"]]
    where = f" on {', '.join(datasets)}" if datasets else ""
    paths = {"table": out_dir / "results.md", "csv": out_dir / "results.csv", "runs_csv": out_dir / "runs.csv",
             "paired_csv": out_dir / "paired.csv"}
    if done:
        paths["plot_labels"] = plots.accuracy_vs_labels(done, out_dir / "accuracy_vs_labels.png",
                                                        f"Test accuracy against labels{where}")
        paths["plot_time"] = plots.accuracy_vs_time(done, out_dir / "accuracy_vs_time.png",
                                                    f"Test accuracy against wall time{where}")
        if any(r["budgets"] for r in done):
            paths["plot_budget"] = plots.accuracy_vs_budget(done, out_dir / "accuracy_vs_budget.png",
                                                            f"Test accuracy at equal cost{where}")
    write_hparams(out_dir / "tb", runs, results)
    paths["tb"] = out_dir / "tb"
    return {"table": table, "paths": paths, "reference": ref}



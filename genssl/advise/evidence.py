"""The evidence of `genssl advise`: every candidate's held-out accuracy over the repeats, its paired difference
from the supervised reference (genssl.compare.stats: BCa bootstrap interval, exact sign-flip p, Holm across the
candidates), its cost, and the recommendation they support.

Held-out accuracy is what each run's `test_acc` holds here: the accuracy on its repeat's held-out labeled images,
scored once with the weights the run picked on its own validation images (within_se), so no image that chose the
weights also scores them. Beside the paired interval, the corrected resampled t interval of Nadeau & Bengio 2003
(Machine Learning 52, "Inference for the generalization error"), which allows for repeats that share images:
    mean +- t_{0.975, R-1} * sd * sqrt(1/R + n_heldout / n_train).

A candidate is recommended when the paired comparison calls it better than supervised (Holm p < 0.05 and the
bootstrap interval above 0); among several, the one with the largest mean difference. Otherwise: supervised.
"""

from __future__ import annotations

import math
import statistics

from scipy import stats

from genssl.compare.stats import ALPHA, compare_to_reference, seeds_to_decide


def nadeau_bengio(diffs: list[float], n_heldout: int, n_train: int) -> tuple[float, float] | None:
    """The corrected resampled t interval (module docstring) of the mean difference; None below 2 repeats."""
    r = len(diffs)
    if r < 2:
        return None
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    half = stats.t.ppf(1 - ALPHA / 2, r - 1) * sd * math.sqrt(1 / r + n_heldout / n_train)
    return mean - half, mean + half


def candidate_rows(per_run: dict[str, dict[int, dict]], reference: str, n_heldout: int, n_train: int) -> list[dict]:
    """One row per candidate (reference first) from {candidate: {repeat: results.json}}."""
    acc = {name: {s: 100 * r["test_acc"] for s, r in runs.items()} for name, runs in per_run.items() if runs}
    paired = compare_to_reference(acc, reference) if reference in acc else {}
    ref_cost = _mean([r["budget_clock_s"] for r in per_run.get(reference, {}).values()])
    rows = []
    for name in [reference, *[n for n in per_run if n != reference]]:
        runs = per_run.get(name) or {}
        accs = [acc[name][s] for s in sorted(runs)] if runs else []
        cost = _mean([r["budget_clock_s"] for r in runs.values()])
        row = {"candidate": name, "method": next(iter(runs.values()))["method"] if runs else None,
               "repeats": len(runs), "heldout_acc_mean": _mean(accs),
               "heldout_acc_sd": statistics.stdev(accs) if len(accs) > 1 else None,
               "steps_mean": _mean([r["steps"] for r in runs.values()]),
               "cpu_s_mean": cost, "cost_vs_reference": cost / ref_cost if cost and ref_cost else None,
               "per_repeat": {int(s): acc[name][s] for s in sorted(runs)} if runs else {}}
        p = paired.get(name)
        if p is not None:
            common = sorted(set(acc[name]) & set(acc[reference]))
            nb = nadeau_bengio([acc[name][s] - acc[reference][s] for s in common], n_heldout, n_train)
            row |= {"diff_mean": p.mean, "ci_low": p.ci_low, "ci_high": p.ci_high, "ci_method": p.ci_method,
                    "p": p.p, "p_holm": p.p_holm, "verdict": p.verdict, "seeds_needed": p.seeds_needed,
                    "corrected_ci": list(nb) if nb else None, "note": p.note}
        rows.append(row)
    return rows


def _mean(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def recommend(rows: list[dict], reference: str) -> dict:
    """{"choice", "better" (bool), "sentence", "more"}: the candidate to use and the sentence that says why."""
    better = [r for r in rows if r.get("verdict") == "better"]
    ref = rows[0]
    if better:
        best = max(better, key=lambda r: r["diff_mean"])
        nb = best.get("corrected_ci")
        sentence = (f"use {best['candidate']}: {best['diff_mean']:+.1f} points over {reference} on your held-out "
                    f"labels, 95% interval [{best['ci_low']:+.1f}, {best['ci_high']:+.1f}], p = {best['p']:.2g} "
                    f"(Holm {best['p_holm']:.2g}), at {best['cost_vs_reference']:.1f}x its cost")
        if nb and nb[0] <= 0:
            sentence += (f". The interval that allows for repeats sharing images, [{nb[0]:+.1f}, {nb[1]:+.1f}], "
                         f"reaches 0: the gain is likely, not certain")
        return {"choice": best["candidate"], "better": True, "sentence": sentence, "more": _more(rows, reference)}
    worse = [r for r in rows if r.get("verdict") == "worse"]
    if len(rows) == 1:
        sentence = f"only {reference} could run within this budget: use {reference}"
    elif worse:
        sentence = (f"no candidate beats {reference} with these labels: use {reference} ("
                    + "; ".join(f"{r['candidate']} did worse, {r['diff_mean']:+.1f} points, 95% interval "
                                f"[{r['ci_low']:+.1f}, {r['ci_high']:+.1f}], p = {r['p']:.2g}" for r in worse)
                    + ("; the others are undecided" if len(worse) < len(rows) - 1 else "") + ")")
    else:
        sentence = f"no candidate is distinguishable from {reference} with these labels: use {reference}"
    needed = seeds_to_decide(max(1, len(rows) - 1))  # Holm across the candidates
    if ref["repeats"] < needed and len(rows) > 1:
        sentence += (f" ({ref['repeats']} repeats cannot reach p < 0.05 whatever the difference: at least {needed} "
                     f"are needed, so give a larger budget)")
    return {"choice": reference, "better": False, "sentence": sentence, "more": _more(rows, reference)}


def _more(rows: list[dict], reference: str) -> str:
    """What more repeats (budget) or labels would likely change."""
    undecided = [r for r in rows if r.get("verdict") == "undecided" and r.get("diff_mean", 0) > 0]
    lines = []
    if undecided:
        top = max(undecided, key=lambda r: r["diff_mean"])
        need = top.get("seeds_needed")
        if need:
            lines.append(f"{top['candidate']} is {top['diff_mean']:+.1f} points ahead but undecided: at this effect "
                         f"and spread about {need} repeats would decide it (this run had {top['repeats']}; the "
                         f"budget grows about in proportion)")
    worse = [r["candidate"] for r in rows if r.get("verdict") == "worse"]
    if worse:
        lines.append(f"{', '.join(worse)} did worse than {reference} at this cost; a larger budget (more steps a run) "
                     f"may narrow that, as these methods keep improving with steps")
    lines.append("More labels make each repeat's held-out score less noisy (its spread shrinks as 1/sqrt(held-out "
                 "images)), and they also shrink what unlabeled images can add: the gains of semi-supervised "
                 "learning are largest where labels are fewest")
    return ". ".join(lines) + "."

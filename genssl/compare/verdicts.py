"""Paired verdicts of a grid: every entry against a reference entry, seed by seed (genssl.compare.stats).

The reference is the grid's `reference:` entry, `genssl compare --reference NAME`, or by default the first entry
whose method uses no unlabeled data (supervised). Seeds pair because the same seed is the same labeled split and
validation images for every entry. One table of verdicts per label count and per point of comparison: the end
of each run (its own pick) and each equal-cost budget; Holm's adjustment runs across the entries of one table.
"""

from __future__ import annotations

from dataclasses import dataclass

from genssl.compare.stats import ALPHA, PairedResult, compare_to_reference, seeds_to_decide
from genssl.registry import get_method_class

END = None  # the point of comparison "end of run", beside the budgets in seconds


@dataclass(frozen=True)
class Reference:
    name: str | None
    how: str  # how it was chosen, for the report: "the grid's reference", "--reference", "default: ..."


def choose_reference(runs: list, results: list[dict | None], named: str | None = None,
                     source: str = "--reference") -> Reference:
    """The named entry (refused, with the entries listed, when it is not one), or the first entry whose method
    uses no unlabeled data; Reference(None, why) when there is none."""
    labels = list(dict.fromkeys(run.label for run in runs))
    if named is not None:
        if named not in labels:
            raise ValueError(f"{source}: {named!r} is not an entry of this grid; entries: {', '.join(labels)}")
        return Reference(named, f"{source} {named}")
    for run, res in zip(runs, results):
        if res is None or res.get("source_method"):  # a generated-samples classifier learns from unlabeled data
            continue
        try:
            supervised = not get_method_class(res["method"]).uses_unlabeled
        except KeyError:
            continue
        if supervised:
            return Reference(run.label, f"default: {run.label}, the first entry that uses no unlabeled data")
    return Reference(None, "no entry uses only labeled data and the grid names no `reference:`, so no entry is "
                           "compared")


def per_seed_accuracy(runs: list, results: list[dict | None]) -> dict[tuple[int, float | None], dict[str, dict]]:
    """{(n_labels, budget or END): {entry: {seed: test accuracy %}}}; a budget without a pick is left out."""
    table: dict[tuple[int, float | None], dict[str, dict]] = {}
    for run, res in zip(runs, results):
        if res is None:
            continue
        table.setdefault((run.n_labels, END), {}).setdefault(run.label, {})[run.seed] = 100 * res["test_acc"]
        for p in res.get("budgets", []):
            if p.get("test_acc") is not None:
                key = (run.n_labels, float(p["budget_s"]))
                table.setdefault(key, {}).setdefault(run.label, {})[run.seed] = 100 * p["test_acc"]
    return table


def paired_verdicts(runs: list, results: list[dict | None], reference: Reference
                    ) -> dict[tuple[str, int, float | None], PairedResult]:
    """{(entry, n_labels, budget or END): its paired comparison with the reference}."""
    if reference.name is None:
        return {}
    out = {}
    for (n, budget), per_entry in per_seed_accuracy(runs, results).items():
        if reference.name not in per_entry or len(per_entry) < 2:
            continue
        for entry, result in compare_to_reference(per_entry, reference.name).items():
            out[(entry, n, budget)] = result
    return out


def undecidable_tables(runs: list, reference: str | None, alpha: float = ALPHA) -> list[str]:
    """A sentence per label count whose table can reach no verdict with the seeds the grid runs: m entries paired
    with the reference over at most n seeds give a smallest Holm p of m · 2 / 2^n, so if that is not below alpha
    every entry reads `undecided` whatever the accuracies. Said before the runs start, so a grid can be sized to
    decide (genssl.compare.stats.seeds_to_decide) instead of learning it from the report."""
    if reference is None:
        return []
    seeds: dict[int, dict[str, set[int]]] = {}
    for run in runs:
        seeds.setdefault(run.n_labels, {}).setdefault(run.label, set()).add(run.seed)
    notes = []
    for n_labels, per_entry in sorted(seeds.items()):
        ref_seeds = per_entry.get(reference, set())
        paired = {e: len(s & ref_seeds) for e, s in per_entry.items() if e != reference and s & ref_seeds}
        if not paired:
            continue
        m, n = len(paired), max(paired.values())
        needed = seeds_to_decide(m, alpha)
        if n < needed:
            notes.append(f"{n_labels} labels: {m} entr{'y' if m == 1 else 'ies'} against {reference} over at most "
                         f"{n} paired seed{'s' * (n != 1)} can reach no verdict (smallest Holm p {m} x 2/2^{n} = "
                         f"{m * 2 / 2 ** n:.3g}, not below {alpha:g}): every entry will read undecided; {needed} "
                         f"seeds would allow one")
    return notes

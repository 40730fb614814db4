"""The plan of `genssl advise`: how many repeats, which candidates, and each run's budget, from the total budget,
the runs that can go at once, and the pilot's measured step costs; and the smallest effect those repeats can show.

Time model (wall seconds). A run given b seconds on the budget clock (CPU seconds of one thread) takes about
    run_wall(b) = factor * (b * (1 + EVAL_SHARE) + START_S)
where `factor` is the CPU contention (wall seconds per CPU second of one thread: 1 on an idle machine, (load of
other processes + our runs) / cores on a busy one), EVAL_SHARE the evaluations and checkpoints (off the budget
clock) and START_S the start-up (process, data from the decode cache, networks) and the final scoring. The grid's
N runs go in ceil(N / slots) waves; the final retrain is one more run afterwards. With A seconds left,
    A = waves * run_wall(b) + filter_waves * run_wall(b_filter) + run_wall(b)
is solved for b. A candidate whose step cost c gives it fewer than `min_steps` steps in b (b / c < min_steps) is
left out, the most costly first, and b recomputed; the supervised reference is never left out.

Repeats: 10 where every candidate still gets GOOD_STEPS steps, else 8, else 6, unless --repeats says; never fewer
than can decide. Every candidate is compared with supervised in one Holm family, so with k of them a verdict needs
the smallest sign-flip p, 2 / 2^R, times k below 0.05: R >= 6 for one candidate, 7 for two or three, 8 for four to
six (genssl.compare.stats.seeds_to_decide). Where no such R gives the supervised reference its `min_steps`, the
plan leaves out the costliest candidates first (which lowers the R needed); only where even that fails does it take
fewer repeats, and then it says that no difference can be called.

Smallest detectable effect (two-sided 5%, Bonferroni over the k candidates, power 80%), in accuracy points:
    MDE = (z_{1 - 0.025 / k} + z_0.8) * sqrt(2 p (1 - p) / m) / sqrt(R) * 100
with m held-out images per repeat, R repeats and p = ASSUMED_ACC: the binomial noise of two classifiers' accuracies
on the same m images if their errors were independent (correlated errors, the usual case, make it smaller),
averaged over R repeats. Repeats share images, so it is optimistic about the spread over new data (the advice
reports the corrected interval of Nadeau & Bengio 2003 beside the paired one).
"""

from __future__ import annotations

import math
import os
import re
import time
from statistics import NormalDist

from genssl.advise.folder import AdviseError
from genssl.compare.report import fmt_duration
from genssl.compare.stats import seeds_to_decide

EVAL_SHARE = 0.15
START_S = 3.0
SPAWN_S = 10.0
"""Starting the grid's worker processes (local, more than one at once): Python, torch and genssl imported once each."""
REPORT_RESERVE_S = 5.0
GOOD_STEPS = 1000
REPEAT_CHOICES = (10, 8, 6)
MIN_REPEATS = 3
ASSUMED_ACC = 0.8
FILTER_AT = 0.25
"""The pool check's estimated share of atypical unlabeled images from which the +filtered candidates are added."""

_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600}


def parse_budget(text: str) -> float:
    """Seconds of '90s', '20m', '1.5h' (units s, m, min, h)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]+)\s*", str(text).lower())
    if not m or m.group(2) not in _UNITS:
        raise AdviseError(f"--budget {text!r}: give a number and a unit, e.g. 90s, 20m or 1.5h")
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise AdviseError(f"--budget {text!r} must be positive")
    return seconds


def margin_s(budget_s: float) -> float:
    """How far past the budget the whole command may run: what the time model cannot foresee (load changing,
    the last run's scoring, the report)."""
    return max(30.0, 0.1 * budget_s)


def run_wall(b: float, factor: float) -> float:
    return factor * (b * (1 + EVAL_SHARE) + START_S)


def other_busy_cores(window_s: float = 2.0) -> float | None:
    """How many cores other processes keep busy now: the machine's busy CPU time over `window_s` seconds
    (/proc/stat) less this process's and its children's, per second; None where /proc/stat is missing. Measured,
    not read from the load average, whose 1-minute decay still counts processes that ended a minute ago (a study's
    runs just before advise starts made it plan for x1.7 contention on an idle machine, and leave 40% of its
    budget unused)."""
    def busy_and_own() -> tuple[float, float]:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)  # idle + iowait
        t = os.times()
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), t.user + t.system + t.children_user + \
            t.children_system
    try:
        busy0, own0 = busy_and_own()
        time.sleep(window_s)
        busy1, own1 = busy_and_own()
    except (OSError, ValueError, IndexError):
        return None
    return max(0.0, ((busy1 - busy0) - (own1 - own0)) / window_s)


def contention(load_avg: float, own_load: float, slots: int, cores: int) -> float:
    """Wall seconds per CPU second of each of our `slots` one-thread runs beside the other processes' load."""
    others = max(0.0, load_avg - own_load)
    return max(1.0, (others + min(slots, cores * 64)) / max(1, cores))


def repeats_to_decide(candidates: list[str]) -> int:
    """The fewest repeats with which any of the candidates (the reference among them) can be called better or
    worse than the reference, Holm across them."""
    return seeds_to_decide(max(1, len(candidates) - 1))


def min_detectable_effect(heldout: int, repeats: int, n_compared: int = 1) -> float | None:
    """MDE in accuracy points (module docstring) for n_compared candidates against the reference; None where the
    repeats cannot reach a Holm p below 0.05 whatever the difference."""
    if repeats < seeds_to_decide(n_compared):
        return None
    z = NormalDist().inv_cdf(1 - 0.025 / n_compared) + NormalDist().inv_cdf(0.8)
    return 100 * z * math.sqrt(2 * ASSUMED_ACC * (1 - ASSUMED_ACC) / heldout) / math.sqrt(repeats)


def make_plan(*, budget_s: float, elapsed_s: float, slots: int, factor: float, costs: dict[str, float],
              names: list[str], caps: dict[str, int], reference: str, filter_budget_s: float, heldout: int,
              repeats: int | None, min_steps: int, base_of: dict[str, str], spawn: bool = False,
              run_budget_s: float | None = None) -> dict:
    """The plan (a JSON-able dict): repeats, the per-run budget and steps of each kept candidate, the candidates
    left out and why, and the smallest detectable effect. `names` in order (reference first); `costs` seconds per
    step; `caps` each template's own schedule length; `base_of` maps a +filtered candidate to its base (its M1
    filter runs get `filter_budget_s` each); `spawn`: the grid starts worker processes. `run_budget_s` fixes each
    run's budget instead of deriving it from the total (tests; reproducing an advice)."""
    fixed = elapsed_s + REPORT_RESERVE_S + (SPAWN_S * factor if spawn else 0.0)

    def other_wall(r: int, kept: list[str]) -> float:  # the M1 filter runs, when a +filtered candidate is kept
        return math.ceil(r / slots) * run_wall(filter_budget_s, factor) if any(n in base_of for n in kept) else 0.0

    def waves(r: int, kept: list[str]) -> int:  # the grid's waves, and the final run after them
        return math.ceil(r * len(kept) / slots) + 1

    def budget_for(r: int, kept: list[str]) -> float:
        if run_budget_s is not None:
            return run_budget_s
        per_run = (budget_s - fixed - other_wall(r, kept)) / waves(r, kept)
        return (per_run / factor - START_S) / (1 + EVAL_SHARE)

    kept, notes, chosen = list(names), [], None
    for r in ([repeats] if repeats else REPEAT_CHOICES):
        if (repeats or r >= repeats_to_decide(kept)) and all(budget_for(r, kept) / costs[n] >= GOOD_STEPS
                                                             for n in kept):
            chosen = r
            break
    if chosen is None and not repeats and len(names) > 1:
        # Repeats that can decide: of those whose fit keeps the reference and a candidate it can call, the one that
        # keeps the most candidates, then the most repeats.
        fits = []
        for r in {seeds_to_decide(k) for k in range(1, len(names))} | {REPEAT_CHOICES[-1]}:
            if r > REPEAT_CHOICES[0]:  # the splits hold that many repeats
                continue
            fit_kept, fit_notes = _fit(names, r, budget_for, costs, reference, min_steps, base_of)
            if (len(fit_kept) > 1 and r >= repeats_to_decide(fit_kept)
                    and budget_for(r, fit_kept) / costs[reference] >= min_steps):
                fits.append((len(fit_kept), r, fit_kept, fit_notes))
        if fits:
            _, chosen, kept, notes = max(fits, key=lambda f: f[:2])
    if chosen is None:  # none can decide: fewer repeats, and the plan says that no difference can be called
        tries = [repeats] if repeats else list(range(REPEAT_CHOICES[-1], MIN_REPEATS - 1, -1))
        for r in tries:
            kept, notes = _fit(names, r, budget_for, costs, reference, min_steps, base_of)
            if budget_for(r, kept) / costs[reference] >= min_steps:
                chosen = r
                break
        if chosen is None:
            r, b = tries[-1], costs[reference] * min_steps
            need = fixed + waves(r, [reference]) * run_wall(b, factor)
            raise AdviseError(f"a budget of {fmt_duration(budget_s)} is too small: after the pilot and the pool check "
                              f"({fmt_duration(elapsed_s)}), {r} repeats of even the supervised baseline alone "
                              f"cannot get {min_steps} steps each. Give at least --budget {math.ceil(need / 60)}m")
    b = round(budget_for(chosen, kept), 2)  # the steps follow the budget the plan states
    for name in [n for n in names if n not in kept and n not in base_of and run_budget_s is None]:  # what keeps it
        need = fixed + other_wall(chosen, kept) + waves(chosen, [*kept, name]) * run_wall(min_steps * costs[name],
                                                                                         factor)
        notes = [f"{n} (a budget of about {fmt_duration(math.ceil(need / 60) * 60)} would keep it)"
                 if n.startswith(f"{name}: left out") else n for n in notes]
    return {
        "repeats": chosen, "run_budget_s": b, "candidates": kept, "left_out": notes,
        "steps": {n: max(1, min(caps[n], int(b / costs[n]))) for n in kept},
        "s_per_step": {n: costs[n] for n in names}, "slots": slots, "factor": round(factor, 2),
        "filter_budget_s": filter_budget_s if any(n in base_of for n in kept) else None,
        "min_steps": min_steps, "heldout_per_repeat": heldout,
        "repeats_to_decide": repeats_to_decide(kept),
        "min_detectable_effect": min_detectable_effect(heldout, chosen, max(1, len(kept) - 1)),
        "planned_wall_s": round(fixed + other_wall(chosen, kept) + waves(chosen, kept) * run_wall(b, factor), 1),
    }


def _fit(names: list[str], r: int, budget_for, costs: dict[str, float], reference: str, min_steps: int,
         base_of: dict[str, str]) -> tuple[list[str], list[str]]:
    """(kept, notes): leave out, the most costly first (a +filtered variant before its base), each candidate that
    gets fewer than min_steps steps within its share, until all others do; the reference always stays."""
    kept, notes = list(names), []
    while True:
        b = budget_for(r, kept)
        short = [n for n in kept if n != reference and b / costs[n] < min_steps]
        if not short:
            return kept, notes
        worst = max(short, key=lambda n: (costs[n], n in base_of))
        kept.remove(worst)
        notes.append(f"{worst}: left out, a step costs {costs[worst] * 1000:.0f} ms, so its share of the budget "
                     f"({max(b, 0):.1f} s a run) gives it {max(b, 0) / costs[worst]:.0f} steps, fewer than the "
                     f"{min_steps} a useful run needs")
        for child in [k for k, v in base_of.items() if v == worst and k in kept]:
            kept.remove(child)
            notes.append(f"{child}: left out with {worst}")


def schedule(steps: int, evals: int = 10) -> dict:
    """The train keys of a run of `steps` scheduled steps: about `evals` evaluations (each run picks its weights
    among them), a checkpoint at each (resume loses at most one interval), losses logged up to every 50 steps."""
    every = max(1, steps // evals)
    return {"steps": steps, "eval_every": every, "ckpt_every": every, "log_every": max(1, min(50, every))}


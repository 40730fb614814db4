"""Paired comparisons over seeds: is entry A better than the reference, worse, or undecided?

Seeds pair (the same seed is the same labeled split and validation images for every method), so a comparison
works on the per-seed differences d_i = acc_A(seed_i) - acc_ref(seed_i), i = 1..n, in accuracy points:

- Interval: the bias-corrected and accelerated (BCa) bootstrap interval of mean(d) (Efron 1987, *Better
  bootstrap confidence intervals*, JASA 82), 95%, 9,999 resamples; the percentile bootstrap where BCa is
  undefined (all d_i equal, where every resample has the same mean and the interval is [mean, mean]).
  With n < 6 a bootstrap of so few values is too narrow, so the Student t interval
  mean ± t_{0.975, n-1} · sd / sqrt(n) is reported beside it.
- p: the exact two-sided sign-flip permutation test. Under H0 (no difference) each d_i is symmetric about 0,
  so the 2^n sign patterns s in {-1, +1}^n are equally likely and
      p = #{s : |mean(s · d)| >= |mean(d)|} / 2^n.
  Its smallest value is 2 / 2^n (the observed pattern and its mirror), so n < 6 seeds can never reach 0.05.
  Above 20 seeds, 100,000 seeded random sign patterns estimate it, p = (1 + #hits) / (1 + 100,000).
- Multiplicity: Holm's step-down adjustment (Holm 1979) across the entries of one table.
- Verdict: "better" / "worse" iff the adjusted p < 0.05 AND the bootstrap interval excludes 0 (the sign of the
  mean says which); otherwise "undecided", with the seed count a paired t-test would need at this effect.

We use scipy.stats.bootstrap because it implements BCa (the jackknife acceleration included) and scipy is
already a dependency (it reads SVHN's .mat files); the exact permutation test is a few lines of numpy.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

ALPHA = 0.05
MIN_SEEDS = 6  # smallest n with 2 / 2^n < 0.05
N_RESAMPLES = 9999
EXACT_MAX_N = 20  # 2^20 subset sums are 8 MB; beyond that, Monte Carlo
N_MONTE_CARLO = 100_000
TIE_TOL = 1e-12  # flips whose |mean| equals the observed one up to rounding count as "as extreme"

STATS_NOTE = (
    "Differences are paired by seed (entry minus reference, in accuracy points): mean, 95% BCa bootstrap "
    "interval over seeds (9,999 resamples; percentile bootstrap where BCa is undefined, e.g. all differences "
    "equal), plus a Student t interval where fewer than 6 seeds pair. p is the exact two-sided sign-flip "
    "permutation p (all 2^n sign patterns; 100,000 random ones above 20 seeds), Holm-adjusted across the "
    "table's entries. An entry is better or worse only when the Holm p < 0.05 and the bootstrap interval "
    "excludes 0; otherwise it is undecided. With n seeds the smallest possible p is 2/2^n, so fewer than 6 "
    "seeds are always undecided."
)


@dataclass(frozen=True)
class PairedResult:
    n: int
    mean: float
    sd: float  # sample sd of the differences (ddof=1); NaN for one seed
    ci_low: float
    ci_high: float
    ci_method: str  # "BCa bootstrap" or "percentile bootstrap"
    t_low: float | None  # Student t 95% interval, only when n < MIN_SEEDS
    t_high: float | None
    p: float  # sign-flip permutation p, unadjusted
    p_holm: float | None  # set by holm()
    verdict: str  # "better", "worse" or "undecided"
    seeds_needed: int | None  # for undecided: seeds a paired t-test would need (alpha 0.05 / tests, power 0.8)
    note: str


def _seed_of(sorted_diffs: np.ndarray) -> int:
    """A deterministic RNG seed from the values alone, so a result depends on neither seed order nor run."""
    return int.from_bytes(hashlib.sha256(sorted_diffs.tobytes()).digest()[:8], "little")


def _bootstrap_interval(d: np.ndarray, seed: int) -> tuple[float, float, str]:
    mean = float(d.mean())
    if d.size < 2 or np.all(d == d[0]):
        # every resample has the same mean: the percentile interval is the point itself, BCa is 0/0
        return mean, mean, "percentile bootstrap"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # BCa warns (DegenerateDataWarning) and returns NaN when its bias correction is infinite (every
            # resample mean on one side of the observed one); we fall back to percentile instead of failing.
            warnings.simplefilter("ignore", RuntimeWarning)  # DegenerateDataWarning is one
            ci = stats.bootstrap((d,), np.mean, confidence_level=1 - ALPHA, n_resamples=N_RESAMPLES,
                                 method=method, vectorized=True, random_state=np.random.default_rng(seed)
                                 ).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high), ("BCa bootstrap" if method == "BCa" else "percentile bootstrap")
    raise AssertionError(f"percentile bootstrap gave a non-finite interval for {d.tolist()}")


def _sign_flip_p(d: np.ndarray, seed: int) -> float:
    """Two-sided sign-flip p with statistic |mean|; exact below EXACT_MAX_N seeds."""
    n = d.size
    threshold = abs(d.sum()) - n * TIE_TOL  # |mean_flip| >= |mean_obs| - tol, in sums
    if n <= EXACT_MAX_N:
        # Flipping the subset S turns sum(d) into sum(d) - 2 * sum_S(d): build all 2^n subset sums by doubling.
        subset_sums = np.zeros(1)
        for x in d:
            subset_sums = np.concatenate([subset_sums, subset_sums + x])
        return float(np.count_nonzero(np.abs(d.sum() - 2 * subset_sums) >= threshold)) / 2**n
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, N_MONTE_CARLO, 10_000):  # chunks keep memory at 10,000 x n
        signs = rng.choice([-1.0, 1.0], size=(min(10_000, N_MONTE_CARLO - start), n))
        hits += int(np.count_nonzero(np.abs(signs @ d) >= threshold))
    return (1 + hits) / (1 + N_MONTE_CARLO)  # counting the observed pattern keeps the estimate a valid p


def seeds_to_decide(n_tests: int = 1, alpha: float = ALPHA) -> int:
    """Fewest paired seeds with which any verdict is reachable in a table of n_tests entries: the smallest exact
    sign-flip p, 2 / 2^n, times n_tests (Holm's first and strictest step) below alpha. 6 for one entry, 7 for two
    or three, 8 for four to six, 10 for twenty."""
    if not isinstance(n_tests, int) or n_tests < 1:
        raise ValueError(f"seeds_to_decide: n_tests must be a positive int, got {n_tests!r}")
    n = 1
    while n_tests * 2.0 / 2**n >= alpha:
        n += 1
    return n


def _seeds_needed(mean: float, sd: float, n_tests: int, alpha: float) -> int | None:
    """Seeds for a two-sided paired t-test at level alpha / n_tests (Bonferroni) with 80% power, from the normal
    approximation n = ceil(((z_{1 - alpha / (2 n_tests)} + z_{0.8}) · sd / |mean|)^2); n_tests = 1 gives the
    usual z_{0.975}. At least the n whose smallest sign-flip p, 2 / 2^n, survives the adjustment (6 for one test).
    """
    if mean == 0 or not math.isfinite(sd):
        return None
    level = alpha / n_tests
    z = stats.norm.ppf(1 - level / 2) + stats.norm.ppf(0.8)
    return max(seeds_to_decide(n_tests, alpha), math.ceil((z * sd / abs(mean)) ** 2))


def _decide(r: PairedResult, n_tests: int = 1, alpha: float = ALPHA) -> PairedResult:
    """Verdict, seed count and note from the (adjusted) p and the bootstrap interval."""
    p = r.p_holm if r.p_holm is not None else r.p
    # n >= MIN_SEEDS is implied by p >= 2 / 2^n; stated so that a Monte Carlo p could never override it
    decided = r.n >= MIN_SEEDS and p < alpha and (r.ci_low > 0 or r.ci_high < 0)
    verdict = ("better" if r.mean > 0 else "worse") if decided else "undecided"
    seeds_needed = _seeds_needed(r.mean, r.sd, n_tests, alpha) if verdict == "undecided" else None
    floor = seeds_to_decide(n_tests, alpha)
    if r.n < floor:  # MIN_SEEDS for one entry; Holm across n_tests raises it
        across = f" across {n_tests} entries (Holm)" if n_tests > 1 else ""
        note = f"{r.n} seeds cannot reach p < {alpha:g}{across}: at least {floor} are needed"
    elif seeds_needed is not None:
        note = f"about {seeds_needed} seeds would decide it at this effect and spread"
    else:
        note = ""
    return replace(r, verdict=verdict, seeds_needed=seeds_needed, note=note)


def paired_comparison(diffs: Sequence[float], *, n_tests_hint: int | None = None) -> PairedResult:
    """Mean, bootstrap (and, for n < 6, t) interval, sign-flip p and verdict of per-seed differences.

    `n_tests_hint`: how many entries the table will compare (holm() adjusts the p values themselves); it only
    sizes `seeds_needed`, at level 0.05 / n_tests_hint. holm() resizes it with the real count.
    """
    if n_tests_hint is not None and (not isinstance(n_tests_hint, int) or n_tests_hint < 1):
        raise ValueError(f"n_tests_hint must be a positive int or None, got {n_tests_hint!r}")
    d = np.sort(np.asarray(diffs, dtype=float))  # sorted: the result cannot depend on seed order
    if d.ndim != 1 or d.size == 0:
        raise ValueError(f"paired_comparison needs a non-empty list of per-seed differences, got {diffs!r}")
    if not np.all(np.isfinite(d)):
        raise ValueError(f"per-seed differences must be finite, got {d.tolist()}")
    n, mean = d.size, float(d.mean())
    seed = _seed_of(d)
    ci_low, ci_high, ci_method = _bootstrap_interval(d, seed)
    sd = float(d.std(ddof=1)) if n > 1 else math.nan
    t_low = t_high = None
    if 1 < n < MIN_SEEDS:
        half = stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n)
        t_low, t_high = float(mean - half), float(mean + half)
    return _decide(PairedResult(
        n=n, mean=mean, sd=sd, ci_low=ci_low, ci_high=ci_high, ci_method=ci_method, t_low=t_low, t_high=t_high,
        p=_sign_flip_p(d, seed), p_holm=None, verdict="undecided", seeds_needed=None, note="",
    ), n_tests=n_tests_hint or 1)


def holm(results: list[PairedResult], alpha: float = ALPHA) -> list[PairedResult]:
    """Holm-Bonferroni: with p_(1) <= ... <= p_(m), p_holm_(i) = min(1, max_{j <= i} (m - j + 1) · p_(j)).

    Returns new results (input order) with p_holm set and verdicts recomputed at `alpha` (the bootstrap
    interval stays 95%). Tied p values get the same adjusted value whatever their order, so the output does
    not depend on the list's order.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"holm: alpha must lie in (0, 1), got {alpha}")
    m = len(results)
    order = sorted(range(m), key=lambda i: results[i].p)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * results[i].p))  # max keeps the adjusted p monotone
        adjusted[i] = running
    return [_decide(replace(r, p_holm=a), n_tests=m, alpha=alpha) for r, a in zip(results, adjusted)]


def compare_to_reference(per_seed: dict[str, dict[int, float]], reference: str) -> dict[str, PairedResult]:
    """Each entry vs `reference` over their common seeds, Holm-adjusted across entries.

    `per_seed` maps entry name -> {seed: accuracy %}. Entries sharing no seed with the reference are omitted.
    """
    if reference not in per_seed:
        raise ValueError(f"reference {reference!r} is not an entry; entries: {sorted(per_seed)}")
    ref = per_seed[reference]
    names, raw = [], []
    for name in sorted(per_seed):  # sorted: the same table whatever order the runs were collected in
        if name == reference:
            continue
        common = sorted(set(per_seed[name]) & set(ref))
        if common:
            names.append(name)
            raw.append(paired_comparison([per_seed[name][s] - ref[s] for s in common]))
    return dict(zip(names, holm(raw)))


def mean_halfwidth(sd: float, n: int) -> float:
    """Half-width of the Student t 95% interval of a mean over n seeds (0 for one seed: no interval)."""
    if n < 2 or not math.isfinite(sd):
        return 0.0
    return float(stats.t.ppf(1 - ALPHA / 2, n - 1) * sd / math.sqrt(n))


def format_difference(r: PairedResult) -> str:
    """A Markdown cell: '+1.23 [-0.40, 2.90] p=0.031 (Holm 0.09) undecided'."""
    cell = f"{r.mean:+.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
    if r.t_low is not None:
        cell += f" t [{r.t_low:.2f}, {r.t_high:.2f}]"
    cell += f" p={r.p:.2g}"
    if r.p_holm is not None:
        cell += f" (Holm {r.p_holm:.2g})"
    return f"{cell} {r.verdict}"

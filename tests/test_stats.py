"""genssl.compare.stats: the verdict rule, exact sign-flip p values, Holm, and independence from order."""

from __future__ import annotations

import itertools
import math
import random

import numpy as np
import pytest
from scipy import stats as sps

from genssl.compare.stats import (STATS_NOTE, PairedResult, compare_to_reference, format_difference, holm,
                                  paired_comparison, seeds_to_decide)


def brute_force_p(d) -> float:
    """The sign-flip p straight from its definition: all 2^n sign patterns."""
    d = np.asarray(d, dtype=float)
    obs = abs(d.mean())
    flips = [abs(np.mean(np.array(s) * d)) for s in itertools.product([-1, 1], repeat=len(d))]
    return sum(f >= obs - 1e-12 for f in flips) / 2 ** len(d)


def test_constant_positive_difference_is_better_with_exact_p():
    r = paired_comparison([2.0] * 8)
    assert r.verdict == "better"
    assert r.p == 2 / 256  # only the observed pattern and its mirror are as extreme
    assert (r.ci_low, r.ci_high, r.ci_method) == (2.0, 2.0, "percentile bootstrap")  # BCa is 0/0 here
    assert r.seeds_needed is None and r.note == ""


def test_constant_negative_difference_is_worse():
    r = paired_comparison([-2.0] * 8)
    assert r.verdict == "worse" and r.p == 2 / 256 and r.mean == -2.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_fewer_than_six_seeds_are_never_decided(n):
    r = paired_comparison([50.0] * n)  # a huge, perfectly consistent effect
    assert r.verdict == "undecided"
    assert r.p == min(1.0, 2 / 2 ** n)
    assert r.note == f"{n} seeds cannot reach p < 0.05: at least 6 are needed"


def test_three_seeds_carry_the_note_and_a_t_interval():
    r = paired_comparison([3.0, 5.0, 4.0])
    assert r.verdict == "undecided" and "at least 6" in r.note
    assert r.ci_method == "BCa bootstrap"
    lo, hi = sps.t.interval(0.95, 2, loc=4.0, scale=1.0 / math.sqrt(3))
    assert r.t_low == pytest.approx(lo) and r.t_high == pytest.approx(hi)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 6, 8, 12])
def test_t_interval_only_below_six_seeds(n):
    r = paired_comparison(np.random.default_rng(n).normal(1.0, 1.0, n))
    if n < 6:
        assert r.t_low is not None and r.t_low < r.mean < r.t_high
    else:
        assert r.t_low is None and r.t_high is None


def test_pure_noise_is_mostly_undecided():
    rng = np.random.default_rng(2024)
    verdicts = [paired_comparison(rng.normal(0.0, 1.0, 8)).verdict for _ in range(200)]
    assert sum(v == "undecided" for v in verdicts) >= 0.9 * len(verdicts)


@pytest.mark.parametrize("seed", range(5))
def test_exact_p_matches_brute_force(seed):
    d = np.random.default_rng(seed).normal(0.5, 1.0, 7).round(2)  # rounding makes ties between flips likely
    assert paired_comparison(d).p == pytest.approx(brute_force_p(d), abs=1e-15)


def test_monte_carlo_p_above_twenty_seeds_is_seeded_and_valid():
    r = paired_comparison([1.0] * 25)  # exact p is 2/2^25; 100,000 flips almost surely miss both patterns
    assert r.p == 1 / 100_001 and r.verdict == "better"
    d = np.random.default_rng(0).normal(0.2, 1.0, 25)
    assert paired_comparison(d).p == paired_comparison(d[::-1]).p  # same seed from the same values


def test_holm_turns_a_nominal_win_into_undecided():
    # ref: 8 seeds. A: +2 on all 8 (p = 2/256). B: +1 on 6 seeds (p = 2/64). C: +-1 alternating (mean 0, p = 1).
    # Holm, p sorted: A 3 * 2/256 = 0.0234375; B max(that, 2 * 2/64) = 0.0625; C max(0.0625, 1 * 1) = 1.
    per_seed = {
        "ref": {s: 50.0 for s in range(8)},
        "A": {s: 52.0 for s in range(8)},
        "B": {s: 51.0 for s in range(6)},
        "C": {s: 50.0 + (-1) ** s for s in range(8)},
    }
    raw_b = paired_comparison([1.0] * 6)
    assert raw_b.p == 2 / 64 and raw_b.verdict == "better"  # unadjusted, B would be claimed
    out = compare_to_reference(per_seed, "ref")
    assert set(out) == {"A", "B", "C"}
    assert (out["A"].p, out["A"].p_holm, out["A"].verdict) == (2 / 256, 3 * 2 / 256, "better")
    assert (out["B"].p, out["B"].p_holm, out["B"].verdict) == (2 / 64, 0.0625, "undecided")
    assert (out["C"].p, out["C"].p_holm, out["C"].verdict) == (1.0, 1.0, "undecided")
    assert out["B"].seeds_needed == 7  # 2 / 2^n must beat 0.05 / 3 tests: n >= 7
    assert out["C"].seeds_needed is None  # mean 0: no seed count decides it


def test_holm_with_two_equal_entries():
    # Both 6 seeds all +1: p = 2/64 = 0.03125 each; Holm: 2 * 0.03125 = 0.0625, and max(0.0625, 0.03125) = 0.0625.
    a = paired_comparison([1.0] * 6)
    adjusted = holm([a, a])
    assert [r.p_holm for r in adjusted] == [0.0625, 0.0625]
    assert all(r.verdict == "undecided" for r in adjusted)
    assert holm([a])[0].p_holm == a.p and holm([a])[0].verdict == "better"


def test_holm_is_monotone_capped_and_order_free():
    rng = np.random.default_rng(7)
    results = [paired_comparison(rng.normal(mu, 1.0, 8)) for mu in (0.0, 0.3, 1.0, 2.0, 0.0)]
    results.append(results[1])  # a tie
    adjusted = holm(results)
    by_p = sorted(adjusted, key=lambda r: r.p)
    assert all(a.p_holm <= b.p_holm for a, b in zip(by_p, by_p[1:]))
    assert all(r.p <= r.p_holm <= 1.0 for r in adjusted)
    perm = [3, 0, 5, 2, 4, 1]
    assert holm([results[i] for i in perm]) == [adjusted[i] for i in perm]


def test_results_do_not_depend_on_entry_or_seed_order():
    rng = np.random.default_rng(11)
    seeds = list(range(10))
    per_seed = {name: {s: float(70 + mu + rng.normal()) for s in seeds}
                for name, mu in [("ref", 0.0), ("a", 1.5), ("b", 0.2), ("c", -1.0), ("d", 0.2)]}
    expected = compare_to_reference(per_seed, "ref")
    shuffler = random.Random(3)
    for _ in range(3):
        names = list(per_seed)
        shuffler.shuffle(names)
        shuffled = {}
        for name in names:
            order = seeds[:]
            shuffler.shuffle(order)
            shuffled[name] = {s: per_seed[name][s] for s in order}
        assert compare_to_reference(shuffled, "ref") == expected
    d = [per_seed["a"][s] - per_seed["ref"][s] for s in seeds]
    assert paired_comparison(d) == paired_comparison(d[::-1])


def test_entries_without_common_seeds_are_omitted_and_bad_input_fails():
    per_seed = {"ref": {0: 50.0, 1: 51.0}, "a": {0: 52.0, 1: 50.0}, "b": {5: 60.0}}
    assert set(compare_to_reference(per_seed, "ref")) == {"a"}
    with pytest.raises(ValueError, match="entries: \\['a', 'b', 'ref'\\]"):
        compare_to_reference(per_seed, "missing")
    with pytest.raises(ValueError, match="non-empty"):
        paired_comparison([])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([1.0, float("nan")])


def test_seeds_needed_grows_as_the_effect_shrinks():
    base = np.array([-1.5, -1.0, -0.5, 0.0, 0.0, 0.5, 1.0, 1.5])  # mean 0, sd fixed
    needed = []
    for shift in (0.4, 0.2, 0.1):
        r = paired_comparison(base + shift)
        assert r.verdict == "undecided"
        z = sps.norm.ppf(0.975) + sps.norm.ppf(0.8)
        assert r.seeds_needed == max(6, math.ceil((z * base.std(ddof=1) / shift) ** 2))
        assert r.note == f"about {r.seeds_needed} seeds would decide it at this effect and spread"
        needed.append(r.seeds_needed)
    assert needed[0] < needed[1] < needed[2]
    # a hint of 3 tests sizes the count at 0.05 / 3, so it asks for more seeds
    assert paired_comparison(base + 0.2, n_tests_hint=3).seeds_needed > needed[1]


def test_format_difference_and_note():
    r = holm([paired_comparison([1.0] * 6), paired_comparison([1.0] * 6)])[0]
    assert format_difference(r) == "+1.00 [1.00, 1.00] p=0.031 (Holm 0.062) undecided"
    cell = format_difference(paired_comparison([3.0, 5.0, 4.0]))
    assert cell.startswith("+4.00 [") and " t [" in cell and cell.endswith("p=0.25 undecided")
    for phrase in ("BCa", "percentile", "t interval", "sign-flip", "Holm", "excludes 0", "undecided"):
        assert phrase in STATS_NOTE
    assert isinstance(r, PairedResult)


def test_seeds_to_decide_is_the_fewest_whose_smallest_holm_p_is_below_alpha():
    assert [seeds_to_decide(m) for m in (1, 2, 3, 4, 6, 7, 20)] == [6, 7, 7, 8, 8, 9, 10]
    for m in (1, 3, 4, 20):
        n = seeds_to_decide(m)
        assert m * 2 / 2**n < 0.05 <= m * 2 / 2 ** (n - 1)
    # The real test agrees: four entries all +1 at every one of 8 seeds are decided, at 7 they are not.
    for n, verdict in ((8, "better"), (7, "undecided")):
        assert {r.verdict for r in holm([paired_comparison([1.0 + 0.01 * i for i in range(n)])] * 4)} == {verdict}
    # ...and an undecided entry says what its table needs, not what one entry alone would.
    r = holm([paired_comparison([1.0 + 0.01 * i for i in range(6)])] * 4)[0]
    assert r.note == "6 seeds cannot reach p < 0.05 across 4 entries (Holm): at least 8 are needed"
    with pytest.raises(ValueError, match="positive int"):
        seeds_to_decide(0)

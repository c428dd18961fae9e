"""Statistics: Friedman, Shirley-Williams (both variants), Williams' critical values, effect sizes,
bootstrap CIs. Expected values are derived by hand in the tests (rank sums, tie counts, formulas),
from Williams' published tables, or from brute-force enumeration/simulation written here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from MVCTEnhanceLib.engine.errors import InputError, MVCTEnhanceError
from MVCTEnhanceLib.study.stats import (DAGGER, bootstrap_mean_ci, cohens_dz, friedman, rank_biserial_paired,
                                  shirley_williams, shirley_williams_independent,
                                  williams_critical_value, williams_sf)

# Shirley (1977), Table 1, as given in PMCMRplus's shirleyWilliamsTest example: reaction times (s)
# of mice to stimuli to their tails; control then three increasing dose levels, 10 mice each.
SHIRLEY_1977 = [
    [2.4, 3.0, 3.0, 2.2, 2.2, 2.2, 2.2, 2.8, 2.0, 3.0],
    [2.8, 2.2, 3.8, 9.4, 8.4, 3.0, 3.2, 4.4, 3.2, 7.4],
    [9.8, 3.2, 5.8, 7.8, 2.6, 2.2, 6.2, 9.4, 7.8, 3.4],
    [7.0, 9.8, 9.4, 8.8, 8.8, 3.4, 9.0, 8.4, 2.4, 7.8],
]

# Williams (1971) Table 1/2, last row (infinite df): upper 5% and 1% points of t-bar_i, i = 1..10.
WILLIAMS_INF_005 = [1.645, 1.716, 1.739, 1.750, 1.756, 1.760, 1.763, 1.765, 1.767, 1.768]
WILLIAMS_INF_001 = [2.326, 2.366, 2.377, 2.382, 2.385, 2.386, 2.387, 2.388, 2.389, 2.389]


# ----------------------------------------------------------------------------- published example
def test_shirley_1977_example_joint_ranking_by_hand():
    # Joint mid-ranks of all 40 values, summed per group by hand: 82.5, 207, 236.5, 294 (sum 820).
    # Tie groups (value x count): 2.2x6, 2.4x2, 2.8x2, 3.0x4, 3.2x3, 3.4x2, 7.8x3, 8.4x2, 8.8x2,
    # 9.4x3, 9.8x2 -> sum(t^3 - t) = 210 + 6*6 + 60 + 24*3 = 378.
    mean_ranks = np.array([82.5, 207.0, 236.5, 294.0]) / 10
    v = 40 * 41 / 12 - 378 / (12 * 39)
    sd = math.sqrt(v * (1 / 10 + 1 / 10))
    # Mean ranks increase, so the isotonic estimate of each group is its own mean rank.
    expected = [(mean_ranks[i] - mean_ranks[0]) / sd for i in (1, 2, 3)]

    res = shirley_williams_independent(SHIRLEY_1977, rerank=False, names=["0", "1", "2", "3"])
    assert [c.statistic for c in res.comparisons] == pytest.approx(expected, rel=1e-12)
    assert res.comparisons[2].statistic == pytest.approx(4.0574, abs=1e-4)


def test_shirley_1977_example_reranked_as_pmcmrplus():
    res = shirley_williams_independent(SHIRLEY_1977, alternative="greater")  # rerank=True default
    # Step 1 re-ranks control + dose 1 (20 values) by hand: control rank sum 67, dose-1 143;
    # ties 2.2x5, 2.8x2, 3.0x4, 3.2x2 -> sum(t^3 - t) = 120 + 6 + 60 + 6 = 192.
    v1 = 20 * 21 / 12 - 192 / (12 * 19)
    t1 = (14.3 - 6.7) / math.sqrt(v1 * 0.2)
    assert res.comparisons[0].statistic == pytest.approx(t1, rel=1e-12)
    # The top step uses all groups, so re-ranking changes nothing there.
    full = shirley_williams_independent(SHIRLEY_1977, rerank=False)
    assert res.comparisons[2].statistic == pytest.approx(full.comparisons[2].statistic)
    # PMCMRplus's look-up version compares with Williams' table (alpha 0.05, df = Inf):
    # 1.645, 1.716, 1.739; all three doses exceed them, as ours decide.
    crit = [c.critical_value for c in res.comparisons]
    assert crit == pytest.approx(WILLIAMS_INF_005[:3], abs=2e-3)
    assert all(c.significant and c.mark == DAGGER for c in res.comparisons)
    assert all(c.statistic > c.critical_value for c in res.comparisons)
    # p-values agree with the statistic/critical-value decision at every step.
    for c in res.comparisons:
        assert (c.p_raw < 0.05) == (c.statistic > c.critical_value)


def test_shirley_1977_example_permutation_agrees_with_asymptotic():
    asym = shirley_williams_independent(SHIRLEY_1977)
    perm = shirley_williams_independent(SHIRLEY_1977, method="permutation", n_perm=5000, seed=3)
    for a, p in zip(asym.comparisons, perm.comparisons):
        assert p.statistic == a.statistic
        assert p.p_raw < 0.01 and a.p_raw < 0.01
    assert perm.n_perm == 5000 and perm.seed == 3


# ----------------------------------------------------------------------------- Williams' values
def test_williams_critical_values_reproduce_published_table():
    ours = [williams_critical_value([1] * (i + 1), 0.05) for i in range(1, 11)]
    assert ours == pytest.approx(WILLIAMS_INF_005, abs=2e-3)
    ours01 = [williams_critical_value([1] * (i + 1), 0.01) for i in range(1, 6)]
    assert ours01 == pytest.approx(WILLIAMS_INF_001[:5], abs=3e-3)
    assert williams_sf(WILLIAMS_INF_005[3], [1] * 5) == pytest.approx(0.05, abs=5e-4)


def test_williams_unequal_control_replication():
    # Williams (1972): t(w) ~= t(1) - 0.01 * beta * (1 - r/c), good to 0.01 for w = c/r <= 4
    # (alpha 0.05, df = Inf; i = 2: t(1) = 1.716, beta = 3; i = 4: t(1) = 1.750, beta = 5).
    for i, t1, beta in ((2, 1.716, 3), (4, 1.750, 5)):
        for w in (2.0, 4.0):
            approx = t1 - 0.01 * beta * (1 - 1 / w)
            assert williams_critical_value([w] + [1] * i) == pytest.approx(approx, abs=0.01)


def test_williams_distribution_matches_direct_simulation():
    # Simulate Williams' model directly: X_0 ~ N(0, 1/c), X_j ~ N(0, 1/r_j), statistic of the top
    # group = (max_u weighted mean of X_u..X_i - X_0) / sqrt(1/r_i + 1/c).
    rep = np.array([3.0, 1.0, 2.0, 1.0])
    rng = np.random.default_rng(7)
    x = rng.standard_normal((400_000, 4)) / np.sqrt(rep)
    num = np.cumsum((x[:, 1:] * rep[1:])[:, ::-1], axis=1) / np.cumsum(rep[1:][::-1])
    t = (num.max(axis=1) - x[:, 0]) / math.sqrt(1 / rep[-1] + 1 / rep[0])
    assert williams_critical_value(rep) == pytest.approx(np.quantile(t, 0.95), abs=0.01)
    assert williams_sf(1.2, rep) == pytest.approx(np.mean(t >= 1.2), abs=3e-3)


# ----------------------------------------------------------------------------- hand-made cases
def test_independent_toy_with_ties_by_hand():
    g0, g1, g2 = [1, 2, 2], [3, 4, 2], [5, 6, 7]
    res = shirley_williams_independent([g0, g1, g2], names=["c", "a", "b"])
    # Step 2, all 9 values: 2 is tied three times (ranks 2,3,4 -> 3). Rank means: c 7/3, a 14/3,
    # b 8; isotonic top = max((14 + 24)/6, 8) = 8. V = 9*10/12 - (27 - 3)/(12*8) = 7.25.
    t2 = (8 - 7 / 3) / math.sqrt(7.25 * (1 / 3 + 1 / 3))
    # Step 1, re-ranked {1,2,2,3,4,2}: 2 tied three times again. Rank means c 7/3, a 14/3.
    # V = 6*7/12 - 24/(12*5) = 3.1.
    t1 = (14 / 3 - 7 / 3) / math.sqrt(3.1 * (1 / 3 + 1 / 3))
    assert res.comparisons[1].statistic == pytest.approx(t2, rel=1e-12)
    assert res.comparisons[0].statistic == pytest.approx(t1, rel=1e-12)
    assert [c.name for c in res.comparisons] == ["a", "b"] and res.control == "c"


def test_isotonic_pooling_of_a_reversed_pair():
    # Mean ranks rise then fall: the top group's isotonic estimate pools it with the one below.
    g = [[1, 2, 3], [7, 8, 9], [4, 5, 6]]
    res = shirley_williams_independent(g)
    v = 9 * 10 / 12
    pooled = (8 + 5) / 2  # mean of the rank means of groups 1 and 2
    assert res.comparisons[1].statistic == pytest.approx((pooled - 2) / math.sqrt(v * 2 / 3))


REPEATED_TOY = np.array([[1, 2, 3], [1, 3, 2], [2, 1, 3], [1, 2, 3]], dtype=float)


def test_repeated_toy_statistics_by_hand():
    res = shirley_williams(REPEATED_TOY, names=["ctl", "m1", "m2"])
    # Step 2: within-case ranks are the values. Rank means 1.25, 2.0, 2.75; isotonic top
    # max((2 + 2.75)/2, 2.75) = 2.75. Var(Rbar_a - Rbar_b) = m(m+1)/(6n) = 12/24 (no ties).
    assert res.comparisons[1].statistic == pytest.approx((2.75 - 1.25) / math.sqrt(0.5))
    # Step 1 re-ranks columns 0,1 per case: (1,2), (1,2), (2,1), (1,2) -> means 1.25, 1.75;
    # variance 2*3/(6*4) = 0.25.
    assert res.comparisons[0].statistic == pytest.approx((1.75 - 1.25) / 0.5)


def test_repeated_toy_exact_permutation_p_by_enumeration():
    res = shirley_williams(REPEATED_TOY)
    assert res.exact and res.n_perm is None
    # Step 1: 2^4 equally likely sign patterns; T >= 1 needs >= 3 of 4 cases with m1 > ctl: 5/16.
    assert res.comparisons[0].p_raw == pytest.approx(5 / 16)
    # Step 2: enumerate the 6^4 within-case arrangements independently of the library.
    obs = res.comparisons[1].statistic
    count = 0
    perms = list(itertools.permutations([1.0, 2.0, 3.0]))
    for combo in itertools.product(perms, repeat=4):
        m = np.mean(np.array(combo), axis=0)
        t = (max(m[2], (m[1] + m[2]) / 2) - m[0]) / math.sqrt(0.5)
        count += t >= obs - 1e-12
    assert res.comparisons[1].p_raw == pytest.approx(count / 6**4)
    # Step-down: step 1 is not significant, step 2 is (p < 0.05), so only m2 gets the dagger.
    assert [c.mark for c in res.comparisons] == ["", DAGGER]


def test_repeated_mid_ranks_and_tie_corrected_variance_by_hand():
    v = np.array([[1, 1, 2], [3, 1, 2], [1, 2, 3]], dtype=float)
    res = shirley_williams(v, method="asymptotic")
    # Step 2 mid-ranks per case: (1.5, 1.5, 3), (3, 1, 2), (1, 2, 3). Per-case rank variances
    # 0.5, 2/3, 2/3; Var = 2m/(m-1) * sum / n^2 = 3 * (0.5 + 4/3) / 9.
    means = np.array([1.5 + 3 + 1, 1.5 + 1 + 2, 3 + 2 + 3]) / 3
    top = max(means[2], (means[1] + means[2]) / 2)
    assert res.comparisons[1].statistic == pytest.approx((top - means[0]) / math.sqrt(3 * (0.5 + 4 / 3) / 9))
    # Step 1 re-ranked: (1.5, 1.5), (2, 1), (1, 2) -> equal mean ranks, statistic 0.
    assert res.comparisons[0].statistic == pytest.approx(0.0)


def test_stepdown_stops_at_first_non_rejection():
    # m1 beats control in every case, m2 is worst in every case: the top step (m2) is not
    # significant, so m1 is not declared significant even though its own p is tiny.
    rng = np.random.default_rng(0)
    base = rng.normal(size=(8, 1))
    v = np.hstack([base, base + 1.0, base - 1.0])
    res = shirley_williams(v, n_perm=2000)
    m1, m2 = res.comparisons
    assert m1.p_raw < 0.01 and m2.p_raw > 0.05
    assert m1.p == m2.p and not m1.significant and m1.mark == ""


def test_direction_less_and_two_sided():
    rng = np.random.default_rng(5)
    v = rng.normal(size=(15, 4)) + np.array([0.0, 0.3, 0.6, 0.9])
    up = shirley_williams(v, alternative="greater", method="asymptotic")
    down = shirley_williams(-v, alternative="less", method="asymptotic")
    for a, b in zip(up.comparisons, down.comparisons):
        assert b.statistic == pytest.approx(-a.statistic)
        assert b.p_raw == pytest.approx(a.p_raw)
        assert b.critical_value == pytest.approx(-a.critical_value)
    two = shirley_williams(v, alternative="two-sided", method="asymptotic")
    for a, t in zip(up.comparisons, two.comparisons):
        if a.statistic > 0:
            assert t.p_raw == pytest.approx(min(1.0, 2 * a.p_raw), rel=1e-3, abs=1e-4)
    assert two.comparisons[-1].critical_value == pytest.approx(williams_critical_value([1] * 4, 0.025),
                                                                abs=1e-9)


def test_repeated_permutation_agrees_with_sign_test_and_asymptotic_and_is_seeded():
    rng = np.random.default_rng(11)
    v = rng.normal(size=(60, 4)) + np.array([0.0, 0.1, 0.2, 0.3])
    perm = shirley_williams(v, n_perm=4000, seed=1)
    asym = shirley_williams(v, method="asymptotic")
    # With two groups the within-case ranks make step 1 the one-sided sign test (exact binomial).
    wins = int(np.sum(v[:, 1] > v[:, 0]))
    sign_p = sum(math.comb(60, j) for j in range(wins, 61)) / 2**60
    assert perm.comparisons[0].p_raw == pytest.approx(sign_p, abs=0.02)
    # The top step (4 groups) has a nearly continuous null: permutation ~ Williams' distribution.
    top_p, top_a = perm.comparisons[-1], asym.comparisons[-1]
    assert top_p.statistic == top_a.statistic
    assert top_p.p_raw == pytest.approx(top_a.p_raw, abs=0.02)
    assert top_p.critical_value == pytest.approx(top_a.critical_value, abs=0.1)
    again = shirley_williams(v, n_perm=4000, seed=1)
    assert again == perm
    other = shirley_williams(v, n_perm=4000, seed=2)
    assert [c.p_raw for c in other.comparisons] != [c.p_raw for c in perm.comparisons]


def test_result_rows_and_lookup():
    res = shirley_williams(REPEATED_TOY, names=["input", "cyclegan", "proposed"])
    rows = res.to_rows()
    assert [r["group"] for r in rows] == ["cyclegan", "proposed"]
    assert all(r["control"] == "input" and r["design"] == "repeated" for r in rows)
    assert res.comparison("proposed").mark == DAGGER
    with pytest.raises(InputError):
        res.comparison("kv")


def test_all_tied_cases_give_no_evidence():
    v = np.ones((5, 3))
    res = shirley_williams(v)
    assert all(c.p == 1.0 and not c.significant for c in res.comparisons)


# ----------------------------------------------------------------------------- Friedman
def test_friedman_matches_hand_computed_chi_square():
    res = friedman(REPEATED_TOY)
    # Rank sums 5, 8, 11 over n = 4 cases, k = 3: 12/(n k (k+1)) * sum R^2 - 3 n (k+1) = 4.5.
    assert res.statistic == pytest.approx(12 / (4 * 3 * 4) * (25 + 64 + 121) - 3 * 4 * 4)
    assert res.df == 2 and res.test == "friedman"
    assert res.p == pytest.approx(math.exp(-4.5 / 2))  # chi-square, 2 df
    assert res.kendall_w == pytest.approx(4.5 / (4 * 2))


def test_friedman_tie_correction_by_hand():
    v = np.array([[1, 1, 2], [1, 2, 3], [1, 2, 3]], dtype=float)
    res = friedman(v)
    # Rank sums 1.5+1+1 = 3.5, 1.5+2+2 = 5.5, 3+3+3 = 9; uncorrected chi2 = 12/(3*3*4)*sum R^2
    # - 3*3*4; correction 1 - sum(t^3 - t)/(n (k^3 - k)) = 1 - 6/(3*24).
    chi2 = (12 / 36 * (3.5**2 + 5.5**2 + 9**2) - 36) / (1 - 6 / 72)
    assert res.statistic == pytest.approx(chi2)


def test_friedman_two_methods_uses_wilcoxon():
    res = friedman(REPEATED_TOY[:, :2] + np.array([[0.0, 0.5]]))
    assert res.test == "wilcoxon" and res.df is None and "Wilcoxon" in res.note
    # Differences 1.5, 2.5, -0.5, 1.5: W = min(T+, T-) = 1 (rank of |-0.5|); exact two-sided p = 2 * 2/16.
    assert res.statistic == pytest.approx(1.0)
    assert res.p == pytest.approx(0.25)


def test_friedman_identical_methods():
    res = friedman(np.tile([[1.0], [2.0], [3.0]], (1, 4)))
    assert res.statistic == 0.0 and res.p == 1.0 and res.note


@pytest.mark.parametrize("bad, msg", [
    (np.ones((1, 3)), "at least 2 cases"),
    (np.ones((4, 1)), "at least 2 methods"),
    (np.array([[1, 2, np.nan], [1, 2, 3]]), "NaN"),
    (np.ones(5), "2-D"),
    ([["a", "b"], ["c", "d"]], "numbers"),
])
def test_friedman_bad_input(bad, msg):
    with pytest.raises(InputError, match=msg):
        friedman(bad)


def test_shirley_bad_input():
    with pytest.raises(InputError, match="NaN"):
        shirley_williams(np.array([[1, 2], [np.inf, 1]]))
    with pytest.raises(InputError, match="at least 2 methods"):
        shirley_williams(np.ones((5, 1)))
    with pytest.raises(InputError, match="alternative"):
        shirley_williams(REPEATED_TOY, alternative="up")
    with pytest.raises(InputError, match="names"):
        shirley_williams(REPEATED_TOY, names=["a", "b"])
    with pytest.raises(InputError, match="n_perm"):
        shirley_williams(REPEATED_TOY, n_perm=10)
    with pytest.raises(InputError, match="cases x methods"):
        shirley_williams_independent(np.ones((3, 4)))
    with pytest.raises(InputError, match="group 1"):
        shirley_williams_independent([[1, 2], []])
    with pytest.raises(InputError, match="method"):
        shirley_williams_independent(SHIRLEY_1977, method="table")
    assert issubclass(InputError, MVCTEnhanceError)


# ----------------------------------------------------------------------------- effect sizes
def test_cohens_dz_by_hand():
    a, b = [3, 0, 5, 6], [2, 2, 2, 2]  # differences 1, -2, 3, 4: mean 1.5, sd sqrt(21/3)
    assert cohens_dz(a, b) == pytest.approx(1.5 / math.sqrt(7))
    assert cohens_dz(b, a) == pytest.approx(-1.5 / math.sqrt(7))
    assert cohens_dz([1, 2, 3], [1, 2, 3]) == 0.0
    assert cohens_dz([2, 3, 4], [1, 2, 3]) == math.inf


def test_rank_biserial_by_hand():
    # |d| = 1, 2, 3, 4 -> ranks 1..4; T+ = 1 + 3 + 4 = 8, T- = 2: r = 6/10.
    assert rank_biserial_paired([1, -2, 3, 4], [0, 0, 0, 0]) == pytest.approx(0.6)
    # A zero difference is dropped; |d| = 1, 1, 2, 2 -> mid-ranks 1.5, 1.5, 3.5, 3.5;
    # T+ = 1.5 + 3.5 + 3.5 = 8.5, T- = 1.5: r = 7/10.
    assert rank_biserial_paired([0, 1, -1, 2, 2], [0] * 5) == pytest.approx(0.7)
    assert rank_biserial_paired([5, 6], [1, 2]) == 1.0
    assert rank_biserial_paired([1, 2], [1, 2]) == 0.0
    with pytest.raises(InputError, match="differ in length"):
        rank_biserial_paired([1, 2, 3], [1, 2])


# ----------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci_covers_mean_and_is_deterministic():
    x = np.random.default_rng(2).normal(10.0, 2.0, size=100)
    for method in ("bca", "percentile"):
        ci = bootstrap_mean_ci(x, n_boot=2000, method=method, seed=4)
        assert ci.low < ci.mean < ci.high and ci.mean == pytest.approx(x.mean())
        # Width close to the normal-theory 2 * 1.96 * sd / sqrt(n).
        assert ci.high - ci.low == pytest.approx(2 * 1.96 * x.std(ddof=1) / 10, rel=0.2)
        assert bootstrap_mean_ci(x, n_boot=2000, method=method, seed=4) == ci
        assert bootstrap_mean_ci(x, n_boot=2000, method=method, seed=5) != ci
        assert ci.n_boot == 2000 and ci.method == method and ci.confidence == 0.95
    narrow = bootstrap_mean_ci(x, n_boot=2000, confidence=0.5, seed=4)
    wide = bootstrap_mean_ci(x, n_boot=2000, seed=4)
    assert wide.low < narrow.low < narrow.high < wide.high


def test_bootstrap_constant_and_bad_input():
    ci = bootstrap_mean_ci([3.0, 3.0, 3.0])
    assert (ci.low, ci.mean, ci.high) == (3.0, 3.0, 3.0)
    with pytest.raises(InputError, match="at least 2"):
        bootstrap_mean_ci([1.0])
    with pytest.raises(InputError, match="NaN"):
        bootstrap_mean_ci([1.0, np.nan])
    with pytest.raises(InputError, match="method"):
        bootstrap_mean_ci([1.0, 2.0], method="bc")
    with pytest.raises(InputError, match="confidence"):
        bootstrap_mean_ci([1.0, 2.0], confidence=95)
    with pytest.raises(InputError, match="n_boot"):
        bootstrap_mean_ci([1.0, 2.0], n_boot=10)

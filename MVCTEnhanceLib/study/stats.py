"""Statistics for the evaluation: Friedman test, Shirley-Williams step-down trend test, paired
effect sizes and bootstrap confidence intervals of means.

What is implemented, and why
----------------------------
**Friedman** (:func:`friedman`): ``scipy.stats.friedmanchisquare`` on an ``(n_cases, n_methods)``
table of one metric, every method measured on the same cases (tie-corrected chi-square, df =
n_methods - 1), plus Kendall's W = chi2 / (n (k - 1)). With only two methods the Friedman test
degenerates to a sign test and scipy refuses it, so :func:`friedman` then runs the Wilcoxon
signed-rank test (two-sided) and says so in ``test`` and ``note``.

**Shirley-Williams** (Shirley 1977; Williams 1986): a step-down test of ordered groups against a
control. The groups are the columns in an order fixed *before* looking at the data (control first),
the alternative is monotone (theta_0 <= theta_1 <= ... <= theta_k for ``alternative="greater"``).
Step i (i = k, k-1, ..., 1) uses only groups 0..i, re-ranked (Williams 1986), and the statistic

    t_i = (max_{1<=u<=i} [sum_{j=u..i} n_j Rbar_j / sum_{j=u..i} n_j] - Rbar_0) / sd(Rbar_i - Rbar_0),

i.e. the isotonic (monotone) estimate of group i's mean rank minus the control's, in units of the
null standard deviation of a single group-vs-control difference of mean ranks. Two variants:

* ``shirley_williams_independent`` - Shirley's original for independent groups: ranks over all
  observations of groups 0..i (mid-ranks for ties), sd = sqrt(V (1/n_i + 1/n_0)) with
  V = N (N + 1) / 12 - sum(t^3 - t) / (12 (N - 1)). This is what R's PMCMRplus
  ``shirleyWilliamsTest`` computes (``rerank=False`` gives Shirley's single joint ranking).
* ``shirley_williams`` - **the variant used for our evaluation**, for repeated measures: every
  method is measured on the same cases (patients), so observations of one case are dependent (an
  easy case is easy for every method). Ranking across cases would mix case difficulty into the
  error term and break the independence that Shirley's variance assumes. Instead the values are
  ranked *within each case* over groups 0..i (Friedman-type mid-ranks), Rbar_j is the mean
  within-case rank of group j over the n cases, and under H0 (the methods are exchangeable within
  each case) the exact permutation variance is
  Var(Rbar_a - Rbar_b) = 2 m / (m - 1) * sum_b S_b^2 / n^2,   m = i + 1,
  with S_b^2 the (tie-aware) variance of case b's ranks; without ties this is m (m + 1) / (6 n),
  the familiar Friedman/Nemenyi variance. This is the same ranking the Friedman omnibus uses.

Null distribution and p-values
------------------------------
* ``method="permutation"`` (default for repeated measures): the within-case ranks of groups 0..i are
  permuted independently in every case (the exact null of exchangeability; valid for small n and
  with ties). All (m!)^n arrangements are enumerated when there are at most ``n_perm`` of them
  (exact p); otherwise ``n_perm`` random ones are drawn with a fixed ``seed`` and
  p = (1 + #{T* >= T}) / (1 + n_perm). For independent groups the group labels are permuted.
* ``method="asymptotic"``: mean ranks are asymptotically normal with an exchangeable (repeated) or
  "independent normals minus their weighted mean" (independent) covariance; the statistic is
  location invariant, so its limit is exactly Williams' (1971, 1972) t-bar distribution with
  infinite df and replications n_0, ..., n_i. We evaluate that distribution as a multivariate
  normal integral (Genz's algorithm in ``scipy.stats.multivariate_normal``, seeded, abs. error
  ~1e-5) instead of interpolating Williams' printed tables: this reproduces the tables
  (t-bar_{i,0.05} = 1.645, 1.716, 1.739, 1.750, ... for i = 1, 2, 3, 4, ...) and handles unequal
  replication without Williams' beta extrapolation. R's PMCMRplus looks the critical values up
  in the tables (alpha = 0.05 only) and gives no p-values; ours are the p-values of the same
  distribution.

Step-down decisions: the hypotheses are tested in the fixed order k, k-1, ..., 1, each at level
alpha, stopping at the first non-rejection. We report each step's raw p and the step-down adjusted
p (running maximum from the top step), so "adjusted p < alpha" is exactly the step-down decision;
those comparisons get the dagger mark (``DAGGER``). ``alternative="two-sided"`` doubles the smaller
one-sided p of each step (capped at 1); its critical value is the alpha/2 one.

Assumptions and limits: the column order is an a-priori hypothesis (use the order the study
protocol names, e.g. input, conventional denoisers, CycleGAN, proposed), not one read off the
results; with no defensible order a monotone trend test is the wrong tool. Cases are independent of
each other. The asymptotic p-values need a moderate number of cases; prefer the permutation p.

Effect sizes and intervals: Cohen's d_z = mean(d) / sd(d) of paired differences d = a - b; the
matched-pairs rank-biserial correlation r = (T+ - T-) / (T+ + T-) over the signed ranks of the
non-zero differences (Kerby 2014); bootstrap confidence intervals of a mean (percentile or BCa,
``scipy.stats.bootstrap``, seeded).

References: Shirley E. (1977) Biometrics 33:386-389. Williams D.A. (1971) Biometrics 27:103-117;
(1972) Biometrics 28:519-531; (1986) Biometrics 42:183-186. Friedman M. (1937) JASA 32:675-701.
Kerby D.S. (2014) Compr. Psychol. 3:11.IT.3.1. Efron B. (1987) JASA 82:171-185 (BCa).
Pohlert T., PMCMRplus (R package), ``shirleyWilliamsTest``: the reference implementation.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
from scipy import stats as _st
from scipy.optimize import brentq

from ..engine.errors import InputError

DAGGER = "\u2020"
_ALTERNATIVES = ("greater", "less", "two-sided")
# Deterministic seeds for the randomised quasi-Monte-Carlo of the multivariate normal integral.
_MVN_SEED = 20260101
_P_ABSEPS = 1e-5
_CRIT_ABSEPS = 1e-4


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------
def _as_numbers(values, what: str, shape: str) -> np.ndarray:
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what}: values must be numbers{shape} ({exc}).") from None


def _as_table(values, *, min_cols: int, what: str) -> np.ndarray:
    arr = _as_numbers(values, what, " in a (cases x methods) table")
    if arr.ndim != 2:
        raise InputError(f"{what}: expected a 2-D table (cases x methods), got {arr.ndim} dimension(s).")
    n, k = arr.shape
    if n < 2:
        raise InputError(f"{what}: needs at least 2 cases, got {n}; evaluate more cases.")
    if k < min_cols:
        raise InputError(f"{what}: needs at least {min_cols} methods (columns), got {k}.")
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"{what}: value at case {bad[0]}, method {bad[1]} is NaN or infinite; "
                         "drop that case or fix the metric.")
    return arr


def _as_vector(values, *, what: str, min_len: int = 2) -> np.ndarray:
    arr = _as_numbers(values, what, "")
    if arr.ndim != 1:
        raise InputError(f"{what}: expected a 1-D sequence of values, got {arr.ndim} dimension(s).")
    if arr.size < min_len:
        raise InputError(f"{what}: needs at least {min_len} values, got {arr.size}.")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what}: values contain NaN or infinity; drop or fix them first.")
    return arr


def _names(names: Sequence[str] | None, k: int, what: str) -> tuple[str, ...]:
    if names is None:
        return tuple(str(j) for j in range(k))
    names = tuple(str(n) for n in names)
    if len(names) != k:
        raise InputError(f"{what}: {len(names)} names given for {k} methods.")
    if len(set(names)) != k:
        raise InputError(f"{what}: method names must be unique, got {list(names)}.")
    return names


def _check_common(alternative: str, alpha: float, method: str, methods: tuple[str, ...],
                  n_perm: int, what: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise InputError(f"{what}: alternative must be one of {_ALTERNATIVES}, got {alternative!r}.")
    if not 0.0 < alpha < 0.5:
        raise InputError(f"{what}: alpha must be in (0, 0.5), got {alpha}.")
    if method not in methods:
        raise InputError(f"{what}: method must be one of {methods}, got {method!r}.")
    if method == "permutation" and int(n_perm) < 100:
        raise InputError(f"{what}: n_perm must be at least 100, got {n_perm}.")


# --------------------------------------------------------------------------------------------
# Friedman
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FriedmanResult:
    """Omnibus test over methods measured on the same cases."""

    statistic: float        # Friedman chi-square (tie-corrected), or Wilcoxon W for 2 methods
    p: float
    df: int | None          # n_methods - 1; None for the Wilcoxon fallback
    n_cases: int
    n_methods: int
    test: str               # "friedman" or "wilcoxon"
    kendall_w: float | None  # chi2 / (n (k - 1)), agreement of the case rankings, 0..1
    note: str = ""


def friedman(values) -> FriedmanResult:
    """Friedman test on ``values`` of shape (n_cases, n_methods); see the module docstring."""
    arr = _as_table(values, min_cols=2, what="Friedman test")
    n, k = arr.shape
    if k == 2:
        d = arr[:, 1] - arr[:, 0]
        note = "2 methods: Friedman reduces to a sign test; Wilcoxon signed-rank test used instead."
        if np.all(d == 0):
            return FriedmanResult(0.0, 1.0, None, n, k, "wilcoxon", None,
                                  note + " All paired differences are zero.")
        res = _st.wilcoxon(arr[:, 1], arr[:, 0], alternative="two-sided")
        return FriedmanResult(float(res.statistic), float(res.pvalue), None, n, k, "wilcoxon", None, note)
    if np.all(arr == arr[:, :1]):
        return FriedmanResult(0.0, 1.0, k - 1, n, k, "friedman", 0.0,
                              "Every case has identical values for all methods.")
    res = _st.friedmanchisquare(*arr.T)
    chi2 = float(res.statistic)
    return FriedmanResult(chi2, float(res.pvalue), k - 1, n, k, "friedman", chi2 / (n * (k - 1)))


# --------------------------------------------------------------------------------------------
# Williams' t-bar distribution (infinite df) as a multivariate normal integral
# --------------------------------------------------------------------------------------------
def _williams_cov(replication: tuple[float, ...]) -> tuple[np.ndarray, float]:
    """Covariance of (A_u - Z_0), u = 1..i, and the scale of the statistic's denominator.

    Z_j ~ N(0, 1/n_j) independent, A_u = sum_{j>=u} n_j Z_j / N_u with N_u = sum_{j=u..i} n_j, so
    Cov(A_u, A_v) = 1 / max(N_u, N_v) and Var(Z_0) = 1 / n_0.
    """
    n = np.asarray(replication, dtype=np.float64)
    tail = np.cumsum(n[::-1])[::-1][1:]  # N_u for u = 1..i
    cov = 1.0 / np.maximum.outer(tail, tail) + 1.0 / n[0]
    return cov, math.sqrt(1.0 / n[-1] + 1.0 / n[0])


@lru_cache(maxsize=4096)
def _williams_sf_cached(x: float, replication: tuple[float, ...], abseps: float) -> float:
    i = len(replication) - 1
    cov, scale = _williams_cov(replication)
    thr = x * scale
    if i == 1:
        return float(_st.norm.sf(thr / math.sqrt(cov[0, 0])))
    cdf = _st.multivariate_normal.cdf(np.full(i, thr), mean=np.zeros(i), cov=cov, abseps=abseps,
                                      releps=0.0, rng=np.random.default_rng(_MVN_SEED))
    return float(min(1.0, max(0.0, 1.0 - cdf)))


def williams_sf(x: float, replication: Sequence[float]) -> float:
    """P(T >= x) for Williams' t-bar of the top group, infinite df.

    ``replication`` = (n_0, n_1, ..., n_i): control first. Only ratios matter, so equal
    replication can be given as ``[1] * (i + 1)``. Absolute accuracy about 1e-5.
    """
    rep = tuple(float(r) for r in replication)
    if len(rep) < 2 or min(rep) <= 0:
        raise InputError("williams_sf: replication needs a control and at least one group, all > 0.")
    return _williams_sf_cached(round(float(x), 10), rep, _P_ABSEPS)


def williams_critical_value(replication: Sequence[float], alpha: float = 0.05) -> float:
    """Upper ``alpha`` point of Williams' t-bar (infinite df), about +-0.002."""
    rep = tuple(float(r) for r in replication)
    if len(rep) < 2 or min(rep) <= 0:
        raise InputError("williams_critical_value: replication needs a control and >= 1 group, all > 0.")
    if not 0.0 < alpha < 0.5:
        raise InputError(f"williams_critical_value: alpha must be in (0, 0.5), got {alpha}.")
    return _williams_crit_cached(rep, float(alpha))


@lru_cache(maxsize=1024)
def _williams_crit_cached(rep: tuple[float, ...], alpha: float) -> float:
    if len(rep) == 2:
        return float(_st.norm.isf(alpha))
    # The integral's absolute error must be small next to alpha for a +-0.002 quantile.
    eps = min(_CRIT_ABSEPS, alpha * 2e-3)
    f = lambda x: _williams_sf_cached(round(x, 10), rep, eps) - alpha  # noqa: E731
    return float(brentq(f, 0.0, 12.0, xtol=2e-4))


# --------------------------------------------------------------------------------------------
# Shirley-Williams
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepComparison:
    """One step of the step-down procedure: group ``name`` (position ``index``) vs the control."""

    index: int
    name: str
    statistic: float       # t_i (signed: > 0 means above the control's mean rank)
    p_raw: float           # this step's own p-value
    p: float               # step-down adjusted p (running max from the top step)
    critical_value: float  # this step's critical value at alpha (same null as p_raw)
    significant: bool      # p < alpha  <=>  rejected by the step-down procedure

    @property
    def mark(self) -> str:
        return DAGGER if self.significant else ""


@dataclass(frozen=True)
class ShirleyWilliamsResult:
    comparisons: tuple[StepComparison, ...]  # lowest group first (index 1..k)
    control: str
    design: str        # "repeated" or "independent"
    method: str        # "permutation" or "asymptotic"
    alternative: str
    alpha: float
    n_perm: int | None  # permutations used per step (None for asymptotic)
    exact: bool         # True when every permutation was enumerated
    seed: int | None

    def comparison(self, name: str) -> StepComparison:
        for c in self.comparisons:
            if c.name == name:
                return c
        raise InputError(f"No comparison named {name!r}; have {[c.name for c in self.comparisons]}.")

    def to_rows(self) -> list[dict]:
        """One JSON-serialisable dict per comparison, for CSV/Markdown reports."""
        return [{"group": c.name, "control": self.control, "statistic": c.statistic,
                 "p_raw": c.p_raw, "p": c.p, "critical_value": c.critical_value,
                 "significant": c.significant, "mark": c.mark, "design": self.design,
                 "method": self.method, "alternative": self.alternative, "alpha": self.alpha}
                for c in self.comparisons]


def _top_isotonic(means: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """max_{u>=1} weighted mean of groups u..i (last axis), for a batch of mean vectors."""
    w = weights[1:][::-1]
    num = np.cumsum(means[..., 1:][..., ::-1] * w, axis=-1)
    return np.max(num / np.cumsum(w), axis=-1)


def _stepdown(raw: list[tuple[float, float, float]], names: tuple[str, ...], alpha: float):
    """raw[i-1] = (statistic, p_raw, crit) for step i; adjusted p = running max from the top."""
    k = len(raw)
    adj = [0.0] * k
    running = 0.0
    for i in range(k - 1, -1, -1):
        running = max(running, raw[i][1])
        adj[i] = running
    return tuple(StepComparison(i + 1, names[i + 1], float(raw[i][0]), float(raw[i][1]), float(adj[i]),
                                float(raw[i][2]), bool(adj[i] < alpha)) for i in range(k))


def _perm_pvalue(t_obs: float, t_null: np.ndarray, exact: bool) -> float:
    tol = 1e-9 * max(1.0, abs(t_obs))
    hits = int(np.count_nonzero(t_null >= t_obs - tol))
    return hits / t_null.size if exact else (hits + 1) / (t_null.size + 1)


def _perm_crit(t_null: np.ndarray, alpha: float) -> float:
    return float(np.quantile(t_null, 1.0 - alpha, method="higher"))


# ---- repeated measures -------------------------------------------------------------------------
def _within_case_step(arr: np.ndarray, m: int):
    """Within-case mid-ranks of the first m columns, and sd of Rbar_a - Rbar_b under H0."""
    ranks = _st.rankdata(arr[:, :m], axis=1)
    n = arr.shape[0]
    s2 = np.mean((ranks - (m + 1) / 2.0) ** 2, axis=1)  # per-case rank variance (ties lower it)
    var = 2.0 * m / (m - 1) * s2.sum() / n**2
    return ranks, math.sqrt(var)


def _repeated_null(ranks: np.ndarray, sd: float, n_perm: int, rng: np.random.Generator):
    """Null statistics from permuting each case's ranks; enumerated when small enough."""
    n, m = ranks.shape
    ones = np.ones(m)
    total = math.factorial(m) ** n if n * math.log(math.factorial(m)) < 50 else None
    if total is not None and total <= n_perm:
        perms = np.array(list(itertools.permutations(range(m))))
        idx = np.array(list(itertools.product(range(len(perms)), repeat=n)))  # (total, n)
        out = np.empty(total)
        for start in range(0, total, 4096):
            sel = perms[idx[start:start + 4096]]  # (b, n, m)
            pr = np.take_along_axis(np.broadcast_to(ranks, sel.shape), sel, axis=2)
            means = pr.mean(axis=1)
            out[start:start + len(sel)] = (_top_isotonic(means, ones) - means[:, 0]) / sd
        return out, True
    out = np.empty(n_perm)
    chunk = max(1, min(n_perm, 2_000_000 // max(1, n * m)))
    for start in range(0, n_perm, chunk):
        b = min(chunk, n_perm - start)
        sel = np.argsort(rng.random((b, n, m)), axis=2)
        pr = np.take_along_axis(np.broadcast_to(ranks, sel.shape), sel, axis=2)
        means = pr.mean(axis=1)
        out[start:start + b] = (_top_isotonic(means, ones) - means[:, 0]) / sd
    return out, False


def _repeated_one_sided(arr: np.ndarray, method: str, n_perm: int, seed: int, alpha: float):
    n, k1 = arr.shape
    raw, exact_all = [], True
    for i in range(1, k1):
        m = i + 1
        ranks, sd = _within_case_step(arr, m)
        if sd == 0.0:  # every case tied across groups 0..i: no evidence either way
            raw.append((0.0, 1.0, math.inf))
            continue
        means = ranks.mean(axis=0)
        t = float((_top_isotonic(means, np.ones(m)) - means[0]) / sd)
        if method == "asymptotic":
            rep = (1.0,) * m
            raw.append((t, williams_sf(t, rep), williams_critical_value(rep, alpha)))
            exact_all = False
        else:
            rng = np.random.default_rng([seed, i])
            null, exact = _repeated_null(ranks, sd, n_perm, rng)
            exact_all &= exact
            raw.append((t, _perm_pvalue(t, null, exact), _perm_crit(null, alpha)))
    return raw, exact_all


def shirley_williams(values, *, names: Sequence[str] | None = None, alternative: str = "greater",
                     method: str = "permutation", n_perm: int = 20000, seed: int = 0,
                     alpha: float = 0.05) -> ShirleyWilliamsResult:
    """Shirley-Williams step-down trend test for repeated measures (the evaluation's variant).

    ``values``: (n_cases, n_groups), column 0 the control, the other columns in the hypothesised
    order; every column measured on the same cases. ``alternative="greater"`` tests an increase
    along the columns, ``"less"`` a decrease. See the module docstring for the statistic.
    """
    what = "Shirley-Williams test"
    arr = _as_table(values, min_cols=2, what=what)
    _check_common(alternative, alpha, method, ("permutation", "asymptotic"), n_perm, what)
    nm = _names(names, arr.shape[1], what)
    raw, exact = _run_directions(lambda a, al: _repeated_one_sided(a, method, int(n_perm), seed, al),
                                 arr, alternative, alpha)
    perm = method == "permutation"
    return ShirleyWilliamsResult(_stepdown(raw, nm, alpha), nm[0], "repeated", method, alternative,
                                 alpha, int(n_perm) if perm and not exact else None, exact and perm,
                                 seed if perm else None)


def _run_directions(one_sided, data, alternative: str, alpha: float):
    """Apply a one-sided runner for 'greater' on data (negated for 'less'); combine for two-sided."""
    if alternative == "greater":
        return one_sided(data, alpha)
    if alternative == "less":
        raw, exact = one_sided(_negate(data), alpha)
        return [(-t, p, -c) for t, p, c in raw], exact
    up, ex_u = one_sided(data, alpha / 2)
    down, ex_d = one_sided(_negate(data), alpha / 2)
    raw = []
    for (tu, pu, cu), (td, pd, _cd) in zip(up, down):
        t = tu if pu <= pd else -td
        raw.append((t, min(1.0, 2.0 * min(pu, pd)), cu))
    return raw, ex_u and ex_d


def _negate(data):
    if isinstance(data, np.ndarray):
        return -data
    return [-g for g in data]


# ---- independent groups (Shirley's original) -------------------------------------------------
def _independent_one_sided(groups: list[np.ndarray], method: str, rerank: bool, n_perm: int,
                           seed: int, alpha: float):
    k1 = len(groups)
    n = np.array([g.size for g in groups], dtype=np.float64)
    pooled_all = np.concatenate(groups)
    ranks_all = _st.rankdata(pooled_all)
    raw = []
    for i in range(1, k1):
        m = i + 1
        cnt = int(n[:m].sum())
        if rerank:
            pooled = pooled_all[:cnt]
            ranks = _st.rankdata(pooled)
        else:  # Shirley (1977): one joint ranking of all groups, variance from all N
            pooled = pooled_all
            ranks = ranks_all
        big_n = pooled.size
        _, ties = np.unique(pooled, return_counts=True)
        v = big_n * (big_n + 1) / 12.0 - float(np.sum(ties**3 - ties)) / (12.0 * (big_n - 1))
        sd = math.sqrt(v * (1.0 / n[i] + 1.0 / n[0]))
        bounds = np.concatenate([[0], np.cumsum(n[:m]).astype(int)])
        if sd == 0.0:
            raw.append((0.0, 1.0, math.inf))
            continue
        means = np.array([ranks[bounds[j]:bounds[j + 1]].mean() for j in range(m)])
        t = float((_top_isotonic(means, n[:m]) - means[0]) / sd)
        if method == "asymptotic":
            rep = tuple(n[:m])
            raw.append((t, williams_sf(t, rep), williams_critical_value(rep, alpha)))
        else:
            rng = np.random.default_rng([seed, i])
            r_used = ranks[:cnt]
            # Permuting labels within groups 0..i; with rerank=False the ranks of the other groups
            # stay where they are, as in Shirley's single ranking.
            sums_idx = np.repeat(np.arange(m), n[:m].astype(int))
            null = np.empty(n_perm)
            chunk = max(1, min(n_perm, 2_000_000 // cnt))
            for start in range(0, n_perm, chunk):
                b = min(chunk, n_perm - start)
                perm = np.argsort(rng.random((b, cnt)), axis=1)
                pr = r_used[perm]
                sums = np.zeros((b, m))
                np.add.at(sums, (slice(None), sums_idx), pr)
                pm = sums / n[:m]
                null[start:start + b] = (_top_isotonic(pm, n[:m]) - pm[:, 0]) / sd
            raw.append((t, _perm_pvalue(t, null, False), _perm_crit(null, alpha)))
    return raw, False


def shirley_williams_independent(groups: Sequence, *, names: Sequence[str] | None = None,
                                 alternative: str = "greater", method: str = "asymptotic",
                                 rerank: bool = True, n_perm: int = 10000, seed: int = 0,
                                 alpha: float = 0.05) -> ShirleyWilliamsResult:
    """Shirley's test for independent groups, as R's PMCMRplus ``shirleyWilliamsTest``.

    ``groups``: sequence of 1-D samples, control first, then the ordered groups. ``rerank=True``
    re-ranks groups 0..i at every step (Williams 1986, PMCMRplus); ``False`` keeps Shirley's
    (1977) single joint ranking.
    """
    what = "Shirley-Williams test (independent groups)"
    if isinstance(groups, np.ndarray) or len(groups) < 2:
        raise InputError(f"{what}: give a list of at least 2 1-D samples, control first (for a "
                         "cases x methods table use shirley_williams).")
    gs = [_as_vector(g, what=f"{what}, group {j}", min_len=1) for j, g in enumerate(groups)]
    if sum(g.size for g in gs) < 3:
        raise InputError(f"{what}: needs at least 3 observations in total.")
    _check_common(alternative, alpha, method, ("permutation", "asymptotic"), n_perm, what)
    nm = _names(names, len(gs), what)
    raw, _ = _run_directions(
        lambda a, al: _independent_one_sided(a, method, rerank, int(n_perm), seed, al), gs,
        alternative, alpha)
    perm = method == "permutation"
    return ShirleyWilliamsResult(_stepdown(raw, nm, alpha), nm[0], "independent", method,
                                 alternative, alpha, int(n_perm) if perm else None, False,
                                 seed if perm else None)


# --------------------------------------------------------------------------------------------
# Paired effect sizes
# --------------------------------------------------------------------------------------------
def _paired(a, b, what: str) -> np.ndarray:
    a = _as_vector(a, what=what)
    b = _as_vector(b, what=what)
    if a.shape != b.shape:
        raise InputError(f"{what}: paired samples differ in length ({a.size} vs {b.size}).")
    return a - b


def cohens_dz(a, b) -> float:
    """Cohen's d_z = mean(a - b) / sd(a - b) (ddof=1) for paired samples.

    0.0 when every difference is zero; +-inf when the differences are a non-zero constant.
    """
    d = _paired(a, b, "Cohen's d_z")
    mean = float(d.mean())
    sd = float(d.std(ddof=1))
    if sd == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / sd


def rank_biserial_paired(a, b) -> float:
    """Matched-pairs rank-biserial correlation of a - b, in [-1, 1].

    r = (T+ - T-) / (T+ + T-) with T+/T- the sums of the mid-ranks of |d| over positive/negative
    differences; zero differences are dropped (Wilcoxon's convention). 0.0 when all are zero.
    """
    d = _paired(a, b, "rank-biserial correlation")
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    r = _st.rankdata(np.abs(d))
    t_plus = float(r[d > 0].sum())
    t_minus = float(r[d < 0].sum())
    return (t_plus - t_minus) / (t_plus + t_minus)


# --------------------------------------------------------------------------------------------
# Bootstrap CI of a mean
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BootstrapCI:
    mean: float
    low: float
    high: float
    confidence: float
    n_boot: int
    method: str  # "bca" or "percentile"
    seed: int


def bootstrap_mean_ci(values, *, confidence: float = 0.95, n_boot: int = 10000, method: str = "bca",
                      seed: int = 0) -> BootstrapCI:
    """Bootstrap confidence interval of the mean (resampling cases), deterministic for a seed."""
    x = _as_vector(values, what="bootstrap CI")
    if method not in ("bca", "percentile"):
        raise InputError(f"bootstrap CI: method must be 'bca' or 'percentile', got {method!r}.")
    if not 0.0 < confidence < 1.0:
        raise InputError(f"bootstrap CI: confidence must be in (0, 1), got {confidence}.")
    if int(n_boot) < 100:
        raise InputError(f"bootstrap CI: n_boot must be at least 100, got {n_boot}.")
    mean = float(x.mean())
    if np.all(x == x[0]):  # no variability: every resample has the same mean
        return BootstrapCI(mean, mean, mean, confidence, int(n_boot), method, seed)
    res = _st.bootstrap((x,), np.mean, n_resamples=int(n_boot), confidence_level=confidence,
                        method="BCa" if method == "bca" else "percentile", vectorized=True,
                        rng=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise InputError("bootstrap CI: the interval is undefined for these values (too few distinct "
                         "values for BCa); use method='percentile' or more cases.")
    return BootstrapCI(mean, low, high, confidence, int(n_boot), method, seed)


__all__ = [
    "DAGGER", "FriedmanResult", "friedman", "StepComparison", "ShirleyWilliamsResult",
    "shirley_williams", "shirley_williams_independent", "williams_sf", "williams_critical_value",
    "cohens_dz", "rank_biserial_paired", "BootstrapCI", "bootstrap_mean_ci",
]

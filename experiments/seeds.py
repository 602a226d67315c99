"""Summaries over seeds, one way for every experiment: mean ± sample standard deviation
(n − 1 in the denominator), paired differences between two variants run on the same seeds,
the number of seeds one variant wins, the paired t-test (Student's t with n − 1 degrees of
freedom, two-sided p-value from the regularized incomplete beta function) and Holm's
step-down adjustment of the p-values of several comparisons in one table."""
import math

import numpy as np


def mean_std(values):
    """(mean, sample std) of the values that are not None; std 0 for one value, (None, None)
    for none."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if not len(v):
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def fmt(values, digits=2):
    """'mean ± std' with `digits` decimals (the cell of a results table)."""
    m, s = mean_std(values)
    return None if m is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def paired(a, b):
    """a[s] − b[s] for the seeds s in both dicts (seed -> value), in seed order."""
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def wins(diffs):
    """'k/n': how many of the n paired differences are positive."""
    return f"{sum(d > 0 for d in diffs)}/{len(diffs)}"


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes
    6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)),
                   -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):                 # the fraction converges fast here
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_pvalue(t, df):
    """Two-sided p-value of Student's t with df degrees of freedom:
    P(|T| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)."""
    if math.isinf(t):
        return 0.0
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def paired_t(diffs):
    """(t, p) of the paired t-test on the differences: t = mean / (std / sqrt(n)), df = n − 1,
    p two-sided; (None, None) for fewer than two differences."""
    if len(diffs) < 2:
        return None, None
    m, s = mean_std(diffs)
    if s == 0:
        return (0.0, 1.0) if m == 0 else (math.copysign(math.inf, m), 0.0)
    t = m / (s / math.sqrt(len(diffs)))
    return t, t_pvalue(t, len(diffs) - 1)


def holm(pvalues):
    """Holm's step-down adjusted p-values (same order; None stays None): the i-th smallest of
    k p-values times (k − i + 1), made non-decreasing in that order, capped at 1. A table that
    compares one variant with k others rejects at family-wise level a where adjusted p < a."""
    idx = sorted((i for i, p in enumerate(pvalues) if p is not None), key=lambda i: pvalues[i])
    out, running = list(pvalues), 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (len(idx) - rank) * pvalues[i]))
        out[i] = running
    return out


if __name__ == "__main__":
    a = {1: 91.2, 2: 90.8, 3: 91.9, 4: 90.5, 5: 91.4}
    b = {1: 90.1, 2: 90.9, 3: 90.7, 4: 89.8, 5: 90.6}
    d = paired(a, b)
    t, p = paired_t(d)
    print(f"a {fmt(a.values())}, b {fmt(b.values())}, a − b {fmt(d)}, a wins {wins(d)}, "
          f"paired t = {t:.2f}, p = {p:.3f}")

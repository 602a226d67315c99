"""Tests of the CMA-ES in egnas.py against Hansen, "The CMA Evolution Strategy: A Tutorial"
(2016, arXiv:1604.00772), Appendix A: default parameters recomputed by hand, the first
generation's update recomputed from the tutorial's equations, convergence, and the errors."""
import math

import numpy as np
import pytest

from egnas import CMAES


def sphere(x):
    return float(x @ x)


def rosenbrock(x):
    return float(np.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))


def ellipsoid(x):
    n = len(x)
    return float(np.sum(10 ** (6 * np.arange(n) / (n - 1)) * x * x))


def run(es, f, target=1e-10, max_evals=20000, each=None):
    while es.evaluations < max_evals:
        X = es.ask()
        fx = [f(x) for x in X]
        es.tell(X, fx)
        if each is not None:
            each(es)
        if min(fx) < target:
            break
    return es


def test_default_parameters_n10_by_hand():
    """The tutorial's default parameter table for n = 10, written out independently of the implementation."""
    n = 10
    es = CMAES(np.zeros(n), 1.0)
    lam = 4 + math.floor(3 * math.log(10))           # 4 + floor(6.908) = 10
    assert lam == 10 and es.lam == 10 and es.mu == 5
    wp = [math.log(5.5) - math.log(i) for i in range(1, 11)]
    sp = sum(wp[:5])
    mueff = sp ** 2 / sum(v * v for v in wp[:5])
    mueff_neg = sum(wp[5:]) ** 2 / sum(v * v for v in wp[5:])
    c1 = 2 / (11.3 ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / (12 ** 2 + mueff))
    cs = (mueff + 2) / (n + mueff + 5)
    ds = 1 + 2 * max(0, math.sqrt((mueff - 1) / 11) - 1) + cs
    cc = (4 + mueff / n) / (n + 4 + 2 * mueff / n)
    bound = min(1 + c1 / cmu, 1 + 2 * mueff_neg / (mueff + 2), (1 - c1 - cmu) / (n * cmu))
    sn = sum(abs(v) for v in wp[5:])
    w = [v / sp for v in wp[:5]] + [bound * v / sn for v in wp[5:]]
    np.testing.assert_allclose(es.weights, w, rtol=1e-12)
    for got, want in [(es.mueff, mueff), (es.mueff_neg, mueff_neg), (es.c1, c1), (es.cmu, cmu),
                      (es.cs, cs), (es.ds, ds), (es.cc, cc)]:
        assert got == pytest.approx(want, rel=1e-12)
    # for n = 10 the binding bound is alpha_mu^- = 1 + c1/cmu, so c1 + cmu * sum(w) = 0
    assert bound == pytest.approx(1 + c1 / cmu)
    assert es.c1 + es.cmu * es.weights.sum() == pytest.approx(0, abs=1e-12)
    # rounded literals of the same quantities (they agree with pycma 4.5.0's positive weights)
    np.testing.assert_allclose(es.weights[:5], [0.45627265, 0.2707531, 0.16223112, 0.08523355,
                                                0.02550959], atol=1e-8)
    assert es.mueff == pytest.approx(3.16729928, abs=1e-8)
    assert es.c1 == pytest.approx(0.0152838245, abs=1e-10)
    assert es.cc == pytest.approx(0.294990383, abs=1e-9)
    assert es.chiN == pytest.approx(math.sqrt(10) * (1 - 1 / 40 + 1 / 2100))


@pytest.mark.parametrize("lam", [2, 3, 7, 12])
def test_weight_constraints_other_population_sizes(lam):
    es = CMAES(np.zeros(6), 0.3, population_size=lam)
    w = es.weights
    assert es.lam == lam and es.mu == lam // 2
    assert np.all(w[:es.mu] > 0) and np.all(w[es.mu:] <= 0)
    assert w[:es.mu].sum() == pytest.approx(1.0)
    assert np.all(np.diff(w) < 0)                      # strictly decreasing with rank


def expected_update(es, X, f):
    """The update of Appendix A written out for one generation from the state of `es` before
    tell; C^{-1/2} computed here from C (for n <= 10 the decomposition is fresh each step)."""
    n, lam, mu, w = es.n, es.lam, es.mu, es.weights
    m0, sigma, C0, g = es.mean.copy(), es.sigma, es.C.copy(), es.generation
    cs, cc, c1, cmu, mueff = es.cs, es.cc, es.c1, es.cmu, es.mueff
    e, V = np.linalg.eigh(C0)
    isq = V @ np.diag(e ** -0.5) @ V.T
    idx = np.argsort(f)
    y = (X[idx] - m0) / sigma
    yw = sum(w[i] * y[i] for i in range(mu))
    m1 = m0 + sigma * yw                               # c_m = 1
    ps = (1 - cs) * es.ps + math.sqrt(cs * (2 - cs) * mueff) * isq @ yw
    chin = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    hs = float(np.linalg.norm(ps) / math.sqrt(1 - (1 - cs) ** (2 * (g + 1)))
               < (1.4 + 2 / (n + 1)) * chin)
    pc = (1 - cc) * es.pc + hs * math.sqrt(cc * (2 - cc) * mueff) * yw
    C = (1 + c1 * (1 - hs) * cc * (2 - cc) - c1 - cmu * w.sum()) * C0 + c1 * np.outer(pc, pc)
    for i in range(lam):
        zi = isq @ y[i]
        wo = w[i] if w[i] >= 0 else w[i] * n / (zi @ zi)
        C += cmu * wo * np.outer(y[i], y[i])
    sigma1 = sigma * math.exp(cs / es.ds * (np.linalg.norm(ps) / chin - 1))
    return dict(mean=m1, ps=ps, pc=pc, C=C, sigma=sigma1, hs=hs, best=X[idx[0]])


def check_update(es, X, f, shuffle_seed=0):
    want = expected_update(es, X, f)
    perm = np.random.default_rng(shuffle_seed).permutation(len(f))   # tell must rank them
    evals = es.evaluations
    es.tell(X[perm], f[perm])
    for k in ("mean", "ps", "pc", "C"):
        np.testing.assert_allclose(getattr(es, k), want[k], rtol=1e-10, atol=1e-13, err_msg=k)
    assert es.sigma == pytest.approx(want["sigma"], rel=1e-12)
    assert es.evaluations == evals + es.lam
    return want


def test_first_generation_update_by_hand():
    n, sigma, m0 = 4, 0.7, np.array([0.3, -0.2, 1.0, 0.5])
    es = CMAES(m0, sigma, seed=3)
    assert es.lam == 8 and es.mu == 4                  # 4 + floor(3 ln 4) = 4 + 4
    X = es.ask()
    f = np.array([ellipsoid(x) for x in X])
    want = check_update(es, X, f)
    assert want["hs"] == 1.0 and es.generation == 1
    assert es.best_f == f.min()
    np.testing.assert_array_equal(es.best_x, want["best"])


def test_later_generation_update_by_hand():
    """After 15 generations on the ellipsoid: C far from I, p_sigma and p_c nonzero."""
    es = CMAES(np.full(4, 0.5), 0.5, seed=5)
    for _ in range(15):
        X = es.ask()
        es.tell(X, [ellipsoid(x) for x in X])
    e = np.linalg.eigvalsh(es.C)
    assert e[-1] / e[0] > 10
    X = es.ask()
    check_update(es, X, np.array([ellipsoid(x) for x in X]), shuffle_seed=1)


def test_h_sigma_stall_by_hand():
    """A long p_sigma (as after a run of correlated steps) stalls p_c: h_sigma = 0, and the
    covariance gets the (1 - h_sigma) c1 cc (2 - cc) correction."""
    es = CMAES(np.full(4, 0.5), 0.5, seed=6)
    for _ in range(5):
        X = es.ask()
        es.tell(X, [sphere(x) for x in X])
    es.ps = np.full(4, 3.0)                            # ||p_sigma|| = 6 > (1.4 + 2/5) E||N|| ~ 3.4
    X = es.ask()
    want = check_update(es, X, np.array([sphere(x) for x in X]))
    assert want["hs"] == 0.0


@pytest.mark.parametrize("r, hs", [(1.75, 1.0), (1.85, 0.0)])
def test_h_sigma_threshold(r, hs):
    """h_sigma = 1 iff ||p_sigma|| / sqrt(1 - (1-cs)^(2(g+1))) < (1.4 + 2/(n+1)) E||N(0,I)||:
    at g = 1 (second generation) p_sigma(old) is chosen so that the left side is r E||N||,
    just below / above the threshold 1.8 E||N|| for n = 4."""
    n = 4
    es = CMAES(np.full(n, 0.5), 0.5, seed=8)
    X = es.ask()
    es.tell(X, [sphere(x) for x in X])
    X = es.ask()
    f = np.array([sphere(x) for x in X])
    cs = es.cs
    e, V = np.linalg.eigh(es.C)
    yw = es.weights[:es.mu] @ ((X[np.argsort(f)[:es.mu]] - es.mean) / es.sigma)
    v = math.sqrt(cs * (2 - cs) * es.mueff) * (V @ np.diag(e ** -0.5) @ V.T) @ yw
    chin = math.sqrt(n) * (1 - 1 / (4 * n) + 1 / (21 * n * n))
    t = r * chin * math.sqrt(1 - (1 - cs) ** 4)         # target ||p_sigma(new)||
    u = v / np.linalg.norm(v)
    es.ps = (t - np.linalg.norm(v)) / (1 - cs) * u     # so p_sigma(new) = t u
    want = check_update(es, X, f)
    assert np.linalg.norm(es.ps) == pytest.approx(t)
    assert want["hs"] == hs


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converges_on_sphere(seed):
    es = run(CMAES(np.full(5, 2.0), 1.0, seed=seed), sphere, target=1e-10, max_evals=5000)
    assert es.best_f < 1e-10
    assert np.max(np.abs(es.best_x)) < 1e-4


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_converges_on_rosenbrock(seed):
    es = run(CMAES(np.zeros(4), 0.5, seed=seed), rosenbrock, target=1e-10, max_evals=10000)
    assert es.best_f < 1e-10
    np.testing.assert_allclose(es.best_x, np.ones(4), atol=1e-4)


def test_ask_shapes():
    es = CMAES(np.zeros(10), 1.0)
    assert es.ask().shape == (10, 10)
    assert CMAES([1.0, 2.0, 3.0], 0.1).ask().shape == (7, 3)    # 4 + floor(3 ln 3) = 7
    assert CMAES([0.0], 0.1).ask().shape == (4, 1)
    assert CMAES(np.zeros(5), 0.1, population_size=50).ask().shape == (50, 5)


def test_reproducible_with_seed():
    def trace(seed):
        es = CMAES(np.full(6, 0.5), 0.5, seed=seed)
        xs = []
        for _ in range(20):
            X = es.ask()
            xs.append(X)
            es.tell(X, [ellipsoid(x) for x in X])
        return np.concatenate(xs), es.mean, es.sigma, es.C
    a, b, c = trace(7), trace(7), trace(8)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a[0], c[0])


def test_covariance_stays_symmetric_positive_definite():
    def check(es):
        C = es.C
        assert np.all(np.isfinite(C))
        np.testing.assert_allclose(C, C.T, rtol=0, atol=1e-12 * np.abs(C).max())
        assert np.linalg.eigvalsh((C + C.T) / 2).min() > 0
    # ellipsoid drives C to condition ~1e6, with active (negative) updates every generation
    es = run(CMAES(np.full(8, 0.5), 0.5, seed=0), ellipsoid, target=1e-12, max_evals=12000, each=check)
    assert es.best_f < 1e-12
    d2 = np.linalg.eigvalsh(es.C)
    assert 1e4 < d2[-1] / d2[0] < 1e8                  # learned the 1e6 conditioning (C ~ H^-1)


def test_round_off_loss_of_definiteness_is_repaired():
    """If round-off makes C indefinite (only far past stop()), the next decomposition lifts the
    diagonal so that C is positive definite again and sampling stays finite."""
    es = CMAES(np.zeros(3), 1.0, seed=0)
    X = es.ask()
    es.tell(X, [sphere(x) for x in X])
    es.C = np.diag([1.0, 1e-3, -1e-12])
    es.eigen_evaluations = -10 ** 9                    # force the decomposition at the next ask
    X = es.ask()
    assert np.all(np.isfinite(X))
    d2 = np.linalg.eigvalsh(es.C)
    assert d2[0] > 0 and d2[-1] / d2[0] <= 1e14 * (1 + 1e-6)
    np.testing.assert_allclose(np.diag(es.C)[:2], [1.0, 1e-3], rtol=0, atol=1e-11)


def test_lazy_eigendecomposition():
    """B, D are refreshed only when more than lambda/(c1+cmu)/n/10 evaluations old; for n = 100
    (lambda = 17) that is ~20 evaluations, i.e. every second generation; then C = B D^2 B^T."""
    n = 100
    es = CMAES(np.full(n, 0.5), 0.5, seed=0)
    lam = 4 + math.floor(3 * math.log(n))
    mueff = es.mueff
    c1 = 2 / ((n + 1.3) ** 2 + mueff)
    cmu = min(1 - c1, 2 * (mueff - 2 + 1 / mueff) / ((n + 2) ** 2 + mueff))
    gap = lam / (c1 + cmu) / n / 10
    assert lam == 17 and lam < gap < 2 * lam
    refreshed = []
    for gen in range(8):
        B0, C0 = es.B.copy(), es.C.copy()
        X = es.ask()
        changed = not np.array_equal(B0, es.B)
        refreshed.append(changed)
        if changed:
            np.testing.assert_allclose((es.B * es.D ** 2) @ es.B.T, C0, atol=1e-12)
        es.tell(X, [ellipsoid(x) for x in X])
    # generation 0 decomposes C = I (B stays I); then 17 <= gap < 34 evaluations
    assert refreshed == [False, False, True, False, True, False, True, False]


def test_stop_criteria():
    es = CMAES(np.zeros(3), 1.0, seed=0)
    assert es.stop() == {}
    X = es.ask()
    es.tell(X, np.zeros(len(X)))                       # flat function: f range 0 < tolfun
    assert "tolfun" in es.stop()
    es = CMAES(np.zeros(3), 1.0, seed=0)
    X = es.ask()
    es.tell(X, [sphere(x) for x in X])
    assert not es.stop()
    es.C = np.diag([1.0, 1.0, 1e-15])                  # condition number 1e15 > 1e14
    assert "conditioncov" in es.stop()
    # run on the sphere until a stop criterion fires: it must be a convergence criterion
    es = CMAES(np.ones(3), 1.0, seed=1)
    while not es.stop() and es.evaluations < 20000:
        X = es.ask()
        es.tell(X, [sphere(x) for x in X])
    crit = es.stop()
    assert crit and set(crit) & {"tolfun", "tolx"}
    assert es.best_f < 1e-12


def test_errors():
    with pytest.raises(ValueError, match="sigma"):
        CMAES(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="sigma"):
        CMAES(np.zeros(3), -1.0)
    with pytest.raises(ValueError, match="sigma"):
        CMAES(np.zeros(3), float("nan"))
    with pytest.raises(ValueError, match="mean"):
        CMAES([], 1.0)
    with pytest.raises(ValueError, match="mean"):
        CMAES(np.zeros((2, 2)), 1.0)
    with pytest.raises(ValueError, match="population_size"):
        CMAES(np.zeros(3), 1.0, population_size=1)
    es = CMAES(np.zeros(3), 1.0, seed=0)
    X = es.ask()
    with pytest.raises(ValueError, match="fitnesses"):
        es.tell(X, np.zeros(len(X) - 1))
    with pytest.raises(ValueError, match="solutions"):
        es.tell(X[:-1], np.zeros(len(X)))
    with pytest.raises(ValueError, match="solutions"):
        es.tell(X[:, :2], np.zeros(len(X)))
    f = np.zeros(len(X))
    f[2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        es.tell(X, f)
    assert es.evaluations == 0 and np.array_equal(es.mean, np.zeros(3))   # nothing was applied

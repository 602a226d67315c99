"""experiments/seeds.py against values computed by hand and Student's t table."""
import math

import pytest

from experiments import seeds


def test_mean_and_sample_std_by_hand():
    # [1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, / (4 - 1)
    m, s = seeds.mean_std([1, 2, 3, 4])
    assert m == 2.5 and s == pytest.approx(math.sqrt(5 / 3)) and round(s, 4) == 1.2910
    assert seeds.mean_std([7.0]) == (7.0, 0.0)                  # one seed: no spread
    assert seeds.mean_std([]) == (None, None)
    assert seeds.mean_std([None, 1, None, 3]) == (2.0, pytest.approx(math.sqrt(2)))
    assert seeds.fmt([1, 2, 3, 4]) == "2.50 ± 1.29" and seeds.fmt([10, 20], 0) == "15 ± 7"
    assert seeds.fmt([None]) is None


def test_paired_differences_and_wins_by_hand():
    a = {1: 90.0, 2: 91.0, 3: 89.0, 5: 92.0}
    b = {1: 89.5, 2: 91.5, 3: 88.0, 4: 80.0}
    d = seeds.paired(a, b)                                    # seeds 1, 2, 3 only, in order
    assert d == [0.5, -0.5, 1.0]
    assert seeds.wins(d) == "2/3" and seeds.wins([0.0, -1.0]) == "0/2"
    # t = mean / (sd / sqrt(n)): mean 1/3, sd sqrt(((1/6)^2 + (5/6)^2 + (2/3)^2) / 2) = sqrt(7/12)
    t, p = seeds.paired_t(d)
    assert t == pytest.approx((1 / 3) / (math.sqrt(7 / 12) / math.sqrt(3)))
    assert 0 < p < 1
    assert seeds.paired_t([1.0]) == (None, None)
    assert seeds.paired_t([2.0, 2.0]) == (math.inf, 0.0) and seeds.paired_t([0.0, 0.0]) == (0.0, 1.0)


@pytest.mark.parametrize("t, df, p", [(2.776, 4, 0.050), (2.571, 5, 0.050), (12.706, 1, 0.050),
                                      (2.228, 10, 0.050), (4.604, 4, 0.010)])
def test_t_pvalue_against_the_t_table(t, df, p):
    assert seeds.t_pvalue(t, df) == pytest.approx(p, abs=2e-4)
    assert seeds.t_pvalue(-t, df) == pytest.approx(p, abs=2e-4)      # two-sided


def test_t_pvalue_closed_forms():
    # df = 1 is the Cauchy distribution: p = 1 - 2 atan(|t|) / pi, so t = 1 gives 1/2
    assert seeds.t_pvalue(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    assert seeds.t_pvalue(3.0, 1) == pytest.approx(1 - 2 * math.atan(3) / math.pi, abs=1e-12)
    # df = 2: p = 1 - |t| / sqrt(2 + t^2)
    assert seeds.t_pvalue(1.5, 2) == pytest.approx(1 - 1.5 / math.sqrt(4.25), abs=1e-12)
    assert seeds.t_pvalue(0.0, 7) == 1.0 and seeds.t_pvalue(math.inf, 3) == 0.0
    # I_x(a, 1) = x^a and I_x(1, b) = 1 - (1 - x)^b
    assert seeds.betainc(2.5, 1, 0.3) == pytest.approx(0.3 ** 2.5, abs=1e-12)
    assert seeds.betainc(1, 3.5, 0.8) == pytest.approx(1 - 0.2 ** 3.5, abs=1e-12)


def test_holm_adjustment_by_hand():
    """Holm (1979) on p = (0.01, 0.04, 0.03, 0.005): sorted 0.005, 0.01, 0.03, 0.04 times 4, 3,
    2, 1 = 0.02, 0.03, 0.06, 0.04 -> non-decreasing 0.02, 0.03, 0.06, 0.06, back in the input
    order; None (no test) is kept and not counted. Catches a Bonferroni factor k for all, a
    missing monotone step or the adjusted values returned in sorted order."""
    adj = seeds.holm([0.01, 0.04, None, 0.03, 0.005])
    assert adj[2] is None
    assert [round(a, 10) for a in adj[:2] + adj[3:]] == [0.03, 0.06, 0.06, 0.02]
    assert seeds.holm([0.6, 0.5]) == [1.0, 1.0]                  # capped at 1

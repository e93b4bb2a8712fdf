"""mrseg_cohort.agreement.statistics against independent computations: ICC(A,1)/ICC(C,1) and their CIs
against pingouin.intraclass_corr, Bland-Altman bias and limits with their CIs against a case computed
by hand from Bland & Altman (1999), Lin's CCC against its formula, Deming regression against a
closed-form hand case and against orthogonal regression by principal components, r and rho against
numpy; degenerate data (n = 0..3, ties, constant columns) give NaN with a reason, never inf or an
exception."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from mrseg_cohort.agreement.statistics import (KEYS, agreement_statistics, bland_altman, concordance, icc,
                                               outside_limits, regression_lines)

RNG = np.random.default_rng(24)
T_4_975 = 2.776445105  # Student's t, 4 degrees of freedom, 0.975 quantile (statistical tables)


def _strict(function, *args, **kwargs):
    """Call under numpy errors and warnings raised as exceptions: no division by zero, no inf."""
    with np.errstate(all="raise"), warnings.catch_warnings():
        warnings.simplefilter("error")
        out = function(*args, **kwargs)
    assert not any(isinstance(v, float) and math.isinf(v) for v in out.values()), out
    return out


# -- ICC against pingouin ---------------------------------------------------------------------------------
def _datasets() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    truth = RNG.normal(1500, 300, 40)
    tied = np.round(RNG.normal(5, 1.2, 25))
    return {
        "noise and bias": (truth + RNG.normal(0, 60, 40), truth + 80 + RNG.normal(0, 60, 40)),
        "scaled": (truth, 0.9 * truth + RNG.normal(0, 30, 40)),
        "ties": (tied, np.clip(tied + np.round(RNG.normal(0, 0.7, 25)), 0, None)),
        "n = 3": (np.array([1.0, 2.0, 3.0]), np.array([1.5, 2.1, 3.9])),
        "n = 3 with ties": (np.array([2.0, 2.0, 5.0]), np.array([2.0, 3.0, 5.0])),
        "our column constant": (np.full(6, 5.0), np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])),
        "no agreement": (np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 3.0, 2.0, 1.0])),
    }


@pytest.fixture
def pingouin():
    pg = pytest.importorskip("pingouin", reason="pingouin is not installed (pip install pingouin)")
    rounding = pg.options.get("round.column.CI95")
    pg.options["round.column.CI95"] = None  # pingouin rounds CIs to 2 decimals unless told
    yield pg
    pg.options["round.column.CI95"] = rounding


def _pingouin_icc(pg, x: np.ndarray, y: np.ndarray) -> dict:
    n = x.size
    long = pd.DataFrame({"participant": np.r_[np.arange(n), np.arange(n)], "method": ["ours"] * n + ["ref"] * n,
                         "value": np.r_[x, y]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            table = pg.intraclass_corr(long, "participant", "method", "value").set_index("Type")
    return {"A": (table.at["ICC(A,1)", "ICC"], *table.at["ICC(A,1)", "CI95"]),
            "C": (table.at["ICC(C,1)", "ICC"], *table.at["ICC(C,1)", "CI95"])}


@pytest.mark.parametrize("name", list(_datasets()))
def test_icc_and_cis_equal_pingouin(pingouin, name):
    x, y = _datasets()[name]
    ours = _strict(icc, x, y)
    theirs = _pingouin_icc(pingouin, x, y)
    for kind, key in (("A", "icc_a1"), ("C", "icc_c1")):
        expected = theirs[kind]
        found = (ours[key], ours[f"{key}_ci_lower"], ours[f"{key}_ci_upper"])
        assert found == pytest.approx(expected, rel=1e-9, abs=1e-12, nan_ok=True), (name, kind)
    if any(math.isnan(ours[k]) for k in ours if k != "note"):
        assert ours["note"], name  # a NaN always comes with its reason
    else:
        assert ours["note"] == ""


def test_icc_of_two_equal_columns_is_one_with_ci_one(pingouin):
    x = RNG.normal(10, 2, 12)
    ours = _strict(icc, x, x.copy())
    assert (ours["icc_a1"], ours["icc_a1_ci_lower"], ours["icc_a1_ci_upper"]) == (1.0, 1.0, 1.0)
    assert (ours["icc_c1"], ours["icc_c1_ci_lower"], ours["icc_c1_ci_upper"]) == (1.0, 1.0, 1.0)
    theirs = _pingouin_icc(pingouin, x, x.copy())
    assert theirs["A"][0] == pytest.approx(1.0) and theirs["C"][0] == pytest.approx(1.0)


def test_icc_with_a_constant_offset_has_no_agreement_ci(pingouin):
    """Differences all equal (no residual variance): ICC(C,1) = 1 exactly; ICC(A,1) < 1 as pingouin has
    it, but its CI is undefined (F = MSC / 0): NaN with a reason."""
    x = np.array([1.0, 2.0, 4.0, 7.0, 11.0])
    ours = _strict(icc, x, x + 3.0)
    assert ours["icc_c1"] == 1.0 and ours["icc_c1_ci_lower"] == 1.0
    assert ours["icc_a1"] == pytest.approx(_pingouin_icc(pingouin, x, x + 3.0)["A"][0], rel=1e-9)
    assert math.isnan(ours["icc_a1_ci_lower"]) and "no CI" in ours["note"]


@pytest.mark.parametrize("x, y", [(np.full(5, 4.0), np.full(5, 4.0)), (np.full(5, 4.0), np.full(5, 7.0))],
                         ids=["both columns the same constant", "two different constants"])
def test_constant_columns_give_nan_with_a_reason(pingouin, x, y):
    ours = _strict(icc, x, y)
    assert math.isnan(ours["icc_c1"]) and "same pair of values" in ours["note"]
    theirs = _pingouin_icc(pingouin, x, y)
    assert math.isnan(theirs["C"][0])  # pingouin agrees there is no ICC(C,1)
    if x[0] == y[0]:
        assert math.isnan(ours["icc_a1"]) and math.isnan(theirs["A"][0])
    else:  # the methods differ, participants do not: no absolute agreement at all, as pingouin says
        assert ours["icc_a1"] == 0.0 == theirs["A"][0] and math.isnan(ours["icc_a1_ci_lower"])
    every = _strict(agreement_statistics, x, y)
    assert all(math.isnan(every[k]) for k in ("pearson_r", "spearman_rho", "ols_slope", "deming_slope"))
    assert "do not vary" in every["note"]
    assert every["bias"] == pytest.approx(x[0] - y[0]) and every["sd_diff"] == 0.0


@pytest.mark.parametrize("n", [0, 1, 2, 3])
def test_few_pairs_never_raise(n):
    x, y = RNG.normal(0, 1, n), RNG.normal(0, 1, n)
    out = _strict(agreement_statistics, x, y)
    assert set(KEYS) | {"note"} == set(out)
    assert out["n"] == n
    if n < 3:
        assert math.isnan(out["pearson_r"]) and ">= 3 pairs" in out["note"]
    if n < 2:
        assert math.isnan(out["bias"]) and math.isnan(out["icc_a1"]) and ">= 2 pairs" in out["note"]
    else:
        assert math.isfinite(out["bias"]) and math.isfinite(out["icc_c1"])


# -- Bland-Altman against a hand computation ----------------------------------------------------------------
def test_bland_altman_hand_computed():
    """d = ours - reference = 1, 0, 1, 3, 1: mean 1.2, SD sqrt(4.8 / 4) = sqrt(1.2) (Bland & Altman 1999:
    bias CI bias ± t(4) s / sqrt(n); limits bias ± 1.96 s with CI ± t(4) s sqrt(1/n + 1.96^2 / (2 (n - 1))))."""
    ours = np.array([10.0, 12.0, 11.0, 15.0, 13.0])
    reference = np.array([9.0, 12.0, 10.0, 12.0, 12.0])
    out = _strict(bland_altman, ours, reference)
    s = math.sqrt(1.2)
    half_bias = T_4_975 * s / math.sqrt(5)
    half_limit = T_4_975 * s * math.sqrt(1 / 5 + 1.96 ** 2 / 8)
    expected = {"n": 5, "mean_ours": 12.2, "mean_reference": 11.0, "bias": 1.2, "sd_diff": s,
                "bias_ci_lower": 1.2 - half_bias, "bias_ci_upper": 1.2 + half_bias,
                "loa_lower": 1.2 - 1.96 * s, "loa_upper": 1.2 + 1.96 * s,
                "loa_lower_ci_lower": 1.2 - 1.96 * s - half_limit, "loa_lower_ci_upper": 1.2 - 1.96 * s + half_limit,
                "loa_upper_ci_lower": 1.2 + 1.96 * s - half_limit, "loa_upper_ci_upper": 1.2 + 1.96 * s + half_limit}
    for key, value in expected.items():
        assert out[key] == pytest.approx(value, rel=1e-8), key
    assert (out["loa_lower"], out["loa_upper"]) == pytest.approx((-0.94707, 3.34707), abs=1e-5)
    # proportional bias: least squares of d on the means 9.5, 12, 10.5, 13.5, 12.5, by the normal equations
    m = (ours + reference) / 2
    d = ours - reference
    sxx = np.sum((m - m.mean()) ** 2)
    slope = np.sum((m - m.mean()) * (d - d.mean())) / sxx
    residual = d - d.mean() - slope * (m - m.mean())
    t = slope / math.sqrt(np.sum(residual ** 2) / 3 / sxx)
    assert out["prop_bias_slope"] == pytest.approx(slope, rel=1e-10)
    assert out["prop_bias_intercept"] == pytest.approx(d.mean() - slope * m.mean(), rel=1e-10)
    from scipy import stats

    assert out["prop_bias_p"] == pytest.approx(2 * stats.t.sf(abs(t), 3), rel=1e-8)


# -- CCC, correlations, regression lines ----------------------------------------------------------------------
def test_ccc_against_lins_formula():
    x = RNG.normal(50, 10, 30)
    y = 0.8 * x + 12 + RNG.normal(0, 4, 30)
    n = x.size
    mean_x, mean_y = sum(x) / n, sum(y) / n
    sxx = sum((a - mean_x) ** 2 for a in x) / n
    syy = sum((b - mean_y) ** 2 for b in y) / n
    sxy = sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y)) / n
    expected = 2 * sxy / (sxx + syy + (mean_x - mean_y) ** 2)
    out = _strict(concordance, x, y)
    assert out["ccc"] == pytest.approx(expected, rel=1e-12)
    r = np.corrcoef(x, y)[0, 1]
    assert out["pearson_r"] == pytest.approx(r, rel=1e-12)
    assert out["ccc"] < r  # Lin: CCC = r x (bias correction factor <= 1)
    from scipy.stats import rankdata

    assert out["spearman_rho"] == pytest.approx(np.corrcoef(rankdata(x), rankdata(y))[0, 1], rel=1e-12)
    assert _strict(concordance, x, x.copy())["ccc"] == pytest.approx(1.0)


def test_deming_hand_computed():
    """reference x = 1, 2, 3, ours y = 2, 4, 7: s_xx = 1, s_yy = 19/3, s_xy = 5/2; error ratio 1:
    slope = (16/3 + sqrt((16/3)^2 + 25)) / 5 = (16 + sqrt(481)) / 15, intercept 13/3 - 2 slope."""
    out = _strict(regression_lines, np.array([2.0, 4.0, 7.0]), np.array([1.0, 2.0, 3.0]))
    slope = (16 + math.sqrt(481)) / 15
    assert out["deming_slope"] == pytest.approx(slope, rel=1e-12)
    assert out["deming_intercept"] == pytest.approx(13 / 3 - 2 * slope, rel=1e-12)
    assert out["ols_slope"] == pytest.approx(2.5) and out["ols_intercept"] == pytest.approx(13 / 3 - 5)


@pytest.mark.parametrize("error_ratio", [1.0, 4.0, 0.25])
def test_deming_is_orthogonal_regression_after_scaling(error_ratio):
    """With error ratio l = var(error of ours) / var(error of the reference), Deming regression is the
    orthogonal (first principal component) line of (sqrt(l) x, y), its slope divided back by sqrt(l)."""
    x = RNG.normal(100, 20, 50)
    y = 1.3 * x - 10 + RNG.normal(0, 8, 50)
    out = _strict(regression_lines, y, x, error_ratio)
    scaled = np.column_stack([math.sqrt(error_ratio) * x, y])
    _, vectors = np.linalg.eigh(np.cov(scaled.T))
    principal = vectors[:, -1]
    slope = principal[1] / principal[0] * math.sqrt(error_ratio)
    assert out["deming_slope"] == pytest.approx(slope, rel=1e-9)
    assert out["deming_intercept"] == pytest.approx(y.mean() - slope * x.mean(), rel=1e-9)
    assert out["ols_slope"] == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-10)


def test_outside_limits_ignores_conversion_rounding():
    litres = np.array([1.234567, 2.345678, 3.456789])
    ours = litres * 1000
    reference = np.array([v / 1000 * 1000 for v in ours])  # rounding noise of a litre -> mL round trip
    stats = bland_altman(ours, reference)
    assert not outside_limits(ours, reference, stats["loa_lower"], stats["loa_upper"]).any()
    assert list(outside_limits(np.array([1.0, 5.0]), np.array([1.0, 1.0]), -1.0, 1.0)) == [False, True]
    assert not outside_limits(np.array([1.0]), np.array([9.0]), math.nan, math.nan).any()

"""Agreement between two measurements of the same quantity on the same participants.

Pure: two paired 1-D float arrays in (``ours`` and ``reference``, the same length, finite, in the same
unit), flat records out (dicts of floats with a ``note`` saying why a value is NaN). Conventions:

- difference ``d = ours - reference`` (positive: ours larger); mean ``m = (ours + reference) / 2``;
- Bland-Altman (Bland & Altman 1999, Stat Methods Med Res 8:135-160): bias = mean(d) with its 95 % CI
  ``bias ± t(n-1) * s / sqrt(n)``, s = SD of d (n - 1 denominator); 95 % limits of agreement
  ``bias ± 1.96 s``, each with their approximate CI ``limit ± t(n-1) * s * sqrt(1/n + 1.96^2 / (2 (n-1)))``
  (the variance of ``mean(d) ± 1.96 s`` for normal differences); proportional bias: the least-squares
  slope of d on m, with its two-sided p (t-test);
- ICC (McGraw & Wong 1996, Psychol Methods 1:30-46) from the two-way ANOVA of the n x 2 table:
  ICC(A,1) (two-way, absolute agreement, single measurement) and ICC(C,1) (consistency), with their
  F-based 95 % CIs (ICC(A,1): with their approximate, Satterthwaite-type degrees of freedom);
- Lin's concordance correlation coefficient (Lin 1989, Biometrics 45:255-268) with moments over n:
  ``2 s_xy / (s_x^2 + s_y^2 + (mean_x - mean_y)^2)``;
- Pearson's r and Spearman's rho with two-sided p (scipy);
- regression lines of ours (y) on the reference (x): ordinary least squares, and Deming regression with
  ``error_ratio`` = var(error of ours) / var(error of the reference) (1: orthogonal regression),
  ``slope = (s_yy - l s_xx + sqrt((s_yy - l s_xx)^2 + 4 l s_xy^2)) / (2 s_xy)``, intercept through the means.

Undefined values (too few pairs, no variance) are NaN with the reason in ``note``; nothing here
returns an infinity or raises on such data.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LOA_Z = 1.96
"""Multiple of the SD of the differences in the 95 % limits of agreement, as Bland and Altman use it."""
CONFIDENCE = 0.95
NAN = math.nan

BLAND_ALTMAN_KEYS = ("n", "mean_ours", "mean_reference", "bias", "bias_ci_lower", "bias_ci_upper", "sd_diff",
                     "loa_lower", "loa_lower_ci_lower", "loa_lower_ci_upper", "loa_upper", "loa_upper_ci_lower",
                     "loa_upper_ci_upper", "prop_bias_slope", "prop_bias_intercept", "prop_bias_p")
ICC_KEYS = ("icc_a1", "icc_a1_ci_lower", "icc_a1_ci_upper", "icc_c1", "icc_c1_ci_lower", "icc_c1_ci_upper")
CORRELATION_KEYS = ("ccc", "pearson_r", "pearson_p", "spearman_rho", "spearman_p")
REGRESSION_KEYS = ("ols_slope", "ols_intercept", "deming_slope", "deming_intercept")
KEYS = BLAND_ALTMAN_KEYS + ICC_KEYS + CORRELATION_KEYS + REGRESSION_KEYS
"""Every statistic of :func:`agreement_statistics`, in column order (then ``note``)."""


def _pair(ours: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(ours, dtype=np.float64).ravel()
    y = np.asarray(reference, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"ours and reference must have the same length, not {x.size} and {y.size}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("ours and reference must be finite (leave unpaired and missing values out first)")
    return x, y


def _record(keys: tuple[str, ...], notes: list[str], **values: float) -> dict:
    out = {k: float(values.get(k, NAN)) for k in keys}
    out["note"] = "; ".join(notes)
    return out


def bland_altman(ours: np.ndarray, reference: np.ndarray, z: float = LOA_Z, confidence: float = CONFIDENCE) -> dict:
    """Bias, limits of agreement with their CIs, and proportional bias (module docstring).

    Returns:
        :data:`BLAND_ALTMAN_KEYS` (``n`` as a float) and ``note``. Fewer than 2 pairs: NaN but n and the
        means; proportional bias needs 3 pairs whose means vary, and differences that vary.
    """
    x, y = _pair(ours, reference)
    n = x.size
    notes: list[str] = []
    values: dict[str, float] = {"n": n}
    if n:
        values.update(mean_ours=x.mean(), mean_reference=y.mean())
    if n < 2:
        notes.append(f"Bland-Altman needs >= 2 pairs ({n})")
        return _record(BLAND_ALTMAN_KEYS, notes, **values)
    d, m = x - y, (x + y) / 2
    bias, sd = d.mean(), d.std(ddof=1)
    t = stats.t.ppf(0.5 + confidence / 2, n - 1)
    half_bias = t * sd / math.sqrt(n)
    half_limit = t * sd * math.sqrt(1 / n + z * z / (2 * (n - 1)))
    lower, upper = bias - z * sd, bias + z * sd
    values.update(bias=bias, bias_ci_lower=bias - half_bias, bias_ci_upper=bias + half_bias, sd_diff=sd,
                  loa_lower=lower, loa_lower_ci_lower=lower - half_limit, loa_lower_ci_upper=lower + half_limit,
                  loa_upper=upper, loa_upper_ci_lower=upper - half_limit, loa_upper_ci_upper=upper + half_limit)
    if n < 3:
        notes.append(f"proportional bias needs >= 3 pairs ({n})")
    elif np.ptp(m) == 0:
        notes.append("proportional bias: the means do not vary")
    elif np.ptp(d) == 0:
        values.update(prop_bias_slope=0.0, prop_bias_intercept=bias)
        notes.append("proportional bias: the differences do not vary (no p)")
    else:
        fit = stats.linregress(m, d)
        values.update(prop_bias_slope=fit.slope, prop_bias_intercept=fit.intercept, prop_bias_p=fit.pvalue)
    return _record(BLAND_ALTMAN_KEYS, notes, **values)


def icc(ours: np.ndarray, reference: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """ICC(A,1) and ICC(C,1) with their CIs (McGraw & Wong 1996; module docstring).

    Mean squares of the n x k (k = 2) table: MSR (participants), MSC (the two methods), MSE (residual).
    ICC(C,1) = (MSR - MSE) / (MSR + (k-1) MSE); ICC(A,1) = (MSR - MSE) / (MSR + (k-1) MSE + k (MSC - MSE) / n).

    Returns:
        :data:`ICC_KEYS` and ``note``. NaN with a reason: fewer than 2 pairs, or no variance at all
        (every value equal) or none between participants when the methods agree exactly. When the
        residual variance is 0 (differences constant) the ICCs are exact and ICC(C,1) = 1 with CI [1, 1];
        ICC(A,1) then has CI [1, 1] when the methods also agree in the mean, else no CI.
        The ICCs are NaN (with the reason) where their denominator is 0.
    """
    x, y = _pair(ours, reference)
    n, k = x.size, 2
    notes: list[str] = []
    if n < 2:
        notes.append(f"ICC needs >= 2 pairs ({n})")
        return _record(ICC_KEYS, notes)
    table = np.column_stack([x, y])
    grand = table.mean()
    rows, cols = table.mean(axis=1), table.mean(axis=0)
    msr = k * np.sum((rows - grand) ** 2) / (n - 1)
    msc = n * np.sum((cols - grand) ** 2) / (k - 1)
    residual = table - rows[:, None] - cols[None, :] + grand
    df_e = (n - 1) * (k - 1)
    mse = np.sum(residual ** 2) / df_e
    scale = max(float(np.abs(table).max()), 1.0)
    if mse <= (1e-14 * scale) ** 2:  # rounding of exactly constant differences
        mse = 0.0
    values: dict[str, float] = {}
    denominator_c = msr + (k - 1) * mse
    denominator_a = denominator_c + k * (msc - mse) / n
    if denominator_c <= 0:
        notes.append("ICC(C,1): every participant has the same pair of values (no variance between "
                     "participants, none left over)")
    if denominator_a <= 0:
        notes.append("ICC(A,1): no variance between participants or between the methods (0 / 0)")
    alpha = 1 - confidence
    if denominator_c > 0:
        values["icc_c1"] = (msr - mse) / denominator_c
        if mse == 0:
            values.update(icc_c1_ci_lower=1.0, icc_c1_ci_upper=1.0)
        else:
            f_obs = msr / mse
            f_lower = f_obs / stats.f.ppf(1 - alpha / 2, n - 1, df_e)
            f_upper = f_obs * stats.f.ppf(1 - alpha / 2, df_e, n - 1)
            values.update(icc_c1_ci_lower=(f_lower - 1) / (f_lower + k - 1),
                          icc_c1_ci_upper=(f_upper - 1) / (f_upper + k - 1))
    if denominator_a > 0:
        a = (msr - mse) / denominator_a
        values["icc_a1"] = a
        if mse == 0 and msc == 0:
            values.update(icc_a1_ci_lower=1.0, icc_a1_ci_upper=1.0)
        elif mse == 0:
            notes.append("ICC(A,1): no CI when the differences are constant (no residual variance)")
        else:
            f_j = msc / mse
            v_num = df_e * (k * a * f_j + n * (1 + (k - 1) * a) - k * a) ** 2
            v_den = (n - 1) * k ** 2 * a ** 2 * f_j ** 2 + (n * (1 + (k - 1) * a) - k * a) ** 2
            if v_den > 0:
                v = v_num / v_den
                f_star = stats.f.ppf(1 - alpha / 2, n - 1, v)
                f_star_u = stats.f.ppf(1 - alpha / 2, v, n - 1)
                values["icc_a1_ci_lower"] = n * (msr - f_star * mse) / (
                    f_star * (k * msc + (k * n - k - n) * mse) + n * msr)
                values["icc_a1_ci_upper"] = n * (f_star_u * msr - mse) / (
                    k * msc + (k * n - k - n) * mse + n * f_star_u * msr)
            else:  # Satterthwaite's degrees of freedom are 0 / 0 (no variance between participants or methods)
                notes.append("ICC(A,1): no CI (its approximate degrees of freedom are 0 / 0)")
    return _record(ICC_KEYS, notes, **values)


def concordance(ours: np.ndarray, reference: np.ndarray) -> dict:
    """Lin's CCC, Pearson's r and Spearman's rho with two-sided p (module docstring).

    Returns:
        :data:`CORRELATION_KEYS` and ``note``. r and rho need >= 3 pairs and both sides varying; the CCC
        needs >= 2 pairs and some variance (NaN when every value is the same).
    """
    x, y = _pair(ours, reference)
    n = x.size
    notes: list[str] = []
    values: dict[str, float] = {}
    if n < 2:
        notes.append(f"CCC needs >= 2 pairs ({n})")
    else:
        sxy = np.mean((x - x.mean()) * (y - y.mean()))
        denominator = x.var() + y.var() + (x.mean() - y.mean()) ** 2
        if denominator > 0:
            values["ccc"] = 2 * sxy / denominator
        else:
            notes.append("CCC: every value is the same")
    if n < 3:
        notes.append(f"r and rho need >= 3 pairs ({n})")
    elif np.ptp(x) == 0 or np.ptp(y) == 0:
        notes.append("r and rho: " + ("our values" if np.ptp(x) == 0 else "the reference values") + " do not vary")
    else:
        pearson = stats.pearsonr(x, y)
        spearman = stats.spearmanr(x, y)
        values.update(pearson_r=pearson.statistic, pearson_p=pearson.pvalue,
                      spearman_rho=spearman.statistic, spearman_p=spearman.pvalue)
    return _record(CORRELATION_KEYS, notes, **values)


def regression_lines(ours: np.ndarray, reference: np.ndarray, error_ratio: float = 1.0) -> dict:
    """Ordinary least-squares and Deming lines of ours (y) on the reference (x) (module docstring).

    Returns:
        :data:`REGRESSION_KEYS` and ``note``. Both need >= 2 pairs and reference values that vary;
        Deming also needs a non-zero covariance.
    """
    if not error_ratio > 0:
        raise ValueError(f"error_ratio must be > 0, not {error_ratio}")
    y, x = _pair(ours, reference)
    n = x.size
    notes: list[str] = []
    values: dict[str, float] = {}
    if n < 2:
        notes.append(f"regression lines need >= 2 pairs ({n})")
        return _record(REGRESSION_KEYS, notes)
    sxx = np.sum((x - x.mean()) ** 2) / (n - 1)
    syy = np.sum((y - y.mean()) ** 2) / (n - 1)
    sxy = np.sum((x - x.mean()) * (y - y.mean())) / (n - 1)
    if sxx == 0:
        notes.append("regression lines: the reference values do not vary")
        return _record(REGRESSION_KEYS, notes)
    ols = sxy / sxx
    values.update(ols_slope=ols, ols_intercept=y.mean() - ols * x.mean())
    if sxy == 0:
        notes.append("Deming regression: ours and the reference do not covary")
    else:
        lam = error_ratio
        spread = syy - lam * sxx
        deming = (spread + math.sqrt(spread ** 2 + 4 * lam * sxy ** 2)) / (2 * sxy)
        values.update(deming_slope=deming, deming_intercept=y.mean() - deming * x.mean())
    return _record(REGRESSION_KEYS, notes, **values)


def agreement_statistics(ours: np.ndarray, reference: np.ndarray, error_ratio: float = 1.0) -> dict:
    """Every statistic of this module for one set of pairs: :data:`KEYS` and ``note`` (the reasons for
    NaN values, joined)."""
    parts = [bland_altman(ours, reference), icc(ours, reference), concordance(ours, reference),
             regression_lines(ours, reference, error_ratio)]
    out: dict = {}
    notes: list[str] = []
    for part in parts:
        note = part.pop("note")
        if note:
            notes.append(note)
        out.update(part)
    out["n"] = int(out["n"])
    out["note"] = "; ".join(notes)
    return out


ROUNDING = 1e-9
"""Differences within this fraction of the largest |value| of a limit count as on it (unit conversions
such as litres to millilitres leave rounding noise that must not make outliers of equal values)."""


def outside_limits(ours: np.ndarray, reference: np.ndarray, lower: float, upper: float) -> np.ndarray:
    """Bool per pair: its difference ``ours - reference`` lies outside ``[lower, upper]`` by more than
    :data:`ROUNDING` (False when the limits are NaN)."""
    x, y = np.asarray(ours, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    d = x - y
    if not (math.isfinite(lower) and math.isfinite(upper)) or d.size == 0:
        return np.zeros(d.shape, dtype=bool)
    tolerance = ROUNDING * max(float(np.abs(x).max()), float(np.abs(y).max()))
    return (d < lower - tolerance) | (d > upper + tolerance)

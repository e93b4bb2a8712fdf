"""Segmentation accuracy by sex and age, as the MRSegmentator paper analyses it (``evaluate --covariates``).

Per structure and metric (Dice, HD95), over the evaluated pairs whose participant has the covariate:

- mean by sex and an independent two-sided t-test of female against male values
  (``scipy.stats.ttest_ind(female, male)``: t > 0 when females score higher). Student's t-test
  (equal variances) by default, as ``ttest_ind`` does unless told otherwise; the paper reports
  "independent two-sided t-tests" computed with SciPy and names no variance correction, so the
  default reproduces it. ``welch=True`` gives Welch's test, safer when the two groups' spreads or sizes
  differ a lot;
- Pearson's r and its two-sided p against age (``scipy.stats.pearsonr``), over the pairs with an age
  (either sex or none).

Values: Dice where the reference holds the structure (NaN left out); HD95 where finite (the inf of
a structure missed or invented is left out, as in the summary tables). ``structure == "all"``: each
pair's mean over its structures (the same values left out), as the tables' ``all structures`` row.
Too few pairs give NaN with the reason in ``note``: fewer than 2 per sex for the t-test, fewer than 3
with an age for r, or values (or ages) that do not vary.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats

from mrseg_cohort.evaluation import markdown
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import write_table

COLUMNS = ["structure", "metric", "n_female", "n_male", "mean_female", "mean_male", "t", "p_t", "r_age", "p_age"]
"""Columns of demographics.parquet."""
METRICS = ("dice", "hd95_mm")
ALL = "all"
MIN_PER_SEX = 2
MIN_WITH_AGE = 3


def demographics(per_class: pd.DataFrame, subjects: pd.DataFrame, welch: bool = False) -> pd.DataFrame:
    """The demographic analysis of the module docstring.

    Args:
        per_class: ``per_class`` rows of ``evaluate`` (pair_id, structure_id, structure, dice, hd95_mm).
        subjects: one row per pair_id with ``sex`` ("female", "male" or None) and ``age_years`` (NaN
            when unknown).
        welch: Welch's t-test instead of Student's.

    Returns:
        :data:`COLUMNS` plus ``n_age`` (pairs in the correlation) and ``note`` (why a value is NaN),
        one row per structure (label order, then ``all``) x metric.
    """
    subject = subjects.set_index("pair_id")
    rows = []
    for metric in METRICS:
        values = per_class[["pair_id", "structure_id", "structure", metric]].copy()
        values[metric] = values[metric].where(np.isfinite(values[metric].astype(float)))
        values = values.dropna(subset=[metric])
        order = values.drop_duplicates("structure").sort_values("structure_id", kind="stable")["structure"]
        groups = [(name, values[values["structure"] == name].set_index("pair_id")[metric]) for name in order]
        groups.append((ALL, values.groupby("pair_id")[metric].mean()))
        for name, series in groups:
            sex = subject["sex"].reindex(series.index)
            age = subject["age_years"].reindex(series.index).to_numpy(dtype=float)
            rows.append({"structure": name, "metric": metric,
                         **compare(series.to_numpy(dtype=float), sex.to_numpy(dtype=object), age, welch)})
    return pd.DataFrame(rows, columns=COLUMNS + ["n_age", "note"])


def compare(values: np.ndarray, sex: np.ndarray, age: np.ndarray, welch: bool = False) -> dict:
    """Sex means, t-test and age correlation of one set of per-pair values (module docstring)."""
    female = values[sex == "female"]
    male = values[sex == "male"]
    notes = []
    t = p_t = r = p_r = math.nan
    if min(female.size, male.size) < MIN_PER_SEX:
        notes.append(f"t-test needs >= {MIN_PER_SEX} pairs per sex (female {female.size}, male {male.size})")
    elif np.ptp(female) == 0 and np.ptp(male) == 0:
        notes.append("t-test: values do not vary within either sex")
    else:
        result = stats.ttest_ind(female, male, equal_var=not welch)
        t, p_t = float(result.statistic), float(result.pvalue)
    with_age = np.isfinite(age)
    n_age = int(with_age.sum())
    if n_age < MIN_WITH_AGE:
        notes.append(f"Pearson r needs >= {MIN_WITH_AGE} pairs with an age ({n_age})")
    elif np.ptp(age[with_age]) == 0 or np.ptp(values[with_age]) == 0:
        notes.append("Pearson r: " + ("ages" if np.ptp(age[with_age]) == 0 else "values") + " do not vary")
    else:
        result = stats.pearsonr(age[with_age], values[with_age])
        r, p_r = float(result.statistic), float(result.pvalue)
    return {"n_female": int(female.size), "n_male": int(male.size),
            "mean_female": float(female.mean()) if female.size else math.nan,
            "mean_male": float(male.mean()) if male.size else math.nan,
            "t": t, "p_t": p_t, "r_age": r, "p_age": p_r, "n_age": n_age, "note": "; ".join(notes)}


def markdown_table(table: pd.DataFrame, welch: bool = False) -> str:
    """``table`` as Markdown: numbers rounded for reading, the reasons for NaN in the last column."""
    def num(value: float, digits: int) -> str:
        return "-" if not math.isfinite(value) else f"{value:.{digits}f}"

    def p(value: float) -> str:
        return "-" if not math.isfinite(value) else (f"{value:.3f}" if value >= 0.001 else f"{value:.1e}")

    cells = pd.DataFrame({
        "structure": table["structure"], "metric": table["metric"],
        "n (F/M)": [f"{f}/{m}" for f, m in zip(table["n_female"], table["n_male"])],
        "mean female": [num(v, 3 if k == "dice" else 2) for v, k in zip(table["mean_female"], table["metric"])],
        "mean male": [num(v, 3 if k == "dice" else 2) for v, k in zip(table["mean_male"], table["metric"])],
        "t": [num(v, 2) for v in table["t"]], "p (t)": [p(v) for v in table["p_t"]],
        "n (age)": table["n_age"].astype(str), "r (age)": [num(v, 3) for v in table["r_age"]],
        "p (r)": [p(v) for v in table["p_age"]], "note": table["note"]})
    test = "Welch's" if welch else "Student's"
    return (f"Sex: independent two-sided {test} t-test, female vs male (t > 0: higher in females). Age: Pearson r, "
            "two-sided p. HD95 in mm, finite values only.\n\n" + markdown(cells))


def write_demographics(store: Store, out_uri: str, table: pd.DataFrame, welch: bool = False) -> None:
    """``demographics.parquet`` (:data:`COLUMNS`) and ``demographics.md`` under ``out_uri``."""
    write_table(store, join_uri(out_uri, "demographics.parquet"), table[COLUMNS])
    store.write_bytes(join_uri(out_uri, "demographics.md"), markdown_table(table, welch).encode())

"""Covariate-aware phenotype QC: height-indexed volumes, robust z-scores within sex x age band x
visit, and outlier flags.

Pure: the phenotype table and normalised covariates in, the table with covariate columns out.

- ``<volume>_per_height_squared_m2`` = volume (mL) / height (m)^2, for every volume phenotype
  (``liver_volume_ml`` -> ``liver_volume_ml_per_height_squared_m2``, mL/m^2); NaN without a height.
  Height squared, not body surface area (which ``_per_m2`` alone would suggest to an epidemiologist).
- ``<phenotype>_z``: robust z-score (:mod:`mrseg_cohort.stats`: (x - median) / (1.4826 MAD)) among
  the rows of the same visit, sex and 10-year age band (``age_band``, e.g. "60-69") with a finite
  value. A stratum with fewer than ``min_stratum`` values is not assessed (NaN), nor are rows whose
  sex or age is unknown. Values with QC reasons are included: the median and MAD resist them.
- ``<phenotype>_outlier``: ``|z| > z_threshold`` (4 by default); False where z is NaN.
- ``n_outliers``: outlier flags of the row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mrseg_cohort.phenotypes.catalogue import PHENOTYPES
from mrseg_cohort.phenotypes.covariates import age_band, attach_covariates
from mrseg_cohort.stats import robust_z

Z_THRESHOLD = 4.0
MIN_STRATUM = 10
STRATA = ("visit", "sex", "age_band")


def per_height_squared_column(name: str) -> str:
    return f"{name}_per_height_squared_m2"


def z_column(name: str) -> str:
    return f"{name}_z"


def outlier_column(name: str) -> str:
    return f"{name}_outlier"


def with_covariates(table: pd.DataFrame, covariates: pd.DataFrame, z_threshold: float = Z_THRESHOLD,
                    min_stratum: int = MIN_STRATUM) -> pd.DataFrame:
    """``table`` (from :func:`~mrseg_cohort.phenotypes.derive.phenotype_table`) with, after the keys,
    sex, age_years, age_band, height_cm, weight_kg, and at the end the height-indexed volumes, robust
    z-scores, outlier flags and ``n_outliers`` (module docstring)."""
    keys = table[["participant_id", "visit"]]
    cov = attach_covariates(keys, covariates)
    cov.insert(2, "age_band", age_band(cov["age_years"]))
    height_m2 = (cov["height_cm"] / 100.0) ** 2
    extra = {per_height_squared_column(p.name): table[p.name] / height_m2 for p in PHENOTYPES if p.is_volume}
    strata = pd.concat([keys["visit"], cov[["sex", "age_band"]]], axis=1)
    for p in PHENOTYPES:
        z = stratified_robust_z(table[p.name], strata, min_stratum)
        extra[z_column(p.name)] = z
        extra[outlier_column(p.name)] = np.abs(z) > z_threshold
    extra_frame = pd.DataFrame(extra, index=table.index)
    extra_frame["n_outliers"] = extra_frame[[outlier_column(p.name) for p in PHENOTYPES]].sum(axis=1).astype(int)
    return pd.concat([keys, cov, table.drop(columns=["participant_id", "visit"]), extra_frame], axis=1)


def stratified_robust_z(values: pd.Series, strata: pd.DataFrame, min_stratum: int = MIN_STRATUM) -> pd.Series:
    """Robust z of ``values`` within each combination of ``strata``'s columns (rows with an unknown
    stratum, non-finite values and strata with fewer than ``min_stratum`` finite values: NaN)."""
    x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    code = strata.groupby(list(strata.columns), dropna=True, sort=False).ngroup()  # NaN: unknown stratum
    code = code.fillna(-1).to_numpy(dtype=np.int64)
    code = np.where(np.isfinite(x), code, -1)
    out = np.full(x.shape, np.nan)
    for group in np.unique(code[code >= 0]):
        rows = np.flatnonzero(code == group)
        if rows.size >= min_stratum:
            out[rows] = robust_z(x[rows])
    return pd.Series(out, index=values.index)


def outlier_rows(table: pd.DataFrame) -> pd.DataFrame:
    """One row per outlier flag of a table from :func:`with_covariates`: participant_id, visit, sex,
    age_band, phenotype, value, stratum_median, z (largest |z| first)."""
    rows = []
    for p in PHENOTYPES:
        hit = table[outlier_column(p.name)].to_numpy(dtype=bool)
        if not hit.any():
            continue
        medians = _stratum_medians(table, p.name)
        sub = table[hit]
        rows.append(pd.DataFrame({"participant_id": sub["participant_id"].to_numpy(), "visit": sub["visit"].to_numpy(),
                                  "sex": sub["sex"].to_numpy(), "age_band": sub["age_band"].to_numpy(),
                                  "phenotype": p.name, "value": sub[p.name].to_numpy(dtype=float),
                                  "stratum_median": medians[hit], "z": sub[z_column(p.name)].to_numpy(dtype=float)}))
    columns = ["participant_id", "visit", "sex", "age_band", "phenotype", "value", "stratum_median", "z"]
    if not rows:
        return pd.DataFrame(columns=columns)
    out = pd.concat(rows, ignore_index=True)
    return out.iloc[np.argsort(-np.abs(out["z"].to_numpy()), kind="stable")].reset_index(drop=True)[columns]


def outlier_counts(table: pd.DataFrame) -> pd.DataFrame:
    """Per phenotype: rows with a value, rows assessed (finite z) and outliers."""
    return pd.DataFrame([{"phenotype": p.name, "values": int(np.isfinite(table[p.name].to_numpy(dtype=float)).sum()),
                          "assessed": int(np.isfinite(table[z_column(p.name)].to_numpy(dtype=float)).sum()),
                          "outliers": int(table[outlier_column(p.name)].sum())} for p in PHENOTYPES])


def _stratum_medians(table: pd.DataFrame, name: str) -> np.ndarray:
    values = pd.to_numeric(table[name], errors="coerce")
    return values.groupby([table[c] for c in STRATA], dropna=False).transform("median").to_numpy(dtype=float)

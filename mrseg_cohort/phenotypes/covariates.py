"""Participant covariates (sex, age, height, weight) from a user's table, and joining them to rows.

Pure: a frame as read from the covariates file in, a normalised long frame out. Accepted columns
(docs/tables.md, "covariates"):

- the participant: ``eid`` (UK Biobank), ``f.eid`` or ``participant_id``; compared as text;
- plain names: ``sex`` (female/male, f/m; any case), ``age`` or ``age_years`` (years), ``height`` or
  ``height_cm`` (cm), ``height_m`` (m), ``weight`` or ``weight_kg`` (kg); with a ``visit`` column
  they hold per visit, without one they hold for every visit of the participant;
- UK Biobank fields, named ``<field>-<instance>.<array>`` (main dataset, e.g. ``21003-2.0``),
  ``f.<field>.<instance>.<array>`` (R/Stata exports) or ``p<field>_i<instance>`` (the Research
  Analysis Platform): :data:`UKB_FIELDS`. The instance is the visit (2 = first imaging visit, 3 = repeat
  imaging); Sex (field 31) holds for every visit. Where fields 50 and 12144 both give a height for a
  visit, field 50 is used and 12144 fills its gaps.

Normalised: ``participant_id`` (string), ``visit`` (string, or None for "every visit"), ``sex``
("female", "male" or None), ``age_years``, ``height_cm``, ``weight_kg`` (float, NaN when unknown).
"""

from __future__ import annotations

import math
import re
from typing import Iterable

import numpy as np
import pandas as pd

VARIABLES = ("sex", "age_years", "height_cm", "weight_kg")
SEXES = ("female", "male")

UKB_FIELDS: dict[int, tuple[str, str]] = {
    31: ("sex", "Sex (data-coding 9: 0 = Female, 1 = Male); recorded at instance 0, holds for every visit"),
    21003: ("age_years", "Age when attended assessment centre (years), per instance"),
    50: ("height_cm", "Standing height (cm), per instance"),
    12144: ("height_cm", "Height (cm) measured at the imaging visit; fills visits without field 50"),
    21002: ("weight_kg", "Weight (kg), per instance"),
}
"""UK Biobank field id -> (variable, what the field is)."""
ID_COLUMNS = ("eid", "f.eid", "participant_id")
PLAIN: dict[str, tuple[str, float]] = {
    "sex": ("sex", 1.0), "age": ("age_years", 1.0), "age_years": ("age_years", 1.0),
    "height": ("height_cm", 1.0), "height_cm": ("height_cm", 1.0), "height_m": ("height_cm", 100.0),
    "weight": ("weight_kg", 1.0), "weight_kg": ("weight_kg", 1.0),
}
"""Plain column name (lower case) -> (variable, factor to its unit)."""
_SEX_TEXT = {"female": "female", "f": "female", "male": "male", "m": "male"}
_UKB_SEX = {"0": "female", "1": "male", "female": "female", "male": "male"}
_UKB_NAME = (re.compile(r"^(\d+)-(\d+)\.(\d+)$"), re.compile(r"^f\.(\d+)\.(\d+)\.(\d+)$"),
             re.compile(r"^p(\d+)(?:_i(\d+))?(?:_a(\d+))?$"))
_HEIGHT_PRIORITY = {50: 0, 12144: 1}


class CovariateError(ValueError):
    """A covariates table that cannot be used; the message names the file and what is wrong."""


def ukb_field(column: str) -> tuple[int, str | None, int] | None:
    """(field, instance, array) of a UK Biobank column name, or None; instance None when not named."""
    for pattern in _UKB_NAME:
        found = pattern.match(column.strip())
        if found:
            field, instance, array = found.groups()
            return int(field), instance, int(array or 0)
    return None


def normalise_covariates(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """The covariates of ``frame`` (as read from file ``source``, every cell as text or numbers) in
    the normalised long form of the module docstring.

    Raises:
        CovariateError: no participant column, no covariate column, a variable given by two kinds of
            column, unknown sex codes, non-numeric values, heights that look like metres, or a
            participant (and visit) listed twice. The message names ``source``.
    """
    id_column = next((c for c in frame.columns if str(c).strip().lower() in ID_COLUMNS), None)
    if id_column is None:
        raise CovariateError(f"{source}: no participant column; expected one of {list(ID_COLUMNS)} "
                             f"(found {[str(c) for c in frame.columns][:12]})")
    ids = frame[id_column].map(_id_text)
    if ids.isna().any():
        row = int(np.flatnonzero(ids.isna())[0]) + 2
        raise CovariateError(f"{source}: column {id_column!r} is empty in row {row}")
    visit_column = next((c for c in frame.columns if str(c).strip().lower() == "visit"), None)
    plain, fields = _classify(frame.columns, source)
    if not plain and not fields:
        raise CovariateError(f"{source}: no covariate column; expected sex, age, height or weight, or UK Biobank "
                             f"fields {sorted(UKB_FIELDS)} (e.g. 31-0.0, 21003-2.0)")
    clash = set(plain) & {variable for variable, _, _, _ in fields}
    if clash:
        raise CovariateError(f"{source}: {sorted(clash)} given both by plain columns and by UK Biobank fields; "
                             "keep one")

    general = pd.DataFrame({"participant_id": ids, "visit": None})
    per_visit: dict[str, pd.DataFrame] = {}
    visits = frame[visit_column].map(_id_text) if visit_column is not None else None
    for variable, (column, factor) in plain.items():
        values = _values(frame[column], variable, column, source, ukb=False)
        if variable != "sex":
            values = values * factor
        if visits is None:
            general[variable] = values
            continue
        for visit in visits.dropna().unique():
            part = per_visit.setdefault(visit, pd.DataFrame({"participant_id": ids, "visit": visit}))
            part[variable] = values.where(visits == visit, None if variable == "sex" else np.nan)
    for variable, instance, column, field in sorted(fields, key=lambda f: (f[0], str(f[1]),
                                                                        _HEIGHT_PRIORITY.get(f[3], 0))):
        values = _values(frame[column], variable, column, source, ukb=True)
        if variable == "sex" or instance is None:
            target = general
        else:
            target = per_visit.setdefault(instance, pd.DataFrame({"participant_id": ids, "visit": instance}))
        if variable in target:
            target[variable] = target[variable].where(target[variable].notna(), values)  # 12144 fills gaps of 50
        else:
            target[variable] = values
    long = pd.concat([general, *per_visit.values()], ignore_index=True)
    for variable in VARIABLES:
        if variable not in long:
            long[variable] = None if variable == "sex" else np.nan
    long = long[["participant_id", "visit", *VARIABLES]]
    long["sex"] = long["sex"].astype(object).where(long["sex"].notna(), None)
    long = long[long[list(VARIABLES)].notna().any(axis=1)]
    _check(long, source)
    return long.reset_index(drop=True)


def _classify(columns: Iterable, source: str) -> tuple[dict[str, tuple[str, float]],
                                                       list[tuple[str, str | None, str, int]]]:
    """Plain columns (variable -> (column, factor)) and UK Biobank columns (variable, instance, column, field)."""
    plain: dict[str, tuple[str, float]] = {}
    fields: list[tuple[str, str | None, str, int]] = []
    for column in columns:
        name = str(column).strip()
        if name.lower() in PLAIN:
            variable, factor = PLAIN[name.lower()]
            if variable in plain:
                raise CovariateError(f"{source}: {variable} given twice (columns {plain[variable][0]!r} and {name!r})")
            plain[variable] = (column, factor)
            continue
        parsed = ukb_field(name)
        if parsed and parsed[0] in UKB_FIELDS and parsed[2] == 0:
            field, instance, _ = parsed
            fields.append((UKB_FIELDS[field][0], instance, column, field))
    return plain, fields


def _values(series: pd.Series, variable: str, column: str, source: str, ukb: bool) -> pd.Series:
    text = series.map(lambda v: None if v is None or (isinstance(v, float) and math.isnan(v))
                      else str(v).strip()).replace("", None)
    if variable == "sex":
        return _sex(text, column, source, ukb)
    numbers = pd.to_numeric(text, errors="coerce")
    bad = text.notna() & numbers.isna()
    if bad.any():
        raise CovariateError(f"{source}: column {column!r} has non-numeric value {text[bad].iloc[0]!r} "
                             f"(row {int(np.flatnonzero(bad)[0]) + 2}); {variable} must be a number")
    return numbers.astype(float)


def _sex(text: pd.Series, column: str, source: str, ukb: bool) -> pd.Series:
    codes = _UKB_SEX if ukb else _SEX_TEXT
    key = text.str.lower()
    if ukb:
        key = key.str.replace(r"\.0$", "", regex=True)
    mapped = key.map(codes)
    bad = text.notna() & mapped.isna()
    if bad.any():
        found = sorted(set(text[bad]))[:5]
        expected = ("UK Biobank data-coding 9 (0 = female, 1 = male)" if ukb
                    else "female/male or f/m (numeric codes are ambiguous: name the column 31-0.0 for UK "
                         "Biobank's 0 = female, 1 = male)")
        raise CovariateError(f"{source}: column {column!r} has unknown sex code(s) {found}; expected {expected}")
    return mapped.astype(object).where(mapped.notna(), None)


def _check(long: pd.DataFrame, source: str) -> None:
    duplicated = long.duplicated(["participant_id", "visit"], keep=False)
    if duplicated.any():
        row = long[duplicated].iloc[0]
        where = f"visit {row['visit']}" if row["visit"] is not None else "(no visit column)"
        raise CovariateError(f"{source}: participant {row['participant_id']} {where} is listed more than once")
    height = long["height_cm"].dropna()
    if len(height) and height.median() < 3:
        raise CovariateError(f"{source}: heights look like metres (median {height.median():.2f}); name the column "
                             "height_m, or give centimetres")


def _id_text(value: object) -> str | None:
    """Participant ids and visits as text; integral floats (Parquet/CSV number columns) without '.0'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None


def attach_covariates(keys: pd.DataFrame, covariates: pd.DataFrame) -> pd.DataFrame:
    """``sex``, ``age_years``, ``height_cm``, ``weight_kg`` for each row of ``keys`` (participant_id,
    visit), from normalised ``covariates``: the participant's value for that visit, else its value
    for every visit; rows whose visit is None take the value for every visit, else the participant's
    only visit-specific value (none where it has several). Index as ``keys``; NaN/None when unknown."""
    pid = keys["participant_id"].astype(str).to_numpy()
    visit = keys["visit"].to_numpy(dtype=object)
    specific = covariates[covariates["visit"].notna()]
    general = covariates[covariates["visit"].isna()].set_index("participant_id")
    exact = specific.set_index(["participant_id", "visit"]).reindex(
        pd.MultiIndex.from_arrays([pid, [v if v is not None else "\0none" for v in visit]]))
    fallback = general.reindex(pid)
    counts = specific["participant_id"].value_counts()
    only = specific[specific["participant_id"].map(counts) == 1].set_index("participant_id").reindex(pid)
    no_visit = pd.isna(pd.Series(visit)).to_numpy()
    out = pd.DataFrame(index=keys.index)
    for variable in VARIABLES:
        value = exact[variable].to_numpy(dtype=object)
        value = np.where(pd.isna(value), fallback[variable].to_numpy(dtype=object), value)
        value = np.where(pd.isna(value) & no_visit, only[variable].to_numpy(dtype=object), value)
        if variable == "sex":
            out[variable] = pd.Series(value, index=keys.index, dtype=object).where(pd.notna(value), None)
        else:
            out[variable] = pd.to_numeric(pd.Series(value, index=keys.index), errors="coerce").astype(float)
    return out


def age_band(age_years: pd.Series, width_years: int = 10) -> pd.Series:
    """Age bands ``"60-69"`` (``width_years`` wide, starting at multiples of it); None where age is unknown."""
    lower = np.floor(age_years.to_numpy(dtype=float) / width_years) * width_years
    return pd.Series([f"{int(lo)}-{int(lo) + width_years - 1}" if np.isfinite(lo) else None for lo in lower],
                     index=age_years.index, dtype=object)

"""Pair our phenotypes with a reference table and summarise their agreement, per stratum.

Pure: our phenotype table, the reference in the long shape of :mod:`~.reference` and a mapping in;
three frames out (docs/agreement.md):

- ``summary``: one row per mapped pair x stratum (``all``; each ``visit``; each ``sex`` with covariates;
  each value of every ``by`` column): counts of pairs and of exclusions by reason, and every statistic
  of :func:`~.statistics.agreement_statistics`;
- ``values``: one row per pair x participant x visit of our output: both values (the reference
  converted to our unit), difference (ours - reference), mean, status, and the strata;
- ``outside_loa``: the pairs whose difference lies outside the limits of agreement of their pair
  (stratum ``all``), largest |z| first, z = (difference - bias) / SD of the differences.

Each of our rows gets one status, the first that applies: ``missing_ours`` (our value is NaN),
``qc_ours`` (its ``<phenotype>_qc`` names a reason not in ``keep_qc``), ``missing_reference`` (no
reference row or an empty cell), ``reference_error`` (a value of the mapping's ``error_values``, a
non-empty ``error_columns`` cell, text that is not a number, or an infinite number), ``qc_reference``
(the reference's own ``<column>_qc`` is not empty: another mrseg-cohort output's QC reasons), else
``paired``. Reference values for participant x visits that are not in our output are counted
(``n_not_processed``), not compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from mrseg_cohort.agreement.mapping import AgreementMap, PairSpec, phenotype_unit
from mrseg_cohort.agreement.reference import KEYS
from mrseg_cohort.agreement.statistics import KEYS as STAT_KEYS
from mrseg_cohort.agreement.statistics import agreement_statistics, outside_limits
from mrseg_cohort.phenotypes.covariates import _id_text
from mrseg_cohort.phenotypes.derive import qc_column

STATUSES = ("paired", "missing_ours", "qc_ours", "missing_reference", "reference_error", "qc_reference")
COUNTS = [f"n_{s}" for s in STATUSES] + ["n_not_processed"]
SUMMARY_COLUMNS = (["phenotype", "reference_column", "pair", "title", "unit", "reference_unit", "stratum",
                    "stratum_value"] + COUNTS + [k for k in STAT_KEYS if k != "n"]
                   + ["n_outside_loa", "note", "differs"])
"""Columns of the summary (``n_paired`` is the statistics' n)."""
VALUE_COLUMNS = ["phenotype", "reference_column", "participant_id", "visit", "ours", "reference", "reference_raw",
                 "difference", "mean", "status", "ours_qc", "outside_loa"]
"""Columns of ``values`` (then one per stratum column: sex, the ``by`` columns)."""
OUTSIDE_COLUMNS = ["participant_id", "visit", "phenotype", "reference_column", "pair", "ours", "reference",
                   "difference", "mean", "bias", "loa_lower", "loa_upper", "z"]
ALL = "all"


class AgreementError(ValueError):
    """Inputs that cannot be compared; the message names the file and what is wrong."""


@dataclass
class AgreementTables:
    summary: pd.DataFrame
    values: pd.DataFrame
    outside_loa: pd.DataFrame
    skipped: list[str] = field(default_factory=list)
    """Optional pairs left out because the reference has no such column."""
    visit_assumed: str | None = None
    """The visit given to a reference that names none."""


def agreement_tables(ours: pd.DataFrame, reference: pd.DataFrame, mapping: AgreementMap, source: str,
                     strata: pd.DataFrame | None = None, by: tuple[str, ...] = (),
                     keep_qc: frozenset[str] | str = frozenset(), reference_visit: str | None = None,
                     error_ratio: float = 1.0) -> AgreementTables:
    """Compare ``ours`` with ``reference`` pair by pair (module docstring).

    Args:
        ours: the phenotype table (participant_id, visit, phenotypes and their ``_qc`` columns).
        reference: :func:`~.reference.normalise_reference` of the table read from ``source``.
        mapping: the pairs to compare.
        source: the reference's file (or output), named in messages.
        strata: stratum columns (e.g. ``sex``) aligned with ``ours``' rows (same index).
        by: more stratum columns, each a column of ``reference`` or of ``strata``.
        keep_qc: QC reasons that do not exclude our value ("all": none does).
        reference_visit: the visit of a reference that names none (default: the output's only visit).
        error_ratio: Deming regression's ratio of error variances (ours / reference).

    Raises:
        AgreementError: a required pair's reference column or an error column is missing, no pair's
            column is present, a ``by`` column is nowhere, the reference names no visit while the
            output has several, or no participant x visit of the output has a reference value at all.
    """
    ours = ours.reset_index(drop=True)
    strata = strata.reset_index(drop=True) if strata is not None else pd.DataFrame(index=ours.index)
    reference, visit_assumed = _with_visits(ours, reference, source, reference_visit)
    index = pd.MultiIndex.from_frame(ours[KEYS].astype(object))
    indexed = reference.set_index(KEYS)
    joined = indexed.reindex(index)
    in_output = indexed.index.isin(index)
    stratum_columns = _strata(ours, strata, joined, by, source)

    pairs, skipped = _present_pairs(mapping, reference, source)
    summaries, values, outside = [], [], []
    for pair in pairs:
        frame = _pair_values(pair, ours, joined, keep_qc)
        for name, column in stratum_columns.items():
            frame[name] = column
        counts_not_processed = _not_processed(indexed[pair.key], in_output)
        rows = _summaries(pair, frame, stratum_columns, counts_not_processed, error_ratio)
        overall = rows[0]
        frame["outside_loa"] = False
        paired = frame["status"] == "paired"
        frame.loc[paired, "outside_loa"] = outside_limits(frame.loc[paired, "ours"], frame.loc[paired, "reference"],
                                                          overall["loa_lower"], overall["loa_upper"])
        summaries += rows
        values.append(frame)
        outside.append(_outside(pair, frame, overall))
    values_frame = pd.concat(values, ignore_index=True)
    if not (values_frame["reference"].notna() | values_frame["status"].isin(["reference_error", "qc_reference"])).any():
        raise AgreementError(_no_reference_message(ours, reference, source, pairs, in_output))
    summary = pd.DataFrame(summaries, columns=SUMMARY_COLUMNS)
    for column in COUNTS + ["n_outside_loa"]:
        summary[column] = summary[column].astype("Int64")
    outside_frame = pd.concat(outside, ignore_index=True) if outside else pd.DataFrame(columns=OUTSIDE_COLUMNS)
    if len(outside_frame):
        order = np.argsort(-np.abs(outside_frame["z"].to_numpy(dtype=float)), kind="stable")
        outside_frame = outside_frame.iloc[order].reset_index(drop=True)
    columns = VALUE_COLUMNS + [name for name in stratum_columns if name not in (ALL, "visit")]
    return AgreementTables(summary, values_frame[columns], outside_frame[OUTSIDE_COLUMNS], skipped, visit_assumed)


def _with_visits(ours: pd.DataFrame, reference: pd.DataFrame, source: str,
                 reference_visit: str | None) -> tuple[pd.DataFrame, str | None]:
    """The reference with a visit on every row: its own, or the one it is told / the output's only one."""
    if reference["visit"].notna().any():
        if reference_visit is not None:
            raise AgreementError(f"{source} names its visits itself; --reference-visit is for tables without a "
                                 "visit (or instance) column")
        return reference, None
    visits = sorted(ours["visit"].dropna().astype(str).unique())
    visit = reference_visit if reference_visit is not None else (visits[0] if len(visits) == 1 else None)
    if visit is None:
        raise AgreementError(f"{source} names no visit (no visit or instance column, no UK Biobank field "
                             f"columns such as 22407-2.0) and the output has visits {visits}; give "
                             "--reference-visit")
    return reference.assign(visit=str(visit)), str(visit)


def _present_pairs(mapping: AgreementMap, reference: pd.DataFrame, source: str) -> tuple[list[PairSpec], list[str]]:
    columns = set(reference.columns)
    pairs, skipped = [], []
    for pair in mapping.pairs:
        if pair.key not in columns:
            if not pair.optional:
                raise AgreementError(f"{source}: no column for {pair.label} (mapping {mapping.name!r}, phenotype "
                                     f"{pair.phenotype}); columns found: {_listing(columns - set(KEYS))}")
            skipped.append(f"{pair.phenotype} ({pair.label})")
            continue
        absent = [c for c in pair.error_columns if c not in columns]
        if absent:
            raise AgreementError(f"{source}: no error column {absent[0]!r} named by mapping {mapping.name!r} for "
                                 f"{pair.label}; columns found: {_listing(columns - set(KEYS))}")
        pairs.append(pair)
    if not pairs:
        raise AgreementError(f"{source}: none of the columns of mapping {mapping.name!r} is there ("
                             f"{', '.join(p.label for p in mapping.pairs)}); columns found: "
                             f"{_listing(columns - set(KEYS))}")
    return pairs, skipped


def _listing(names: set) -> str:
    shown = sorted(map(str, names))
    return ", ".join(shown[:12]) + (f" and {len(shown) - 12} more" if len(shown) > 12 else "") if shown else "none"


def _strata(ours: pd.DataFrame, strata: pd.DataFrame, joined: pd.DataFrame, by: tuple[str, ...],
            source: str) -> dict[str, pd.Series]:
    """Stratum name -> values aligned with ``ours`` (None where unknown); ``all`` first."""
    out = {ALL: pd.Series(ALL, index=ours.index, dtype=object), "visit": ours["visit"].astype(object)}
    for name in strata.columns:
        out[str(name)] = strata[name].astype(object).where(strata[name].notna(), None)
    for name in by:
        if name in out and name not in (ALL, "visit"):
            continue
        if name in joined.columns:
            values = pd.Series(joined[name].to_numpy(dtype=object), index=ours.index)
        elif name in strata.columns:
            continue
        else:
            raise AgreementError(f"--by {name}: no column {name!r} in {source} or the covariates file")
        out[name] = values.map(lambda v: None if _is_empty(v) else _id_text(v))  # 11025.0 -> "11025"
    return out


def _pair_values(pair: PairSpec, ours: pd.DataFrame, joined: pd.DataFrame,
                 keep_qc: frozenset[str] | str) -> pd.DataFrame:
    """Our rows with both values, the status and the reference's raw cell, for one pair."""
    if pair.phenotype not in ours.columns:
        raise AgreementError(f"the phenotype table has no column {pair.phenotype!r}")
    raw = pd.Series(joined[pair.key].to_numpy(dtype=object), index=ours.index)
    missing_reference = raw.map(_is_empty).astype(bool)
    number = pd.to_numeric(raw.where(~missing_reference), errors="coerce").astype(float)
    error = ~missing_reference & ~np.isfinite(number)
    if pair.error_values:
        error |= number.isin(pair.error_values)
    for column in pair.error_columns:
        error |= ~pd.Series(joined[column].to_numpy(dtype=object), index=ours.index).map(_is_empty).astype(bool)
    qc_name = f"{pair.key}_qc"
    qc_reference = (~pd.Series(joined[qc_name].to_numpy(dtype=object), index=ours.index).map(_is_empty).astype(bool)
                    if qc_name in joined.columns else pd.Series(False, index=ours.index))
    ours_value = pd.to_numeric(ours[pair.phenotype], errors="coerce").astype(float)
    ours_qc = ours[qc_column(pair.phenotype)].fillna("").astype(str) if qc_column(pair.phenotype) in ours \
        else pd.Series("", index=ours.index)
    flagged = ours_qc.map(lambda text: _excluded_by_qc(text, keep_qc)).astype(bool)
    status = np.select([~np.isfinite(ours_value), flagged, missing_reference, error, qc_reference],
                       ["missing_ours", "qc_ours", "missing_reference", "reference_error", "qc_reference"], "paired")
    reference_value = (number * pair.factor).where(~missing_reference & ~error)
    both = np.isfinite(ours_value) & np.isfinite(reference_value)
    return pd.DataFrame({
        "phenotype": pair.phenotype, "reference_column": pair.key, "participant_id": ours["participant_id"],
        "visit": ours["visit"], "ours": ours_value, "reference": reference_value,
        "reference_raw": raw.map(lambda v: None if _is_empty(v) else str(v)),
        "difference": (ours_value - reference_value).where(both),
        "mean": ((ours_value + reference_value) / 2).where(both),
        "status": status, "ours_qc": ours_qc})


def _is_empty(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, (float, np.floating)) and np.isnan(value):
        return True
    if value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, str) and not value.strip()


def _excluded_by_qc(text: str, keep_qc: frozenset[str] | str) -> bool:
    reasons = [r for r in text.split(",") if r]
    if not reasons or keep_qc == "all":
        return False
    return any(r not in keep_qc for r in reasons)


def _not_processed(column: pd.Series, in_output: np.ndarray) -> pd.Series:
    """Reference values (non-empty) of participant x visits not in our output, counted per visit."""
    has_value = ~column.map(_is_empty).to_numpy(dtype=bool)
    visits = column.index.get_level_values("visit")
    return pd.Series(visits[has_value & ~in_output]).value_counts()


def _summaries(pair: PairSpec, frame: pd.DataFrame, strata: dict[str, pd.Series], not_processed: pd.Series,
               error_ratio: float) -> list[dict]:
    """One summary record per stratum value (``all`` first)."""
    rows = []
    for name, column in strata.items():
        values = [ALL] if name == ALL else sorted(v for v in column.dropna().unique())
        for value in values:
            member = (column == value).to_numpy()
            sub = frame[member]
            paired = sub[sub["status"] == "paired"]
            stats = agreement_statistics(paired["ours"].to_numpy(), paired["reference"].to_numpy(), error_ratio)
            counts = sub["status"].value_counts()
            record = {"phenotype": pair.phenotype, "reference_column": pair.key,
                      "pair": f"{pair.phenotype} vs {pair.label}", "title": pair.title or pair.phenotype,
                      "unit": phenotype_unit(pair.phenotype), "reference_unit": pair.unit, "stratum": name,
                      "stratum_value": "" if name == ALL else str(value),
                      **{f"n_{s}": int(counts.get(s, 0)) for s in STATUSES}}
            if name == ALL:
                record["n_not_processed"] = int(not_processed.sum())
            elif name == "visit":
                record["n_not_processed"] = int(not_processed.get(value, 0))
            else:
                record["n_not_processed"] = pd.NA
            record.update({k: v for k, v in stats.items() if k not in ("n", "note")})
            record["n_outside_loa"] = int(outside_limits(paired["ours"], paired["reference"], stats["loa_lower"],
                                                         stats["loa_upper"]).sum())
            record["note"] = stats["note"]
            record["differs"] = pair.differs.strip()
            rows.append(record)
    return rows


def _outside(pair: PairSpec, frame: pd.DataFrame, overall: dict) -> pd.DataFrame:
    hit = frame[frame["outside_loa"]]
    sd = overall["sd_diff"]
    z = (hit["difference"] - overall["bias"]) / sd if sd > 0 else np.nan
    return pd.DataFrame({"participant_id": hit["participant_id"], "visit": hit["visit"], "phenotype": pair.phenotype,
                         "reference_column": pair.key, "pair": overall["pair"], "ours": hit["ours"],
                         "reference": hit["reference"], "difference": hit["difference"], "mean": hit["mean"],
                         "bias": overall["bias"], "loa_lower": overall["loa_lower"], "loa_upper": overall["loa_upper"],
                         "z": z}, columns=OUTSIDE_COLUMNS)


def _no_reference_message(ours: pd.DataFrame, reference: pd.DataFrame, source: str, pairs: list[PairSpec],
                          in_output: np.ndarray) -> str:
    example = f" (ids and visits are compared as text, e.g. ours {ours['participant_id'].iloc[0]!r} visit " \
              f"{ours['visit'].iloc[0]!r}" if len(ours) else " ("
    theirs = f"; the reference's {reference['participant_id'].iloc[0]!r} visit {reference['visit'].iloc[0]!r})" \
        if len(reference) else ")"
    return (f"{source}: none of the {len(ours)} participant x visits of the output has a reference value for "
            f"{', '.join(p.label for p in pairs)}; {int(len(in_output) - in_output.sum())} reference rows are for "
            f"participants or visits not in the output{example}{theirs}")

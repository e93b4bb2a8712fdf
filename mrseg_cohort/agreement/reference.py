"""A user's reference table in one long shape: one row per participant x visit.

Pure: the frame as read from the file in (CSV cells as text, Parquet as stored), a frame out with
``participant_id`` (text), ``visit`` (text, or None where the table names no visit) and one column per
reference measure, values untouched (text or numbers; converting is :mod:`~.compare`'s).

Accepted layouts (docs/agreement.md):

- the participant: ``eid`` (UK Biobank), ``f.eid`` or ``participant_id``, compared as text
  (the covariates reader's rule: :data:`~mrseg_cohort.phenotypes.covariates.ID_COLUMNS`);
- UK Biobank fields, named as the covariates reader accepts them (``22407-2.0``, ``f.22407.2.0``,
  ``p22407_i2``): each instance becomes a visit, the field id (text, ``"22407"``) the column; array
  index 0 only. Rows of an instance where every field is empty are left out;
- otherwise plain columns, with a ``visit`` (or ``instance``) column, or none (the values then hold
  for the visit the comparison is told, :func:`~.compare.agreement_tables`);
- plain columns next to field columns hold for every instance of the participant (e.g. ``site``).
"""

from __future__ import annotations

import pandas as pd

from mrseg_cohort.phenotypes.covariates import ID_COLUMNS, _id_text, ukb_field

KEYS = ["participant_id", "visit"]
VISIT_COLUMNS = ("visit", "instance")


class ReferenceTableError(ValueError):
    """A reference table that cannot be used; the message names the file and what is wrong."""


def normalise_reference(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    """``frame`` (read from ``source``) in the long shape of the module docstring.

    Raises:
        ReferenceTableError: no participant column, an empty participant cell, both a visit column and UK
            Biobank field columns, or a participant listed twice for one visit. Names ``source``.
    """
    id_column = next((c for c in frame.columns if str(c).strip().lower() in ID_COLUMNS), None)
    if id_column is None:
        raise ReferenceTableError(f"{source}: no participant column; expected one of {list(ID_COLUMNS)} "
                                  f"(found {[str(c) for c in frame.columns][:12]})")
    ids = frame[id_column].map(_id_text)
    if ids.isna().any():
        row = int(ids.isna().to_numpy().nonzero()[0][0]) + 2
        raise ReferenceTableError(f"{source}: column {id_column!r} is empty in row {row}")
    visit_column = next((c for c in frame.columns if str(c).strip().lower() in VISIT_COLUMNS), None)
    fields: dict[str, list[tuple[str, str]]] = {}  # instance -> [(field id, column)]
    plain: list[str] = []
    for column in frame.columns:
        if column in (id_column, visit_column):
            continue
        parsed = ukb_field(str(column))
        if parsed is not None and parsed[1] is not None:
            field, instance, array = parsed
            if array == 0:
                fields.setdefault(instance, []).append((str(field), column))
        else:
            plain.append(column)
    if fields and visit_column is not None:
        raise ReferenceTableError(f"{source}: has both a {visit_column!r} column and UK Biobank field columns "
                                  f"with instances (e.g. {fields[next(iter(fields))][0][1]!r}); keep one way of naming "
                                  "the visit")
    plain_part = frame[plain].rename(columns=str).reset_index(drop=True)
    if fields:
        parts = []
        for instance, columns in sorted(fields.items()):
            values = pd.DataFrame({field: frame[column].to_numpy() for field, column in columns})
            keep = values.notna().any(axis=1).to_numpy()
            part = pd.concat([pd.DataFrame({"participant_id": ids.to_numpy(), "visit": instance}), values,
                              plain_part], axis=1)
            parts.append(part[keep])
        long = pd.concat(parts, ignore_index=True)
    else:
        visits = frame[visit_column].map(_id_text) if visit_column is not None else None
        long = pd.concat([pd.DataFrame({"participant_id": ids.to_numpy(),
                                        "visit": visits.to_numpy(dtype=object) if visits is not None else None}),
                          plain_part], axis=1)
    long["visit"] = long["visit"].astype(object).where(long["visit"].notna(), None)
    twice = long.duplicated(KEYS, keep=False)
    if twice.any():
        first = long[twice].iloc[0]
        visit = f" at visit {first['visit']}" if first["visit"] is not None else ""
        raise ReferenceTableError(f"{source}: participant {first['participant_id']}{visit} is listed more than "
                                  "once; keep one row per participant and visit")
    return long.reset_index(drop=True)


def lookup(long: pd.DataFrame, keys: pd.DataFrame, column: str) -> pd.Series:
    """Values of ``column`` of a long table (:func:`normalise_reference`) for each row of ``keys``
    (participant_id, visit): the row of that visit, else the participant's row without a visit; None
    where neither exists. Index as ``keys``."""
    exact = long.dropna(subset=["visit"]).set_index(KEYS)[column]
    general = long[long["visit"].isna()].set_index("participant_id")[column]
    index = pd.MultiIndex.from_frame(keys[KEYS].astype(object))
    found = pd.Series(exact.reindex(index).to_numpy(dtype=object), index=keys.index)
    fallback = pd.Series(general.reindex(keys["participant_id"]).to_numpy(dtype=object), index=keys.index)
    out = found.where(found.notna(), fallback)
    return out.astype(object).where(out.notna(), None)

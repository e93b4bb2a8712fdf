"""Schemas of the published tables and the wide view (DESIGN.md section 5; docs/tables.md).

Every part file of a table is cast to its schema here, so parts written by different batches and
runs always combine (pandas, DuckDB and Polars read a table folder as one table).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from mrseg_cohort.biomarkers.body_composition import BODY_COMPOSITION_COLUMNS
from mrseg_cohort.biomarkers.columns import INTENSITY_COLUMNS, SCAN_COLUMNS, STRUCTURE_COLUMNS

KEYS = [("participant_id", pa.string()), ("visit", pa.string()), ("contrast", pa.string()),
        ("model", pa.string())]
KEY_COLUMNS = [name for name, _ in KEYS]
"""Key columns of ``structures``, ``intensities`` and ``scans``: a row's scan, label contrast and model."""


_ARROW = {"int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
          "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string()}


def _fields(columns: dict[str, str]) -> list[tuple[str, pa.DataType]]:
    return [(name, _ARROW[kind]) for name, kind in columns.items()]


STRUCTURES = pa.schema(KEYS + _fields(STRUCTURE_COLUMNS))
INTENSITIES = pa.schema(KEYS + _fields(INTENSITY_COLUMNS))

SCANS = pa.schema(KEYS + [
    ("status", pa.string()), ("modality", pa.string()), ("layout", pa.string()),
    ("source_uris", pa.list_(pa.string())), ("contrasts_available", pa.list_(pa.string())),
    ("n_stations", pa.int16()),
    ("shape_z", pa.int32()), ("shape_y", pa.int32()), ("shape_x", pa.int32()),
    ("spacing_z_mm", pa.float64()), ("spacing_y_mm", pa.float64()), ("spacing_x_mm", pa.float64()),
    ("origin_mm", pa.list_(pa.float64())), ("direction", pa.list_(pa.float64())), ("axis_codes", pa.string()),
    ("stitch_max_gap_mm", pa.float64()), ("stitch_max_fusion_cost", pa.float64()), ("seams_json", pa.string()),
    *_fields(SCAN_COLUMNS), *_fields(BODY_COMPOSITION_COLUMNS),
    ("label_uri", pa.string()), ("model_skipped_reason", pa.string()),
    ("weights_sha256", pa.string()), ("folds", pa.string()),
    ("software_version", pa.string()), ("nnunetv2_version", pa.string()), ("torch_version", pa.string()),
    ("scipy_version", pa.string()), ("skimage_version", pa.string()), ("simpleitk_version", pa.string()),
    ("ray_version", pa.string()), ("device", pa.string()),
    ("seconds_read", pa.float64()), ("seconds_stitch", pa.float64()), ("seconds_preprocess", pa.float64()),
    ("seconds_network", pa.float64()), ("seconds_export", pa.float64()), ("seconds_measure", pa.float64()),
    ("seconds_write", pa.float64()), ("input_bytes", pa.int64()),
    ("tiles_total", pa.int32()), ("tiles_run", pa.int32()),
    ("run_id", pa.string()), ("committed_at", pa.timestamp("ms", tz="UTC")),
])

FAILURES = pa.schema([
    ("participant_id", pa.string()), ("visit", pa.string()), ("stage", pa.string()),
    ("error_type", pa.string()), ("message", pa.string()), ("uri", pa.string()), ("attempt", pa.int32()),
    ("time", pa.timestamp("ms", tz="UTC")), ("run_id", pa.string()), ("models", pa.string()),
])

SCHEMAS = {"structures": STRUCTURES, "intensities": INTENSITIES, "scans": SCANS, "failures": FAILURES}

WIDE_MEASURES = ("volume_ml", "ff_median_pct", "n_components", "touches_border")
"""Measures in the wide view by default."""


def to_table(name: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) as a table of schema ``name``; absent columns become nulls, extra keys are dropped."""
    schema = SCHEMAS[name]
    columns = {f.name: [r.get(f.name) for r in rows] for f in schema}
    return pa.Table.from_pydict(columns, schema=schema)


def empty_table(name: str) -> pa.Table:
    return SCHEMAS[name].empty_table()


def failures_table(rows: list[dict]) -> pa.Table:
    rows = [{**r, "time": pd.Timestamp(r["time"], unit="s", tz="UTC") if isinstance(r.get("time"), (int, float))
             else r.get("time")} for r in rows]
    return to_table("failures", rows)


def wide_view(structures: pd.DataFrame, measures: tuple[str, ...] = WIDE_MEASURES,
              contrast: str | None = None, scans: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per participant x visit; columns ``<structure>__<measure>`` (``<model>:`` prefixed
    names for models other than ``base``). Keys stay ``participant_id`` (string) and ``visit``.

    Rows are sorted by participant_id and visit, columns by measure (in ``measures`` order), then
    name; a cell without a row is missing (NaN), which turns a measure's integer and boolean columns
    into float and object ones, as ``DataFrame.pivot`` does. Built from integer codes of the keys
    in one pass per measure (no per-measure index is built).

    Args:
        structures: the ``structures`` table (or a filtered part of it).
        measures: columns of ``structures`` to spread.
        contrast: label contrast to use when several were segmented (default: the first per scan).
        scans: the ``scans`` table; when given, its body-composition columns (VAT, SAT, ratios) are
            added as ``<model>:<column>``.

    Raises:
        ValueError: a participant x visit has two rows of one model and structure.
    """
    row_code, _ = _key_codes(structures)
    chosen = _one_contrast_rows(structures, contrast, row_code)
    df = structures if chosen.all() else structures[chosen]
    row_code, first_row = _dense(row_code[chosen])
    model_code, models = pd.factorize(df["model"])
    structure_code, structure_names = pd.factorize(df["structure"])
    pair = model_code.astype(np.int64) * len(structure_names) + structure_code
    pairs = np.flatnonzero(np.bincount(pair, minlength=len(models) * len(structure_names)))
    pair_names = {p: wide_name(str(models[p // len(structure_names)]), str(structure_names[p % len(structure_names)]))
                  for p in pairs}
    names = sorted(set(pair_names.values()))
    name_of_pair = np.zeros(len(models) * len(structure_names), dtype=np.int64)
    for p, name in pair_names.items():
        name_of_pair[p] = names.index(name)
    n_rows, n_cols = len(first_row), len(names)
    cell = row_code * n_cols + name_of_pair[pair]
    source = np.full(n_rows * n_cols, -1, dtype=np.intp)  # row of df per cell (row-major), -1: none
    source[cell] = np.arange(len(df))
    if np.count_nonzero(source >= 0) < len(df):
        raise ValueError("Index contains duplicate entries, cannot reshape")
    index = pd.MultiIndex.from_arrays([_plain(df["participant_id"].take(first_row)),
                                       _plain(df["visit"].take(first_row))], names=["participant_id", "visit"])
    frames = []
    for measure in measures:
        spread = pd.api.extensions.take(df[measure].array, source, allow_fill=True)  # NaN where no row
        labels = [f"{name}__{measure}" for name in names]
        if isinstance(spread, np.ndarray):  # one block, no copy
            frames.append(pd.DataFrame(spread.reshape(n_rows, n_cols), index=index, columns=labels))
        else:
            frames.append(pd.DataFrame({label: spread[j::n_cols] for j, label in enumerate(labels)}, index=index))
    wide = pd.concat(frames, axis=1)
    if scans is not None and len(scans) and "vat_ml" in scans.columns:
        depots = one_contrast(scans, contrast).dropna(subset=["vat_ml"])
        for model, rows in depots.groupby("model"):
            extra = rows.set_index(["participant_id", "visit"])[list(BODY_COMPOSITION_COLUMNS)]
            wide = wide.join(extra.add_prefix(f"{model}:"), how="left")
    return wide.reset_index()


def _plain(values: pd.Series) -> object:
    """The array of ``values``, categorical values as their categories' type (keys stay strings)."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        return values.astype(values.cat.categories.dtype).array
    return values.array


def _key_codes(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``df`` the number of its participant_id x visit among the distinct ones sorted
    (participant_id, then visit), and per such key one row of ``df`` that has it."""
    pid, _ = _sorted_codes(df["participant_id"])
    visit, n_visits = _sorted_codes(df["visit"])
    return _dense(pid * n_visits + visit)


def _sorted_codes(values: pd.Series) -> tuple[np.ndarray, int]:
    """Per value its rank among the distinct values in sort order (-1: missing), and their number;
    for categorical values by the categories' text, not their order."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        categories = values.cat.categories.to_numpy()
        rank = np.empty(len(categories) + 1, dtype=np.int64)
        rank[np.argsort(categories, kind="stable")] = np.arange(len(categories))
        rank[-1] = -1  # code -1 (missing) indexes the last entry
        return rank[values.cat.codes.to_numpy()], len(categories)
    codes, uniques = pd.factorize(values, sort=True)
    return codes.astype(np.int64), len(uniques)


def _dense(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``codes`` (integers >= 0) renumbered 0, 1, ... in their order, and per new number one
    position of ``codes`` that has it."""
    seen = np.zeros(int(codes.max()) + 1 if len(codes) else 0, dtype=bool)
    seen[codes] = True
    code = (np.cumsum(seen) - 1)[codes]
    first = np.empty(int(seen.sum()), dtype=np.intp)
    first[code[::-1]] = np.arange(len(codes))[::-1]
    return code, first


def require_contrast(frame: pd.DataFrame, contrast: str | None) -> None:
    """Refuse a ``contrast`` that no row of ``frame`` (a published table) has.

    Raises:
        ValueError: naming the contrasts that do have rows.
    """
    if contrast is None:
        return
    found = sorted(set(frame["contrast"].dropna()))
    if contrast not in found:
        raise ValueError(f"contrast {contrast!r} has no results here; contrasts with results: "
                         f"{', '.join(found) or 'none'}")


def wide_name(model: str, structure: str, measure: str | None = None) -> str:
    """Column name of the wide view: ``<structure>__<measure>``, ``<model>:`` prefixed for models other
    than ``base`` (``measure`` None: the name without ``__<measure>``)."""
    name = structure if model == "base" else f"{model}:{structure}"
    return name if measure is None else f"{name}__{measure}"


def one_contrast(df: pd.DataFrame, contrast: str | None) -> pd.DataFrame:
    """Rows of ``df`` (keys participant_id, visit, contrast) of one label contrast per participant x
    visit: ``contrast`` (refused when no row has it), or by default the first in sort order of each
    participant x visit (rows without a contrast are never chosen)."""
    if contrast is None and len(df):
        return df[_one_contrast_rows(df, None, _key_codes(df)[0])]
    return df[_one_contrast_rows(df, contrast, None)]


def _one_contrast_rows(df: pd.DataFrame, contrast: str | None, key_code: np.ndarray | None) -> np.ndarray:
    """:func:`one_contrast`'s rows as a boolean mask; ``key_code``: :func:`_key_codes` of ``df``
    (needed when ``contrast`` is None)."""
    require_contrast(df, contrast)
    if contrast is not None:
        return (df["contrast"] == contrast).to_numpy(dtype=bool)
    if not len(df):
        return np.zeros(0, dtype=bool)
    code, _ = _sorted_codes(df["contrast"])  # sorted: the smallest code is the first contrast
    rank = np.where(code >= 0, code, np.iinfo(np.int64).max).astype(np.int64)
    first = np.full(int(key_code.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, key_code, rank)
    return (rank == first[key_code]) & (code >= 0)

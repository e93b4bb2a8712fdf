"""What a report (and ``summary``) reads from an output folder: the tables and the run metadata.

Only reading happens here (through :mod:`mrseg_cohort.io`); the summaries are computed by
:mod:`mrseg_cohort.report.summaries`. At cohort scale (100,000 scans: 5 million ``structures``
rows) only the columns a report uses are read, and of ``structures`` only the rows of the reported
model and contrast (filters pushed into the Parquet reader); the full ``scans`` rows of the few
previewed scans are read on their own (:func:`read_scan_rows`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pandas as pd
import pyarrow.compute as pc

from mrseg_cohort.io.storage import join_uri
from mrseg_cohort.io.tables import read_table_folder, read_table_frame
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.phenotypes.derive import MEASURES
from mrseg_cohort.tables import KEY_COLUMNS, SCHEMAS, require_contrast

log = logging.getLogger(__name__)

STRUCTURE_COLUMNS = ["participant_id", "visit", "structure_id", "structure", "n_voxels", "volume_ml",
                     "ff_median_pct", "touches_border", "fragmented", "single_component", "lr_plausible", "missing"]
"""Columns of ``structures`` the report and ``summary`` use (of one model and contrast)."""
SCAN_COLUMNS = [*KEY_COLUMNS, "status", "swap_suspected", "n_lr_implausible", "n_touching_border", "n_fragmented",
                "n_vessels_single_component", "n_vessels_present", "n_missing", "n_voxels_unknown_label",
                "weights_sha256", "folds", "software_version", "nnunetv2_version", "torch_version", "device"]
"""Columns of ``scans`` the report and ``summary`` use (every row: all models and contrasts)."""


@dataclass
class OutputData:
    """What a report shows of one output folder.

    Attributes:
        structures: ``structures`` rows of ``model`` and ``contrast`` (:data:`STRUCTURE_COLUMNS`).
        scans: every ``scans`` row (:data:`SCAN_COLUMNS`).
        selected_scans: the rows of ``scans`` of ``model`` and ``contrast`` with status ``ok``.
        failures: every ``failures`` row.
        runs: the run metadata records (``_work/runs/*.json``), oldest first.
        base_model: the output's base model (:meth:`~mrseg_cohort.ledger.outputs.Outputs.base_model`).
        model, contrast: the reported model and segmented contrast.
        has_structures: whether ``structures`` has rows of any model.

    Empty tables are empty frames with their columns.
    """

    structures: pd.DataFrame
    scans: pd.DataFrame
    selected_scans: pd.DataFrame
    failures: pd.DataFrame
    runs: list[dict] = field(default_factory=list)
    base_model: str = "base"
    model: str = "base"
    contrast: str | None = None
    has_structures: bool = False


def read_output(outputs: Outputs, base_model: str = "base", model: str | None = None,
                contrast: str | None = None) -> OutputData:
    """Read what a report shows of ``model`` (default: the output's base model; ``base_model`` is
    the job's, for an output without a record) and ``contrast`` (default: the first in sort order
    among the model's ok scans and structure rows).

    Raises:
        ValueError: ``contrast`` is given and the model has no results for it (names those it has).
    """
    base = outputs.base_model(base_model)
    model = model or base
    scans = _frame(outputs, "scans", SCAN_COLUMNS)
    ok = scans[(scans["model"] == model) & (scans["status"] == "ok")]
    pairs = read_table_folder(outputs.store, outputs.table_uri("structures"), columns=["model", "contrast"],
                              schema=SCHEMAS["structures"], dictionary=["model", "contrast"])
    pairs = pairs.group_by(["model", "contrast"]).aggregate([]) if pairs is not None else None
    structure_contrasts = set() if pairs is None else \
        {c for m, c in zip(pairs.column("model").to_pylist(), pairs.column("contrast").to_pylist()) if m == model}
    found = sorted((set(ok["contrast"].dropna()) | structure_contrasts) - {None})
    require_contrast(pd.DataFrame({"contrast": found}), contrast)
    contrast = contrast if contrast is not None else (found[0] if found else None)
    rows = (pc.field("model") == model) & (pc.field("contrast") == contrast) if contrast is not None else None
    structures = _frame(outputs, "structures", STRUCTURE_COLUMNS, rows, ["participant_id", "visit", "structure"]) \
        if rows is not None else _empty("structures", STRUCTURE_COLUMNS)
    return OutputData(
        structures=structures,
        scans=scans,
        selected_scans=ok[ok["contrast"] == contrast].reset_index(drop=True),
        failures=_frame(outputs, "failures", None),
        runs=read_runs(outputs),
        base_model=base,
        model=model,
        contrast=contrast,
        has_structures=pairs is not None and pairs.num_rows > 0,
    )


def read_phenotype_inputs(outputs: Outputs) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The ``structures`` and ``scans`` columns (every model) that
    :func:`~mrseg_cohort.phenotypes.derive.phenotype_table` uses; None before any result."""
    structures = read_table_frame(outputs.store, outputs.table_uri("structures"),
                                  columns=[*KEY_COLUMNS, "structure", *MEASURES], schema=SCHEMAS["structures"],
                                  dictionary=[*KEY_COLUMNS, "structure"])
    scans = read_table_frame(outputs.store, outputs.table_uri("scans"),
                             columns=[*KEY_COLUMNS, "status", "swap_suspected", "stitch_max_gap_mm"],
                             schema=SCHEMAS["scans"])
    return None if structures is None or scans is None else (structures, scans)


def read_scan_rows(outputs: Outputs, keys: list[tuple[str, str]], model: str, contrast: str | None) -> dict:
    """Every column of the ``scans`` rows of ``keys`` (participant_id, visit) for ``model`` and
    ``contrast``, as dicts by key (what a preview needs: source files, layout, label file)."""
    if not keys:
        return {}
    wanted = pc.field("participant_id").isin(sorted({k[0] for k in keys})) & (pc.field("model") == model)
    if contrast is not None:
        wanted &= pc.field("contrast") == contrast
    found = read_table_frame(outputs.store, outputs.table_uri("scans"), filter=wanted)
    if found is None:
        return {}
    keys_set = set(keys)
    return {(r["participant_id"], r["visit"]): r for r in found.to_dict("records")
            if (r["participant_id"], r["visit"]) in keys_set and r.get("status", "ok") == "ok"}


def read_runs(outputs: Outputs) -> list[dict]:
    """The run metadata records, sorted by start time; unreadable records are skipped with a warning."""
    runs = []
    for uri in outputs.store.list_files(join_uri(outputs.root, "_work", "runs"), suffix=".json", recursive=False):
        try:
            record = json.loads(outputs.store.read_bytes(uri))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            log.warning("skipping unreadable run record %s: %s", uri, err)
            continue
        if isinstance(record, dict):
            runs.append(record)
    return sorted(runs, key=lambda r: (float(r.get("started") or 0), str(r.get("run_id", ""))))


def _frame(outputs: Outputs, table: str, columns: list[str] | None, rows: pc.Expression | None = None,
           dictionary: list[str] = ()) -> pd.DataFrame:
    found = read_table_frame(outputs.store, outputs.table_uri(table), columns=columns, filter=rows,
                             schema=SCHEMAS[table], dictionary=dictionary)
    return _empty(table, columns) if found is None else found  # the schema's columns, nulls where no part has one


def _empty(table: str, columns: list[str] | None) -> pd.DataFrame:
    return pd.DataFrame({name: pd.Series(dtype=object) for name in columns or SCHEMAS[table].names})


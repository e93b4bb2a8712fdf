"""What a report reads from an output folder: the tables and the run metadata.

Only reading happens here (through :mod:`mrseg_cohort.io`); the summaries are computed by
:mod:`mrseg_cohort.report.summaries`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pandas as pd

from mrseg_cohort.io.storage import join_uri
from mrseg_cohort.io.tables import read_table_folder
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.tables import SCHEMAS

log = logging.getLogger(__name__)

STRUCTURE_COLUMNS = ["participant_id", "visit", "contrast", "model", "structure_id", "structure", "group",
                     "side", "n_voxels", "volume_ml", "ff_median_pct", "ff_mean_pct", "ff_n_voxels",
                     "ff_eroded_empty", "touches_border", "fragmented", "single_component", "lr_plausible",
                     "missing"]
"""Columns of ``structures`` the report uses (read alone: the table has one row per scan x structure)."""


@dataclass
class OutputData:
    """The tables of one output folder as pandas frames (empty frames with the schema's columns when
    a table has no parts yet), and the run metadata records (``_work/runs/*.json``), oldest first."""

    structures: pd.DataFrame
    scans: pd.DataFrame
    failures: pd.DataFrame
    runs: list[dict] = field(default_factory=list)
    base_model: str = "base"
    """The output's base model (:meth:`~mrseg_cohort.ledger.outputs.Outputs.base_model`)."""


def read_output(outputs: Outputs, base_model: str = "base") -> OutputData:
    """Read ``structures`` (the columns the report needs), ``scans``, ``failures``, run records and
    the base model the output recorded (``base_model``: the job's, for an output without a record)."""
    return OutputData(
        structures=_frame(outputs, "structures", STRUCTURE_COLUMNS),
        scans=_frame(outputs, "scans", None),
        failures=_frame(outputs, "failures", None),
        runs=read_runs(outputs),
        base_model=outputs.base_model(base_model),
    )


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


def _frame(outputs: Outputs, table: str, columns: list[str] | None) -> pd.DataFrame:
    found = read_table_folder(outputs.store, outputs.table_uri(table), columns=columns)
    names = columns or SCHEMAS[table].names
    if found is None:
        return pd.DataFrame({name: pd.Series(dtype=object) for name in names})
    frame = found.to_pandas()
    for name in names:  # parts from older versions may lack a column
        if name not in frame:
            frame[name] = None
    return frame

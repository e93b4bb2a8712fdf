"""Where the agreement tables are written and how they are read back (by the report).

``mrseg-cohort agreement`` writes three files: the summary at ``--out`` (``NAME.parquet`` or ``NAME.csv``)
and beside it ``NAME_values`` and ``NAME_outside_loa`` with the same suffix. Without ``--out`` they go
under the output's own folder, ``<output>/agreement/agreement.parquet`` (:func:`default_uri`), where
``mrseg-cohort report`` finds them.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mrseg_cohort.agreement.compare import COUNTS
from mrseg_cohort.agreement.statistics import KEYS as STAT_KEYS
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import read_frame, table_bytes

FOLDER = "agreement"
SUMMARY_NAME = "agreement.parquet"
SUFFIXES = (".parquet", ".csv")
NUMBERS = {"summary": [*COUNTS, *(k for k in STAT_KEYS if k != "n"), "n_outside_loa"],
           "values": ["ours", "reference", "difference", "mean"],
           "outside_loa": ["ours", "reference", "difference", "mean", "bias", "loa_lower", "loa_upper", "z"]}
"""Number columns of each table (a CSV reads back as text; every other column stays text)."""
TEXTS = {"summary": ["stratum_value", "note", "differs", "title"], "values": ["ours_qc"], "outside_loa": []}
"""Text columns whose empty cells are "" (a CSV reads them back as missing)."""


@dataclass(frozen=True)
class AgreementFiles:
    summary: pd.DataFrame
    values: pd.DataFrame
    outside_loa: pd.DataFrame
    uri: str


def default_uri(output_root: str) -> str:
    """The summary's place inside an output folder."""
    return join_uri(output_root, FOLDER, SUMMARY_NAME)


def table_uris(uri: str) -> dict[str, str]:
    """``summary``, ``values`` and ``outside_loa`` files for the summary at ``uri``.

    Raises:
        ValueError: ``uri`` does not end in .parquet or .csv.
    """
    suffix = next((s for s in SUFFIXES if uri.endswith(s)), None)
    if suffix is None:
        raise ValueError(f"{uri}: the agreement summary is a .parquet or .csv file")
    stem = uri[: -len(suffix)]
    return {"summary": uri, "values": f"{stem}_values{suffix}", "outside_loa": f"{stem}_outside_loa{suffix}"}


def write_agreement(store: Store, uri: str, summary: pd.DataFrame, values: pd.DataFrame,
                    outside_loa: pd.DataFrame) -> dict[str, str]:
    """Write the three tables (:func:`table_uris`); returns where each went."""
    uris = table_uris(uri)
    for name, frame in (("values", values), ("outside_loa", outside_loa), ("summary", summary)):
        data = frame.to_csv(index=False).encode() if uri.endswith(".csv") else table_bytes(frame)
        store.write_bytes(uris[name], data)
    return uris


def read_agreement(store: Store, uri: str) -> AgreementFiles:
    """The three tables written by :func:`write_agreement` for the summary at ``uri`` (from CSV: the
    number columns as numbers, the rest as text).

    Raises:
        FileNotFoundError: one of the three files is missing (named).
        ValueError: not a readable table.
    """
    frames = {}
    for name, path in table_uris(uri).items():
        if not store.exists(path):
            raise FileNotFoundError(f"{path}: no such agreement table (mrseg-cohort agreement writes it "
                                    f"beside {uri})")
        frame = read_frame(store, path)
        if path.endswith(".csv"):
            for column in NUMBERS[name]:
                frame[column] = pd.to_numeric(frame[column], errors="coerce")
            for column in TEXTS[name]:
                frame[column] = frame[column].fillna("")
            if name == "values":
                frame["outside_loa"] = frame["outside_loa"].eq("True")
        frames[name] = frame
    return AgreementFiles(frames["summary"], frames["values"], frames["outside_loa"], uri)


"""Parquet in and out through :class:`~mrseg_cohort.io.storage.Store` (atomic, whole-file writes).

A table is a folder of ``*.parquet`` part files; ``pd.read_parquet(folder)``, DuckDB's
``read_parquet('folder/*.parquet')`` and Polars read it as one table.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mrseg_cohort.io.storage import Store


def table_bytes(table: pa.Table | pd.DataFrame) -> bytes:
    """Parquet bytes (zstd) of ``table``; pandas frames are converted without their index."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def write_table(store: Store, uri: str, table: pa.Table | pd.DataFrame) -> None:
    """Publish ``table`` as one Parquet file at ``uri`` (atomic; overwrites)."""
    store.write_bytes(uri, table_bytes(table))


def read_table_file(store: Store, uri: str, columns: list[str] | None = None) -> pa.Table:
    """One Parquet file."""
    return pq.read_table(io.BytesIO(store.read_bytes(uri)), columns=columns)


def read_table_folder(store: Store, uri: str, columns: list[str] | None = None) -> pa.Table | None:
    """All ``*.parquet`` parts under folder ``uri`` as one table (None if there are none).

    Parts are read one by one and concatenated with schema unification, so parts written by
    different versions (a column added later) still combine; missing columns become nulls.
    """
    parts = store.list_files(uri, suffix=".parquet", recursive=False)
    if not parts:
        return None
    tables = []
    for part in parts:
        table = read_table_file(store, part)
        if columns is not None:
            table = table.select([c for c in columns if c in table.column_names])
        tables.append(table)
    return pa.concat_tables(tables, promote_options="default")


def read_frame(store: Store, uri: str) -> pd.DataFrame:
    """A user's table as pandas: Parquet (``.parquet``) as stored, CSV (tab-separated for ``.tsv``,
    ``.tab`` and ``.txt``) with every cell as text and empty or ``NA`` cells missing."""
    if uri.endswith(".parquet"):
        try:
            return read_table_file(store, uri).to_pandas()
        except pa.ArrowException as err:
            raise ValueError(f"{uri}: not a readable Parquet file: {err}") from err
    sep = "\t" if uri.endswith((".tsv", ".tab", ".txt")) else ","
    try:
        return pd.read_csv(io.BytesIO(store.read_bytes(uri)), sep=sep, dtype=str)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise ValueError(f"{uri}: not a readable {'tab' if sep == chr(9) else 'comma'}-separated table: "
                         f"{str(err).splitlines()[0]}") from err

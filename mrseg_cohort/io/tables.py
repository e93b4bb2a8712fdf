"""Parquet in and out through :class:`~mrseg_cohort.io.storage.Store` (atomic, whole-file writes).

A table is a folder of ``*.parquet`` part files; ``pd.read_parquet(folder)``, DuckDB's
``read_parquet('folder/*.parquet')`` and Polars read it as one table.
"""

from __future__ import annotations

import io
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

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


def read_table_folder(store: Store, uri: str, columns: list[str] | None = None,
                      filter: pc.Expression | None = None, schema: pa.Schema | None = None,
                      dictionary: list[str] = ()) -> pa.Table | None:
    """All ``*.parquet`` parts under folder ``uri`` as one table (None if there are none).

    Read as one ``pyarrow.dataset`` over the store's file system: only ``columns`` are read
    (projection; names no part has are left out) and only the rows matching ``filter`` (a
    ``pyarrow.compute`` expression, also used to skip row groups by their statistics) are kept, the
    parts read in parallel. Parts written by different versions (a column added later) combine:
    ``schema`` (default: the parts' schemas unified) is the table's, and a part's missing columns
    are nulls. String columns named in ``dictionary`` are read dictionary-encoded (pandas:
    categorical; a few bytes a row for ids and structure names repeated millions of times). A
    transient storage error retries the whole read.
    """
    parts = store.list_files(uri, suffix=".parquet", recursive=False)
    if not parts:
        return None

    def read() -> pa.Table:
        dataset = _parts_dataset(store, uri, parts, schema, dictionary)
        wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
        return dataset.to_table(columns=wanted, filter=filter)

    return store.retry("read", uri, read)


def read_table_frame(store: Store, uri: str, columns: list[str] | None = None,
                     filter: pc.Expression | None = None, schema: pa.Schema | None = None,
                     dictionary: list[str] = ()) -> pd.DataFrame | None:
    """:func:`read_table_folder` as pandas (None if there are no parts); the Arrow buffers are
    released column by column as the frame is built, so the table is not held twice."""
    table = read_table_folder(store, uri, columns, filter, schema, dictionary)
    return None if table is None else table.to_pandas(self_destruct=True, split_blocks=True)


def _parts_dataset(store: Store, uri: str, parts: list[str], schema: pa.Schema | None,
                   dictionary: list[str] = ()) -> ds.FileSystemDataset:
    """The dataset of ``parts`` (URIs under folder ``uri``), with ``schema`` or the parts' unified one,
    the string columns ``dictionary`` dictionary-encoded."""
    fs, folder = store.fs_and_path(uri)
    arrow_fs = pafs.LocalFileSystem() if isinstance(fs, LocalFileSystem) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
    base = uri.rstrip("/")
    paths = [f"{folder.rstrip('/')}/{part[len(base) + 1:]}" for part in parts]
    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary)))
    fragments = None
    if schema is None:
        fragments = [file_format.make_fragment(p, arrow_fs) for p in paths]
        with ThreadPoolExecutor(max_workers=min(16, len(fragments))) as pool:
            schemas = list(pool.map(lambda f: f.physical_schema, fragments))
        schema = pa.unify_schemas(schemas, promote_options="default")
    for name in dictionary:
        i = schema.get_field_index(name)
        if i >= 0 and pa.types.is_string(schema.field(i).type):
            schema = schema.set(i, pa.field(name, pa.dictionary(pa.int32(), pa.string())))
    if fragments is not None:
        return ds.FileSystemDataset(fragments, schema, file_format, arrow_fs)
    return ds.dataset(paths, schema=schema, format=file_format, filesystem=arrow_fs)


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

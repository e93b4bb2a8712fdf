"""Parquet in and out through :class:`~mrseg_cohort.io.storage.Store` (atomic, whole-file writes).

A table is a folder of ``*.parquet`` part files; ``pd.read_parquet(folder)``, DuckDB's
``read_parquet('folder/*.parquet')`` and Polars read it as one table.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from mrseg_cohort.io.storage import Store

log = logging.getLogger(__name__)


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
    """All ``*.parquet`` parts under folder ``uri`` (hidden names left out) as one table (None if
    there are none).

    Read as one ``pyarrow.dataset``: only ``columns`` are read (projection; names no part has are
    left out) and only the rows matching ``filter`` (a ``pyarrow.compute`` expression, also used to
    skip row groups by their statistics) are kept, the parts read in parallel. Parts written by
    different versions (a column added later) combine: ``schema`` (default: the parts' schemas
    unified) is the table's, and a part's missing columns are nulls. String columns named in
    ``dictionary`` are read dictionary-encoded (pandas: categorical; a few bytes a row for ids and
    structure names repeated millions of times). Local folders and S3 are read by Arrow's own file
    systems (:func:`arrow_filesystem`), other stores through fsspec. A transient storage error
    retries the whole read.
    """
    files = _part_files(store, uri)
    if not files:
        return None
    arrow_fs = arrow_filesystem(store, uri)[0]
    if not isinstance(arrow_fs, pafs.LocalFileSystem) and (schema is not None or filter is None):
        return _read_whole_parts(store, uri, arrow_fs, files, columns, filter,
                                 None if schema is None else _with_dictionary(schema, dictionary), dictionary)

    def read() -> pa.Table:
        with arrow_s3_errors():
            dataset = _parts_dataset(arrow_fs, files, schema, dictionary)
            wanted = None if columns is None else [c for c in columns if c in dataset.schema.names]
            return dataset.to_table(columns=wanted, filter=filter)

    return store.retry("read", uri, read)


def _read_whole_parts(store: Store, uri: str, arrow_fs: pafs.FileSystem, files: list[tuple[str, int]],
                      columns: list[str] | None, filter: pc.Expression | None, schema: pa.Schema | None,
                      dictionary: list[str]) -> pa.Table:
    """The parts of an object store each fetched whole with one request (a Parquet reader asks for
    the footer and then the columns: two or three requests a part) and read from memory, in
    parallel, each retried on its own; only the projected rows are kept. Without ``schema`` (and
    then without ``filter``) each part is read with its own and the parts' tables are unified."""
    tables = _read_each_part(store, uri, arrow_fs, files, columns, filter, schema, dictionary)
    table = pa.concat_tables(tables, promote_options="default")
    return table if columns is None else table.select([c for c in columns if c in table.column_names])


def _read_each_part(store: Store, uri: str, arrow_fs: pafs.FileSystem, files: list[tuple[str, int]],
                    columns: list[str] | None, filter: pc.Expression | None, schema: pa.Schema | None,
                    dictionary: list[str] = ()) -> list[pa.Table]:
    """One table per part of ``files`` (in their order), each part fetched whole (see
    :func:`_read_whole_parts`)."""
    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary)))
    base, folder = uri.rstrip("/"), store.fs_and_path(uri)[1].rstrip("/")

    def part(path: str) -> pa.Table:
        def fetch() -> bytes:
            with arrow_s3_errors(), arrow_fs.open_input_stream(path) as f:
                return f.read()

        part_uri = f"{base}/{path[len(folder) + 1:]}"
        data = pa.BufferReader(store.retry("read", part_uri, fetch))
        try:
            if filter is None:  # the plain Parquet reader: half the work of a dataset scan for a small part
                return _projected(pq.ParquetFile(data, read_dictionary=list(dictionary)), columns, schema)
            return file_format.make_fragment(data).to_table(schema=schema, columns=_present(columns, schema),
                                                            filter=filter)
        except pa.ArrowInvalid as err:
            raise ValueError(f"{part_uri}: not a readable Parquet part: {err}") from err

    if not files:
        return []
    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        return list(pool.map(part, [path for path, _ in files]))


# -- a column index of a table folder ----------------------------------------------------------------
INDEX_PART = "_part"
"""The index's column naming each row's part (its file name in the folder)."""
_INDEX_PARTS_KEY = b"mrseg_cohort.index.parts"


def read_indexed_columns(store: Store, uri: str, index_uri: str, columns: list[str],
                         schema: pa.Schema) -> pa.Table | None:
    """``columns`` of every part of folder ``uri``, as ``read_table_folder(store, uri, columns,
    schema=schema)`` gives them (the same rows in the same order: parts in name order), with the
    rows of the parts the index at ``index_uri`` covers (:func:`write_column_index`) taken from it:
    on an object store one request for the index and one per part written since, not one per part.

    The index is a cache checked against the folder's listing: its rows of a part count only while
    a part of that name, size and version (ETag, or modification time on disk) is listed; a part
    deleted, added or rewritten since is left out or read. A missing, stale, foreign or unreadable
    index costs time, not rows (on a store whose listing shows what a read would).
    """
    table = _indexed_read(store, uri, index_uri, columns, schema, _listed_parts(store, uri))
    return None if table is None else table.drop_columns([INDEX_PART])


def write_column_index(store: Store, uri: str, index_uri: str, columns: list[str], schema: pa.Schema) -> int:
    """Write the index of ``columns`` of folder ``uri`` at ``index_uri``, covering the parts listed
    now (built from the index there and the parts it does not cover); returns the number of parts
    covered (0: none, nothing written). Atomic: a reader sees the old index or the new one."""
    listed = _listed_parts(store, uri)
    table = _indexed_read(store, uri, index_uri, columns, schema, listed)
    if table is None:
        return 0
    names = _part_names(store, uri, listed)
    covered = json.dumps([[names[path], size, version] for path, size, version in listed]).encode()
    store.write_bytes(index_uri, table_bytes(table.replace_schema_metadata({_INDEX_PARTS_KEY: covered})))
    return len(listed)


def _part_names(store: Store, uri: str, listed: list[tuple[str, int, str]]) -> dict[str, str]:
    folder = store.fs_and_path(uri)[1].rstrip("/")
    return {path: path[len(folder) + 1:] for path, _, _ in listed}


def _indexed_read(store: Store, uri: str, index_uri: str, columns: list[str], schema: pa.Schema,
                  listed: list[tuple[str, int, str]]) -> pa.Table | None:
    """``columns`` and :data:`INDEX_PART` of the parts ``listed`` of folder ``uri``, in part order."""
    if not listed:
        return None
    fields = pa.schema([schema.field(c) for c in columns if c in schema.names] + [pa.field(INDEX_PART, pa.string())])
    names = _part_names(store, uri, listed)
    now = {names[path]: (size, version) for path, size, version in listed}
    pieces, covered = [], set()
    index = _read_index(store, index_uri, fields)
    if index is not None:
        rows, parts = index
        covered = {name for name, seen in parts.items() if now.get(name) == seen}
        pieces.append(rows.filter(pc.is_in(rows.column(INDEX_PART), pa.array(sorted(covered), pa.string()))))
    rest = [(path, size) for path, size, _ in listed if names[path] not in covered]
    arrow_fs = arrow_filesystem(store, uri)[0]
    for (path, _), part in zip(rest, _read_each_part(store, uri, arrow_fs, rest, columns, None, schema)):
        pieces.append(pa.Table.from_arrays([*part.select(fields.names[:-1]).columns,
                                            pa.array([names[path]] * part.num_rows, pa.string())], schema=fields))
    table = pa.concat_tables(pieces)
    return table.take(pc.sort_indices(table, sort_keys=[(INDEX_PART, "ascending")]))  # stable: rows keep their order


def _read_index(store: Store, index_uri: str,
                fields: pa.Schema) -> tuple[pa.Table, dict[str, tuple[int, str]]] | None:
    """The index at ``index_uri`` (its rows with ``fields``, and part name -> (size, version) it
    covers), or None where there is none, or it lacks a column or is unreadable (then the parts are
    read)."""
    try:
        data = store.read_bytes(index_uri)
    except FileNotFoundError:
        return None
    except OSError as err:  # refused or not answering (after the store's retries): the parts may still be read
        log.warning("%s: could not read the index (%s); reading the parts instead", index_uri, err)
        return None
    try:
        table = pq.read_table(pa.BufferReader(data))
        parts = {str(name): (int(size), str(version))
                 for name, size, version in json.loads(table.schema.metadata[_INDEX_PARTS_KEY])}
        return table.select(fields.names).cast(fields), parts
    except (pa.ArrowException, KeyError, TypeError, ValueError) as err:
        log.warning("%s: not a usable index (%s); reading the parts instead", index_uri, err)
        return None


class ArrowS3Error(OSError):
    """An error of Arrow's S3 client with the HTTP status its message states (``status``), so that
    :func:`~mrseg_cohort.io.storage.is_transient` judges it as it judges botocore's errors."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


_ARROW_S3_STATUS = re.compile(r": AWS Error \w+ \(HTTP status (\d{3})\) during \w")
"""How Arrow's S3 client words an error (``When reading information for key '...' in bucket '...':
AWS Error UNKNOWN (HTTP status 503) during HeadObject operation: ...``): it carries no status of
its own, so this phrase is the one place a status is read from a message."""


@contextlib.contextmanager
def arrow_s3_errors() -> Iterator[None]:
    """Re-raise an ``OSError`` of Arrow's S3 client that states an HTTP status as
    :class:`ArrowS3Error` (a 503 during a part's HEAD is retried by the store like any 503)."""
    try:
        yield
    except OSError as err:  # a missing or refused part keeps its own type (FileNotFoundError, PermissionError)
        found = _ARROW_S3_STATUS.search(str(err)) if type(err) is OSError else None
        if found is None:
            raise
        raise ArrowS3Error(str(err), int(found[1])) from err


def _present(columns: list[str] | None, schema: pa.Schema) -> list[str] | None:
    return None if columns is None else [c for c in columns if c in schema.names]


def _projected(part: pq.ParquetFile, columns: list[str] | None, schema: pa.Schema | None) -> pa.Table:
    """``columns`` of one part, as a dataset scan with ``schema`` gives them: columns the part lacks
    are nulls, the others cast to the schema's types (without ``schema``: the part's own)."""
    own = part.schema_arrow
    names = list((schema or own).names) if columns is None else _present(columns, schema or own)
    table = part.read(columns=[c for c in names if c in own.names])
    if schema is None:
        return table
    fields = [schema.field(c) for c in names]
    return pa.table([table.column(f.name).cast(f.type) if f.name in own.names else pa.nulls(len(table), f.type)
                     for f in fields], schema=pa.schema(fields))


def read_table_frame(store: Store, uri: str, columns: list[str] | None = None,
                     filter: pc.Expression | None = None, schema: pa.Schema | None = None,
                     dictionary: list[str] = ()) -> pd.DataFrame | None:
    """:func:`read_table_folder` as pandas (None if there are no parts); the Arrow buffers are
    released column by column as the frame is built, so the table is not held twice."""
    table = read_table_folder(store, uri, columns, filter, schema, dictionary)
    return None if table is None else table.to_pandas(self_destruct=True, split_blocks=True)


def arrow_filesystem(store: Store, uri: str) -> tuple[pafs.FileSystem, str]:
    """An Arrow file system for ``uri`` of ``store`` and the path in it: Arrow's own for local disk
    and for S3 when the store's options say all it needs (endpoint, key and secret or the AWS chain,
    region, anonymous access, attempts, timeouts: C++ requests in parallel, several times quicker
    than Python ones for hundreds of part files), else the store's fsspec file system (a named
    AWS profile, other protocols)."""
    fs, path = store.fs_and_path(uri)
    if isinstance(fs, LocalFileSystem):
        return pafs.LocalFileSystem(), path
    protocol = uri.split("://", 1)[0]
    native = _arrow_s3(store.options) if protocol in ("s3", "s3a") else None
    return (native if native is not None else pafs.PyFileSystem(pafs.FSSpecHandler(fs))), path


_S3_OPTIONS = {"endpoint_url", "key", "secret", "token", "anon", "client_kwargs", "config_kwargs"}


def _arrow_s3(options: dict) -> pafs.S3FileSystem | None:
    """Arrow's S3 file system with the fsspec/s3fs ``options`` of a store, or None where they hold
    something it cannot take (a profile, unknown keys, an endpoint with a path) or lack a region
    for AWS itself."""
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    if set(options) - _S3_OPTIONS or set(client) - {"region_name"} or \
            set(config) - {"retries", "connect_timeout", "read_timeout"}:
        return None
    kwargs: dict = {"region": client.get("region_name")}
    endpoint = options.get("endpoint_url")
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        if not rest or "/" in rest.rstrip("/") or "@" in rest or scheme not in ("http", "https"):
            return None
        kwargs.update(endpoint_override=rest.rstrip("/"), scheme=scheme, region=kwargs["region"] or "us-east-1")
    elif kwargs["region"] is None:
        return None
    if options.get("anon"):
        kwargs["anonymous"] = True
    elif options.get("key") and options.get("secret"):
        kwargs.update(access_key=options["key"], secret_key=options["secret"], session_token=options.get("token"))
    attempts = (config.get("retries") or {}).get("max_attempts")
    if attempts:
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=int(attempts))
    if config.get("connect_timeout"):
        kwargs["connect_timeout"] = float(config["connect_timeout"])
    if config.get("read_timeout"):
        kwargs["request_timeout"] = float(config["read_timeout"])
    return pafs.S3FileSystem(**kwargs)


def _part_files(store: Store, uri: str) -> list[tuple[str, int]]:
    """(path, size in bytes) of the part files of folder ``uri``, sorted (:func:`_listed_parts`)."""
    return [(path, size) for path, size, _ in _listed_parts(store, uri)]


def _listed_parts(store: Store, uri: str) -> list[tuple[str, int, str]]:
    """(path, size in bytes, version) of the part files of folder ``uri``, sorted: one listing
    through the store's file system (its retries and its errors for refused credentials or a store
    that does not answer), whose sizes spare a request per file later. The version tells two
    writes of one name apart: the ETag on object stores, the modification time on disk."""
    fs, folder = store.fs_and_path(uri)

    def listing() -> list[dict]:
        try:
            return fs.ls(folder.rstrip("/"), detail=True)
        except FileNotFoundError:  # no parts yet
            return []

    entries = store.retry("list", uri, listing)
    return sorted((e["name"], int(e["size"]), str(e.get("ETag") or e.get("mtime") or e.get("LastModified") or ""))
                  for e in entries if e.get("type") == "file" and e["name"].endswith(".parquet")
                  and not e["name"].rstrip("/").rsplit("/", 1)[-1].startswith("."))


def _parts_dataset(arrow_fs: pafs.FileSystem, files: list[tuple[str, int]], schema: pa.Schema | None,
                   dictionary: list[str] = ()) -> ds.FileSystemDataset:
    """The dataset of ``files`` (path, size), with ``schema`` or the parts' unified one, the string
    columns ``dictionary`` dictionary-encoded."""
    file_format = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=set(dictionary)))
    fragments = [file_format.make_fragment(path, arrow_fs, file_size=size) for path, size in files]
    if schema is None:
        with ThreadPoolExecutor(max_workers=min(16, len(fragments))) as pool:
            schemas = list(pool.map(lambda f: f.physical_schema, fragments))
        schema = pa.unify_schemas(schemas, promote_options="default")
    return ds.FileSystemDataset(fragments, _with_dictionary(schema, dictionary), file_format, arrow_fs)


def _with_dictionary(schema: pa.Schema, dictionary: list[str]) -> pa.Schema:
    """``schema`` with its string columns named in ``dictionary`` dictionary-encoded."""
    for name in dictionary:
        i = schema.get_field_index(name)
        if i >= 0 and pa.types.is_string(schema.field(i).type):
            schema = schema.set(i, pa.field(name, pa.dictionary(pa.int32(), pa.string())))
    return schema


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

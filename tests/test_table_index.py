"""The column index of a table folder (io.tables.read_indexed_columns, write_column_index): whatever
the index's age or state, the rows read through it are the rows of every part, in the same order;
and a run keeps its output's indexes up to date (pipeline.publisher)."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mrseg_cohort.io import tables as tables_module
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import read_indexed_columns, read_table_folder, table_bytes, write_column_index
from mrseg_cohort.pipeline import publisher as publisher_module
from mrseg_cohort.pipeline.publisher import BatchPublisher
from mrseg_cohort.tables import SCHEMAS

SCHEMA = SCHEMAS["failures"]
COLUMNS = ["participant_id", "visit", "stage", "attempt", "time"]


def part(seed: int, rows: int, wide: bool = True) -> pa.Table:
    """A part of ``rows`` failure rows; ``wide=False``: written by an 'earlier version' without the
    ``attempt`` column (read as nulls)."""
    data = {"participant_id": [f"{seed}-{i}" for i in range(rows)], "visit": [str(i % 3) for i in range(rows)],
            "stage": ["read"] * rows, "attempt": pa.array(range(seed, seed + rows), pa.int32()),
            "time": pa.array([seed * 100_000 + i for i in range(rows)], pa.timestamp("ms", tz="UTC"))}
    if not wide:
        del data["attempt"]
    return pa.table(data)


def read_both(store: Store, folder: str, index: str, columns: list[str]) -> tuple:
    return (read_indexed_columns(store, folder, index, columns, SCHEMA),
            read_table_folder(store, folder, columns=columns, schema=SCHEMA))


OPS = st.lists(st.one_of(
    st.tuples(st.just("add"), st.integers(0, 7), st.booleans()),     # a new part (rows, with attempt)
    st.tuples(st.just("delete"), st.integers(0, 30), st.none()),     # a part deleted (--restart)
    st.tuples(st.just("rewrite"), st.integers(0, 30), st.integers(1, 5)),  # a part replaced, another size
    st.tuples(st.just("index"), st.none(), st.none()),               # the index brought up to date
    st.tuples(st.just("garbage"), st.none(), st.none()),             # an unreadable index
    st.tuples(st.just("drop-index"), st.none(), st.none()),
), max_size=14)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS, columns=st.sampled_from([COLUMNS, ["participant_id", "visit"], ["time", "participant_id"]]))
def test_rows_through_the_index_are_the_rows_of_every_part(tmp_path_factory, ops, columns):
    store = Store()
    root = str(tmp_path_factory.mktemp("index"))
    folder, index = join_uri(root, "tables", "failures"), join_uri(root, "_work", "index", "failures.parquet")
    names: list[str] = []
    for n, (op, a, b) in enumerate(ops):
        if op == "add":
            names.append(f"part-{n:03d}.parquet")
            store.write_bytes(join_uri(folder, names[-1]), table_bytes(part(n, a, b)))
        elif op in ("delete", "rewrite") and names:
            name = names[a % len(names)]
            if op == "delete":
                store.remove(join_uri(folder, name))
                names.remove(name)
            else:  # more rows: another size (a part is never rewritten in place with other rows by a run)
                rows = pq.read_table(join_uri(folder, name)).num_rows + b
                store.write_bytes(join_uri(folder, name), table_bytes(part(1000 + n, rows)))
        elif op == "index":
            covered = write_column_index(store, folder, index, COLUMNS, SCHEMA)
            assert covered == len(names)
        elif op == "garbage":
            store.write_bytes(index, b"not parquet")
        elif op == "drop-index":
            store.remove(index)
        through_index, every_part = read_both(store, folder, index, columns)
        if every_part is None:
            assert through_index is None and not names
        else:
            assert through_index.equals(every_part), (ops[: n + 1], through_index, every_part)


@pytest.fixture
def root(store_root) -> tuple[Store, str]:
    """(store, root URI) on local disk and on the S3 server (conftest's ``store_root``)."""
    return store_root


def test_the_index_covers_the_listed_parts_and_a_foreign_index_costs_nothing_but_time(root):
    store, uri = root
    folder, index = join_uri(uri, "tables", "failures"), join_uri(uri, "_work", "index", "failures.parquet")
    assert write_column_index(store, folder, index, COLUMNS, SCHEMA) == 0 and not store.exists(index)
    for n in range(3):
        store.write_bytes(join_uri(folder, f"part-{n}.parquet"), table_bytes(part(n, 4)))
    assert write_column_index(store, folder, index, COLUMNS, SCHEMA) == 3
    covered = json.loads(pq.read_schema(pa.BufferReader(store.read_bytes(index))).metadata[b"mrseg_cohort.index.parts"])
    assert [name for name, _, _ in covered] == [f"part-{n}.parquet" for n in range(3)]
    assert [size for _, size, _ in covered] == [store.size(join_uri(folder, f"part-{n}.parquet")) for n in range(3)]
    assert all(version for _, _, version in covered)  # an ETag on S3, a modification time on disk
    # a part added since: read from the folder; a part deleted since: left out
    store.write_bytes(join_uri(folder, "part-3.parquet"), table_bytes(part(3, 2)))
    store.remove(join_uri(folder, "part-0.parquet"))
    through_index, every_part = read_both(store, folder, index, COLUMNS)
    assert through_index.equals(every_part) and through_index.num_rows == 4 + 4 + 2
    # an index of another output copied here (other parts under the same names, other sizes) is ignored
    other = join_uri(uri, "other")
    for n in range(4):
        store.write_bytes(join_uri(other, f"part-{n}.parquet"), table_bytes(part(50 + n, 9)))
    write_column_index(store, other, index, COLUMNS, SCHEMA)
    through_index, every_part = read_both(store, folder, index, COLUMNS)
    assert through_index.equals(every_part)
    # an index that lacks a column asked for: the parts are read
    write_column_index(store, folder, index, ["participant_id", "visit"], SCHEMA)
    through_index, every_part = read_both(store, folder, index, COLUMNS)
    assert through_index.equals(every_part)


def test_covered_parts_are_not_read_and_a_part_rewritten_at_the_same_size_is(root, monkeypatch):
    """The index is used (a covered part is not fetched), and a part written again under its name
    with other rows of the same size is read, not taken from the index (its version differs)."""
    store, uri = root
    folder, index = join_uri(uri, "tables", "failures"), join_uri(uri, "_work", "index", "failures.parquet")
    for n in range(3):
        store.write_bytes(join_uri(folder, f"part-{n}.parquet"), table_bytes(part(n, 4)))
    write_column_index(store, folder, index, COLUMNS, SCHEMA)
    fetched = []
    read_each_part = tables_module._read_each_part

    def counted(store_, uri_, arrow_fs, files, *args, **kwargs):
        fetched.extend(path.rsplit("/", 1)[-1] for path, _ in files)
        return read_each_part(store_, uri_, arrow_fs, files, *args, **kwargs)

    monkeypatch.setattr(tables_module, "_read_each_part", counted)
    assert read_indexed_columns(store, folder, index, COLUMNS, SCHEMA).num_rows == 12 and fetched == []
    store.write_bytes(join_uri(folder, "part-3.parquet"), table_bytes(part(3, 1)))
    assert read_indexed_columns(store, folder, index, COLUMNS, SCHEMA).num_rows == 13 and fetched == ["part-3.parquet"]
    same_size = table_bytes(part(7, 4))  # other ids, attempts and times; the same number of bytes
    assert len(same_size) == store.size(join_uri(folder, "part-1.parquet"))
    time.sleep(0.05)  # a later modification time on disk
    store.write_bytes(join_uri(folder, "part-1.parquet"), same_size)
    fetched.clear()
    through_index = read_indexed_columns(store, folder, index, COLUMNS, SCHEMA)
    assert sorted(fetched) == ["part-1.parquet", "part-3.parquet"]
    assert through_index.equals(read_table_folder(store, folder, columns=COLUMNS, schema=SCHEMA))
    assert "7-0" in through_index.column("participant_id").to_pylist()


class _Outputs:
    """What BatchPublisher asks of the output: publish (always succeeds) and refresh_indexes."""

    def __init__(self):
        self.seq, self.refreshes = 0, []

    def publish(self, batch_id, rows, failures, fence, committed):
        self.seq += 1
        return self.seq, len(rows)

    def refresh_indexes(self):
        self.refreshes.append(self.seq)


def test_a_run_updates_the_indexes_every_so_many_publications_and_after_its_last(monkeypatch):
    monkeypatch.setattr(publisher_module, "INDEX_EVERY", 3)
    outputs = _Outputs()
    stopping = []
    publisher = BatchPublisher(outputs, "run", commit_every=1, commit_interval_s=3600, fence=None,
                               stopping=lambda: bool(stopping))
    for n in range(7):
        publisher.add_rows(("p", str(n), "base"), {})
    assert outputs.refreshes == [3, 6]
    publisher.flush(final=True)  # nothing pending, one publication not yet indexed
    assert outputs.refreshes == [3, 6, 7]
    publisher.flush(final=True)  # nothing new: no update
    assert outputs.refreshes == [3, 6, 7]
    publisher.add_rows(("p", "x", "base"), {})
    publisher.flush(final=False)  # the last flush of a run ending on an error leaves the index to the next run
    assert outputs.refreshes == [3, 6, 7]
    stopping.append(True)  # a stopping run publishes what finished and nothing more, even at the 3rd
    for n in range(4):
        publisher.add_rows(("q", str(n), "base"), {})
    publisher.flush(final=True)
    assert outputs.refreshes == [3, 6, 7] and outputs.seq == 12


def test_an_index_that_cannot_be_written_or_read_is_a_warning_and_the_parts_are_read(tmp_path, caplog, monkeypatch):
    from mrseg_cohort.errors import StorageError
    from mrseg_cohort.ledger.outputs import Outputs

    outputs = Outputs(Store(), str(tmp_path / "out"))
    outputs.store.write_bytes(join_uri(outputs.table_uri("failures"), "part-a.parquet"), table_bytes(part(1, 3)))
    write = Store.write_bytes

    def full_disk(self, uri, data):
        if "/_work/index/" in uri:
            raise StorageError("write failed: No space left on device", uri)
        return write(self, uri, data)

    monkeypatch.setattr(Store, "write_bytes", full_disk)
    with caplog.at_level("WARNING"):
        outputs.refresh_indexes()  # no exception: the run goes on
    assert "could not update the index of failures" in caplog.text
    assert not (tmp_path / "out" / "_work" / "index" / "failures.parquet").exists()
    monkeypatch.setattr(Store, "write_bytes", write)
    outputs.refresh_indexes()
    monkeypatch.setattr(Store, "read_bytes", lambda self, uri: (_ for _ in ()).throw(PermissionError(uri)))
    with caplog.at_level("WARNING"):
        rows = outputs.read_indexed("failures", ["participant_id", "visit"])
    assert rows.column("participant_id").to_pylist() == ["1-0", "1-1", "1-2"]
    assert "could not read the index" in caplog.text

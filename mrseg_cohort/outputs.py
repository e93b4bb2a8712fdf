"""The output folder, and how results are committed exactly once (DESIGN.md section 6).

Layout under the output URI::

    labels/<participant_id>/<visit>/<contrast>.nii.gz           base model labels (uint8)
    labels/<participant_id>/<visit>/<contrast>.<model>.nii.gz   labels of other models
    tables/<table>/part-<batch>.parquet                        what readers read (pd.read_parquet)
    _work/staged/<table>/<scan key>.parquet                    rows of scans done, not yet published
    _work/batches/<batch>.json, <batch>.done                   batch manifests and completion marks
    _work/runs/<run id>.json                                   run metadata

Protocol (every object is written whole under a deterministic key, see io.storage):

1. A worker writes a scan's label files, then its staged rows. Staged rows imply complete labels.
2. The driver publishes batches: first ``_work/batches/<b>.json`` (the scans and failure rows of the
   batch), then one part per table, ``scans`` last, then ``<b>.done``; then it deletes the staged
   files of the batch.
3. On start, :meth:`Outputs.recover` rolls every batch without ``.done`` forward (rewriting the same
   parts from the staged files: idempotent), deletes staged files of finished batches, and returns
   the scans that are staged but in no batch, to be published without recomputation.

A scan is committed when it is in a finished batch; a crash at any point leaves each table with all
of a scan's rows or none of them, and a re-run never publishes a scan twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import pyarrow as pa

from mrseg_cohort.errors import StorageError
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import read_table_file, read_table_folder, table_bytes
from mrseg_cohort.redact import redact
from mrseg_cohort.tables import SCHEMAS, empty_table, failures_table

if TYPE_CHECKING:
    from mrseg_cohort.config import JobConfig

log = logging.getLogger(__name__)

ROW_TABLES = ("structures", "intensities", "scans")
"""Tables whose rows a finished scan stages (``scans`` last: it marks the scan as committed)."""

ScanKey = tuple[str, str]


def key_name(key: ScanKey) -> str:
    """File-name-safe, reversible name of a (participant_id, visit) key."""
    return "__".join(urllib.parse.quote(part, safe="") for part in key)


def key_from_name(name: str) -> ScanKey:
    pid, visit = name.split("__", 1)
    return urllib.parse.unquote(pid), urllib.parse.unquote(visit)


@contextlib.contextmanager
def while_doing(what: str) -> Iterator[None]:
    """A storage error raised inside says what the driver was doing (``publishing batch ...: write
    failed: No space left on device (<file>)``)."""
    try:
        yield
    except StorageError as err:
        raise StorageError(f"{what}: {err.message}", err.uri) from err


@dataclass
class RecoveryReport:
    rolled_forward: list[str]
    unpublished: list[ScanKey]
    cleaned: int


class Outputs:
    """Reads and writes one job's output location (any fsspec URI)."""

    def __init__(self, store: Store, root: str):
        self.store = store
        self.root = root.rstrip("/")

    @classmethod
    def for_job(cls, job: "JobConfig") -> "Outputs":
        """The output location of a job config (``output.uri`` with ``output.storage``)."""
        return cls(Store.from_config(job.output.storage), job.output.uri)

    # -- locations ---------------------------------------------------------------------------------
    def label_uri(self, key: ScanKey, contrast: str, model: str, base_model: str = "base") -> str:
        suffix = "" if model == base_model else f".{model}"
        return join_uri(self.root, "labels", key[0], key[1], f"{contrast}{suffix}.nii.gz")

    def stitched_uri(self, key: ScanKey, contrast: str) -> str:
        """Where a stitched image is saved when ``stitching.save_stitched`` is on."""
        return join_uri(self.root, "stitched", key[0], key[1], f"{contrast}.nii.gz")

    def table_uri(self, table: str) -> str:
        return join_uri(self.root, "tables", table)

    def _work(self, *parts: str) -> str:
        return join_uri(self.root, "_work", *parts)

    def staged_uri(self, table: str, key: ScanKey) -> str:
        return self._work("staged", table, key_name(key) + ".parquet")

    # -- worker side -------------------------------------------------------------------------------
    def stage(self, key: ScanKey, tables: dict[str, pa.Table]) -> None:
        """Write a finished scan's rows to the staging area (``scans`` last)."""
        for name in ROW_TABLES:
            self.store.write_bytes(self.staged_uri(name, key), table_bytes(tables[name]))

    # -- driver side -------------------------------------------------------------------------------
    def publish(self, batch_id: str, rows: dict[ScanKey, dict[str, pa.Table]], failures: list[dict]) -> None:
        """Publish a batch: manifest, one part per table (``scans`` last), done mark, cleanup."""
        manifest = {"batch": batch_id, "scans": [list(k) for k in rows], "failures": failures,
                    "written_at": time.time()}
        with while_doing(f"publishing batch {batch_id} (its finished scans stay staged; the next run "
                         "publishes them)"):
            self.store.write_bytes(self._work("batches", f"{batch_id}.json"), json.dumps(manifest).encode())
            self._write_parts(batch_id, rows, failures)
            self._finish(batch_id, list(rows))

    def _write_parts(self, batch_id: str, rows: dict[ScanKey, dict[str, pa.Table]], failures: list[dict]) -> None:
        name = f"part-{batch_id}.parquet"
        if failures:
            self.store.write_bytes(join_uri(self.table_uri("failures"), name), table_bytes(failures_table(failures)))
        if rows:
            for table in ROW_TABLES:
                parts = [r[table] for r in rows.values()]
                merged = pa.concat_tables(parts, promote_options="default").cast(SCHEMAS[table], safe=False) \
                    if parts else empty_table(table)
                self.store.write_bytes(join_uri(self.table_uri(table), name), table_bytes(merged))

    def _finish(self, batch_id: str, keys: list[ScanKey]) -> None:
        self.store.write_bytes(self._work("batches", f"{batch_id}.done"), b"")
        for key in keys:
            for table in ROW_TABLES:
                self.store.remove(self.staged_uri(table, key))

    def read_staged(self, key: ScanKey) -> dict[str, pa.Table]:
        return {t: read_table_file(self.store, self.staged_uri(t, key)) for t in ROW_TABLES}

    def recover(self) -> RecoveryReport:
        """Finish interrupted batches; return staged scans that no batch holds (see module doc).

        Batch manifests of finished batches are read only when staged files remain to be matched
        against them (a cheap listing otherwise, also on object stores).
        """
        batch_files = self.store.list_files(self._work("batches"), recursive=False)
        done = {u.rsplit("/", 1)[-1][:-5] for u in batch_files if u.endswith(".done")}
        manifests = {u.rsplit("/", 1)[-1][:-5]: u for u in batch_files if u.endswith(".json")}
        rolled = []
        for batch_id, uri in sorted(manifests.items()):
            if batch_id in done:
                continue
            manifest = json.loads(self.store.read_bytes(uri))
            keys = [tuple(k) for k in manifest["scans"]]
            rows = {k: self.read_staged(k) for k in keys}  # type: ignore[misc]
            self._write_parts(batch_id, rows, manifest["failures"])
            self._finish(batch_id, keys)  # type: ignore[arg-type]
            rolled.append(batch_id)
            log.info("completed interrupted batch %s (%d scans)", batch_id, len(keys))
        staged = self.staged_keys()
        in_batches: set[ScanKey] = set()
        if staged:
            for batch_id in sorted(done & set(manifests)):
                in_batches.update(tuple(k) for k in json.loads(self.store.read_bytes(manifests[batch_id]))["scans"])
        cleaned = 0
        for key in staged & in_batches:
            for table in ROW_TABLES:
                self.store.remove(self.staged_uri(table, key))
            cleaned += 1
        return RecoveryReport(rolled, sorted(staged - in_batches), cleaned)

    def staged_keys(self) -> set[ScanKey]:
        """Scans whose ``scans`` row is staged (it is written last, so all their rows are)."""
        uris = self.store.list_files(self._work("staged", "scans"), suffix=".parquet", recursive=False)
        return {key_from_name(u.rsplit("/", 1)[-1][: -len(".parquet")]) for u in uris}

    # -- what is there -----------------------------------------------------------------------------
    def committed_keys(self) -> set[ScanKey]:
        """(participant_id, visit) of every scan with published ``scans`` rows."""
        table = read_table_folder(self.store, self.table_uri("scans"), columns=["participant_id", "visit"])
        if table is None or table.num_rows == 0:
            return set()
        return set(zip(table.column("participant_id").to_pylist(), table.column("visit").to_pylist()))

    def failed_attempts(self) -> dict[ScanKey, int]:
        """Number of recorded failed attempts per scan."""
        table = read_table_folder(self.store, self.table_uri("failures"), columns=["participant_id", "visit"])
        out: dict[ScanKey, int] = {}
        if table is not None:
            for key in zip(table.column("participant_id").to_pylist(), table.column("visit").to_pylist()):
                out[key] = out.get(key, 0) + 1
        return out

    def write_run_metadata(self, run_id: str, metadata: dict) -> None:
        """The run record ``_work/runs/<run id>.json`` (credentials masked in any URL it holds)."""
        with while_doing("writing the run record"):
            self.store.write_bytes(self._work("runs", f"{run_id}.json"),
                                   json.dumps(redact(metadata), indent=1, default=str).encode())

    def reset(self) -> None:
        """Delete everything this tool wrote here (labels, tables, work area, stitched images)."""
        for part in ("tables", "labels", "_work", "stitched"):
            self.store.remove(join_uri(self.root, part), recursive=True)

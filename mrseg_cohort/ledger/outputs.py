"""The output folder, and how results are committed exactly once (DESIGN.md section 6).

Layout under the output URI::

    labels/<participant_id>/<visit>/<contrast>.nii.gz           base model labels (uint8)
    labels/<participant_id>/<visit>/<contrast>.<model>.nii.gz   labels of other models
    tables/<table>/part-<batch>.parquet                        what readers read (pd.read_parquet)
    _work/staged/<table>/<unit key>.parquet                    rows of scans done, not yet published
    _work/batches/<batch>.json, <batch>.done                   batch manifests and completion marks
    _work/runs/<run id>.json                                   run metadata
    _work/fingerprint.json                                     what defines the results (fingerprint.py)
    _work/lease/<generation>.json                              the run that holds the output (lease.py)

Protocol (every object is written whole under a deterministic key, see io.storage):

A unit is a scan and the models run on it in one pass (:mod:`mrseg_cohort.work_units`); a scan is
committed for a model when that model's ``scans`` row is published.

1. A worker writes a unit's label files, then its staged rows. Staged rows imply complete labels.
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
from mrseg_cohort.work_units import CommittedKey, ScanKey, UnitKey

if TYPE_CHECKING:
    from mrseg_cohort.config import JobConfig

log = logging.getLogger(__name__)

ROW_TABLES = ("structures", "intensities", "scans")
"""Tables whose rows a finished scan stages (``scans`` last: it marks the scan as committed)."""

FINGERPRINT = "_work/fingerprint.json"


def key_name(key: tuple[str, ...]) -> str:
    """File-name-safe, reversible name of a key ((participant_id, visit[, models]))."""
    return "__".join(urllib.parse.quote(part, safe="") for part in key)


def unit_from_name(name: str) -> UnitKey:
    """The unit key of a staged file's name (names of earlier versions, without models, get "")."""
    parts = [urllib.parse.unquote(p) for p in name.split("__")]
    return (parts[0], parts[1], parts[2] if len(parts) > 2 else "")


def unit_from_list(value: list) -> UnitKey:
    """A unit key as a batch manifest stores it (two-element lists from earlier versions)."""
    return (str(value[0]), str(value[1]), str(value[2]) if len(value) > 2 else "")


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
    unpublished: list[UnitKey]
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

    def staged_uri(self, table: str, key: UnitKey) -> str:
        return self._work("staged", table, key_name(key) + ".parquet")

    # -- worker side -------------------------------------------------------------------------------
    def stage(self, key: UnitKey, tables: dict[str, pa.Table]) -> None:
        """Write a finished unit's rows to the staging area (``scans`` last)."""
        for name in ROW_TABLES:
            self.store.write_bytes(self.staged_uri(name, key), table_bytes(tables[name]))

    # -- driver side -------------------------------------------------------------------------------
    def publish(self, batch_id: str, rows: dict[UnitKey, dict[str, pa.Table]], failures: list[dict]) -> None:
        """Publish a batch: manifest, one part per table (``scans`` last), done mark, cleanup."""
        manifest = {"batch": batch_id, "scans": [list(k) for k in rows], "failures": failures,
                    "written_at": time.time()}
        with while_doing(f"publishing batch {batch_id} (its finished scans stay staged; the next run "
                         "publishes them)"):
            self.store.write_bytes(self._work("batches", f"{batch_id}.json"), json.dumps(manifest).encode())
            self._write_parts(batch_id, rows, failures)
            self._finish(batch_id, list(rows))

    def _write_parts(self, batch_id: str, rows: dict[UnitKey, dict[str, pa.Table]], failures: list[dict]) -> None:
        name = f"part-{batch_id}.parquet"
        if failures:
            self.store.write_bytes(join_uri(self.table_uri("failures"), name), table_bytes(failures_table(failures)))
        if rows:
            for table in ROW_TABLES:
                parts = [r[table] for r in rows.values()]
                merged = pa.concat_tables(parts, promote_options="default").cast(SCHEMAS[table], safe=False) \
                    if parts else empty_table(table)
                self.store.write_bytes(join_uri(self.table_uri(table), name), table_bytes(merged))

    def _finish(self, batch_id: str, keys: list[UnitKey]) -> None:
        self.store.write_bytes(self._work("batches", f"{batch_id}.done"), b"")
        for key in keys:
            self.discard_staged(key)

    def discard_staged(self, key: UnitKey) -> None:
        """Delete a unit's staged rows (published, or found already committed)."""
        for table in ROW_TABLES:
            self.store.remove(self.staged_uri(table, key))

    def read_staged(self, key: UnitKey) -> dict[str, pa.Table]:
        return {t: read_table_file(self.store, self.staged_uri(t, key)) for t in ROW_TABLES}

    def recover(self) -> RecoveryReport:
        """Finish interrupted batches; return staged scans that no batch holds (see module doc).

        Batch manifests of finished batches are read only when staged files remain to be matched
        against them (a cheap listing otherwise, also on object stores).
        """
        done, manifests = self.batches()
        rolled = []
        for batch_id, uri in sorted(manifests.items()):
            if batch_id in done:
                continue
            keys = self.batch_units(batch_id)
            rows = {k: self.read_staged(k) for k in keys}
            self._write_parts(batch_id, rows, json.loads(self.store.read_bytes(uri))["failures"])
            self._finish(batch_id, keys)
            rolled.append(batch_id)
            log.info("completed interrupted batch %s (%d scans)", batch_id, len(keys))
        staged = self.staged_keys()
        in_batches: set[UnitKey] = set()
        if staged:
            for batch_id in sorted(done & set(manifests)):
                in_batches.update(self.batch_units(batch_id))
        cleaned = 0
        for key in staged & in_batches:
            self.discard_staged(key)
            cleaned += 1
        return RecoveryReport(rolled, sorted(staged - in_batches), cleaned)

    def staged_keys(self) -> set[UnitKey]:
        """Units whose ``scans`` rows are staged (written last, so all their rows are)."""
        uris = self.store.list_files(self._work("staged", "scans"), suffix=".parquet", recursive=False)
        return {unit_from_name(u.rsplit("/", 1)[-1][: -len(".parquet")]) for u in uris}

    def batches(self) -> tuple[set[str], dict[str, str]]:
        """(ids of finished batches, batch id -> manifest URI of every batch) from one listing."""
        batch_files = self.store.list_files(self._work("batches"), recursive=False)
        done = {u.rsplit("/", 1)[-1][:-5] for u in batch_files if u.endswith(".done")}
        manifests = {u.rsplit("/", 1)[-1][:-5]: u for u in batch_files if u.endswith(".json")}
        return done, manifests

    def batch_units(self, batch_id: str) -> list[UnitKey]:
        """The units a batch manifest lists."""
        manifest = json.loads(self.store.read_bytes(self._work("batches", f"{batch_id}.json")))
        return [unit_from_list(k) for k in manifest["scans"]]

    # -- what is there -----------------------------------------------------------------------------
    def committed_units(self) -> set[CommittedKey]:
        """(participant_id, visit, model) of every published ``scans`` row."""
        table = read_table_folder(self.store, self.table_uri("scans"), columns=["participant_id", "visit", "model"])
        if table is None or table.num_rows == 0:
            return set()
        return set(zip(*(table.column(c).to_pylist() for c in ("participant_id", "visit", "model"))))

    def committed_keys(self) -> set[ScanKey]:
        """(participant_id, visit) of every scan with at least one published ``scans`` row."""
        return {(pid, visit) for pid, visit, _ in self.committed_units()}

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

    # -- what this tool owns here ----------------------------------------------------------------
    def read_fingerprint(self) -> dict | None:
        """The job fingerprint recorded at the first run (None before it)."""
        try:
            return json.loads(self.store.read_bytes(join_uri(self.root, FINGERPRINT)))
        except FileNotFoundError:
            return None

    def base_model(self, default: str) -> str:
        """The model whose label files carry no suffix and whose rows phenotypes use, as this output
        recorded it at its first run; ``default`` (the job's) before any run."""
        from mrseg_cohort.fingerprint import recorded_base_model

        return recorded_base_model(self.read_fingerprint()) or default

    def write_fingerprint(self, fingerprint: dict) -> None:
        self.store.write_bytes(join_uri(self.root, FINGERPRINT), json.dumps(fingerprint, indent=1).encode())

    def is_ours(self) -> bool:
        """Whether this location is an mrseg-cohort output: it has a fingerprint, or results of an
        earlier version (batches or staged rows); a lease alone is not enough (a run takes it first)."""
        return any(self.store.exists(u) for u in (join_uri(self.root, FINGERPRINT), self._work("batches"),
                                                   self._work("staged")))

    def foreign_entries(self, limit: int = 5) -> list[str]:
        """Up to ``limit`` names at the top of the output that this tool did not put there
        (hidden names are ignored); for refusing a first run into a user's own folder."""
        found = self.store.list_files(self.root, recursive=False) + \
            [join_uri(self.root, d) for d in self.store.list_dirs(self.root)]
        ours = {join_uri(self.root, part) for part in ("_work", "labels", "tables", "stitched")}
        return sorted(u for u in found if u not in ours)[:limit]

    def owned_objects(self, models: list[str], stitched_contrasts: list[str]) -> list[str]:
        """Every object this tool's records say it wrote here: table parts of every batch, the label
        files the published and staged ``scans`` rows name, stitched images and colour tables of
        those scans and models, and the work area's own files but the lease (see :meth:`reset`)."""
        from mrseg_cohort.io.colortables import color_table_uris

        done, manifests = self.batches()
        objects = list(manifests.values()) + [self._work("batches", f"{b}.done") for b in done]
        for batch_id in set(manifests) | done:
            for table in (*ROW_TABLES, "failures"):
                objects.append(join_uri(self.table_uri(table), f"part-{batch_id}.parquet"))
        scans = [read_table_folder(self.store, self.table_uri("scans"), columns=["participant_id", "visit",
                                                                                  "label_uri"])]
        for key in self.staged_keys():
            scans.append(read_table_file(self.store, self.staged_uri("scans", key)).select(
                ["participant_id", "visit", "label_uri"]))
            objects += [self.staged_uri(t, key) for t in ROW_TABLES]
        keys = set()
        for table in scans:
            if table is None:
                continue
            objects += [u for u in table.column("label_uri").to_pylist() if u]
            keys.update(zip(table.column("participant_id").to_pylist(), table.column("visit").to_pylist()))
        objects += [self.stitched_uri(k, c) for k in keys for c in stitched_contrasts]
        for model in models:
            objects += list(color_table_uris(join_uri(self.root, "labels"), model).values())
        objects += self.store.list_files(self._work("runs"), suffix=".json", recursive=False)
        objects.append(join_uri(self.root, FINGERPRINT))  # the lease is not listed: the running job holds it
        return sorted(set(objects))

    def reset(self, models: list[str], stitched_contrasts: list[str]) -> int:
        """Delete what this tool wrote here (:meth:`owned_objects`), nothing else; returns how many
        objects were deleted. A user's own files under ``labels/`` or ``tables/`` stay."""
        objects = self.owned_objects(models, stitched_contrasts)
        for uri in objects:
            self.store.remove(uri)
        self.store.remove_empty_dirs(self.root)
        return len(objects)

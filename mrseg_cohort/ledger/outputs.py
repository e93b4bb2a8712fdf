"""The output folder: where every result goes, and how a batch of them becomes visible exactly once.

Layout under the output URI::

    labels/<participant_id>/<visit>/<contrast>.nii.gz           base model labels (uint8)
    labels/<participant_id>/<visit>/<contrast>.<model>.nii.gz   labels of other models
    tables/<table>/part-<batch>.parquet                        what readers read (pd.read_parquet)
    _work/staged/<table>/<unit key>.parquet                    rows of units done, not yet published
    _work/parts/<batch>/<table>.parquet                        a batch's table parts before they move
    _work/log/<seq>.json, <seq>.done, <seq>.reset              the commit log (:mod:`.log`)
    _work/shards.json                                          how many shards the output is split into
    _work/runs/<run id>.json                                   run metadata
    _work/fingerprint.json                                     what defines the results (:mod:`.fingerprint`)
    _work/lease/<scope>/<generation>.json                      who holds the output (:mod:`.lease`)
    _work/batches/<batch>.json, <batch>.done                   batches of earlier versions (read, finished)
    _work/index/<table>.parquet                                a few columns of every part, in one file
                                                               (a cache checked against the listing:
                                                               :func:`~mrseg_cohort.io.tables.read_indexed_columns`)

Label locations in the tables (``label_uri``) are relative to the output (``labels/...``);
:meth:`Outputs.resolve` turns one into a location to read, also for the absolute locations earlier
versions wrote, so a copied or moved output stays whole.

Protocol (every object is written whole under a deterministic key, see :mod:`mrseg_cohort.io.storage`):

1. A worker writes a unit's label files, then its staged rows (``scans`` last): staged rows imply
   complete labels.
2. The driver publishes a batch: its table parts written whole to ``_work/parts/<batch>/``; then
   its log entry created, after reading every entry before it and leaving out the units they hold
   (the commit point, fenced: :class:`~.log.Fence`); then the parts moved into ``tables/``
   (``scans`` last), ``<seq>.done`` written, and the staged rows of the batch deleted.
3. On start, :meth:`Outputs.recover` finishes every logged batch without ``.done`` (moves what is
   left, or rewrites a part from the staged rows), finishes batches of earlier versions, removes
   the parts of batches never logged by runs no longer live, deletes staged rows of finished
   batches, and returns the units staged but in no batch, to be published without recomputation.

A unit is committed when its batch is logged; a crash at any point leaves each table with all of a
batch's rows or none of them once recovery has run, and no unit is ever published twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from mrseg_cohort.errors import StorageError
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import (read_indexed_columns, read_table_file, read_table_folder, table_bytes,
                                    write_column_index)
from mrseg_cohort.ledger.log import CommitLog, Fence
from mrseg_cohort.ledger.names import key_from_name, key_name, legacy_key_name
from mrseg_cohort.ledger.work_units import CommittedKey, ScanKey, UnitKey, unit_models
from mrseg_cohort.redact import redact
from mrseg_cohort.tables import SCHEMAS, empty_table, failures_table

if TYPE_CHECKING:
    from mrseg_cohort.config import JobConfig

log = logging.getLogger(__name__)

ROW_TABLES = ("structures", "intensities", "scans")
"""Tables whose rows a finished unit stages (``scans`` last: it marks the unit as committed)."""
PUBLISH_ORDER = ("structures", "intensities", "failures", "scans")
"""Order in which a batch's parts move into ``tables/``."""

FINGERPRINT = "_work/fingerprint.json"
INDEXED_COLUMNS = {
    "scans": ("participant_id", "visit", "model"),
    "failures": ("participant_id", "visit", "stage", "error_type", "message", "uri", "attempt", "time"),
}
"""The columns of each table kept in one file beside its parts (``_work/index``): what ``status``
and the start of a run read, one request instead of one per part on an object store."""
OWN_FOLDERS = ("_work", "labels", "tables", "stitched", "agreement")
"""Top-level folders of an output that this tool writes."""


def unit_from_name(name: str) -> UnitKey:
    """The unit key of a staged file's name (names of earlier versions, without models, get "")."""
    parts = key_from_name(name)
    return (parts[0], parts[1], parts[2] if len(parts) > 2 else "")


def unit_from_list(value: list) -> UnitKey:
    """A unit key as a batch manifest of an earlier version stores it."""
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


@dataclass(frozen=True)
class LoggedUnit:
    """A unit as a batch entry holds it: the models published, and those of its staged rows."""

    participant_id: str
    visit: str
    published: str
    staged: str

    @property
    def staged_key(self) -> UnitKey:
        return (self.participant_id, self.visit, self.staged)

    def committed(self) -> set[CommittedKey]:
        return {(self.participant_id, self.visit, m) for m in unit_models((self.participant_id, self.visit,
                                                                             self.published))}

    @classmethod
    def of(cls, value: list) -> "LoggedUnit":
        pid, visit, published = str(value[0]), str(value[1]), str(value[2])
        return cls(pid, visit, published, str(value[3]) if len(value) > 3 else published)


def committed_by(entries: Iterable[dict]) -> set[CommittedKey]:
    """(participant_id, visit, model) of every unit the batch entries among ``entries`` publish."""
    out: set[CommittedKey] = set()
    for entry in entries:
        if entry.get("kind") == "batch":
            for value in entry.get("units", []):
                out |= LoggedUnit.of(value).committed()
    return out


def rows_of_models(tables: dict[str, pa.Table], models: tuple[str, ...]) -> dict[str, pa.Table]:
    """A unit's staged tables with only the rows of ``models``."""
    keep = pa.array(list(models), pa.string())
    return {name: table.filter(pc.is_in(table.column("model"), value_set=keep)) for name, table in tables.items()}


class Outputs:
    """Reads and writes one job's output location (any fsspec URI)."""

    def __init__(self, store: Store, root: str):
        self.store = store
        self.root = root.rstrip("/")
        self.log = CommitLog(store, self.root)

    @classmethod
    def for_job(cls, job: "JobConfig") -> "Outputs":
        """The output location of a job config (``output.uri`` with ``output.storage``)."""
        return cls(Store.from_config(job.output.storage), job.output.uri)

    # -- locations ---------------------------------------------------------------------------------
    def label_uri(self, key: ScanKey, contrast: str, model: str, base_model: str = "base") -> str:
        """Where a label map goes (a full location, for writing)."""
        return join_uri(self.root, self.label_path(key, contrast, model, base_model))

    @staticmethod
    def label_path(key: ScanKey, contrast: str, model: str, base_model: str = "base") -> str:
        """A label map's location relative to the output, as the tables record it."""
        suffix = "" if model == base_model else f".{model}"
        return f"labels/{key[0]}/{key[1]}/{contrast}{suffix}.nii.gz"

    def resolve(self, recorded: str) -> str:
        """The location to read of a ``label_uri`` as a table records it: relative to the output
        (this version), or absolute (earlier versions: its ``labels/<participant>/<visit>/<file>``
        tail is taken under this output, so a copied or moved output reads its own files)."""
        if not recorded:
            return recorded
        if "://" not in recorded and not os.path.isabs(recorded):
            return join_uri(self.root, recorded)
        parts = recorded.rstrip("/").split("/")
        if len(parts) >= 4 and parts[-4] == "labels":
            return join_uri(self.root, *parts[-4:])
        return recorded

    def contains(self, uri: str) -> bool:
        """Whether ``uri`` lies inside this output (resolved: symbolic links followed)."""
        return self.store.contains(self.root, uri)

    def stitched_uri(self, key: ScanKey, contrast: str) -> str:
        """Where a stitched image is saved when ``stitching.save_stitched`` is on."""
        return join_uri(self.root, "stitched", key[0], key[1], f"{contrast}.nii.gz")

    def table_uri(self, table: str) -> str:
        return join_uri(self.root, "tables", table)

    def _work(self, *parts: str) -> str:
        return join_uri(self.root, "_work", *parts)

    def staged_uri(self, table: str, key: UnitKey) -> str:
        return self._work("staged", table, key_name(key) + ".parquet")

    def _staged_uris(self, table: str, key: UnitKey) -> list[str]:
        """The staged file of ``key`` under this version's name and under an earlier version's."""
        legacy = self._work("staged", table, legacy_key_name(key) + ".parquet")
        own = self.staged_uri(table, key)
        return [own] if legacy == own else [own, legacy]

    def part_uri(self, batch_id: str, table: str) -> str:
        """Where a batch's part of ``table`` is written before it moves into ``tables/``."""
        return self._work("parts", batch_id, f"{table}.parquet")

    def published_part_uri(self, batch_id: str, table: str) -> str:
        return join_uri(self.table_uri(table), f"part-{batch_id}.parquet")

    def index_uri(self, table: str) -> str:
        return self._work("index", f"{table}.parquet")

    # -- worker side -------------------------------------------------------------------------------
    def stage(self, key: UnitKey, tables: dict[str, pa.Table]) -> None:
        """Write a finished unit's rows to the staging area (``scans`` last)."""
        for name in ROW_TABLES:
            self.store.write_bytes(self.staged_uri(name, key), table_bytes(tables[name]))

    # -- driver side -------------------------------------------------------------------------------
    def publish(self, batch_id: str, rows: dict[UnitKey, dict[str, pa.Table]], failures: list[dict],
                fence: Fence, committed: set[CommittedKey]) -> tuple[int | None, int]:
        """Publish a batch (module docstring, step 2); returns its log number (None when nothing of
        it was left to publish) and the number of units it published. ``committed`` is updated with
        every unit the log holds.

        Raises:
            LeaseLost: the run was fenced (nothing of the batch is visible).
            StorageError: a write failed (a full disk: nothing of the batch is visible; its units
                stay staged and the next run publishes them).
        """
        with while_doing(f"publishing batch {batch_id} (its finished scans stay staged; the next run "
                         "publishes them)"):
            written: tuple | None = None
            while True:
                committed |= committed_by(fence.catch_up())
                units = self._unpublished(rows, committed)
                if not units and not failures:
                    self._discard_units(rows)
                    self._remove_parts(batch_id)
                    return None, 0
                shape = tuple(sorted((k, u.published) for k, (u, _) in units.items()))
                if shape != written:
                    tables = self._write_parts(batch_id, {k: t for k, (_, t) in units.items()}, failures)
                    written = shape
                entry = {"kind": "batch", "batch": batch_id, "failures": failures, "tables": tables,
                         "units": [[u.participant_id, u.visit, u.published, u.staged] for u, _ in units.values()]}
                seq = fence.try_append(entry)
                if seq is not None:
                    break
            committed |= committed_by([entry])
            self._finish(seq, batch_id, tables, [u for u, _ in units.values()])
            self._discard_units(k for k in rows if k not in units)
        return seq, len(units)

    def _unpublished(self, rows: dict[UnitKey, dict[str, pa.Table]],
                     committed: set[CommittedKey]) -> dict[UnitKey, tuple[LoggedUnit, dict[str, pa.Table]]]:
        """The units of ``rows`` with the models not yet committed (a unit of two models of which
        one is committed publishes the other's rows only)."""
        out = {}
        for key, tables in rows.items():
            models = unit_models(key)
            left = tuple(m for m in models if (key[0], key[1], m) not in committed)
            if not left:
                log.warning("%s/%s (%s) is already committed; not publishing it twice", key[0], key[1], key[2])
                continue
            if left != models:
                log.warning("%s/%s: %s already committed; publishing %s only", key[0], key[1],
                            "+".join(m for m in models if m not in left), "+".join(left))
                tables = rows_of_models(tables, left)
            out[key] = (LoggedUnit(key[0], key[1], "+".join(left), key[2]), tables)
        return out

    def _write_parts(self, batch_id: str, rows: dict[UnitKey, dict[str, pa.Table]], failures: list[dict]) -> list[str]:
        """The batch's parts written whole under ``_work/parts/<batch>/``; returns their tables."""
        written = []
        if rows:
            for table in ROW_TABLES:
                parts = [r[table] for r in rows.values()]
                merged = pa.concat_tables(parts, promote_options="default").cast(SCHEMAS[table], safe=False) \
                    if parts else empty_table(table)
                self.store.write_bytes(self.part_uri(batch_id, table), table_bytes(merged))
                written.append(table)
        if failures:
            self.store.write_bytes(self.part_uri(batch_id, "failures"), table_bytes(failures_table(failures)))
            written.append("failures")
        return [t for t in PUBLISH_ORDER if t in written]

    def _finish(self, seq: int, batch_id: str, tables: list[str], units: list[LoggedUnit],
                failures: list[dict] | None = None) -> None:
        """Move a logged batch's parts into ``tables/`` (``scans`` last), mark it done, delete its
        staged rows and its parts folder. Idempotent, also beside another process finishing the same
        batch: a part already moved is left, a part lost from ``_work/parts`` is written again from
        the staged rows (unless the other process finished the batch meanwhile)."""
        for table in PUBLISH_ORDER:
            if table not in tables:
                continue
            source, target = self.part_uri(batch_id, table), self.published_part_uri(batch_id, table)
            if self.store.exists(source):
                self.store.move(source, target)
            elif not self.store.exists(target):
                try:
                    part = self._part_from_staged(table, units, failures)
                except FileNotFoundError:
                    if self.store.exists(target) or self.store.exists(self.log.uri(seq, ".done")):
                        continue  # finished by the other process in between
                    raise
                self.store.write_bytes(target, table_bytes(part))
        self.log.mark_done(seq)
        self._discard_units(u.staged_key for u in units)
        self._remove_parts(batch_id)

    def _part_from_staged(self, table: str, units: list[LoggedUnit], failures: list[dict] | None) -> pa.Table:
        if table == "failures":
            return failures_table(failures or [])
        parts = [rows_of_models({table: read_table_file(self.store, self._existing_staged(table, u.staged_key))},
                                unit_models(u.staged_key[:2] + (u.published,)))[table] for u in units]
        return pa.concat_tables(parts, promote_options="default").cast(SCHEMAS[table], safe=False) \
            if parts else empty_table(table)

    def _existing_staged(self, table: str, key: UnitKey) -> str:
        for uri in self._staged_uris(table, key):
            if self.store.exists(uri):
                return uri
        raise FileNotFoundError(f"the staged rows of {key[0]}/{key[1]} ({key[2]}) are gone: {self.staged_uri(table, key)}")

    def _remove_parts(self, batch_id: str) -> None:
        for table in PUBLISH_ORDER:
            self.store.remove(self.part_uri(batch_id, table))
        self.store.remove_empty_dirs(self._work("parts"))

    def _discard_units(self, keys: Iterable[UnitKey]) -> None:
        for key in keys:
            self.discard_staged(key)

    def discard_staged(self, key: UnitKey) -> None:
        """Delete a unit's staged rows (published, or found already committed)."""
        for table in ROW_TABLES:
            for uri in self._staged_uris(table, key):
                self.store.remove(uri)

    def read_staged(self, key: UnitKey) -> dict[str, pa.Table]:
        return {t: read_table_file(self.store, self._existing_staged(t, key)) for t in ROW_TABLES}

    def recover(self, live_runs: set[str] = frozenset(), mine: Callable[[ScanKey], bool] = lambda key: True
                ) -> RecoveryReport:
        """Finish interrupted batches; return the staged units no batch holds (module doc, step 3).

        Args:
            live_runs: ids of runs holding a lease now (their unfinished batches and unlogged parts
                are theirs to finish, not left over).
            mine: which scans this run may publish (its shard's); others' staged units stay.
        """
        rolled = self._finish_legacy_batches()
        numbers, done = self.log.listing()
        for entry in self.log.read_many([n for n in numbers if n not in done]):
            if entry.get("kind") != "batch" or entry.get("run_id") in live_runs:
                continue
            units = [LoggedUnit.of(u) for u in entry.get("units", [])]
            self._finish(entry["seq"], entry["batch"], entry.get("tables", []), units, entry.get("failures"))
            rolled.append(entry["batch"])
            log.info("completed interrupted batch %s (%d scans)", entry["batch"], len(units))
        staged = self.staged_keys()
        leftovers = self.store.list_dirs(self._work("parts"))
        entries = self.log.all_entries() if (staged or leftovers) else []
        in_batches = {LoggedUnit.of(u).staged_key for e in entries if e.get("kind") == "batch"
                      for u in e.get("units", [])}
        if staged:
            legacy_done, manifests = self.batches()
            for batch_id in sorted(legacy_done & set(manifests)):
                in_batches.update(self.batch_units(batch_id))
        logged = {e.get("batch") for e in entries if e.get("kind") == "batch"}
        for batch_id in leftovers:  # parts of batches never logged: their run died before its commit point
            if batch_id not in logged and batch_id.rsplit("-", 1)[0] not in live_runs:
                self._remove_parts(batch_id)
        cleaned = 0
        for key in staged & in_batches:
            self.discard_staged(key)
            cleaned += 1
        unpublished = sorted(k for k in staged - in_batches if mine((k[0], k[1])))
        stale = self.log.fenced_by_reset() if unpublished else set()
        if stale:
            for key in list(unpublished):
                runs = set(read_table_file(self.store, self._existing_staged("scans", key), columns=["run_id"])
                           .column("run_id").to_pylist())
                if runs & stale:  # staged by a run the output's --restart fenced: results of the old output
                    log.warning("%s/%s (%s): staged by run %s before the output was restarted; discarded",
                                key[0], key[1], key[2], ", ".join(sorted(runs & stale)))
                    self.discard_staged(key)
                    unpublished.remove(key)
        return RecoveryReport(rolled, unpublished, cleaned)

    def _finish_legacy_batches(self) -> list[str]:
        """Batches of earlier versions (``_work/batches``) without their done mark: rewritten from
        the staged rows, as those versions did."""
        done, manifests = self.batches()
        rolled = []
        for batch_id, uri in sorted(manifests.items()):
            if batch_id in done:
                continue
            keys = self.batch_units(batch_id)
            units = [LoggedUnit(k[0], k[1], k[2], k[2]) for k in keys]
            manifest = json.loads(self.store.read_bytes(uri))
            tables = [t for t in PUBLISH_ORDER if t != "failures" or manifest.get("failures")] if keys else \
                (["failures"] if manifest.get("failures") else [])
            for table in tables:
                self.store.write_bytes(self.published_part_uri(batch_id, table),
                                       table_bytes(self._part_from_staged(table, units, manifest.get("failures"))))
            self.store.write_bytes(self._work("batches", f"{batch_id}.done"), b"")
            self._discard_units(keys)
            rolled.append(batch_id)
        return rolled

    def staged_keys(self) -> set[UnitKey]:
        """Units whose ``scans`` rows are staged (written last, so all their rows are)."""
        uris = self.store.list_files(self._work("staged", "scans"), suffix=".parquet", recursive=False)
        return {unit_from_name(u.rsplit("/", 1)[-1][: -len(".parquet")]) for u in uris}

    def batches(self) -> tuple[set[str], dict[str, str]]:
        """Batches of earlier versions: (ids finished, batch id -> manifest URI), from one listing."""
        batch_files = self.store.list_files(self._work("batches"), recursive=False)
        done = {u.rsplit("/", 1)[-1][:-5] for u in batch_files if u.endswith(".done")}
        manifests = {u.rsplit("/", 1)[-1][:-5]: u for u in batch_files if u.endswith(".json")}
        return done, manifests

    def batch_units(self, batch_id: str) -> list[UnitKey]:
        """The units a batch manifest of an earlier version lists."""
        manifest = json.loads(self.store.read_bytes(self._work("batches", f"{batch_id}.json")))
        return [unit_from_list(k) for k in manifest["scans"]]

    # -- what is there -----------------------------------------------------------------------------
    def read_indexed(self, table: str, columns: Iterable[str]) -> pa.Table | None:
        """``columns`` (some of :data:`INDEXED_COLUMNS`) of every published part of ``table``,
        taken from the index where it covers a part (None if there are no parts)."""
        return read_indexed_columns(self.store, self.table_uri(table), self.index_uri(table), list(columns),
                                    SCHEMAS[table])

    def refresh_indexes(self) -> None:
        """Rewrite the index of each table in :data:`INDEXED_COLUMNS` to cover every part there now.
        A cache: a failure to write it is a warning (readers then read more parts), never an error."""
        for table, columns in INDEXED_COLUMNS.items():
            try:
                write_column_index(self.store, self.table_uri(table), self.index_uri(table), list(columns),
                                   SCHEMAS[table])
            except (OSError, ValueError, pa.ArrowException) as err:  # StorageError is an OSError
                log.warning("could not update the index of %s (%s); readers read its parts instead", table, err)

    def committed_units(self) -> set[CommittedKey]:
        """(participant_id, visit, model) of every published ``scans`` row."""
        table = self.read_indexed("scans", ["participant_id", "visit", "model"])
        if table is None or table.num_rows == 0:
            return set()
        return set(zip(*(table.column(c).to_pylist() for c in ("participant_id", "visit", "model"))))

    def committed_keys(self) -> set[ScanKey]:
        """(participant_id, visit) of every scan with at least one published ``scans`` row."""
        return {(pid, visit) for pid, visit, _ in self.committed_units()}

    def failed_attempts(self) -> dict[ScanKey, int]:
        """Number of recorded failed attempts per scan."""
        table = self.read_indexed("failures", ["participant_id", "visit"])
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
        from mrseg_cohort.ledger.fingerprint import recorded_base_model

        return recorded_base_model(self.read_fingerprint()) or default

    def write_fingerprint(self, fingerprint: dict) -> None:
        self.store.write_bytes(join_uri(self.root, FINGERPRINT), json.dumps(fingerprint, indent=1).encode())

    def is_ours(self) -> bool:
        """Whether this location is an mrseg-cohort output: it has a fingerprint, or results of an
        earlier version (batches or staged rows); a lease alone is not enough (a run takes it first)."""
        return any(self.store.exists(u) for u in (join_uri(self.root, FINGERPRINT), self._work("batches"),
                                                   self._work("log"), self._work("staged")))

    def foreign_entries(self, limit: int = 5) -> list[str]:
        """Up to ``limit`` names at the top of the output that this tool did not put there
        (hidden names are ignored); for refusing a first run into a user's own folder."""
        found = self.store.list_files(self.root, recursive=False) + \
            [join_uri(self.root, d) for d in self.store.list_dirs(self.root)]
        ours = {join_uri(self.root, part) for part in OWN_FOLDERS}
        return sorted(u for u in found if u not in ours)[:limit]

    def owned_objects(self, models: list[str], stitched_contrasts: list[str]) -> list[str]:
        """Every object this tool's records say it wrote here, and only inside this output: table
        parts of every batch, the label files of the published and staged ``scans`` rows (where
        this output's layout puts them, whatever a row says), stitched images and colour tables,
        agreement tables, and the work area's files but the lease (see :meth:`reset`)."""
        from mrseg_cohort.io.colortables import color_table_uris

        done, manifests = self.batches()
        objects = list(manifests.values()) + [self._work("batches", f"{b}.done") for b in done]
        batch_ids = set(manifests) | done
        # the commit log stays (its numbers keep counting, and runs that held the output before the
        # restart are fenced by the reset entry the restarting run writes): only its batches go
        for entry in self.log.read_many(self.log.numbers()):
            if entry.get("kind") == "batch":
                batch_ids.add(entry["batch"])
        for batch_id in batch_ids:
            for table in PUBLISH_ORDER:
                objects += [self.published_part_uri(batch_id, table), self.part_uri(batch_id, table)]
        for batch_id in self.store.list_dirs(self._work("parts")):
            objects += [self.part_uri(batch_id, table) for table in PUBLISH_ORDER]
        columns = ["participant_id", "visit", "contrast", "model", "label_uri"]
        scans = [read_table_folder(self.store, self.table_uri("scans"), columns=columns)]
        for key in self.staged_keys():
            scans.append(read_table_file(self.store, self._existing_staged("scans", key)).select(columns))
            objects += [u for t in ROW_TABLES for u in self._staged_uris(t, key)]
        base = self.base_model("base")
        keys = set()
        for table in scans:
            if table is None:
                continue
            for pid, visit, contrast, model, recorded in zip(*(table.column(c).to_pylist() for c in columns)):
                keys.add((pid, visit))
                objects.append(self.label_uri((pid, visit), contrast, model, base))
                if recorded:
                    objects.append(self.resolve(recorded))
        objects += [self.stitched_uri(k, c) for k in keys for c in stitched_contrasts]
        for model in models:
            objects += list(color_table_uris(join_uri(self.root, "labels"), model).values())
        objects += self.store.list_files(self._work("runs"), suffix=".json", recursive=False)
        objects += self.store.list_files(self._work("index"), suffix=".parquet", recursive=False)
        objects += self.store.list_files(join_uri(self.root, "agreement"), suffix=".parquet", recursive=False)
        objects += [join_uri(self.root, FINGERPRINT), self._work("shards.json")]  # not the lease: the run holds it
        contains = self.store.within(self.root)
        inside = [u for u in set(objects) if contains(u)]
        outside = len(set(objects)) - len(inside)
        if outside:
            log.warning("%d location(s) recorded in %s lie outside it (a copied output, or an edited table); "
                        "they are left alone", outside, self.root)
        return sorted(inside)

    def reset(self, models: list[str], stitched_contrasts: list[str]) -> int:
        """Delete what this tool wrote here (:meth:`owned_objects`), nothing else and nothing outside
        the output; returns how many objects were deleted. A user's own files under ``labels/`` or
        ``tables/`` stay."""
        objects = self.owned_objects(models, stitched_contrasts)
        deleted = 0
        for uri in objects:
            if self.store.exists(uri):
                self.store.remove(uri)
                deleted += 1
        for folder in OWN_FOLDERS:  # the folders this tool made, emptied; a user's own empty folder elsewhere stays
            self.store.remove_empty_dirs(join_uri(self.root, folder))
        return deleted

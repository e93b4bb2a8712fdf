"""Batches finished scans and failures into table parts (fewer, larger Parquet files).

A batch is published when it holds ``commit_every`` units, when ``commit_interval_s`` seconds have
passed since the last publication, and at the end of a run. Published batches are exactly-once
(see :mod:`mrseg_cohort.outputs`); until then, finished scans are safe in the staging area.

Before each publication two guards run: the run must still hold the output's lease (``guard``,
raising when it was taken over), and no unit of the batch may be committed already, by this run or
by a batch another run finished meanwhile (the publisher knows the committed scans at start and
reads only the manifests of batches finished since: one listing per publication).
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import pyarrow as pa

from mrseg_cohort.outputs import Outputs
from mrseg_cohort.work_units import CommittedKey, UnitKey, unit_models

log = logging.getLogger(__name__)


class BatchPublisher:
    def __init__(self, outputs: Outputs, run_id: str, commit_every: int, commit_interval_s: float,
                 committed: set[CommittedKey] | None = None, guard: Callable[[], None] = lambda: None):
        self.outputs = outputs
        self.run_id = run_id
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self.guard = guard
        self.committed: set[CommittedKey] = set(committed or ())
        self.known_batches, _ = outputs.batches()
        self.rows: dict[UnitKey, dict[str, pa.Table]] = {}
        self.failures: list[dict] = []
        self.sequence = 0
        self.published_units = 0
        self.last_flush = time.monotonic()

    def add_rows(self, key: UnitKey, tables: dict[str, pa.Table]) -> None:
        self.rows[key] = tables
        if len(self.rows) >= self.commit_every:
            self.flush()

    def add_failure(self, record: dict) -> None:
        self.failures.append(record)

    def maybe_flush(self) -> None:
        if (self.rows or self.failures) and time.monotonic() - self.last_flush >= self.commit_interval_s:
            self.flush()

    def flush(self) -> None:
        """Publish what is pending (nothing to do when empty)."""
        self.last_flush = time.monotonic()
        if not self.rows and not self.failures:
            return
        self.guard()
        self._drop_already_committed()
        self.sequence += 1
        batch_id = f"{self.run_id}-{self.sequence:05d}"
        self.outputs.publish(batch_id, self.rows, self.failures)
        self.known_batches.add(batch_id)
        self.committed.update((k[0], k[1], m) for k in self.rows for m in unit_models(k))
        self.published_units += len(self.rows)
        log.info("published batch %s: %d scans, %d failures", batch_id, len(self.rows), len(self.failures))
        self.rows, self.failures = {}, []

    def _drop_already_committed(self) -> None:
        done, _ = self.outputs.batches()
        for batch_id in sorted(done - self.known_batches):  # finished by another run since we started
            for key in self.outputs.batch_units(batch_id):
                self.committed.update((key[0], key[1], m) for m in unit_models(key))
            self.known_batches.add(batch_id)
        for key in list(self.rows):
            if any((key[0], key[1], m) in self.committed for m in unit_models(key)):
                log.warning("%s/%s (%s) is already committed; not publishing it twice", key[0], key[1], key[2])
                del self.rows[key]
                self.outputs.discard_staged(key)

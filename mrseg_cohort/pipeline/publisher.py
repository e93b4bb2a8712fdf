"""Batches finished scans and failures into table parts (fewer, larger Parquet files).

A batch is published when it holds ``commit_every`` scans, when ``commit_interval_s`` seconds have
passed since the last publication, and at the end of a run. Published batches are exactly-once
(see :mod:`mrseg_cohort.outputs`); until then, finished scans are safe in the staging area.
"""

from __future__ import annotations

import logging
import time

import pyarrow as pa

from mrseg_cohort.outputs import Outputs, ScanKey

log = logging.getLogger(__name__)


class BatchPublisher:
    def __init__(self, outputs: Outputs, run_id: str, commit_every: int, commit_interval_s: float):
        self.outputs = outputs
        self.run_id = run_id
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self.rows: dict[ScanKey, dict[str, pa.Table]] = {}
        self.failures: list[dict] = []
        self.sequence = 0
        self.last_flush = time.monotonic()

    def add_rows(self, key: ScanKey, tables: dict[str, pa.Table]) -> None:
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
        self.sequence += 1
        batch_id = f"{self.run_id}-{self.sequence:05d}"
        self.outputs.publish(batch_id, self.rows, self.failures)
        log.info("published batch %s: %d scans, %d failures", batch_id, len(self.rows), len(self.failures))
        self.rows, self.failures = {}, []

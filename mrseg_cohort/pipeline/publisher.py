"""Batches finished scans and failures into table parts (fewer, larger Parquet files).

A batch is published when it holds ``commit_every`` units, when ``commit_interval_s`` seconds have
passed since the last publication, and at the end of a run. Publication is the output ledger's
(:meth:`~mrseg_cohort.ledger.outputs.Outputs.publish`): fenced by the run's place in the commit log,
so a run that lost its lease publishes nothing, and leaving out every unit the log already holds,
by this run or by any other. Until then, finished scans are safe in the staging area.

Every :data:`INDEX_EVERY` publications, and after the last one of a run that ends normally (not
stopped, no error), the output's indexes are brought up to date
(:meth:`~mrseg_cohort.ledger.outputs.Outputs.refresh_indexes`), so that ``status`` and the next run
read one file and the few parts published since, not every part.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

import pyarrow as pa

from mrseg_cohort.ledger.log import Fence
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.ledger.work_units import CommittedKey, UnitKey

log = logging.getLogger(__name__)

INDEX_EVERY = 20
"""Publications between two updates of the output's indexes."""


class BatchPublisher:
    """Collects a run's finished units and failure rows and publishes them in batches.

    Args:
        outputs: the output.
        run_id: this run's id (batch ids are ``<run id>-<sequence>``).
        commit_every, commit_interval_s: see the module docstring.
        fence: this run's place in the commit log (its lease's epoch).
        committed: (participant_id, visit, model) committed when the run started.
        guard: called before each publication (the lease's check: an early, cheap stop).
        stopping: whether the run is stopping (then the indexes are left to the next run: a stop
            publishes what finished and ends, nothing more).
    """

    def __init__(self, outputs: Outputs, run_id: str, commit_every: int, commit_interval_s: float, fence: Fence,
                 committed: set[CommittedKey] | None = None, guard: Callable[[], None] = lambda: None,
                 stopping: Callable[[], bool] = lambda: False):
        self.outputs = outputs
        self.run_id = run_id
        self.commit_every = commit_every
        self.commit_interval_s = commit_interval_s
        self.fence = fence
        self.guard = guard
        self.stopping = stopping
        self.committed: set[CommittedKey] = set(committed or ())
        self.rows: dict[UnitKey, dict[str, pa.Table]] = {}
        self.failures: list[dict] = []
        self.sequence = 0
        self.published_units = 0
        self.unindexed = 0  # publications since this run last updated the indexes
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

    def flush(self, final: bool = False) -> None:
        """Publish what is pending (nothing to do when empty); ``final``: the last publication of a
        run that ends normally (the indexes are then updated if it published anything since it last
        did them).

        Raises:
            LeaseLost: the run no longer holds its lease (nothing of the batch is published).
        """
        self.last_flush = time.monotonic()
        if self.rows or self.failures:
            self._publish()
        if self.unindexed and (final or self.unindexed >= INDEX_EVERY) and not self.stopping():
            self.outputs.refresh_indexes()
            self.unindexed = 0

    def _publish(self) -> None:
        self.guard()
        self.sequence += 1
        batch_id = f"{self.run_id}-{self.sequence:05d}"
        seq, published = self.outputs.publish(batch_id, self.rows, self.failures, self.fence, self.committed)
        self.published_units += published
        if seq is not None:
            log.info("published batch %s (log %d): %d scans, %d failures", batch_id, seq, published,
                     len(self.failures))
            self.unindexed += 1
        self.rows, self.failures = {}, []

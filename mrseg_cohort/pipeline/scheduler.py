"""The driver loop: scans through read -> segment -> finish, a bounded number at a time.

Every scan in flight is counted, whatever its stage (loading, waiting for an actor, segmenting,
finishing), so the driver's memory and the object store hold at most ``cpu_workers`` plus what the
ready actors can take; the bound grows with the actor pool. Image references go from task to actor
to task: arrays never pass through the driver. Each per-scan error becomes a ``failures`` row and
the loop goes on; finished scans go to the publisher. A stop request (a signal, a lost lease) ends
the loop at once: scans not finished are left for the next run.
"""

from __future__ import annotations

import contextlib
import logging
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from mrseg_cohort.errors import ScanError
from mrseg_cohort.pipeline.actor_pool import ActorPool, actor_died, first_line
from mrseg_cohort.pipeline.publisher import BatchPublisher
from mrseg_cohort.pipeline.signals import StopRequest
from mrseg_cohort.ledger.work_units import ScanUnit

log = logging.getLogger(__name__)


@dataclass
class RunSummary:
    """Counts of one run (scans = participant x visit)."""

    run_id: str
    output_uri: str
    in_manifest: int = 0
    already_done: int = 0
    scheduled: int = 0
    done: int = 0
    failed: int = 0
    republished: int = 0
    device: str = ""
    seconds: float = 0.0
    interrupted_by: str = ""
    """``SIGINT`` or ``SIGTERM`` when a signal stopped the run (exit status 130 or 143)."""
    published: int = 0
    """Scans this run published (including those an earlier run had staged)."""
    failures: list[dict] = field(default_factory=list)

    @property
    def failures_uri(self) -> str:
        return self.output_uri.rstrip("/") + "/tables/failures"


ProgressFn = Callable[[RunSummary], None]


class FailureLog:
    """Turns a failed scan into a ``failures`` row (numbered attempts) and counts it."""

    def __init__(self, run_id: str, publisher: BatchPublisher, summary: RunSummary, attempts: dict):
        self.run_id, self.publisher, self.summary, self.attempts = run_id, publisher, summary, attempts

    def record(self, unit: ScanUnit, stage: str, error_type: str, message: str, uri: str = "") -> None:
        source = unit.source
        attempt = self.attempts.get(source.key, 0) + 1
        self.attempts[source.key] = attempt
        row = {"participant_id": source.participant_id, "visit": source.visit, "stage": stage,
               "error_type": error_type, "message": message, "uri": uri, "attempt": attempt,
               "time": time.time(), "run_id": self.run_id, "models": ",".join(unit.models)}
        self.publisher.add_failure(row)
        self.summary.failed += 1
        self.summary.failures.append(row)
        log.warning("FAILED %s/%s [%s] %s: %s%s", source.participant_id, source.visit, stage, error_type, message,
                    f" ({uri})" if uri else "")


@dataclass
class _InFlight:
    unit: ScanUnit
    loaded_ref: object = None
    inputs_ref: object = None
    segs_ref: object = None
    actor: int | None = None
    lost_actors: int = 0
    started: float = field(default_factory=time.time)


MAX_LOST_ACTORS = 3
"""A scan whose actor died this often is failed rather than handed to yet another actor."""


class Scheduler:
    """Runs units through the stages (see module docstring)."""

    def __init__(self, ctx_ref, tasks: dict, pool: ActorPool, publisher: BatchPublisher, failures: FailureLog,
                 summary: RunSummary, cpu_workers: Callable[[], int], stop: StopRequest,
                 progress: ProgressFn | None = None):
        self.ctx_ref, self.tasks, self.pool, self.publisher = ctx_ref, tasks, pool, publisher
        self.failures, self.summary, self.cpu_workers, self.stop = failures, summary, cpu_workers, stop
        self.progress = progress
        self.loading: dict = {}     # status ref -> in flight
        self.waiting: deque = deque()  # loaded, waiting for an actor
        self.segmenting: dict = {}  # status ref -> in flight (with its actor)
        self.finishing: dict = {}   # result ref -> in flight

    @property
    def in_flight(self) -> int:
        return len(self.loading) + len(self.waiting) + len(self.segmenting) + len(self.finishing)

    @property
    def max_in_flight(self) -> int:
        """CPU workers' worth of scans being read or finished, plus what the ready actors hold."""
        return self.cpu_workers() + self.pool.capacity

    def run(self, units: list[ScanUnit]) -> None:
        queue = deque(units)
        while (queue or self.in_flight) and not self.stop.is_set():
            self.pool.poll()
            while queue and self.in_flight < self.max_in_flight:
                self._load(queue.popleft())
            while self.waiting:
                i = self.pool.acquire()
                if i is None:
                    break
                self._segment(self.waiting.popleft(), i)
            self._collect(timeout=1.0)
            self.publisher.maybe_flush()
        if self.stop.is_set():  # finished scans are published (the run adopts the staged ones); the rest waits
            log.warning("stopping (%s) with %d scan(s) unfinished: the next run does them", self.stop.reason,
                        self.in_flight + len(queue))

    # -- the stages -------------------------------------------------------------------------------
    def _load(self, unit: ScanUnit) -> None:
        status_ref, loaded_ref, inputs_ref = self.tasks["load"].remote(self.ctx_ref, unit)
        self.loading[status_ref] = _InFlight(unit, loaded_ref, inputs_ref)

    def _segment(self, item: _InFlight, i: int) -> None:
        item.actor = i
        status_ref, item.segs_ref = self.pool.handle(i).segment.options(num_returns=2).remote(
            item.inputs_ref, item.unit.source.modality, item.unit.models)
        self.segmenting[status_ref] = item

    def _collect(self, timeout: float) -> None:
        import ray

        pending = [*self.loading, *self.segmenting, *self.finishing]
        if not pending:
            if timeout:
                time.sleep(min(timeout, 0.2))
            return
        ready, _ = ray.wait(pending, num_returns=len(pending), timeout=timeout)
        for ref in ready:
            if ref in self.loading:
                item = self.loading.pop(ref)
                if self._status(ref, item, "read"):
                    self.waiting.append(item)
            elif ref in self.segmenting:
                item = self.segmenting.pop(ref)
                if self._actor_lost(ref, item):
                    continue
                ok, scan_fault = self._segment_status(ref, item)
                self.pool.release(item.actor, segment_failed=not ok and not scan_fault)  # type: ignore[arg-type]
                if ok:
                    self.finishing[self.tasks["finish"].remote(self.ctx_ref, item.unit, item.loaded_ref,
                                                               item.segs_ref)] = item
            else:
                item = self.finishing.pop(ref)
                result = self._status(ref, item, "finish")
                if result:
                    self.publisher.add_rows(item.unit.key, result["tables"])
                    self.summary.done += 1
                    log.info("done %s/%s (%s) in %.1f s (%d/%d)", item.unit.source.participant_id,
                             item.unit.source.visit, "+".join(item.unit.models), time.time() - item.started,
                             self.summary.done + self.summary.failed, self.summary.scheduled)
            if self.progress:
                self.progress(self.summary)

    def _actor_lost(self, ref, item: _InFlight) -> bool:
        """When the scan's actor died (process or node), the pool replaces it and the scan waits for
        another actor; True if so (after :data:`MAX_LOST_ACTORS` the scan fails instead)."""
        import ray

        try:
            ray.get(ref)
            return False
        except Exception as err:  # noqa: BLE001 - only actor deaths are handled here
            if not actor_died(err):
                return False
            self.pool.mark_dead(item.actor)  # type: ignore[arg-type]
            item.lost_actors += 1
            if item.lost_actors >= MAX_LOST_ACTORS:
                return False  # _status records the failure
            log.warning("%s/%s: its segmentation actor is gone; it goes to another actor",
                        item.unit.source.participant_id, item.unit.source.visit)
            item.actor, item.segs_ref = None, None
            self.waiting.append(item)
            return True

    def _segment_status(self, ref, item: _InFlight) -> tuple[bool, bool]:
        """(the scan was segmented, it failed by a fault of its own input)."""
        import ray

        status = self._status(ref, item, "segment")
        if status:
            return True, False
        with contextlib.suppress(Exception):
            answer = ray.get(ref)
            answer = answer[0] if isinstance(answer, tuple) else answer
            return False, bool(answer.get("scan_fault"))
        return False, False

    def _status(self, ref, item: _InFlight, stage: str) -> dict | None:
        """The stage's status, or None after recording the scan's failure (the per-scan boundary)."""
        import ray

        try:
            status = ray.get(ref)
        except Exception as err:  # crashes, lost nodes, our bugs: this scan fails, the run goes on
            cause = getattr(err, "cause", None) or err
            if not isinstance(cause, ScanError):
                log.error("internal error on %s/%s at %s:\n%s", item.unit.source.participant_id,
                          item.unit.source.visit, stage, "".join(traceback.format_exception(cause))[-4000:])
            self.failures.record(item.unit, stage, type(cause).__name__, first_line(cause))
            return None
        if isinstance(status, tuple):
            status = status[0]
        if not status.get("ok"):
            self.failures.record(item.unit, status.get("stage") or stage, status["error_type"], status["message"],
                                 status["uri"])
            return None
        return status

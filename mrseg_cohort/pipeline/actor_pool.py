"""Segmentation actors that follow the cluster: asked for, waited for, grown as GPUs join.

- GPU actors are *requested*: each needs ``num_gpus=1``, so on an autoscaling cluster the pending
  actors themselves make the autoscaler start GPU workers. ``resources.gpus`` actors are requested
  at once; without it the pool starts with the GPUs the cluster has (at least one) and grows as more
  join.
- Before any scan is read, the pool waits: on a local Ray for every actor, on a cluster for at least
  one (``resources.gpu_wait_s``), with one clear line if none comes. An actor that cannot start
  (weights missing on its node, CPU-only torch, out of memory at load) stops the job there with its
  error (:class:`ActorStartError`, exit 2).
- An actor whose process or node dies is replaced by the pool (not by Ray: a restart pinned to a
  GPU that left would wait forever), and the scans it held go to the other actors. The pool keeps
  as many actors as ``resources.gpus`` asks for, or as the cluster has GPUs; when nodes leave it
  shrinks with them. ``resources.max_consecutive_failures`` scans failing in the actors in a row,
  whichever actors they ran on, stop the job (:class:`ActorFailingError`): a systematic fault (a
  broken device, a bug) should not fail a cohort scan by scan, and an actor replaced after a CUDA
  error does not start counting again. A scan's own fault (a bad image) does not count.
- Errors are told apart by type, never by words in a message: out of GPU memory
  (``torch.OutOfMemoryError``) fails the scan and the actor goes on; a CUDA error
  (``torch.AcceleratorError``: the device may be unusable) fails the scan and ends the actor, which
  the pool replaces; any other exception is an internal error of the scan.
- An actor whose libraries compute differently from the driver's (another installation on its
  node) refuses to start, naming them (:mod:`mrseg_cohort.versions`).
- ``MRSEG_COHORT_TEST_LOGICAL_GPUS=1`` (tests only, never read from a config) lets actors that hold
  a logical GPU of a test cluster compute on the CPU.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

from mrseg_cohort.config import ResourcesConfig
from mrseg_cohort.errors import BadScanError, ConfigError, ScanError, SegmentationError
from mrseg_cohort.pipeline.session import RaySession, usable_cpus
from mrseg_cohort.segmentation.segmenter import ModelSpec, Segmenter
from mrseg_cohort.versions import version_mismatch

log = logging.getLogger(__name__)

TEST_LOGICAL_GPUS = "MRSEG_COHORT_TEST_LOGICAL_GPUS"


START_REPLACEMENTS = 3
"""Replacements per actor the pool makes while it starts, before it gives up (ActorStartError)."""


class ActorStartError(ConfigError):
    """A segmentation actor could not start: the job stops before any scan."""


class ActorFailingError(ConfigError):
    """One actor failed many scans in a row: the job stops (scans already done are kept)."""


class NodeLostError(ConfigError):
    """The Ray node the driver is attached to died: nothing more can run (scans already done are kept)."""


class SegmentActor:
    """The Ray actor around :class:`Segmenter`: the models loaded once per process (one per GPU).

    ``segment`` returns ``(status, segmentations)``; a per-scan error is a status, not an exception.
    A CUDA error other than out-of-memory may leave the device unusable: the actor then answers the
    scan with the error and ends its process, and Ray starts a fresh one.
    """

    def __init__(self, models: list[ModelSpec], device: str, threads: int | None, versions: dict | None = None,
                 max_model_voxels: int | None = None):
        mismatch = version_mismatch(versions) if versions else ""
        if mismatch:
            raise ConfigError(f"the software on this node differs from the run's ({mismatch}); install the same "
                              "versions on every node")
        compute = "cpu" if device == "cuda" and os.environ.get(TEST_LOGICAL_GPUS) == "1" else device
        self.device = compute
        self.segmenter = Segmenter(models, compute, threads, *([max_model_voxels] if max_model_voxels else []))

    def ready(self) -> dict:
        import ray

        return {"node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(), "device": self.device}

    def segment(self, inputs: dict, modality: str, models: tuple[str, ...] | None = None) -> tuple[dict, dict | None]:
        import torch

        try:
            return {"ok": True}, {c: self.segmenter(image, modality, c, models) for c, image in inputs.items()}
        except ScanError as err:
            return error_status(err.with_context(stage="segment")), None
        except torch.OutOfMemoryError as err:  # raised outside the sliding window's own retry (preprocessing)
            return error_status(SegmentationError(f"out of memory on {self.device}: {first_line(err)}",
                                                  stage="segment")), None
        except torch.AcceleratorError as err:
            _exit_soon()  # the device may be poisoned: the pool replaces this actor
            return error_status(SegmentationError(f"CUDA error, actor restarted: {first_line(err)}",
                                                  stage="segment")), None


def _exit_soon(delay_s: float = 0.5) -> None:
    threading.Timer(delay_s, os._exit, args=(1,)).start()


def error_status(err: ScanError) -> dict:
    """A failed scan's status; ``scan_fault``: the scan's own input is at fault (not the actor)."""
    return {"ok": False, "stage": err.stage, "error_type": type(err).__name__, "message": err.message,
            "uri": err.uri, "scan_fault": isinstance(err, BadScanError)}


def first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:1000] if text else type(err).__name__


@dataclass
class _Member:
    handle: object
    ready_ref: object | None
    ready: bool = False
    alive: bool = True
    load: int = 0
    info: dict = field(default_factory=dict)


class ActorPool:
    """The run's segmentation actors (see module docstring).

    Args:
        session: the run's Ray.
        device: ``cuda`` or ``cpu`` (see :func:`~mrseg_cohort.pipeline.session.choose_device`).
        models: the checked models every actor loads.
        resources: the job's ``resources`` section.
    """

    def __init__(self, session: RaySession, device: str, models: list[ModelSpec], resources: ResourcesConfig,
                 versions: dict | None = None, max_model_voxels: int | None = None):
        import ray

        self.session, self.device, self.models, self.resources = session, device, models, resources
        self.versions, self.max_model_voxels = versions, max_model_voxels
        self.failures_in_a_row = 0
        """Scans failed in the actors in a row, over every actor of the job (see module docstring)."""
        options = {"num_gpus": 1, "num_cpus": 1, "max_concurrency": 2} if device == "cuda" else {"num_cpus": 1}
        self._actor_cls = ray.remote(SegmentActor).options(max_restarts=0, **options)
        self.threads = None if device == "cuda" else (resources.threads_per_segmenter or usable_cpus())
        self.members: list[_Member] = []
        self._last_growth_check = 0.0

    # -- size -----------------------------------------------------------------------------------
    def _target_now(self) -> int:
        if self.device != "cuda":
            return self.resources.cpu_segmenters
        if self.resources.gpus:
            return self.resources.gpus
        return max(1, self.session.gpus())

    def _add(self, n: int) -> None:
        for _ in range(n):
            handle = self._actor_cls.remote(list(self.models), self.device, self.threads, self.versions,
                                            self.max_model_voxels)
            self.members.append(_Member(handle, handle.ready.remote()))

    @property
    def n_ready(self) -> int:
        return sum(m.ready and m.alive for m in self.members)

    @property
    def n_alive(self) -> int:
        return sum(m.alive for m in self.members)

    # -- start ----------------------------------------------------------------------------------
    def start(self, stop=None) -> None:
        """Create the actors and wait for them (see module docstring); an actor whose process dies
        while it starts is replaced, up to :data:`START_REPLACEMENTS` times the pool's size. A set
        ``stop`` (:class:`~mrseg_cohort.pipeline.signals.StopRequest`) ends the wait at once.

        Raises:
            ActorStartError: an actor's constructor raised, or actors kept dying while they started.
            ConfigError: no actor came up in time.
        """
        size = self._target_now()
        self._add(size)
        wait_all = not self.session.on_cluster
        timeout = self.resources.actor_start_timeout_s if wait_all else self.resources.gpu_wait_s
        deadline = time.monotonic() + timeout
        replaced = 0
        while True:
            if stop is not None and stop.is_set():
                log.info("stopping (%s) while the segmentation actors start", stop.reason)
                return
            self._collect_ready(timeout=min(1.0, max(0.0, deadline - time.monotonic())))
            self._require_own_node()
            died = len(self.members) - self.n_alive - replaced  # while starting: killed, out of memory, node left
            if died > 0:  # replaced one for one (growth with GPUs that join is poll()'s job)
                if replaced + died > START_REPLACEMENTS * size:
                    raise ActorStartError(f"segmentation actors keep dying while they start ({replaced} replaced): "
                                          "check the nodes' memory (the system's OOM killer) and the Ray logs")
                log.warning("replacing %d segmentation actor(s) that died while starting", died)
                self._add(died)
                replaced += died
                continue
            if (wait_all and self.n_ready == self.n_alive) or (not wait_all and self.n_ready >= 1):
                break
            if time.monotonic() >= deadline:
                raise ConfigError(self._start_timeout_message(timeout, wait_all))
            log.info("waiting for segmentation actors: %d of %d ready", self.n_ready, len(self.members))
        log.info("segmenting on %s with %d actor(s) ready of %d requested", self.device, self.n_ready,
                 len(self.members))

    def _start_timeout_message(self, timeout: float, wait_all: bool) -> str:
        have = self.session.resources()
        started = f"{self.n_ready} of {self.n_alive} segmentation actor(s) started within {timeout:.0f} s"
        if self.device == "cuda":
            return (f"{started}: the cluster gave no GPU for them ({have.get('GPU', 0):.0f} GPUs now); check that "
                    "GPU workers can start (autoscaler limits, quotas), or raise "
                    f"resources.{'actor_start_timeout_s' if wait_all else 'gpu_wait_s'}")
        return (f"{started} (each needs 1 of Ray's {have.get('CPU', 0):.0f} CPUs): the CPUs are taken, or loading "
                "the models takes longer (a slow disk or object store, memory swapping?); lower "
                "resources.cpu_segmenters, or raise resources.actor_start_timeout_s")

    def _require_own_node(self) -> None:
        """Raises :class:`NodeLostError` when the driver's Ray node is gone (see
        :meth:`~mrseg_cohort.pipeline.session.RaySession.own_node_alive`)."""
        if not self.session.own_node_alive():
            raise NodeLostError("this run's Ray node is gone (its raylet ended: killed, or out of memory; see "
                                "the system log and Ray's raylet.out); scans already done are kept: run the "
                                "same command again to resume")

    def _collect_ready(self, timeout: float) -> None:
        import ray

        pending = {m.ready_ref: m for m in self.members if m.ready_ref is not None and m.alive}
        if not pending:
            time.sleep(timeout)
            return
        done, _ = ray.wait(list(pending), num_returns=len(pending), timeout=timeout)
        for ref in done:
            member = pending[ref]
            member.ready_ref = None
            try:
                member.info = ray.get(ref)
            except ray.exceptions.ActorUnavailableError:
                self.mark_dead(self.members.index(member))  # its node went away while it started
                continue
            except Exception as err:  # the actor's constructor raised: the job cannot work
                if _died_with_its_node(err):
                    self.mark_dead(self.members.index(member))
                    continue
                raise ActorStartError(f"a segmentation actor could not start: {creation_error(err)}") from None
            member.ready = True

    # -- while running --------------------------------------------------------------------------
    def poll(self, every_s: float = 5.0) -> None:
        """Pick up actors that became ready; replace dead ones and grow with GPUs that joined, up to
        what the pool should have (:meth:`_target_now`), checked every ``every_s``."""
        self._collect_ready(timeout=0)
        now = time.monotonic()
        if now - self._last_growth_check < every_s:
            return
        self._last_growth_check = now
        self._require_own_node()
        missing = self._target_now() - self.n_alive
        if missing > 0:
            log.info("adding %d segmentation actor(s) (%d alive, %d wanted)", missing, self.n_alive,
                     self.n_alive + missing)
            self._add(missing)

    def mark_dead(self, i: int) -> None:
        """Actor ``i`` died (its process or node): no more scans go to it; :meth:`poll` replaces it."""
        member = self.members[i]
        if member.alive:
            log.warning("segmentation actor %d (node %s) is gone; its scans go to the other actors", i,
                        str(member.info.get("node", "?"))[:12])
        member.alive, member.ready, member.load = False, False, 0

    def acquire(self) -> int | None:
        """Index of the least-loaded ready actor with room (``in_flight_per_worker``), or None."""
        room = [i for i, m in enumerate(self.members)
                if m.ready and m.alive and m.load < self.resources.in_flight_per_worker]
        if not room:
            return None
        i = min(room, key=lambda k: self.members[k].load)
        self.members[i].load += 1
        return i

    def handle(self, i: int):
        return self.members[i].handle

    def release(self, i: int, segment_failed: bool) -> None:
        """A call on actor ``i`` ended; ``segment_failed``: the scan failed in the actor, not by a
        fault of its own input.

        Raises:
            ActorFailingError: ``resources.max_consecutive_failures`` scans failed in a row, over
                every actor of the job.
        """
        member = self.members[i]
        member.load = max(0, member.load - 1)
        self.failures_in_a_row = self.failures_in_a_row + 1 if segment_failed else 0
        if self.failures_in_a_row >= self.resources.max_consecutive_failures:
            raise ActorFailingError(f"{self.failures_in_a_row} scans in a row failed in the segmentation actors "
                                    f"(the last on actor {i}, node {str(member.info.get('node', '?'))[:12]}); "
                                    "stopping the job (scans already done are kept): see tables/failures for "
                                    "the errors, fix the cause and re-run")

    @property
    def capacity(self) -> int:
        """Scans the ready actors can hold at once."""
        return self.n_ready * self.resources.in_flight_per_worker


def actor_died(err: BaseException) -> bool:
    """Whether a call failed because its actor's process or node is gone (not because of the scan)."""
    import ray

    return isinstance(err, (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError))


def _died_with_its_node(err: BaseException) -> bool:
    """An actor that died before it was ready, but not of an error in its constructor."""
    return actor_died(err) and "creation task" not in str(err)


def creation_error(err: BaseException) -> str:
    """The first useful line of an actor's creation-task error (Ray wraps it in several)."""
    cause = getattr(err, "cause", None)
    if isinstance(cause, BaseException) and cause is not err:
        inner = getattr(cause, "cause", None)
        return first_line(inner if isinstance(inner, BaseException) else cause)
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    errors = [line for line in lines if "Error:" in line and "ray." not in line.split("Error:")[0]]
    return (errors[-1] if errors else lines[-1] if lines else type(err).__name__)[:1000]

"""The cohort job on Ray: the only module of the main job that knows Ray.

    manifest -> read + stitch (CPU task) -> segment (actor: one per GPU, or CPU actors)
             -> finish: write labels, measure, stage rows (CPU task) -> publish batches (driver)

The driver keeps a bounded number of scans in flight (memory does not grow with the cohort), hands
image references from task to actor to task (arrays never pass through the driver), turns every
per-scan error into a ``failures`` row and goes on, and publishes results in batches exactly once
(see :mod:`mrseg_cohort.outputs`). Ray retries tasks and actor calls lost to crashed workers or
nodes (``resources.max_retries``); their outputs go to deterministic keys, so a retry overwrites.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import ConfigError, ScanError
from mrseg_cohort.io.colortables import write_color_tables
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.manifest import ScanSource, discover
from mrseg_cohort.outputs import Outputs
from mrseg_cohort.pipeline import stages
from mrseg_cohort.pipeline.publisher import BatchPublisher
from mrseg_cohort.segmentation.segmenter import ModelSpec, Segmenter, check_model

log = logging.getLogger(__name__)

ProgressFn = Callable[["RunSummary"], None]


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
    failures: list[dict] = field(default_factory=list)

    @property
    def failures_uri(self) -> str:
        return self.output_uri.rstrip("/") + "/tables/failures"


def software_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist, key in (("mrseg-cohort", "mrseg_cohort"), ("nnunetv2", "nnunetv2"), ("torch", "torch"),
                      ("ray", "ray")):
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out


def prepare(job: JobConfig, restart: bool = False) -> tuple[Outputs, list[ModelSpec], list[ScanSource]]:
    """Checks that stop a job before any work (input, output, models), then the manifest."""
    in_store = Store.from_config(job.input.storage)
    out_store = Store.from_config(job.output.storage)
    models = [check_model(m) for m in job.models]
    try:
        out_store.check_writable(job.output.uri)
    except OSError as err:
        raise ConfigError(f"output.uri: {err}") from None
    try:  # missing bucket, refused credentials, unreadable prefix: one line, before any work
        _maybe_generate_phantoms(job, in_store)
        in_store.check_readable(job.input.uri)
    except OSError as err:
        raise ConfigError(f"input.uri: {err}") from None
    outputs = Outputs(out_store, job.output.uri)
    if restart:
        log.info("--restart: deleting earlier results under %s", job.output.uri)
        outputs.reset()
    sources = discover(job, in_store)
    if not sources:
        raise ConfigError(f"no scans found under {job.input.uri} for layout {job.cohort.layout!r} "
                          f"(pattern {job.cohort.pattern!r})")
    return outputs, models, sources


def _maybe_generate_phantoms(job: JobConfig, store: Store) -> None:
    if job.phantom is None or store.list_files(job.input.uri):
        return
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

    spec = PhantomSpec(participants=job.phantom.participants, layout=job.phantom.layout, seed=job.phantom.seed,
                       scale=job.phantom.scale, visit=job.cohort.visit,
                       format="dicom-zip" if job.cohort.layout == "ukbb-dicom-zip" else "nifti")
    log.info("generating %d phantom participants (%s layout) in %s", spec.participants, spec.layout,
             job.input.uri)
    write_phantom_cohort(store, job.input.uri, spec)


def run_job(job: JobConfig, restart: bool = False, progress: ProgressFn | None = None) -> RunSummary:
    """Run (or resume) the job; returns the counts. Raises ConfigError before any work if it cannot start."""
    t0 = time.time()
    run_id = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
    outputs, models, sources = prepare(job, restart)
    summary = RunSummary(run_id, job.output.uri, in_manifest=len(sources))
    recovery = outputs.recover()
    committed = outputs.committed_keys()
    unpublished = set(recovery.unpublished)
    todo = [s for s in sources if s.key not in committed and s.key not in unpublished]
    summary.already_done = len(sources) - len(todo)
    summary.scheduled = len(todo)
    summary.republished = len(recovery.unpublished)
    publisher = BatchPublisher(outputs, run_id, job.output.commit_every, job.output.commit_interval_s)
    for key in recovery.unpublished:  # staged before a crash: publish without recomputing
        publisher.add_rows(key, outputs.read_staged(key))
    log.info("run %s: %d scans in the manifest, %d already done, %d to process", run_id, len(sources),
             summary.already_done, len(todo))
    try:
        if todo:
            _run_on_ray(job, models, run_id, len(sources), todo, publisher, outputs, summary, progress, t0)
    finally:
        publisher.flush()
        summary.seconds = time.time() - t0
    return summary


_SECRETS = {"input": {"storage": {"key", "secret"}}, "output": {"storage": {"key", "secret"}}}


def choose_device(requested: str, cluster_gpus: int) -> str:
    """``cuda`` or ``cpu`` from the config's device and the GPUs Ray sees; refuses impossible asks."""
    if requested == "cuda" and cluster_gpus < 1:
        raise ConfigError("model.device is 'cuda' but no GPU is present (Ray sees 0 GPUs in this "
                          "cluster); set model.device: auto to run on the CPU, or run on a GPU node")
    if requested == "cpu":
        return "cpu"
    return "cuda" if cluster_gpus >= 1 else "cpu"


def _init_ray(job: JobConfig) -> bool:
    """Start or join Ray; True if this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if job.resources.address:
        ctx = ray.init(address=job.resources.address, logging_level=logging.WARNING, log_to_driver=False)
        url = getattr(ctx, "dashboard_url", None)
        log.info("joined Ray cluster at %s%s", job.resources.address, f"; dashboard http://{url}" if url else "")
    else:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
    return True


def _run_on_ray(job: JobConfig, models: list[ModelSpec], run_id: str, n_manifest: int, todo: list[ScanSource],
                publisher: BatchPublisher, outputs: Outputs, summary: RunSummary, progress: ProgressFn | None,
                t0: float) -> None:
    import ray

    started = _init_ray(job)
    try:
        cluster = ray.cluster_resources()
        gpus = int(cluster.get("GPU", 0))
        device = choose_device(job.model.device, gpus)  # before any work: a wrong ask never hangs
        summary.device = device
        res = job.resources
        n_actors = min(res.gpus or gpus, gpus) if device == "cuda" else res.cpu_segmenters
        if device == "cuda" and n_actors < 1:
            raise ConfigError("resources.gpus is 0 but model.device asks for a GPU")
        total_cpus = max(1, int(cluster.get("CPU", 1)))
        cpu_workers = res.cpu_workers or max(1, total_cpus - (0 if device == "cuda" else n_actors))
        threads = res.threads_per_segmenter or (os.cpu_count() or 1)
        versions = software_versions()
        ctx = stages.RunContext(job, tuple(models), run_id, versions, device)
        outputs.write_run_metadata(run_id, {
            "run_id": run_id, "started": t0, "versions": versions, "device": device, "cluster": cluster,
            "config": job.model_dump(mode="json", exclude=_SECRETS),
            "models": [{"name": m.name, "sha256": m.sha256, "folds": m.folds} for m in models],
            "manifest": n_manifest, "scheduled": len(todo)})
        for spec in models:  # names and colours for 3D Slicer and ITK-SNAP, beside the labels
            write_color_tables(outputs.store, join_uri(outputs.root, "labels"), spec.label_map, spec.name)
        log.info("segmenting on %s with %d actor(s); %d CPU worker(s)", device, n_actors, cpu_workers)
        ctx_ref = ray.put(ctx)
        tasks = _remote_functions(res.max_retries, _task_memory(res.memory_gb_per_scan, cluster))
        actor_options = {"num_gpus": 1, "num_cpus": 1} if device == "cuda" else {"num_cpus": 1}
        actor_cls = ray.remote(SegmentActor).options(max_restarts=-1, max_task_retries=res.max_retries,
                                                     **actor_options)
        actors = [actor_cls.remote(list(ctx.models), device, None if device == "cuda" else threads)
                  for _ in range(n_actors)]
        attempts = outputs.failed_attempts()
        _drive(ctx, ctx_ref, tasks, actors, todo, publisher, attempts, summary, progress,
               prefetch=cpu_workers + 2 * n_actors, per_actor=res.in_flight_per_worker)
    finally:
        if started:
            ray.shutdown()


def _task_memory(gb_per_scan: float, cluster: dict) -> int:
    """Bytes of Ray memory to reserve per CPU task, never more than the cluster has (that would hang)."""
    want = int(gb_per_scan * 1e9)
    have = int(cluster.get("memory", want))
    if want > have:
        log.warning("resources.memory_gb_per_scan (%.1f GB) exceeds the cluster's memory (%.1f GB); using "
                    "the latter", gb_per_scan, have / 1e9)
    return min(want, have)


class SegmentActor:
    """Ray actor around :class:`Segmenter`: models loaded once per process (one per GPU)."""

    def __init__(self, models: list[ModelSpec], device: str, threads: int | None):
        self.segmenter = Segmenter(models, device, threads)

    def segment(self, inputs: dict, modality: str) -> tuple[dict, dict | None]:
        try:
            return {"ok": True}, {c: self.segmenter(image, modality, c) for c, image in inputs.items()}
        except ScanError as err:
            return _error_status(err.with_context(stage="segment")), None


def _error_status(err: ScanError) -> dict:
    return {"ok": False, "stage": err.stage, "error_type": type(err).__name__, "message": err.message,
            "uri": err.uri}


def _remote_functions(max_retries: int, memory: int):
    import ray

    @ray.remote(num_returns=3, max_retries=max_retries, memory=memory)
    def load(ctx: stages.RunContext, source: ScanSource):
        try:
            loaded = stages.read_and_stitch(ctx, source)
        except ScanError as err:
            return _error_status(err.with_context(source.participant_id, "read")), None, None
        return {"ok": True}, loaded, stages.segmentation_inputs(ctx, loaded)

    @ray.remote(max_retries=max_retries, memory=memory)
    def finish(ctx: stages.RunContext, loaded, segmentations):
        try:
            return {"ok": True, "tables": stages.finish(ctx, loaded, segmentations)}
        except ScanError as err:
            return _error_status(err.with_context(loaded.source.participant_id, "finish"))

    return {"load": load, "finish": finish}


def _drive(ctx, ctx_ref, tasks, actors, todo, publisher, attempts, summary, progress, prefetch, per_actor):
    """The driver loop: bounded prefetch, least-loaded actor, results to the publisher."""
    import ray

    queue = deque(todo)
    loading: dict = {}      # status ref -> (source, loaded ref, inputs ref)
    waiting: deque = deque()  # loaded, waiting for an actor: (source, loaded ref, inputs ref)
    segmenting: dict = {}   # status ref -> (source, loaded ref, segs ref, actor index)
    finishing: dict = {}    # result ref -> source
    actor_load = [0] * len(actors)
    started_at: dict = {}

    def fail(source: ScanSource, stage: str, error_type: str, message: str, uri: str = "") -> None:
        attempt = attempts.get(source.key, 0) + 1
        record = {"participant_id": source.participant_id, "visit": source.visit, "stage": stage,
                  "error_type": error_type, "message": message, "uri": uri, "attempt": attempt,
                  "time": time.time(), "run_id": ctx.run_id}
        publisher.add_failure(record)
        summary.failed += 1
        summary.failures.append(record)
        log.warning("FAILED %s/%s [%s] %s: %s%s", source.participant_id, source.visit, stage, error_type,
                    message, f" ({uri})" if uri else "")

    def status_of(ref, source: ScanSource, stage: str) -> dict | None:
        try:
            status = ray.get(ref)
        except Exception as err:  # the per-scan boundary: crashes, lost nodes, bugs
            cause = getattr(err, "cause", None) or err
            if not isinstance(cause, ScanError):
                log.error("internal error on %s/%s at %s:\n%s", source.participant_id, source.visit, stage,
                          "".join(traceback.format_exception(cause))[-4000:])
            fail(source, stage, type(cause).__name__, _first_line(cause))
            return None
        if isinstance(status, tuple):
            status = status[0]
        if not status.get("ok"):
            fail(source, status.get("stage") or stage, status["error_type"], status["message"], status["uri"])
            return None
        return status

    while queue or loading or waiting or segmenting or finishing:
        while queue and len(loading) + len(waiting) < prefetch:
            source = queue.popleft()
            started_at[source.key] = time.time()
            status_ref, loaded_ref, inputs_ref = tasks["load"].remote(ctx_ref, source)
            loading[status_ref] = (source, loaded_ref, inputs_ref)
        while waiting and min(actor_load) < per_actor:
            i = actor_load.index(min(actor_load))
            source, loaded_ref, inputs_ref = waiting.popleft()
            status_ref, segs_ref = actors[i].segment.options(num_returns=2).remote(inputs_ref, source.modality)
            segmenting[status_ref] = (source, loaded_ref, segs_ref, i)
            actor_load[i] += 1
        pending = list(loading) + list(segmenting) + list(finishing)
        if not pending:
            continue
        ready, _ = ray.wait(pending, num_returns=1, timeout=5.0)
        for ref in ready:
            if ref in loading:
                source, loaded_ref, inputs_ref = loading.pop(ref)
                if status_of(ref, source, "read"):
                    waiting.append((source, loaded_ref, inputs_ref))
            elif ref in segmenting:
                source, loaded_ref, segs_ref, i = segmenting.pop(ref)
                actor_load[i] -= 1
                if status_of(ref, source, "segment"):
                    finishing[tasks["finish"].remote(ctx_ref, loaded_ref, segs_ref)] = source
            else:
                source = finishing.pop(ref)
                result = status_of(ref, source, "finish")
                if result:
                    publisher.add_rows(source.key, result["tables"])
                    summary.done += 1
                    log.info("done %s/%s in %.1f s (%d/%d)", source.participant_id, source.visit,
                             time.time() - started_at.pop(source.key, time.time()),
                             summary.done + summary.failed, summary.scheduled)
            if progress:
                progress(summary)
        publisher.maybe_flush()


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:500] if text else type(err).__name__

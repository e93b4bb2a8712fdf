"""The cohort job: from ``run`` to each scan's commit, in order.

    checks      models, output and input answer, before anything is written   (preflight)
    output      a user's own folder is refused, before anything is written
    manifest    the scans under the input (none: refused, nothing written)    (mrseg_cohort.manifest)
    lease       this run holds the output; a second run is refused            (mrseg_cohort.ledger.lease)
    restart     --restart deletes only what this tool wrote
    fingerprint the output holds one configuration; a change is refused      (mrseg_cohort.ledger.fingerprint)
    plan        manifest minus what is committed, per scan and model          (mrseg_cohort.ledger.work_units)
    recover     batches an interrupted run left are finished; its staged scans published
    Ray         actors requested and waited for, then the scheduler           (session, actor_pool, scheduler)
    publish     finished scans in batches, exactly once                        (publisher, outputs)

A signal (SIGINT, SIGTERM) or a lost lease stops the scheduler; what finished is published and
the summary says so (``interrupted_by``). This module is the only one of the main job that knows
Ray, through the pipeline modules it wires.
"""

from __future__ import annotations

import json
import logging
import time
import uuid

from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.colortables import write_color_tables
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.ledger.fingerprint import added_models, changed_keys, job_fingerprint, upgrade
from mrseg_cohort.ledger.lease import OutputLease
from mrseg_cohort.ledger.log import ALL, shard_scope
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.ledger.work_units import WorkPlan, plan_work
from mrseg_cohort.manifest import check_input, discover
from mrseg_cohort.pipeline import stages
from mrseg_cohort.pipeline.publisher import BatchPublisher
from mrseg_cohort.pipeline.scheduler import FailureLog, ProgressFn, RunSummary, Scheduler
from mrseg_cohort.pipeline.signals import StopRequest
from mrseg_cohort.pipeline.session import choose_device
from mrseg_cohort.segmentation.segmenter import ModelSpec, check_model
from mrseg_cohort.sharding import Shard, select
from mrseg_cohort.versions import software_versions

log = logging.getLogger(__name__)

__all__ = ["RunSummary", "run_job", "preflight", "software_versions", "choose_device"]
_SECRETS = {"input": {"storage": {"key", "secret"}}, "output": {"storage": {"key", "secret"}}}


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def preflight(job: JobConfig) -> list[ModelSpec]:
    """Checks that stop a job before anything is written: models, output, input (ConfigError)."""
    models = [check_model(m) for m in job.models]
    try:
        Store.from_config(job.output.storage).check_writable(job.output.uri)
    except OSError as err:
        raise ConfigError(f"output.uri: {err}") from None
    check_input(job, Store.from_config(job.input.storage))  # missing, refused, not answering: one line
    return models


def run_job(job: JobConfig, restart: bool = False, progress: ProgressFn | None = None,
            stop: StopRequest | None = None, shard: Shard | None = None) -> RunSummary:
    """Run (or resume) the job, or only its ``shard`` of the manifest; returns the counts.

    Raises:
        ConfigError: before any scan, when the job cannot start (see the module docstring); also
            when an actor cannot start or keeps failing (scans already done are kept).
    """
    t0 = time.time()
    stop = stop or StopRequest()
    run_id = new_run_id()
    versions = software_versions()
    models = preflight(job)
    outputs = Outputs.for_job(job)
    refuse_foreign_folder(outputs, job)
    sources = discover(job, Store.from_config(job.input.storage))  # none found: refused, saying why
    if shard is not None:  # this run's part of the manifest (mrseg_cohort.sharding); an empty part is no error
        in_manifest, sources = len(sources), select(sources, shard)
        log.info("run %s: shard %s holds %d of the manifest's %d scans", run_id, shard, len(sources), in_manifest)
    if stop.is_set():  # a signal while the run was being set up: nothing taken, nothing to publish
        return RunSummary(run_id, job.output.uri, in_manifest=len(sources), interrupted_by=stop.reason,
                          seconds=time.time() - t0)
    if restart and shard is not None:
        raise ConfigError("--restart deletes the whole output, every shard's results: run it without --shard, "
                          "while no shard runs")
    # the lease of this run's scope: the output, or its shard (shards of one count run side by side)
    scope = shard_scope(shard.index, shard.count) if shard is not None else ALL
    lease = OutputLease(outputs.store, outputs.root, run_id, job.output.lease_timeout_s, job.output.lease_heartbeat_s,
                        scope=scope)
    lease.acquire()
    try:
        lease.start_heartbeats(on_lost=lambda: stop.set("lost the output's lease"))
        if restart:
            restart_output(outputs, job, lease)
        fingerprint = settle_fingerprint(outputs, job_fingerprint(job, models, versions))
        if shard is not None:
            record_shard_count(outputs, shard)
        live = {h.run_id for h in lease.holders() if lease.is_live(h)} | {run_id}
        recovery = outputs.recover(live_runs=live, mine=(lambda key: shard.holds(*key)) if shard else lambda key: True)
        committed = outputs.committed_units()
        plan = plan_work(sources, tuple(m.name for m in models), committed, recovery.unpublished)
        summary = RunSummary(run_id, job.output.uri, in_manifest=len(sources), already_done=plan.complete,
                             scheduled=len(plan.todo), republished=len(plan.staged))
        publisher = BatchPublisher(outputs, run_id, job.output.commit_every, job.output.commit_interval_s,
                                   lease.fence, committed, guard=lease.check, stopping=stop.is_set)
        for key in plan.staged:  # staged before a crash: published without recomputing
            publisher.add_rows(key, outputs.read_staged(key))
        log.info("run %s: %d scans in the manifest, %d complete, %d to process (%d staged by an earlier run)",
                 run_id, len(sources), plan.complete, len(plan.todo), len(plan.staged))
        ended = False  # normally: not by an error
        try:
            if plan.todo and not stop.is_set():
                segment_on_ray(job, models, run_id, versions, fingerprint["base_model"], plan, publisher, outputs,
                               summary, progress, stop, t0)
            ended = True
        finally:
            if stop.is_set():
                adopt_staged(outputs, publisher, {u.key for u in plan.todo})
                summary.interrupted_by = stop.reason
            publisher.flush(final=ended)
            summary.published = publisher.published_units
            summary.seconds = time.time() - t0
    finally:
        lease.release()
    return summary


def record_shard_count(outputs: Outputs, shard: Shard) -> None:
    """``_work/shards.json``: how many shards the output is split into, as its latest sharded run
    said (a run of another count is refused while a shard's lease is live: :mod:`mrseg_cohort.ledger.lease`)."""
    uri = join_uri(outputs.root, "_work", "shards.json")
    try:
        recorded = json.loads(outputs.store.read_bytes(uri)).get("count")
    except (FileNotFoundError, ValueError):
        recorded = None
    if recorded != shard.count:
        if recorded is not None:
            log.warning("the output was split into %s shards; from now on into %d (no shard of %s runs; what is "
                        "committed stays committed)", recorded, shard.count, recorded)
        outputs.store.write_bytes(uri, json.dumps({"count": shard.count}).encode())


def restart_output(outputs: Outputs, job: JobConfig, lease: OutputLease) -> None:
    """``--restart``: a reset entry in the commit log first (every run that held the output before is
    fenced from then on, whatever its scope), then delete what this tool wrote here (and nothing else)."""
    outputs.log.mark_reset(lease.fence.append({"kind": "reset"}))
    deleted = outputs.reset([m.name for m in job.models],
                            list(job.contrasts.available) if job.stitching.save_stitched else [])
    log.info("--restart: deleted %d objects this tool had written under %s", deleted, outputs.root)


def refuse_foreign_folder(outputs: Outputs, job: JobConfig) -> None:
    """A first run into a folder holding files of someone else's is refused (before anything is
    written) unless ``output.allow_non_empty``."""
    if not outputs.is_ours() and not job.output.allow_non_empty:
        foreign = outputs.foreign_entries()
        if foreign:
            raise ConfigError(f"output.uri {outputs.root} is not empty and is not an mrseg-cohort output "
                              f"(found {', '.join(u.rsplit('/', 1)[-1] for u in foreign)}); choose an empty "
                              "folder, or set output.allow_non_empty: true (those files are left alone)")


def settle_fingerprint(outputs: Outputs, current: dict) -> dict:
    """The output's fingerprint after this run's start: recorded at the first run; a resume that
    changes it is refused (exit 2, naming each changed key); models added since are recorded. The
    base model is the one the output recorded (its label files carry no suffix), whatever the order
    of ``models:`` now."""
    stored = outputs.read_fingerprint()
    if stored is None:
        if outputs.committed_keys() or outputs.staged_keys():
            raise ConfigError(f"output {outputs.root} holds results of an earlier mrseg-cohort version "
                              "without a job fingerprint; write to a new output.uri, or run with --restart")
        outputs.write_fingerprint(current)
        return current
    upgraded = upgrade(stored, current)
    current = {**current, "base_model": upgraded["base_model"]}
    changes = changed_keys(upgraded, current)
    if changes:
        shown = "; ".join(changes[:8]) + (f"; and {len(changes) - 8} more" if len(changes) > 8 else "")
        raise ConfigError(f"output {outputs.root} holds results of another configuration ({shown}); write to a "
                          "new output.uri, or run with --restart to delete the old results")
    added = added_models(upgraded, current)
    if added:
        log.info("model(s) %s added: they run over the scans already committed", ", ".join(added))
    settled = {**upgraded, "models": {**upgraded["models"], **{m: current["models"][m] for m in added}}}
    if settled != stored:
        outputs.write_fingerprint(settled)
    return settled


def adopt_staged(outputs: Outputs, publisher: BatchPublisher, units: set) -> None:
    """After a stop: units of this run that finished (staged) but whose result the driver had not
    received yet are published too."""
    for key in sorted(outputs.staged_keys() & units):
        if key not in publisher.rows:
            publisher.add_rows(key, outputs.read_staged(key))


def segment_on_ray(job: JobConfig, models: list[ModelSpec], run_id: str, versions: dict, base_model: str,
                   plan: WorkPlan, publisher: BatchPublisher, outputs: Outputs, summary: RunSummary,
                   progress: ProgressFn | None, stop: StopRequest, t0: float) -> None:
    """Ray's part: actors requested and waited for, then the scheduler over the plan."""
    from mrseg_cohort.pipeline.session import RayStartStopped, ray_session

    res = job.resources
    try:
        with ray_session(res) as session:
            _segment_in(session, job, models, run_id, versions, base_model, plan, publisher, outputs, summary,
                        progress, stop, t0)
    except RayStartStopped:
        log.warning("stopping (%s) while Ray started", stop.reason)


def _segment_in(session, job: JobConfig, models: list[ModelSpec], run_id: str, versions: dict, base_model: str,
                plan: WorkPlan, publisher: BatchPublisher, outputs: Outputs, summary: RunSummary,
                progress: ProgressFn | None, stop: StopRequest, t0: float) -> None:
    """The actors and the scheduler, in a Ray session."""
    import ray

    from mrseg_cohort.pipeline.actor_pool import ActorPool
    from mrseg_cohort.pipeline.tasks import remote_tasks

    res = job.resources
    device = choose_device(job.model.device, session.gpus(), session.on_cluster, res.gpus)
    summary.device = device
    write_run_record(outputs, job, models, run_id, versions, device, session.resources(), plan, t0)
    pool = ActorPool(session, device, models, res, versions, job.limits.max_model_voxels)
    pool.start(stop)  # every actor loads its models before any scan is read: a broken one stops the job here
    ctx_ref = ray.put(stages.RunContext(job, tuple(models), run_id, versions, device, base_model))
    tasks = remote_tasks(res.max_retries, task_memory(res.memory_gb_per_scan, session))
    reserved = 0 if device == "cuda" else res.cpu_segmenters

    def cpu_workers() -> int:
        return res.cpu_workers or max(1, int(session.resources().get("CPU", 1)) - reserved)

    failures = FailureLog(run_id, publisher, summary, outputs.failed_attempts())
    Scheduler(ctx_ref, tasks, pool, publisher, failures, summary, cpu_workers, stop, progress).run(plan.todo)


def write_run_record(outputs: Outputs, job: JobConfig, models: list[ModelSpec], run_id: str, versions: dict,
                     device: str, cluster: dict, plan: WorkPlan, t0: float) -> None:
    """``_work/runs/<run id>.json`` and the viewer colour tables beside the labels."""
    outputs.write_run_metadata(run_id, {
        "run_id": run_id, "started": t0, "versions": versions, "device": device, "cluster": cluster,
        "config": job.model_dump(mode="json", exclude=_SECRETS),
        "models": [{"name": m.name, "sha256": m.sha256, "folds": m.folds} for m in models],
        "scheduled": len(plan.todo), "complete_before": plan.complete})
    for spec in models:  # names and colours for 3D Slicer and ITK-SNAP, beside the labels
        write_color_tables(outputs.store, join_uri(outputs.root, "labels"), spec.label_map, spec.name)


def task_memory(gb_per_scan: float, session) -> int:
    """Bytes of Ray memory to reserve per CPU task. On a local Ray never more than it has (that would
    hang); a cluster may still add larger nodes."""
    want = int(gb_per_scan * 1e9)
    if session.on_cluster:
        return want
    have = int(session.resources().get("memory", want))
    if want > have:
        log.warning("resources.memory_gb_per_scan (%.1f GB) exceeds this machine's Ray memory (%.1f GB); "
                    "using the latter", gb_per_scan, have / 1e9)
    return min(want, have)

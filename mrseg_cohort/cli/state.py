"""``mrseg-cohort plan`` and ``mrseg-cohort status``: what a job would do, and how far it is."""

from __future__ import annotations

from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import exit_statuses, one_line_errors, shell_command


@app.command(epilog=exit_statuses("plan"))
def plan(
    config: Path = typer.Argument(..., help="Job YAML file."),
    sizes: bool = typer.Option(True, "--sizes/--no-sizes", help="Sum the input file sizes (one HEAD per file)."),
    gpus: int = typer.Option(None, min=1, help="GPUs to plan for (default: resources.gpus; with resources.gpus "
                             "0, resources.cpu_segmenters; else 1)."),
    cpu_workers: int = typer.Option(None, min=1, help="CPU workers to plan for (default: resources.cpu_workers, "
                                    "else 8)."),
    scans: int = typer.Option(None, min=0, help="Plan for this many scans instead of those left in the manifest "
                              "(e.g. the whole cohort, from a pilot run)."),
    device_seconds: float = typer.Option(None, help="Seconds per scan on the segmentation device, instead "
                                         "of the measured ones (e.g. from a GPU benchmark)."),
    shard: str = typer.Option(None, "--shard", metavar="I/N", help="What shard I of N (as run --shard) would do."),
) -> None:
    """What a run would do: scans to process, already done, failed before, input size, time estimate.

    Nothing is written. Time and GPU-hours come from the per-stage seconds measured in this output's
    scans table (run a few scans first, e.g. --first-n 3, to get them).
    """
    from mrseg_cohort.config import load_config
    from mrseg_cohort.jobstate import estimate, job_state, measured_costs

    from mrseg_cohort.sharding import Shard

    with one_line_errors():
        part = Shard.parse(shard) if shard is not None else None
        job = load_config(config)
        state, sources = job_state(job, with_sizes=sizes, shard=part, with_costs=True)
    todo = state.pending + state.failed
    typer.echo(f"cohort {job.cohort.name} ({job.cohort.layout}) from {job.input.uri}")
    typer.echo(f"manifest{f' shard {part}' if part else ''}: {state.manifest} scans of {state.participants} "
               "participants")
    problems = [s.problem for s in sources if s.problem]
    if problems:
        typer.echo(f"input problems: {len(problems)} scan(s) will fail at read, e.g. {problems[0]}")
    typer.echo(f"already done: {state.done}; finished but unpublished: {state.staged} (published at start)")
    typer.echo(f"failed before: {state.failed} (will be retried); new: {state.pending}; to process: {todo}")
    if state.input_bytes is not None:
        typer.echo(f"input size: {state.input_bytes / 1e9:.2f} GB ({state.input_bytes / max(state.manifest, 1) / 1e6:.1f} MB per scan)")
    costs = measured_costs(state.costs)
    if costs is None:
        typer.echo("estimate: no per-scan costs measured in this output yet; run a few scans first "
                   f"({shell_command('mrseg-cohort', 'run', str(config), '--first-n', '3')}) and plan again")
        return
    gpu_s, cpu_s, n = costs
    source = f"median of {n} scans in this output"
    if device_seconds is not None:
        gpu_s, source = device_seconds, f"device seconds given; CPU stages: {source}"
    res = job.resources
    devices = gpus if gpus is not None else (res.gpus or (res.cpu_segmenters if res.gpus == 0 else 1))
    workers = cpu_workers if cpu_workers is not None else (res.cpu_workers or 8)
    planned = todo if scans is None else scans
    with one_line_errors():
        est = estimate(planned, gpu_s, cpu_s, devices, workers, source)
    typer.echo(f"per scan ({est.source}): {gpu_s:.1f} s on the segmentation device, {cpu_s:.1f} s of CPU stages")
    typer.echo(f"estimate for {planned} scans on {devices} device(s) and {workers} CPU worker(s): "
               f"{est.wall_hours:.1f} h wall, {est.device_hours:.1f} device-hours "
               f"({'device' if gpu_s / devices >= cpu_s / workers else 'CPU stages'}-bound)")


@app.command(epilog=exit_statuses("status"))
def status(
    config: Path = typer.Argument(..., help="Job YAML file."),
    last: int = typer.Option(10, help="How many of the latest failures to show."),
    shard: str = typer.Option(None, "--shard", metavar="I/N", help="Count only the scans of shard I of N."),
) -> None:
    """Done / failed / pending counts for the job's output (safe while the job runs) and the last failures."""
    from mrseg_cohort.config import load_config
    from mrseg_cohort.jobstate import job_state
    from mrseg_cohort.sharding import Shard

    with one_line_errors():
        part = Shard.parse(shard) if shard is not None else None
        job = load_config(config)
        state, _ = job_state(job, shard=part)
    where = f"{job.output.uri} shard {part}" if part else job.output.uri
    typer.echo(f"{where}: {state.done} done, {state.staged} finished (publishing), "
               f"{state.failed} failed, {state.pending} pending, of {state.manifest} scans")
    for line in lease_lines(job):
        typer.echo(line)
    if len(state.failures):
        typer.echo(f"last failures (of {len(state.failures)} recorded attempts):")
        for row in state.failures.head(last).itertuples():
            where = f" ({row.uri})" if row.uri else ""
            typer.echo(f"  {row.participant_id}/{row.visit} attempt {row.attempt} [{row.stage}] "
                       f"{row.error_type}: {row.message}{where}")


def lease_lines(job) -> list[str]:
    """Who holds the output or its shards, by their lease files (read only: a lease whose heartbeat
    is older than ``output.lease_timeout_s`` is one its run left behind, taken over by the next run)."""
    import time

    from mrseg_cohort.ledger.lease import OutputLease
    from mrseg_cohort.ledger.log import describe_scope
    from mrseg_cohort.ledger.outputs import Outputs

    outputs = Outputs.for_job(job)
    holders = [h for h in OutputLease(outputs.store, outputs.root, "status").holders() if not h.released]
    if not holders:
        return ["no run holds the output"]
    out = []
    for holder in sorted(holders, key=lambda h: h.scope):
        beat = time.strftime("%H:%M:%S UTC", time.gmtime(holder.heartbeat))
        out.append(f"{describe_scope(holder.scope)}: held by {holder.describe()}, last heartbeat {beat} by its clock "
                   f"(taken for gone {job.output.lease_timeout_s:.0f} s after it)")
    return out

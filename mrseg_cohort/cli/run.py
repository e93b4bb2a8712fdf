"""``mrseg-cohort run CONFIG``: the cohort job (resumes by default)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import SIGNAL_EXIT, ExitStatus, exit_statuses, one_line_errors, shell_command
from mrseg_cohort.redact import mask_url_credentials


@app.command(epilog=exit_statuses("run"))
def run(
    config: Path = typer.Argument(..., help="Job YAML file (see configs/)."),
    restart: bool = typer.Option(False, "--restart", help="Delete earlier results under the output and start over."),
    output: str = typer.Option(None, "--output", "-o", help="Override output.uri (a relative path is relative "
                               "to the working directory)."),
    first_n: int = typer.Option(None, "--first-n", min=1, help="Override limits.first_n (process the first N "
                                "participants)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    shard: str = typer.Option(None, "--shard", metavar="I/N", help="Process only shard I of N (numbered from 0) "
                              "of the manifest, into the same output as the other shards (one run per shard, "
                              "e.g. a SLURM job array). Default inside a SLURM array: the array task's shard."),
    address: str = typer.Option(None, "--address", help="Override resources.address: the Ray cluster to join "
                                "(e.g. head-node:6379, as infra/slurm/ray-cluster.sbatch passes it)."),
) -> None:
    """Segment every scan of the cohort and write label maps and Parquet tables.

    Re-running the same command resumes: scans already committed are skipped, failed ones retried.
    """
    from mrseg_cohort.pipeline.signals import StopRequest, stop_on_signals

    with stop_on_signals(StopRequest()) as stop:  # before the heavy imports (torch, nnU-Net: seconds)
        _run(config, restart, output, first_n, progress, shard, address, stop)


def _run(config: Path, restart: bool, output: str | None, first_n: int | None, progress: bool, shard: str | None,
         address: str | None, stop) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    from mrseg_cohort.config import load_config
    from mrseg_cohort.pipeline.run import run_job
    from mrseg_cohort.sharding import Shard, shard_from_environment

    overrides: dict = {}
    if output is not None:
        overrides["output.uri"] = output
    if first_n is not None:
        overrides["limits.first_n"] = first_n
    if address is not None:
        overrides["resources.address"] = address
    console = Console(stderr=True, soft_wrap=True)
    with one_line_errors():
        part = Shard.parse(shard) if shard is not None else shard_from_environment(os.environ)
        job = load_config(config, overrides)
        columns = (TextColumn("[bold]scans"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[failed]}"))
        with Progress(*columns, console=console, disable=not progress, transient=False) as bar:
            task = bar.add_task("scans", total=None, rate="", failed="")

            def update(summary) -> None:
                finished = summary.done + summary.failed
                elapsed = max(bar.tasks[0].elapsed or 0.0, 1e-9)
                bar.update(task, total=summary.scheduled, completed=finished,
                           rate=f"{3600 * finished / elapsed:.0f} scans/h" if finished else "",
                           failed=f"[red]{summary.failed} failed" if summary.failed else "")

            summary = run_job(job, restart=restart, progress=update, stop=stop, shard=part)
    out = mask_url_credentials(summary.output_uri.rstrip("/"))
    where = f"shard {part}, " if part is not None else ""
    console.print(f"[bold]run {summary.run_id}[/bold] ({where}{summary.device or 'no work'}, {summary.seconds:.0f} s): "
                  f"{summary.done} done, {summary.failed} failed, {summary.already_done} already done earlier"
                  + (f", {summary.republished} published from an interrupted run" if summary.republished else ""))
    read = f"import pandas as pd; print(pd.read_parquet({out + '/tables/structures'!r}))"
    for line in (f"labels:  {out}/labels/<participant_id>/<visit>/<contrast>.nii.gz",
                 f"tables:  {out}/tables/structures, {out}/tables/scans, {out}/tables/intensities",
                 f"read:    {shell_command('python', '-c', read)}"):
        console.print(line, markup=False, highlight=False)
    if summary.interrupted_by:
        console.print(f"interrupted ({summary.interrupted_by}): {summary.published} scan(s) published by this "
                      f"run, {summary.failed} failed; run the same command again to resume",
                      style="yellow", markup=False, highlight=False)
        raise typer.Exit(SIGNAL_EXIT.get(summary.interrupted_by, ExitStatus.CANNOT_START))
    if summary.failed:
        console.print(f"{summary.failed} scan(s) failed: see {summary.failures_uri} (or "
                      f"{shell_command('mrseg-cohort', 'status', str(config))}); re-run the same command to retry "
                      "them", style="red", markup=False, highlight=False)
        raise typer.Exit(ExitStatus.SOME_FAILED)

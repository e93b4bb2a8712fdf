"""``mrseg-cohort weights fetch|list|checksum``: MRSegmentator's weights, as its users have them."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import ExitStatus, OneLineUsageErrors, exit_statuses, fail, one_line_errors

weights_app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, help="MRSegmentator's weights: fetch, list, checksum.")
app.add_typer(weights_app, name="weights")


@weights_app.command("fetch", epilog=exit_statuses("weights fetch"))
def fetch(
    model: str = typer.Argument("base", help="base or body_comp."),
    url: str = typer.Option(None, help="Another zip: http(s) URL, file:// URL or local path (needs --sha256)."),
    sha256: str = typer.Option(None, help="sha256 of the zip (default: the release's)."),
    dest: Path = typer.Option(None, help="Model folder to create (default: $MRSEG_WEIGHTS_PATH/<model>, "
                                         "else ~/.mrsegmentator/<model>, where MRSegmentator looks too)."),
) -> None:
    """Download MRSegmentator's release zip, verify its sha256, unpack it as a model folder.

    An interrupted download is resumed (run the same command again); nothing is extracted before
    the sha256 matches, and nothing is left behind when the zip is refused."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    from mrseg_cohort.weights.fetch import fetch_weights
    from mrseg_cohort.weights.resolve import default_destination

    with one_line_errors():
        target = dest or default_destination(model, os.environ)
        columns = (TextColumn(f"{model}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
            task = bar.add_task("download", total=None)
            result = fetch_weights(model, target, url, sha256,
                                   progress=lambda done, total: bar.update(task, completed=done, total=total))
    if not result.verified:
        typer.echo(f"{model}: {result.path} already holds a model folder, used as it is; it was not fetched by "
                   "mrseg-cohort, so it is not verified against the release zip (move it away and run this "
                   "again for a verified copy)")
        return
    verb = "already installed (verified)" if result.already_present else "installed"
    typer.echo(f"{model}: {verb} at {result.path} (zip sha256 {result.zip_sha256})")


@weights_app.command("list", epilog=exit_statuses("weights list"))
def list_weights() -> None:
    """What 'weights: mrsegmentator' and 'mrsegmentator:body_comp' resolve to, and whether the files
    still match what 'weights fetch' recorded. Exit 1 when a folder found does not verify."""
    from mrseg_cohort.errors import ConfigError
    from mrseg_cohort.weights.record import verify_folder
    from mrseg_cohort.weights.registry import MODEL_NAMES, release
    from mrseg_cohort.weights.resolve import resolve

    failed = False
    for model in MODEL_NAMES:
        name = "mrsegmentator" if model == "base" else f"mrsegmentator:{model}"
        try:
            found = resolve(model, os.environ)
        except ConfigError as err:
            typer.echo(f"{name}: not found\n  {err}")
            continue
        check = verify_folder(found.path)
        record = check.record or {}
        note = " (from a zip other than MRSegmentator's release)" \
            if check.status == "verified" and record.get("zip_sha256") != release(model).sha256 else ""
        typer.echo(f"{name}: {found.path} (source: {found.source})\n  {check.status}: {check.detail}{note}")
        summed = record.get("checksum") or {}
        if check.status == "verified" and summed.get("sha256"):
            typer.echo(f"  model.checksum for folds [{', '.join(map(str, summed['folds']))}]: {summed['sha256']}")
        failed |= check.status == "modified"
    if failed:
        raise typer.Exit(ExitStatus.SOME_FAILED)


@weights_app.command("checksum", epilog=exit_statuses("weights checksum"))
def checksum(
    folder: Path = typer.Argument(..., help="nnU-Net trained-model folder."),
    folds: str = typer.Option(None, help="Comma-separated folds as in model.folds (default: every fold present)."),
    checkpoint: str = typer.Option("checkpoint_final.pth", help="As model.checkpoint."),
) -> None:
    """Print the sha256 that model.checksum expects for FOLDER with these folds."""
    from mrseg_cohort.segmentation.model_folder import open_model_folder, weights_checksum
    from mrseg_cohort.weights.record import folds_present

    with one_line_errors():
        chosen = tuple(int(f) if f.strip().isdigit() else f.strip() for f in folds.split(",") if f.strip()) \
            if folds else folds_present(folder, checkpoint)
        if not chosen:
            fail(f"{folder}: no fold_*/{checkpoint}; is it an nnU-Net trained-model folder?")
        open_model_folder(folder, chosen, checkpoint)
        digest = weights_checksum(folder, chosen, checkpoint)
    typer.echo(digest)
    typer.echo(f"model.checksum for folds [{', '.join(map(str, chosen))}], checkpoint {checkpoint}", err=True)

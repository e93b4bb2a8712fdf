"""``mrseg-cohort phantom``: write a synthetic whole-body Dixon cohort with ground truth."""

from __future__ import annotations

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import exit_statuses, fail, one_line_errors
from mrseg_cohort.paths import from_command_line


@app.command(epilog=exit_statuses("phantom"))
def phantom(
    out: str = typer.Argument(..., help="Output folder or URI: new or empty (created if missing)."),
    participants: int = typer.Option(4, "--participants", "-n", help="Number of participants (>= 1)."),
    layout: str = typer.Option("ukbb", help="Station layout: ukbb (6 stations) or nako (4 stations)."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same cohort."),
    scale: float = typer.Option(2.0, help="Coarsening factor: 2 = half the real matrix (fast), 1 = full size."),
    visit: str = typer.Option("0", help="Visit (instance) folder name."),
    wholebody: bool = typer.Option(False, help="Also write the unsplit whole-body images under truth/."),
    fmt: str = typer.Option("nifti", "--format",
                            help="nifti: station NIfTI files (layouts phantom/nako-nifti); dicom-zip: UK "
                                 "Biobank field-20201 zips <eid>_20201_<visit>_0.zip (layout ukbb-dicom-zip)."),
    repeat_visit: str = typer.Option(None, "--repeat-visit", help="Image every participant again as this visit "
                                     "(e.g. 3, UK Biobank's repeat imaging), with the --repeat-change changes."),
    repeat_change: list[str] = typer.Option([], "--repeat-change", help="STRUCTURE=FACTOR: at the repeat visit "
                                            "the structure's radii times FACTOR (repeatable), e.g. liver=1.1."),
) -> None:
    """Generate phantom participants (stations per Dixon contrast, truth labels and fat fractions)."""
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.phantom.cohort import PhantomSpec, check_spec, write_phantom_cohort
    from mrseg_cohort.phantom.stations import station_layout

    if participants < 1:
        fail(f"--participants must be at least 1, not {participants}")
    if fmt not in ("nifti", "dicom-zip"):
        fail(f"--format must be nifti or dicom-zip, not {fmt!r}")
    if fmt == "dicom-zip" and layout != "ukbb":
        fail(f"--format dicom-zip writes UK Biobank zips and needs --layout ukbb, not {layout!r}")
    changes = tuple(_change(c) for c in repeat_change)
    if changes and repeat_visit is None:
        fail("--repeat-change needs --repeat-visit")
    if repeat_visit == visit:
        fail(f"--repeat-visit must differ from --visit ({visit!r})")
    with one_line_errors():
        station_layout(layout, scale)  # validates layout and scale before any writing
        spec = PhantomSpec(participants=participants, layout=layout, seed=seed, scale=scale, visit=visit,
                           wholebody=wholebody, format=fmt, repeat_visit=repeat_visit, repeat_changes=changes)
        check_spec(spec)  # visits as the run checks them, before the folder is made
        store = Store()
        out = from_command_line(out)
        store.check_writable(out)
        truth = write_phantom_cohort(store, out, spec)
    typer.echo(f"wrote {participants} {layout} phantom participant(s) as {fmt} to {out} "
               f"({truth['participant_id'].nunique()} ids; truth in {out}/truth/)")


def _change(text: str) -> tuple[str, float]:
    name, sep, factor = text.partition("=")
    try:
        value = float(factor)
    except ValueError:
        value = float("nan")
    if not sep or not name or not value > 0:
        fail(f"--repeat-change must be STRUCTURE=FACTOR with a positive factor, e.g. liver=1.1, not {text!r}")
    return name, value

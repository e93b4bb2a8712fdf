"""``mrseg-cohort report CONFIG --out report.html``: the QC report of a job's output folder."""

from __future__ import annotations

from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import exit_statuses, one_line_errors
from mrseg_cohort.paths import from_command_line


@app.command(epilog=exit_statuses("report"))
def report(
    config: Path = typer.Argument(..., help="Job YAML file whose output folder is reported."),
    out: str = typer.Option("report.html", "--out", "-o", help="HTML file to write (path or URI)."),
    output: str = typer.Option(None, "--output", help="Override output.uri (the folder to report on; a relative "
                               "path is relative to the working directory)."),
    sample: int = typer.Option(6, "--sample", min=0, help="Scans previewed at random, besides the outliers."),
    contrast: str = typer.Option(None, "--contrast", help="Segmented contrast to report (default: the first)."),
    z_threshold: float = typer.Option(3.5, "--z-threshold", min=0.0, help="|robust z| above which a value is an "
                                      "outlier."),
    min_scans: int = typer.Option(10, "--min-scans", min=1, help="Structures present in fewer scans, and "
                                  "phenotype strata with fewer values, are not assessed for outliers."),
    max_outliers: int = typer.Option(500, "--max-outliers", min=0, help="Rows of each outlier list on the page "
                                     "(in turns across structures, most extreme first); the full lists are "
                                     "written beside the page as <name>_outliers.parquet."),
    max_outlier_previews: int = typer.Option(24, "--max-outlier-previews", min=0,
                                             help="Outlier scans previewed at most (each structure's most extreme "
                                             "first)."),
    preview_budget_mb: float = typer.Option(20.0, "--preview-budget-mb", min=0.0,
                                            help="Megabytes of the page that previews may take at most."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random preview sample."),
    covariates: str = typer.Option(None, "--covariates", help="CSV or Parquet with eid (or participant_id) and sex, "
                                   "age, height, weight (or UK Biobank fields 31, 21003, 50, 12144, 21002): "
                                   "phenotype distributions by sex and outliers within sex x age band."),
    phenotype_z_threshold: float = typer.Option(4.0, "--phenotype-z-threshold", min=0.0,
                                                help="|robust z| above which a phenotype value is an outlier."),
    agreement: str = typer.Option(None, "--agreement", help="Summary table written by mrseg-cohort agreement "
                                  "(.parquet or .csv) for the Agreement section; default: the output's own "
                                  "agreement/agreement.parquet when there is one."),
) -> None:
    """Render a self-contained HTML QC report: distributions, outliers, QC flags, vessel consistency,
    failures, run metadata and overlay previews."""
    from mrseg_cohort.config import load_config
    from mrseg_cohort.report import ReportOptions, write_report

    overrides = {"output.uri": output} if output is not None else {}
    out_uri = from_command_line(out)
    with one_line_errors():
        job = load_config(config, overrides)
        covariates = from_command_line(covariates) if covariates else None
        options = ReportOptions(sample=sample, contrast=contrast, z_threshold=z_threshold, min_scans=min_scans,
                                max_outliers=max_outliers, max_outlier_previews=max_outlier_previews,
                                preview_budget_mb=preview_budget_mb, seed=seed, covariates=covariates,
                                phenotype_z_threshold=phenotype_z_threshold,
                                agreement=from_command_line(agreement) if agreement else None)
        result = write_report(job, out_uri, options)
    extra = "" if result.phenotype_outliers is None else f", {result.phenotype_outliers} phenotype outliers"
    if result.agreement_outliers is not None:
        extra += f", {result.agreement_outliers} outside the limits of agreement"
    typer.echo(f"report of {result.scans} scans, {result.outliers} outlier values{extra}, {result.previews} "
               f"previews: {out_uri}")
    if result.beside:
        typer.echo(f"full outlier lists beside it: {', '.join(result.beside)}")
    for error in result.preview_errors:
        typer.echo(f"warning: no preview for {error}", err=True)

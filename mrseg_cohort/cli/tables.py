"""``mrseg-cohort tables wide|phenotypes|change`` and ``mrseg-cohort summary``: the results in the shapes
analysts use."""

from __future__ import annotations

from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import OneLineUsageErrors, exit_statuses, fail, one_line_errors
from mrseg_cohort.paths import from_command_line

tables_app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, help="Derived views of the published tables.")
app.add_typer(tables_app, name="tables")


def _output(config: Path, output: str | None):
    from mrseg_cohort.config import load_config
    from mrseg_cohort.ledger.outputs import Outputs

    job = load_config(config, {"output.uri": output} if output is not None else None)
    return job, Outputs.for_job(job)


@tables_app.command("wide", epilog=exit_statuses("tables wide"))
def wide(
    config: Path = typer.Argument(..., help="Job YAML file (its output is read)."),
    out: str = typer.Option(..., "--out", help="Parquet (.parquet) or CSV (.csv) file to write."),
    measures: str = typer.Option("volume_ml,ff_median_pct,n_components,touches_border",
                                 help="Comma-separated columns of tables/structures to spread."),
    contrast: str = typer.Option(None, help="Label contrast when several were segmented (default: first)."),
    output: str = typer.Option(None, help="Override output.uri (relative to the working directory)."),
) -> None:
    """One row per participant x visit, columns <structure>__<measure> (other models: <model>:<structure>).

    Join it to phenotype tables on participant_id (a string: UK Biobank's eid as text).
    """
    from mrseg_cohort.biomarkers.body_composition import BODY_COMPOSITION_COLUMNS
    from mrseg_cohort.io.tables import read_table_frame
    from mrseg_cohort.tables import KEY_COLUMNS, SCHEMAS, wide_view

    with one_line_errors():
        job, outputs = _output(config, output)
        chosen = tuple(m.strip() for m in measures.split(",") if m.strip())
        structures = read_table_frame(outputs.store, outputs.table_uri("structures"),
                                      columns=[*KEY_COLUMNS, "structure", *chosen], schema=SCHEMAS["structures"],
                                      dictionary=[*KEY_COLUMNS, "structure"])
        if structures is None:
            fail(f"no published results under {outputs.table_uri('structures')} yet")
        unknown = [m for m in chosen if m not in structures.columns]
        if unknown:
            fail(f"--measures: unknown column(s) {unknown}; see docs/tables.md")
        scans = read_table_frame(outputs.store, outputs.table_uri("scans"),
                                 columns=[*KEY_COLUMNS, *BODY_COMPOSITION_COLUMNS], schema=SCHEMAS["scans"])
        frame = wide_view(structures, chosen, contrast, scans)
        _write_frame(outputs, out, frame)
    typer.echo(f"wrote {len(frame)} rows x {frame.shape[1]} columns to {out}")


@tables_app.command("phenotypes", epilog=exit_statuses("tables phenotypes"))
def phenotypes(
    config: Path = typer.Argument(..., help="Job YAML file (its output is read)."),
    out: str = typer.Option(..., "--out", help="Parquet (.parquet) or CSV (.csv) file to write."),
    covariates: str = typer.Option(None, "--covariates", help="CSV or Parquet with eid (or participant_id) and "
                                   "sex, age, height, weight, or UK Biobank fields 31, 21003, 50, 12144, 21002 "
                                   "(e.g. 31-0.0, 21003-2.0): adds height-indexed volumes, robust z-scores "
                                   "within sex x 10-year age band x visit, and outlier flags."),
    z_threshold: float = typer.Option(4.0, "--z-threshold", min=0.0, help="|robust z| above which a value is "
                                      "flagged as an outlier."),
    min_stratum: int = typer.Option(10, "--min-stratum", min=2, help="Strata (visit x sex x age band) with fewer "
                                    "values are not assessed."),
    contrast: str = typer.Option(None, help="Label contrast when several were segmented (default: first)."),
    output: str = typer.Option(None, help="Override output.uri."),
) -> None:
    """One row per participant x visit: organ, fat-depot and muscle volumes, signal fat fractions and
    muscle fat infiltration, each with a <phenotype>_qc column of QC reasons (docs/tables.md).

    Join it to phenotype tables on participant_id (a string: UK Biobank's eid as text).
    """
    with one_line_errors():
        job, outputs = _output(config, output)
        frame = _phenotypes(job, outputs, contrast)
        matched = None
        if covariates:
            from mrseg_cohort.phenotypes.normative import with_covariates

            table = _covariates(outputs, covariates)
            matched = int(frame["participant_id"].isin(set(table["participant_id"])).sum())
            frame = with_covariates(frame, table, z_threshold, min_stratum)
        _write_frame(outputs, out, frame)
    text = (f"wrote {len(frame)} rows ({frame['participant_id'].nunique()} participants) x {frame.shape[1]} columns "
            f"to {out}; {int((frame['n_qc_flags'] > 0).sum())} rows with a QC flag")
    if matched is not None:
        stratified = int((frame["sex"].notna() & frame["age_band"].notna()).sum())
        text += (f"; covariates for {matched} rows (sex and age for {stratified}), "
                 f"{int(frame['n_outliers'].sum())} outlier flags (|z| > {z_threshold:g})")
    typer.echo(text)
    if matched == 0:
        example = f", e.g. {frame['participant_id'].iloc[0]!r}" if len(frame) else ""
        typer.echo(f"warning: no participant of {covariates} is in the output (ids are compared as text{example})",
                   err=True)


@tables_app.command("change", epilog=exit_statuses("tables change"))
def change(
    config: Path = typer.Argument(..., help="Job YAML file (its output is read)."),
    from_visit: str = typer.Option(..., "--from", help="Earlier visit, e.g. 2 (UK Biobank's first imaging visit)."),
    to_visit: str = typer.Option(..., "--to", help="Later visit, e.g. 3 (UK Biobank's repeat imaging)."),
    out: str = typer.Option(..., "--out", help="Parquet (.parquet) or CSV (.csv) file to write."),
    contrast: str = typer.Option(None, help="Label contrast when several were segmented (default: first)."),
    output: str = typer.Option(None, help="Override output.uri."),
) -> None:
    """Per participant imaged at both visits: every phenotype at both, its absolute and relative change,
    and the QC reasons of both visits (docs/tables.md)."""
    from mrseg_cohort.phenotypes.change import change_table

    with one_line_errors():
        job, outputs = _output(config, output)
        frame = change_table(_phenotypes(job, outputs, contrast), from_visit, to_visit)
        _write_frame(outputs, out, frame)
    typer.echo(f"wrote {len(frame)} participants imaged at visits {from_visit} and {to_visit} "
               f"({frame.shape[1]} columns) to {out}")


def _phenotypes(job, outputs, contrast: str | None):
    """The phenotype table of a job's published tables."""
    from mrseg_cohort.phenotypes import phenotype_table
    from mrseg_cohort.report.data import read_phenotype_inputs

    inputs = read_phenotype_inputs(outputs)
    if inputs is None:
        fail(f"no published results under {outputs.table_uri('structures')} yet")
    return phenotype_table(*inputs, outputs.base_model(job.base_model), contrast)


def _covariates(outputs, uri: str):
    """The normalised covariates of a CSV or Parquet file (path or URI)."""
    from mrseg_cohort.io.tables import read_frame
    from mrseg_cohort.phenotypes.covariates import normalise_covariates

    uri = from_command_line(uri)
    return normalise_covariates(read_frame(outputs.store, uri), uri)


def _write_frame(outputs, out: str, frame) -> None:
    """``frame`` as CSV (``.csv``) or Parquet at ``out`` (a path or URI)."""
    from mrseg_cohort.io.tables import table_bytes

    data = frame.to_csv(index=False).encode() if out.endswith(".csv") else table_bytes(frame)
    outputs.store.write_bytes(from_command_line(out), data)


@app.command(epilog=exit_statuses("summary"))
def summary(
    config: Path = typer.Argument(..., help="Job YAML file (its output is read)."),
    out: str = typer.Option(None, "--out", help="Also write the per-structure distributions (.csv or .parquet)."),
    model: str = typer.Option(None, help="Model to summarise (default: the base model)."),
    output: str = typer.Option(None, help="Override output.uri (relative to the working directory)."),
) -> None:
    """Cohort summary: per structure the distribution of volumes and fat fractions, vessel consistency
    (share of scans where a vessel is one connected piece) and counts of QC flags."""
    from rich.console import Console
    from rich.table import Table

    from mrseg_cohort.report.data import read_output
    from mrseg_cohort.report.summaries import (scan_flag_counts, structure_distributions, structure_flag_counts,
                                               vessel_consistency)

    with one_line_errors():
        job, outputs = _output(config, output)
        data = read_output(outputs, job.base_model, model)
        if not data.has_structures:
            fail(f"no published results under {outputs.table_uri('structures')} yet")
        structures, scans, contrast = data.structures, data.selected_scans, data.contrast
        dist = structure_distributions(structures)
    console = Console(soft_wrap=True)
    table = Table(title=f"{job.cohort.name}: {scans.shape[0]} scans ({contrast}); volume_ml and ff_median_pct "
                        "over scans where the structure is present")
    for col in ("structure", "n", "volume median [p25, p75]", "ff % median [p25, p75]", "flags"):
        table.add_column(col)
    flags = structure_flag_counts(structures).set_index("structure")
    wide = dist.pivot(index="structure", columns="measure")
    for name in flags.index:
        row = flags.loc[name]
        vol = wide.loc[name] if name in wide.index else None
        cell = lambda m: "" if vol is None or vol[("n", m)] == 0 else \
            f"{vol[('median', m)]:.1f} [{vol[('p25', m)]:.1f}, {vol[('p75', m)]:.1f}]"  # noqa: E731
        marks = ", ".join(f"{k} {int(row[k])}" for k in ("missing", "touches_border", "fragmented",
                                                          "lr_implausible") if row[k])
        table.add_row(name, str(int(row["present"])), cell("volume_ml"), cell("ff_median_pct"), marks)
    console.print(table)
    vc = vessel_consistency(structures)
    console.print("vessel consistency (VC): " + "; ".join(
        f"{r.vessel} {r.vc:.2f} ({r.single_component}/{r.present})" for r in vc.itertuples() if r.present))
    console.print("scan QC flags: " + "; ".join(f"{r.flag} {r.scans}" for r in scan_flag_counts(scans).itertuples()))
    if out:
        with one_line_errors():
            _write_frame(outputs, out, dist)
        console.print(f"distributions written to {out}")

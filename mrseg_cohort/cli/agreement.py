"""``mrseg-cohort agreement CONFIG --reference FILE``: agreement of our phenotypes with a reference
table (UK Biobank's returned phenotypes, another tool's) or with another output (docs/agreement.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import exit_statuses, fail, one_line_errors
from mrseg_cohort.paths import from_command_line

CONFIG_SUFFIXES = (".yaml", ".yml")


@app.command(epilog=exit_statuses("agreement"))
def agreement(
    config: Path = typer.Argument(..., help="Job YAML file whose output's phenotypes are compared."),
    reference: str = typer.Option(..., "--reference", help="The reference: a CSV/TSV or Parquet table with eid "
                                  "(or participant_id) and UK Biobank fields (22407-2.0, p22407_i2, ...) or plain "
                                  "columns; or another job YAML (.yaml), whose output's phenotypes are compared."),
    mapping: str = typer.Option(None, "--map", help="Which reference column pairs with which phenotype, in which "
                                "unit: 'ukbb' (the shipped configs/agreement/ukbb.yaml) or a mapping YAML. Default: "
                                "reference columns named like our phenotypes, same units."),
    out: str = typer.Option(None, "--out", help="Summary table to write (.parquet or .csv); NAME_values and "
                            "NAME_outside_loa are written beside it. Default: <output>/agreement/agreement.parquet, "
                            "which the report shows."),
    covariates: str = typer.Option(None, "--covariates", help="CSV or Parquet with eid (or participant_id) and sex "
                                   "(or UK Biobank field 31), as tables phenotypes takes it: results by sex too."),
    by: str = typer.Option(None, "--by", help="Comma-separated columns of the reference or covariates file to "
                           "stratify by as well (e.g. site, or UK Biobank field 54, assessment centre)."),
    reference_visit: str = typer.Option(None, "--reference-visit", help="The visit of a reference table that names "
                                        "none (default: the output's only visit)."),
    keep_qc: str = typer.Option(None, "--keep-qc", help="QC reasons of our phenotypes that do not exclude a value "
                                "(comma-separated, e.g. touches_border, or 'all'). Default: any reason excludes it."),
    contrast: str = typer.Option(None, help="Label contrast when several were segmented (default: first)."),
    output: str = typer.Option(None, help="Override output.uri."),
) -> None:
    """Bland-Altman bias and limits of agreement (with CIs), ICC(A,1) and ICC(C,1), Lin's CCC, Pearson and
    Spearman correlation, OLS and Deming lines of our phenotypes against a reference, per visit, sex and
    --by column; the participants outside the limits listed (docs/agreement.md)."""
    from mrseg_cohort.agreement.compare import agreement_tables
    from mrseg_cohort.agreement.files import default_uri, table_uris, write_agreement
    from mrseg_cohort.agreement.reference import normalise_reference
    from mrseg_cohort.cli.tables import _output, _phenotypes
    from mrseg_cohort.phenotypes.catalogue import QC_REASONS

    keep = _keep_qc(keep_qc, QC_REASONS)
    by_columns = tuple(c.strip() for c in (by or "").split(",") if c.strip())
    with one_line_errors():
        job, outputs = _output(config, output)
        target = from_command_line(out) if out else default_uri(outputs.root)
        table_uris(target)  # a bad --out suffix stops here, before any work
        ours = _phenotypes(job, outputs, contrast)
        frame, source = _reference_frame(outputs, reference, contrast)
        long = normalise_reference(frame, source)
        pairs = _mapping(outputs, mapping, long)
        strata = _strata(outputs, covariates, ours, by_columns, set(long.columns))
        result = agreement_tables(ours, long, pairs, source, strata, by_columns, keep, reference_visit)
        uris = write_agreement(outputs.store, target, result.summary, result.values, result.outside_loa)
    overall = result.summary[result.summary["stratum"] == "all"]
    typer.echo(f"compared {len(overall)} pairs ({', '.join(overall['pair'])}) over {len(ours)} participant x visits "
               f"of the output: {int(overall['n_paired'].sum())} paired values, {len(result.outside_loa)} outside the "
               f"limits of agreement")
    typer.echo(f"wrote {uris['summary']} ({len(result.summary)} rows), {uris['values']}, {uris['outside_loa']}")
    if result.visit_assumed is not None:
        typer.echo(f"note: {source} names no visit; its values were taken as visit {result.visit_assumed}", err=True)
    if result.skipped:
        typer.echo(f"note: not in {source}, not compared: {'; '.join(result.skipped)}", err=True)
    not_processed = int(overall["n_not_processed"].sum())
    if not_processed:
        typer.echo(f"note: {not_processed} reference values are for participants or visits not in the output "
                   "(counted in n_not_processed, not compared)", err=True)


def _keep_qc(value: str | None, reasons: tuple[str, ...]) -> frozenset[str] | str:
    if not value:
        return frozenset()
    if value.strip() == "all":
        return "all"
    chosen = frozenset(r.strip() for r in value.split(",") if r.strip())
    unknown = sorted(chosen - set(reasons))
    if unknown:
        fail(f"--keep-qc: unknown QC reason(s) {unknown}; known: {', '.join(reasons)} (or all)")
    return chosen


def _reference_frame(outputs, reference: str, contrast: str | None):
    """The reference as a frame and its name: a table file, or another job's phenotype table."""
    from mrseg_cohort.cli.tables import _output, _phenotypes
    from mrseg_cohort.io.tables import read_frame

    if reference.endswith(CONFIG_SUFFIXES):
        other_job, other = _output(Path(from_command_line(reference)), None)
        return _phenotypes(other_job, other, contrast), f"the output {other.root} (of {reference})"
    uri = from_command_line(reference)
    return read_frame(outputs.store, uri), uri


def _mapping(outputs, mapping: str | None, long):
    from mrseg_cohort.agreement.mapping import identity_mapping, load_mapping, shipped_mapping

    if not mapping:
        return identity_mapping(long.columns)
    if mapping.endswith(CONFIG_SUFFIXES):
        uri = from_command_line(mapping)
        return load_mapping(outputs.store.read_bytes(uri), uri)
    path = shipped_mapping(mapping)
    return load_mapping(path.read_bytes(), str(path))


def _strata(outputs, covariates: str | None, ours, by: tuple[str, ...], reference_columns: set):
    """Sex (from the covariates) and the ``by`` columns that only the covariates file has, per row of ``ours``."""
    import pandas as pd

    from mrseg_cohort.agreement.reference import lookup, normalise_reference
    from mrseg_cohort.cli.tables import _covariates
    from mrseg_cohort.io.tables import read_frame
    from mrseg_cohort.phenotypes.covariates import attach_covariates

    if not covariates:
        return None
    keys = ours[["participant_id", "visit"]]
    strata = pd.DataFrame({"sex": attach_covariates(keys, _covariates(outputs, covariates))["sex"]}, index=ours.index)
    wanted = [c for c in by if c not in reference_columns and c != "sex"]
    if wanted:
        uri = from_command_line(covariates)
        long = normalise_reference(read_frame(outputs.store, uri), uri)
        for column in wanted:
            if column in long.columns:
                strata[column] = lookup(long, keys, column)
    return strata

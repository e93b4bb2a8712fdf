"""``mrseg-cohort tables wide`` and ``mrseg-cohort summary``: the results in the shapes analysts use."""

from __future__ import annotations

from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import exit_statuses, fail, one_line_errors
from mrseg_cohort.paths import from_command_line

tables_app = typer.Typer(no_args_is_help=True, help="Derived views of the published tables.")
app.add_typer(tables_app, name="tables")


def _output(config: Path, output: str | None):
    from mrseg_cohort.config import load_config
    from mrseg_cohort.outputs import Outputs

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
    from mrseg_cohort.io.tables import read_table_folder, table_bytes
    from mrseg_cohort.tables import wide_view

    with one_line_errors():
        job, outputs = _output(config, output)
        table = read_table_folder(outputs.store, outputs.table_uri("structures"))
        if table is None:
            fail(f"no published results under {outputs.table_uri('structures')} yet")
        structures = table.to_pandas()
        chosen = tuple(m.strip() for m in measures.split(",") if m.strip())
        unknown = [m for m in chosen if m not in structures.columns]
        if unknown:
            fail(f"--measures: unknown column(s) {unknown}; see docs/tables.md")
        scans = read_table_folder(outputs.store, outputs.table_uri("scans"))
        frame = wide_view(structures, chosen, contrast, scans.to_pandas() if scans is not None else None)
        data = frame.to_csv(index=False).encode() if out.endswith(".csv") else table_bytes(frame)
        outputs.store.write_bytes(from_command_line(out), data)
    typer.echo(f"wrote {len(frame)} rows x {frame.shape[1]} columns to {out}")


@app.command(epilog=exit_statuses("summary"))
def summary(
    config: Path = typer.Argument(..., help="Job YAML file (its output is read)."),
    out: str = typer.Option(None, "--out", help="Also write the per-structure distributions (.csv or .parquet)."),
    model: str = typer.Option(None, help="Model to summarise (default: the first configured)."),
    output: str = typer.Option(None, help="Override output.uri (relative to the working directory)."),
) -> None:
    """Cohort summary: per structure the distribution of volumes and fat fractions, vessel consistency
    (share of scans where a vessel is one connected piece) and counts of QC flags."""
    from rich.console import Console
    from rich.table import Table

    from mrseg_cohort.io.tables import table_bytes
    from mrseg_cohort.report.data import read_output
    from mrseg_cohort.report.summaries import (scan_flag_counts, select, structure_distributions,
                                               structure_flag_counts, vessel_consistency)

    with one_line_errors():
        job, outputs = _output(config, output)
        data = read_output(outputs)
        if data.structures.empty:
            fail(f"no published results under {outputs.table_uri('structures')} yet")
        structures, scans, contrast = select(data.structures, data.scans, model or job.models[0].name, None)
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
        data_bytes = dist.to_csv(index=False).encode() if out.endswith(".csv") else table_bytes(dist)
        outputs.store.write_bytes(from_command_line(out), data_bytes)
        console.print(f"distributions written to {out}")

"""``mrseg-cohort evaluate``: Dice, HD95, components and vessel consistency against references."""

from __future__ import annotations

from typing import Optional

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import ExitStatus, exit_statuses, fail, one_line_errors
from mrseg_cohort.paths import from_command_line


@app.command(epilog=exit_statuses("evaluate"))
def evaluate(
    out: str = typer.Option(..., "--out", help="Output folder or URI for the tables (created if missing)."),
    pred: Optional[str] = typer.Option(None, "--pred", help="Folder or URI of predicted label maps."),
    ref: Optional[str] = typer.Option(None, "--ref", help="Folder or URI of reference label maps, "
                                      "paired with --pred by file name."),
    pairs: Optional[str] = typer.Option(None, "--pairs", help="Instead of --pred/--ref: a CSV or Parquet "
                                        "list with columns pred, ref, optional id, and grouping columns "
                                        "(e.g. dataset, sequence)."),
    labels: str = typer.Option("mrseg", "--labels", help="Label map of the predictions: mrseg, body_comp, "
                               "or a JSON file (nnU-Net dataset.json or {value: name})."),
    map_file: Optional[str] = typer.Option(None, "--map", help="JSON mapping the references' labels onto "
                                           "--labels (see configs/label_maps/)."),
    group: str = typer.Option("all", "--group", help="Column name in the tables for a --pred/--ref set."),
    resample_mm: Optional[str] = typer.Option(None, "--resample-mm", help="Resample both maps (nearest "
                                              "neighbour) to this spacing first: 'z,y,x' in mm, e.g. 3,1.5,1.5."),
    connectivity: int = typer.Option(26, "--connectivity", help="6, 18 or 26, for component counts and VC."),
    use_ray: bool = typer.Option(False, "--ray", help="Run pairs as Ray tasks (joins RAY_ADDRESS or "
                                 "--ray-address, else starts a local Ray)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Ray cluster address (implies --ray)."),
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs for a local Ray (default: all)."),
    covariates: Optional[str] = typer.Option(None, "--covariates", help="CSV or Parquet with eid (or "
                                             "participant_id), sex and age (or UK Biobank fields 31, 21003): "
                                             "adds demographics.parquet/.md, Dice and HD95 by sex (t-test) and "
                                             "against age (Pearson r). Pairs are matched by the list's "
                                             "participant_id column, else by pair id."),
    welch: bool = typer.Option(False, "--welch", help="Welch's t-test instead of Student's (the paper's, SciPy's "
                               "default)."),
) -> None:
    """Evaluate predicted label maps against references; writes Parquet, CSV and Markdown tables.

    Conventions and columns: docs/evaluation.md.
    """
    import logging

    from mrseg_cohort import evaluation as ev
    from mrseg_cohort.io.storage import Store

    log = logging.getLogger("mrseg_cohort.evaluate")
    folders = pred is not None or ref is not None
    if (pairs is not None) == folders or (folders and (pred is None or ref is None)):
        fail("give either --pred and --ref (two folders) or --pairs (one CSV/Parquet list)")
    if connectivity not in (6, 18, 26):
        fail(f"--connectivity must be 6, 18 or 26, not {connectivity}")
    spacing = _parse_spacing(resample_mm) if resample_mm else None
    with one_line_errors():
        store = Store()
        out, pred, ref, pairs, labels, map_file = (_absolute(u) for u in (out, pred, ref, pairs, labels, map_file))
        label_map = ev.load_label_map(store, labels or "mrseg")
        kwargs = {"resample_mm": spacing, "connectivity": connectivity}
        options = (ev.options_with_map(store, map_file, label_map, **kwargs) if map_file
                   else ev.identity_options(label_map, **kwargs))
        pair_list = ev.pairs_from_list(store, pairs) if pairs else ev.pairs_from_folders(store, pred, ref, group)
        subjects = _subjects(store, _absolute(covariates), pair_list) if covariates else None
        store.check_writable(out)
        log.info("evaluating %d pair(s) against %d %s classes", len(pair_list), len(label_map), label_map.name)
        done = []

        def progress(result: ev.PairResult) -> None:
            done.append(result)
            if len(done) % 25 == 0 or len(done) == len(pair_list):
                log.info("evaluated %d/%d pairs", len(done), len(pair_list))

        if use_ray or ray_address:
            from mrseg_cohort.pipeline.evaluate import evaluate_pairs_ray

            results = evaluate_pairs_ray(store, pair_list, options, ray_address, num_cpus, on_result=progress)
        else:
            results = ev.evaluate_pairs(store, pair_list, options, on_result=progress)
        frames = ev.write_outputs(store, out, results, pair_list, label_map)
        if subjects is not None:
            from mrseg_cohort.demographics import demographics, write_demographics

            table = demographics(frames["per_class"], subjects, welch)
            write_demographics(store, out, table, welch)
            known = int(subjects["sex"].notna().sum())
            if not known and not subjects["age_years"].notna().any():
                log.warning("demographics: no pair matched a participant of %s (pairs are matched by the list's "
                            "participant_id column, else by pair id, e.g. %r)", covariates, pair_list[0].pair_id)
            log.info("demographics: %d of %d pairs matched a sex, %d an age; %d of %d rows NaN (reasons in "
                     "demographics.md)", known, len(subjects), int(subjects["age_years"].notna().sum()),
                     int(table["note"].ne("").sum()), len(table))
    failed = [r.row for r in results if r.row["status"] != "ok"]
    for row in failed[:10]:
        typer.echo(f"failed: {row['pair_id']}: {row['error']}", err=True)
    typer.echo(f"evaluated {len(results) - len(failed)}/{len(results)} pair(s); tables in {out}")
    if failed:
        typer.echo(f"{len(failed)} pair(s) failed (all listed in {out}/pairs.parquet)", err=True)
        raise typer.Exit(ExitStatus.SOME_FAILED)


def _subjects(store, uri: str, pair_list):
    """pair_id, sex, age_years of every pair, from the covariates file ``uri``."""
    import pandas as pd

    from mrseg_cohort.io.tables import read_frame
    from mrseg_cohort.phenotypes.covariates import attach_covariates, normalise_covariates

    covariates = normalise_covariates(read_frame(store, uri), uri)
    keys = pd.DataFrame([p.participant for p in pair_list], columns=["participant_id", "visit"])
    found = attach_covariates(keys, covariates)
    return pd.DataFrame({"pair_id": [p.pair_id for p in pair_list], "sex": found["sex"].to_numpy(dtype=object),
                         "age_years": found["age_years"].to_numpy(dtype=float)})


def _parse_spacing(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or not all(v > 0 for v in values):
        fail(f"--resample-mm must be three positive numbers 'z,y,x' in mm, not {text!r}")
    return values  # type: ignore[return-value]


def _absolute(uri: str | None) -> str | None:
    """Local paths made absolute (URIs and the names of built-in label maps kept)."""
    if uri is None or uri in ("mrseg", "body_comp"):
        return uri
    return from_command_line(uri)

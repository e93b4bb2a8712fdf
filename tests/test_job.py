"""The cohort job end to end on phantoms: labels, tables, agreement with nnU-Net, devices."""

import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from conftest import write_job_yaml
from mrseg_cohort.config import load_config
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.nifti import ReadLimits, read_labels
from mrseg_cohort.io.storage import Store
from mrseg_cohort.io.tables import read_table_folder
from mrseg_cohort.ledger.outputs import INDEXED_COLUMNS, Outputs
from mrseg_cohort.labels import MRSEG
from mrseg_cohort.pipeline.run import choose_device, run_job
from mrseg_cohort.tables import SCHEMAS

MAJOR = ("liver", "spleen", "right_kidney", "left_kidney", "left_lung", "right_lung", "heart", "left_femur",
         "right_femur")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, phantom_cohort, demo_model, ray_local):
    out = tmp_path_factory.mktemp("run") / "out"
    config = write_job_yaml(out.parent / "job.yaml", str(phantom_cohort), str(out))
    job = load_config(config)
    summary = run_job(job)
    return job, summary, out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_every_scan_done_and_tables_readable(demo_run):
    job, summary, out = demo_run
    assert (summary.done, summary.failed, summary.device) == (4, 0, "cpu")
    structures = pd.read_parquet(out / "tables" / "structures")
    scans = pd.read_parquet(out / "tables" / "scans")
    assert len(structures) == 4 * 40 and len(scans) == 4
    assert structures.groupby(["participant_id", "visit", "structure_id"]).size().max() == 1
    assert set(structures["structure"]) == set(MRSEG.names.values())
    assert structures["participant_id"].map(type).eq(str).all()
    assert (scans["status"] == "ok").all() and scans["weights_sha256"].str.len().eq(64).all()


def test_the_run_leaves_indexes_covering_every_part(demo_run):
    job, _, out = demo_run
    outputs = Outputs.for_job(job)
    for table, columns in INDEXED_COLUMNS.items():
        parts = sorted(p.name for p in (out / "tables" / table).glob("*.parquet"))
        assert parts or table == "failures"
        if parts:
            covered = json.loads(pq.read_schema(out / "_work" / "index" / f"{table}.parquet")
                                 .metadata[b"mrseg_cohort.index.parts"])
            assert [name for name, _, _ in covered] == parts
        every_part = read_table_folder(outputs.store, outputs.table_uri(table), list(columns), schema=SCHEMAS[table])
        through_index = outputs.read_indexed(table, columns)
        assert (through_index is None and every_part is None) or through_index.equals(every_part)


def test_labels_match_phantom_truth(demo_run, phantom_cohort):
    _, _, out = demo_run
    store = Store()
    pids = sorted(p.name for p in (out / "labels").iterdir() if p.is_dir())
    assert len(pids) == 4
    for pid in pids[:2]:
        pred = read_labels(store, str(out / "labels" / pid / "0" / "in.nii.gz"))
        truth = read_labels(store, str(phantom_cohort / "truth" / pid / "0" / "labels.nii.gz"))
        assert pred.grid.is_close(truth.grid), pred.grid.mismatch(truth.grid)
        scores = {name: dice(pred.array == i, truth.array == i) for i, name in MRSEG.names.items()}
        assert all(np.any(pred.array == i) for i in MRSEG), "every structure found"
        assert np.mean(list(scores.values())) >= 0.80, scores
        assert min(scores[n] for n in MAJOR) >= 0.90, {n: scores[n] for n in MAJOR}


def test_volume_is_an_exact_voxel_count(demo_run):
    _, _, out = demo_run
    structures = pd.read_parquet(out / "tables" / "structures")
    pid = structures["participant_id"].iloc[0]
    labels = read_labels(Store(), str(out / "labels" / pid / "0" / "in.nii.gz"))
    rows = structures[structures.participant_id == pid].set_index("structure_id")
    counts = np.bincount(labels.array.ravel(), minlength=41)
    voxel_ml = float(np.prod(labels.grid.spacing_mm)) / 1000
    assert (rows["n_voxels"].to_numpy() == counts[rows.index]).all()
    assert (rows["volume_ml"].to_numpy() == counts[rows.index] * voxel_ml).all()


def test_written_labels_equal_nnunets_predictor(demo_run, phantom_cohort, demo_model, tmp_path):
    """nnU-Net's own predict_from_files on the same stitched image and model."""
    from mrseg_cohort.io.nifti import write_volume
    from mrseg_cohort.loading import load_scan
    from mrseg_cohort.manifest import discover
    from nnunet_driver import predict_from_files

    job, _, out = demo_run
    source = discover(job, Store())[0]
    loaded = load_scan(Store(), source, job.contrasts, job.stitching, ReadLimits.from_config(job.limits))
    (tmp_path / "in").mkdir()
    write_volume(Store(), str(tmp_path / "in" / "case_0000.nii.gz"), loaded.images["in"], np.float32)
    predict_from_files(demo_model, (0,), tmp_path / "in", tmp_path / "pred")
    reference = read_labels(Store(), str(tmp_path / "pred" / "case.nii.gz"))
    ours = read_labels(Store(), str(out / "labels" / source.participant_id / "0" / "in.nii.gz"))
    assert reference.grid.is_close(ours.grid)
    for i, name in MRSEG.names.items():
        a, b = ours.array == i, reference.array == i
        if a.any() or b.any():
            assert dice(a, b) >= 0.999, name


def test_rerun_does_no_work(demo_run):
    job, _, out = demo_run
    again = run_job(job)
    assert (again.scheduled, again.done, again.already_done) == (0, 0, 4)
    assert len(pd.read_parquet(out / "tables" / "structures")) == 4 * 40


def test_device_choice():
    """(requested, GPUs now, on a cluster, resources.gpus): a local Ray has what it has; a cluster may
    still start GPU workers when the job asks for them."""
    assert choose_device("auto", 0, False, None) == "cpu" and choose_device("auto", 2, False, None) == "cuda"
    assert choose_device("cpu", 4, True, None) == "cpu"
    assert choose_device("auto", 0, True, None) == "cpu"   # a cluster, but no GPU asked for
    assert choose_device("auto", 0, True, 8) == "cuda"     # resources.gpus: 8 on an autoscaling cluster
    assert choose_device("cuda", 0, True, None) == "cuda"  # the actor pool asks and waits
    assert choose_device("auto", 4, False, 0) == "cpu"
    with pytest.raises(ConfigError, match="no GPU is present"):
        choose_device("cuda", 0, False, None)
    with pytest.raises(ConfigError, match="resources.gpus is 0"):
        choose_device("cuda", 2, False, 0)


def test_fake_cuda_on_a_cpu_machine_says_so_instead_of_hanging(tmp_path, phantom_cohort, demo_model, ray_local):
    from typer.testing import CliRunner

    from mrseg_cohort.cli import app

    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(tmp_path / "out"),
                            model={"weights": str(demo_model), "device": "cuda"})
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2 and "no GPU is present" in result.output


def test_tables_load_in_duckdb_and_polars_and_the_wide_view_joins_phenotypes(demo_run, tmp_path):
    import duckdb
    import polars as pl
    from typer.testing import CliRunner

    from mrseg_cohort.cli import app

    job, _, out = demo_run
    folder = out / "tables" / "structures"
    n_duck = duckdb.sql(f"select count(*) from read_parquet('{folder}/*.parquet')").fetchall()[0][0]
    n_polars = pl.read_parquet(f"{folder}/*.parquet").height
    assert n_duck == n_polars == len(pd.read_parquet(folder)) == 4 * 40

    result = CliRunner().invoke(app, ["tables", "wide", job.source, "--out", str(tmp_path / "wide.parquet")])
    assert result.exit_code == 0, result.output
    wide = pd.read_parquet(tmp_path / "wide.parquet")
    assert len(wide) == 4 and "liver__volume_ml" in wide.columns and "left_kidney__ff_median_pct" in wide.columns
    phenotypes = pd.DataFrame({"participant_id": wide["participant_id"].tolist() + ["9999999"],
                               "egfr": [90.0, 75.0, 60.0, 101.0, 50.0]})
    joined = duckdb.sql("select p.egfr, w.left_kidney__volume_ml from phenotypes p "
                        "join wide w using (participant_id)").df()
    assert len(joined) == 4 and joined["left_kidney__volume_ml"].gt(0).all()
    structures = pd.read_parquet(folder)
    liver = structures[structures.structure == "liver"].set_index("participant_id")["volume_ml"]
    assert (wide.set_index("participant_id")["liver__volume_ml"] == liver).all()

    summary = CliRunner().invoke(app, ["summary", job.source, "--out", str(tmp_path / "dist.csv")])
    assert summary.exit_code == 0, summary.output
    dist = pd.read_csv(tmp_path / "dist.csv")
    vol = dist[(dist.structure == "liver") & (dist.measure == "volume_ml")].iloc[0]
    assert vol["n"] == 4 and vol["median"] == pytest.approx(liver.median())


def test_colour_tables_beside_the_labels(demo_run):
    from mrseg_cohort.colortables import parse_slicer_ctbl

    _, _, out = demo_run
    entries = parse_slicer_ctbl((out / "labels" / "base.ctbl").read_text())
    assert {e.value: e.name for e in entries if e.value} == MRSEG.names
    assert (out / "labels" / "base.label_description.txt").exists()

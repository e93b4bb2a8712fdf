"""Body composition in the same pass: MRSegmentator's body-composition model beside the base model."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import shared_file, write_job_yaml
from mrseg_cohort.config import load_config
from mrseg_cohort.io.nifti import read_labels
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import BODY_COMPOSITION
from mrseg_cohort.manifest import discover
from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant
from mrseg_cohort.pipeline import stages
from mrseg_cohort.pipeline.run import run_job
from mrseg_cohort.segmentation.segmenter import Segmenter, check_model
from mrseg_cohort.ledger.work_units import ScanUnit
from mrseg_cohort.versions import software_versions


@pytest.fixture(scope="module")
def mrseg_root(tmp_path_factory, demo_model, body_comp_model):
    """A fake MRSegmentator weights root: <root>/base and <root>/body_comp, as the release lays them out."""
    root = tmp_path_factory.mktemp("weights") / "mrsegmentator"
    shutil.copytree(demo_model, root / "base")
    shutil.copytree(body_comp_model, root / "body_comp")
    return root


def _models(root) -> list[dict]:
    return [{"name": "base", "weights": str(root / "base")},
            {"name": "body_comp", "weights": str(root / "body_comp"), "labels": "body_comp",
             "modalities": ["MRI"]}]


def _dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / max(a.sum() + b.sum(), 1)


def test_one_pass_reads_every_file_once_and_measures_both_models(mrseg_root, phantom_cohort, tmp_path,
                                                                monkeypatch):
    """The stages as the pipeline composes them: one read + stitch, one preprocessing, two models."""
    job = load_config(write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(tmp_path / "out"),
                                     model=None, models=_models(mrseg_root)))
    specs = tuple(check_model(m) for m in job.models)
    ctx = stages.RunContext(job, specs, "test", software_versions(), "cpu")
    reads: list[str] = []
    original = Store.read_bytes
    monkeypatch.setattr(Store, "read_bytes", lambda self, uri: reads.append(uri) or original(self, uri))
    source = discover(job, Store())[0]
    loaded = stages.read_and_stitch(ctx, source)
    segmenter = Segmenter(list(specs), "cpu", threads=2)
    assert len({r.preprocess_key for r in segmenter.runners.values()}) == 1  # shared preprocessing
    seg = {c: segmenter(v, "MRI", c) for c, v in stages.segmentation_inputs(ctx, loaded).items()}
    tables = stages.finish(ctx, ScanUnit(source, tuple(s.name for s in specs)), loaded, seg)
    inputs = [u for u in reads if "/_work/" not in u]
    assert sorted(inputs) == sorted(source.uris) and len(inputs) == len(set(inputs)) == 24

    out = tmp_path / "out" / "labels" / source.participant_id / "0"
    base, body = read_labels(Store(), str(out / "in.nii.gz")), read_labels(Store(), str(out / "in.body_comp.nii.gz"))
    assert base.grid == body.grid == loaded.grid
    structures = tables["structures"].to_pandas()
    assert set(structures["model"]) == {"base", "body_comp"}
    rows = structures[structures.model == "body_comp"].set_index("structure_id")
    counts = np.bincount(body.array.ravel(), minlength=11)
    assert (rows["n_voxels"] == counts[rows.index]).all()
    assert np.allclose(rows["volume_ml"], counts[rows.index] * body.grid.voxel_volume_ml)
    scans = tables["scans"].to_pandas().set_index("model")
    vat = rows.loc[BODY_COMPOSITION.id_of("visceral_fat"), "volume_ml"]
    assert scans.loc["body_comp", "vat_ml"] == pytest.approx(vat)
    assert np.isnan(scans.loc["base", "vat_ml"])
    # shared stages counted once (on the first model's row); each model's own stages on its row
    for stage in ("read", "stitch", "preprocess"):
        assert scans.loc["base", f"seconds_{stage}"] > 0 and scans.loc["body_comp", f"seconds_{stage}"] == 0
    for stage in ("network", "export", "measure", "write"):
        assert (scans[f"seconds_{stage}"] > 0).all()


def test_fat_depots_found_and_their_fat_fraction(body_comp_model):
    """Dice >= 0.90 for subcutaneous and visceral fat on unseen phantoms; fat fraction within 1 point."""
    from mrseg_cohort.biomarkers.scan import measure_scan
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.segmentation.engine import ModelRunner
    from mrseg_cohort.segmentation.model_folder import open_model_folder

    runner = ModelRunner(open_model_folder(body_comp_model, (0,)), "cpu")
    for i in range(2):
        r = render_spec_participant(PhantomSpec(1, seed=2024), i)
        pred = runner(np.rint(r.in_phase).astype(np.float32), r.grid.spacing_mm)
        sat_ids = [BODY_COMPOSITION.id_of(n) for n in ("subcutaneous_fat", "abdominal_subcutaneous_fat",
                                                        "gluteofemoral_fat")]
        vat_id = BODY_COMPOSITION.id_of("visceral_fat")
        assert _dice(np.isin(pred, sat_ids), np.isin(r.body_comp, sat_ids)) >= 0.90
        assert _dice(pred == vat_id, r.body_comp == vat_id) >= 0.90
        images = {"water": Volume(r.water, r.grid), "fat": Volume(r.fat, r.grid)}
        rows = {m["structure"]: m for m in measure_scan(Volume(pred, r.grid), BODY_COMPOSITION, images, "fat",
                                                         "water").structures}
        for name in ("visceral_fat", "abdominal_subcutaneous_fat", "gluteofemoral_fat"):
            assert rows[name]["ff_median_pct"] == pytest.approx(r.ff_truth[name], abs=1.0), name


def test_mrsegmentator_root_runs_as_one_job(mrseg_root, phantom_cohort, tmp_path, ray_local):
    out = tmp_path / "out"
    job = load_config(write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(out), model=None,
                                     models=_models(mrseg_root), limits={"first_n": 1}))
    summary = run_job(job)
    assert (summary.done, summary.failed) == (1, 0)
    scans = pd.read_parquet(out / "tables" / "scans")
    assert sorted(scans["model"]) == ["base", "body_comp"]
    assert (scans["status"] == "ok").all() and scans["vat_asat_ratio"].notna().sum() == 1
    assert (out / "labels" / "body_comp.ctbl").exists() and (out / "labels" / "base.ctbl").exists()
    structures = pd.read_parquet(out / "tables" / "structures")
    assert len(structures) == 40 + 10
    for pid in scans["participant_id"].unique():
        assert (out / "labels" / pid / "0" / "in.body_comp.nii.gz").exists()


def test_ct_input_runs_base_and_skips_the_mri_only_model(mrseg_root, tmp_path, ray_local):
    ct = shared_file("ct.nii.gz")
    folder = tmp_path / "ct"
    folder.mkdir()
    shutil.copy(ct, folder / "ct001.nii.gz")
    out = tmp_path / "out"
    job = load_config(write_job_yaml(
        tmp_path / "job.yaml", str(folder), str(out), model=None, models=_models(mrseg_root),
        cohort={"name": "ct", "layout": "nifti-folder", "modality": "CT"},
        contrasts={"available": ["ct"], "segment": ["ct"], "fat": None, "water": None}))
    summary = run_job(job)
    assert (summary.done, summary.failed) == (1, 0)
    scans = pd.read_parquet(out / "tables" / "scans").set_index("model")
    assert scans.loc["base", "status"] == "ok" and scans.loc["body_comp", "status"] == "skipped"
    assert "MRI-only" in scans.loc["body_comp", "model_skipped_reason"]
    assert (out / "labels" / "ct001" / "0" / "ct.nii.gz").exists()
    assert not (out / "labels" / "ct001" / "0" / "ct.body_comp.nii.gz").exists()
    assert set(pd.read_parquet(out / "tables" / "structures")["model"]) == {"base"}


def test_models_listed_in_another_order_leave_the_base_files_and_rows_alone(mrseg_root, phantom_cohort, tmp_path,
                                                                             ray_local):
    """`models: [body_comp, base]` after runs with `models: [base]` was accepted as a model added, and
    the label file without a suffix went to the first model: every base label map was overwritten by
    body-composition labels, base rows pointed at them, and the phenotypes' liver volumes were NaN."""
    from mrseg_cohort.phenotypes import phenotype_table

    out = tmp_path / "out"
    base, body_comp = _models(mrseg_root)
    first = load_config(write_job_yaml(tmp_path / "a.yaml", str(phantom_cohort), str(out), model=None,
                                       models=[base], limits={"first_n": 1}))
    assert run_job(first).done == 1
    labels = sorted((out / "labels").glob("*/*/in*.nii.gz"))
    assert [p.name for p in labels] == ["in.nii.gz"]
    before = labels[0].read_bytes()
    rows_before = pd.read_parquet(out / "tables" / "scans")[["participant_id", "label_uri"]]
    second = load_config(write_job_yaml(tmp_path / "b.yaml", str(phantom_cohort), str(out), model=None,
                                        models=[body_comp, base], limits={"first_n": 1}))
    assert second.base_model == "base"
    assert run_job(second).done == 1
    assert labels[0].read_bytes() == before  # the base labels, byte for byte
    assert (labels[0].parent / "in.body_comp.nii.gz").exists()
    scans = pd.read_parquet(out / "tables" / "scans")
    base_rows = scans[scans["model"] == "base"][["participant_id", "label_uri"]]
    assert base_rows.reset_index(drop=True).equals(rows_before.reset_index(drop=True))
    assert scans[scans["model"] == "body_comp"]["label_uri"].str.endswith("in.body_comp.nii.gz").all()
    phenotypes = phenotype_table(pd.read_parquet(out / "tables" / "structures"), scans, "base")
    assert phenotypes["liver_volume_ml"].notna().all() and phenotypes["vat_volume_ml"].notna().all()


def test_the_base_model_is_decided_by_name_or_label_set_never_by_position(mrseg_root, phantom_cohort, tmp_path):
    from mrseg_cohort.errors import ConfigError

    base, body_comp = _models(mrseg_root)
    mine = {**base, "name": "mrseg_v2"}

    def job(models):
        return load_config(write_job_yaml(tmp_path / "j.yaml", str(phantom_cohort), str(tmp_path / "o"),
                                          model=None, models=models))

    assert job([body_comp, mine]).base_model == "mrseg_v2"  # the one model with MRSegmentator's labels
    assert job([body_comp, base, mine]).base_model == "base"  # named so
    with pytest.raises(ConfigError, match="several models could be the base model"):
        job([mine, {**base, "name": "mrseg_v3"}])

"""mrseg_cohort.phenotypes and ``mrseg-cohort tables phenotypes|change``: every phenotype against an
independent computation from the label maps and images of phantoms imaged at two visits, QC reasons,
covariates (UK Biobank field names), height indexing, robust z within strata, planted outliers."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from conftest import DEMO_BODY_COMP_MODEL, DEMO_MODEL, publish_rows, write_job_yaml
from mrseg_cohort.cli import app
from mrseg_cohort.config import load_config
from mrseg_cohort.io.nifti import read_labels
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort
from mrseg_cohort.phenotypes import PHENOTYPES, phenotype_table
from mrseg_cohort.phenotypes.covariates import CovariateError, attach_covariates, normalise_covariates
from mrseg_cohort.phenotypes.normative import outlier_rows, stratified_robust_z, with_covariates
from mrseg_cohort.ledger.work_units import ScanUnit

SPEC = PhantomSpec(participants=2, seed=18, visit="2", repeat_visit="3",
                   repeat_changes=(("liver", 1.1), ("left_kidney", 0.9)), repeat_ff_pct=(("liver", 30.0),))
STORE = Store()
SIDES = ("left", "right")
MUSCLES = {"iliopsoas": ["iliopsoas_muscle"], "gluteal": ["gluteus_maximus", "gluteus_medius", "gluteus_minimus"],
           "autochthonous": ["autochthonous_muscle"]}


def _expected_rules() -> dict[str, tuple[str, str, list[str]]]:
    """The phenotypes as the issue states them, written out here independently of the catalogue:
    name -> (rule, label map, structures)."""
    rules = {f"{o}_volume_ml": ("volume", "base", [o]) for o in
             ("liver", "spleen", "pancreas", "left_kidney", "right_kidney")}
    rules["kidneys_volume_ml"] = ("volume", "base", ["left_kidney", "right_kidney"])
    rules.update({f"{o}_ff_median_pct": ("ff_median", "base", [o]) for o in ("liver", "pancreas", "spleen")})
    rules.update({"vat_volume_ml": ("volume", "body_comp", ["visceral_fat"]),
                  "asat_volume_ml": ("volume", "body_comp", ["abdominal_subcutaneous_fat"]),
                  "gluteofemoral_fat_volume_ml": ("volume", "body_comp", ["gluteofemoral_fat"]),
                  "sat_volume_ml": ("volume", "body_comp", ["subcutaneous_fat", "abdominal_subcutaneous_fat",
                                                            "gluteofemoral_fat"]),
                  "vat_asat_ratio": ("ratio", "body_comp", ["visceral_fat", "abdominal_subcutaneous_fat"])})
    for group, muscles in MUSCLES.items():
        for rule, unit in (("volume", "volume_ml"), ("ff_mean", "ff_mean_pct")):
            for side in SIDES:
                rules[f"{side}_{group}_{unit}"] = (rule, "base", [f"{side}_{m}" for m in muscles])
            rules[f"{group}_{unit}"] = (rule, "base", [f"{s}_{m}" for s in SIDES for m in muscles])
    return rules


RULES = _expected_rules()


def cli(*args: str):
    return CliRunner().invoke(app, ["tables", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def output(tmp_path_factory):
    """Two phantom participants imaged at visits 2 and 3 (liver radii x1.1 and liver fat fraction 30 %,
    left kidney radii x0.9 at visit 3), stitched by the pipeline's own stages, labelled with the
    truth of both models (base and body composition), measured and published; the stitched fat and
    water images kept in memory."""
    from mrseg_cohort.manifest import discover
    from mrseg_cohort.pipeline import stages
    from mrseg_cohort.pipeline.run import software_versions
    from mrseg_cohort.segmentation.segmenter import ModelSpec, Segmentation

    root = tmp_path_factory.mktemp("phenotypes")
    cohort = root / "cohort"
    truth = write_phantom_cohort(STORE, str(cohort), SPEC)
    models = [{"name": "base", "weights": str(DEMO_MODEL)},
              {"name": "body_comp", "weights": str(DEMO_BODY_COMP_MODEL), "labels": "body_comp", "modalities": ["MRI"]}]
    config = write_job_yaml(root / "job.yaml", str(cohort), str(root / "output"), model=None, models=models)
    job = load_config(config)
    specs = tuple(ModelSpec(name, path, (0,), "checkpoint_final.pth", 0.5, False, ("MRI",), None, "0" * 64, lm.names)
                  for name, path, lm in (("base", str(DEMO_MODEL), MRSEG),
                                         ("body_comp", str(DEMO_BODY_COMP_MODEL), BODY_COMPOSITION)))
    ctx = stages.RunContext(job, specs, "20260101T000000Z-phenotypes", software_versions(), "cpu")
    rows, images = {}, {}
    for source in discover(job, STORE):
        loaded = stages.read_and_stitch(ctx, source)
        images[source.key] = {c: loaded.images[c].array.astype(float) for c in ("fat", "water")}
        folder = join_uri(str(cohort), "truth", *source.key)
        labels = {m: read_labels(STORE, join_uri(folder, f)).array
                  for m, f in (("base", "labels.nii.gz"), ("body_comp", "body_comp.nii.gz"))}
        unit = ScanUnit(source, ("base", "body_comp"))
        rows[unit.key] = stages.finish(ctx, unit, loaded, {"in": Segmentation(labels, {}, {})})
    publish_rows(ctx.outputs(), f"{ctx.run_id}-00001", rows)
    return {"root": root, "config": config, "truth": truth, "out": root / "output", "keys": sorted(k[:2] for k in rows),
            "images": images}


@pytest.fixture(scope="module")
def table(output):
    path = output["root"] / "phenotypes.parquet"
    result = cli("phenotypes", str(output["config"]), "--out", str(path))
    assert result.exit_code == 0, result.output
    assert "wrote 4 rows (2 participants)" in result.output
    return pd.read_parquet(path)


# -- independent computation ------------------------------------------------------------------------
def _eroded(mask: np.ndarray) -> np.ndarray:
    """In-plane erosion by one voxel, slice by slice (4-connected cross; outside = background)."""
    cross = ndimage.generate_binary_structure(2, 1)
    return np.stack([ndimage.binary_erosion(s, cross, border_value=0) for s in mask])


def _touches_border(mask: np.ndarray, margin: int = 3) -> bool:
    idx = np.argwhere(mask)
    shape = np.array(mask.shape)
    return bool((np.minimum(idx, shape - 1 - idx) <= margin).any())


def _independent(output, key) -> tuple[dict[str, float], dict[str, str], dict[str, float]]:
    """(value, QC reasons, truth fat fraction) of every phenotype of scan ``key``, from the published
    label files and the stitched images alone."""
    out, (pid, visit) = output["out"], key
    maps = {"base": read_labels(STORE, str(out / "labels" / pid / visit / "in.nii.gz")),
            "body_comp": read_labels(STORE, str(out / "labels" / pid / visit / "in.body_comp.nii.gz"))}
    fat, water = output["images"][key]["fat"], output["images"][key]["water"]
    voxel_ml = math.prod(maps["base"].grid.spacing_mm) / 1000
    truth = output["truth"].query("participant_id == @pid and visit == @visit").set_index(["model", "structure"])
    values, reasons, truth_ff = {}, {}, {}
    for name, (rule, model, structures) in RULES.items():
        label_map = MRSEG if model == "base" else BODY_COMPOSITION
        masks = [maps[model].array == label_map.id_of(s) for s in structures]
        counts = [int(m.sum()) for m in masks]
        assert min(counts) > 0, (name, structures)
        reasons[name] = "touches_border" if any(_touches_border(m) for m in masks) else ""
        if rule == "volume":
            values[name] = sum(counts) * voxel_ml
        elif rule == "ratio":
            values[name] = counts[0] / counts[1]
        else:
            eroded = [_eroded(m) for m in masks]
            union = np.logical_or.reduce(eroded)
            total = fat + water
            use = union & (total > 0)
            ff = 100 * fat[use] / total[use]
            values[name] = float(np.median(ff)) if rule == "ff_median" else float(ff.mean())
            n = [int((e & (total > 0)).sum()) for e in eroded]
            truth_ff[name] = sum(truth.loc[(model, s), "ff_truth_pct"] * k for s, k in zip(structures, n)) / sum(n)
    return values, reasons, truth_ff


def test_every_phenotype_equals_an_independent_computation(output, table):
    assert [c for c in table.columns if c not in ("participant_id", "visit", "n_qc_flags")
            and not c.endswith("_qc")] == list(RULES)
    assert sorted(zip(table["participant_id"], table["visit"])) == output["keys"]
    assert table["participant_id"].map(type).eq(str).all() and table["visit"].map(type).eq(str).all()
    checked_touching = 0
    for row in table.to_dict("records"):
        values, reasons, truth_ff = _independent(output, (row["participant_id"], row["visit"]))
        for name, value in values.items():
            assert row[name] == pytest.approx(value, rel=1e-9), name
            assert row[f"{name}_qc"] == reasons[name], name
            checked_touching += reasons[name] == "touches_border"
        for name, ff in truth_ff.items():  # the phantom's known fat fractions
            assert row[name] == pytest.approx(ff, abs=0.5), name
        assert row["n_qc_flags"] == sum(bool(r) for r in reasons.values())
    assert checked_touching > 0  # the field of view cuts some structures (e.g. the autochthonous muscles)


def test_qc_reasons_from_the_scan_qc():
    """Absent/missing, touching, fragmented, eroded-empty and swap reasons, and a model not run."""
    base = {"participant_id": "1", "visit": "2", "contrast": "in", "model": "base", "n_voxels": 100,
            "volume_ml": 10.0, "ff_median_pct": 5.0, "ff_mean_pct": 5.0, "ff_n_voxels": 50, "ff_eroded_empty": False,
            "touches_border": False, "fragmented": False, "missing": False}
    rows = [{**base, "structure": s.name} for s in MRSEG.values()]
    by_name = {r["structure"]: r for r in rows}
    by_name["liver"].update(n_voxels=0, volume_ml=0.0, ff_median_pct=np.nan, ff_mean_pct=np.nan, ff_n_voxels=0,
                            missing=True)
    by_name["left_kidney"].update(n_voxels=0, volume_ml=0.0)  # absent, not judged missing
    by_name["spleen"].update(touches_border=True, fragmented=True)
    by_name["pancreas"].update(ff_median_pct=np.nan, ff_mean_pct=np.nan, ff_n_voxels=0, ff_eroded_empty=True)
    by_name["left_gluteus_minimus"].update(ff_mean_pct=np.nan, ff_n_voxels=0, ff_eroded_empty=True)
    scans = pd.DataFrame([{"participant_id": "1", "visit": "2", "contrast": "in", "model": "base", "status": "ok",
                           "swap_suspected": True}])
    t = phenotype_table(pd.DataFrame(rows), scans).iloc[0]
    assert np.isnan(t["liver_volume_ml"]) and t["liver_volume_ml_qc"] == "missing"
    assert t["liver_ff_median_pct_qc"] == "missing,swap_suspected"
    assert np.isnan(t["kidneys_volume_ml"]) and t["kidneys_volume_ml_qc"] == "absent"
    assert t["right_kidney_volume_ml"] == 10.0 and t["right_kidney_volume_ml_qc"] == ""
    assert t["spleen_volume_ml"] == 10.0 and t["spleen_volume_ml_qc"] == "touches_border,fragmented"
    assert t["spleen_ff_median_pct_qc"] == "touches_border,fragmented,swap_suspected"
    assert np.isnan(t["pancreas_ff_median_pct"]) and t["pancreas_ff_median_pct_qc"] == "eroded_empty,swap_suspected"
    assert t["pancreas_volume_ml_qc"] == ""
    # the union of eroded masks: minimus contributes no voxel, maximus and medius 50 each at 5 %
    assert t["left_gluteal_ff_mean_pct"] == pytest.approx(5.0) and t["left_gluteal_volume_ml"] == 30.0
    assert t["left_gluteal_ff_mean_pct_qc"] == "eroded_empty,swap_suspected"
    for name in ("vat_volume_ml", "sat_volume_ml", "vat_asat_ratio"):  # no body-composition rows
        assert np.isnan(t[name]) and t[f"{name}_qc"] == "not_measured"
    assert t["n_qc_flags"] == sum(t[f"{p.name}_qc"] != "" for p in PHENOTYPES)
    gap = phenotype_table(pd.DataFrame(rows), scans.assign(stitch_max_gap_mm=12.0)).iloc[0]
    assert gap["right_kidney_volume_ml_qc"] == "stitch_gap"  # a zero-filled gap between stations: said
    assert gap["spleen_volume_ml_qc"] == "touches_border,fragmented,stitch_gap"


# -- repeat imaging -----------------------------------------------------------------------------------
def test_change_between_visits_on_a_participant_imaged_twice(output, table, tmp_path):
    path = tmp_path / "change.parquet"
    result = cli("change", str(output["config"]), "--from", "2", "--to", "3", "--out", str(path))
    assert result.exit_code == 0, result.output
    change = pd.read_parquet(path)
    assert len(change) == 2 and list(change.columns[:3]) == ["participant_id", "visit_from", "visit_to"]
    truth = output["truth"].set_index(["participant_id", "visit", "model", "structure"])
    for row in change.to_dict("records"):
        pid = row["participant_id"]
        for organ, sign in (("liver", 1), ("left_kidney", -1), ("spleen", None)):
            before, after = (truth.loc[(pid, v, "base", organ), "volume_ml"] for v in ("2", "3"))
            known = after - before
            assert sign is None or np.sign(known) == sign, organ  # the phantom's change, as set
            assert row[f"{organ}_volume_ml_change"] == pytest.approx(known, rel=1e-6, abs=1e-6), organ
            assert row[f"{organ}_volume_ml_change_rel_pct"] == pytest.approx(100 * known / before, rel=1e-6, abs=1e-6)
        ff_before = truth.loc[(pid, "2", "base", "liver"), "ff_truth_pct"]
        assert row["liver_ff_median_pct_to"] == pytest.approx(30.0, abs=0.5)
        assert row["liver_ff_median_pct_change"] == pytest.approx(30.0 - ff_before, abs=1.0)
        for visit, suffix in (("2", "from"), ("3", "to")):
            mine = table[(table["participant_id"] == pid) & (table["visit"] == visit)].iloc[0]
            assert row[f"liver_volume_ml_{suffix}"] == pytest.approx(mine["liver_volume_ml"])
            assert row[f"autochthonous_volume_ml_qc_{suffix}"] == mine["autochthonous_volume_ml_qc"]
            assert row[f"n_qc_flags_{suffix}"] == mine["n_qc_flags"]


def test_change_needs_both_visits(output, tmp_path):
    result = CliRunner().invoke(app, ["tables", "change", str(output["config"]), "--from", "2", "--to", "5",
                                      "--out", str(tmp_path / "c.parquet")])
    assert result.exit_code == 2
    assert "no scans of visit '5'" in result.output and "'2', '3'" in result.output


# -- covariates ----------------------------------------------------------------------------------------
def test_covariates_with_uk_biobank_fields_index_by_height(output, table, tmp_path):
    pids = sorted(table["participant_id"].unique())
    covariates = pd.DataFrame({"eid": pids, "31-0.0": ["1", "1"], "21003-2.0": ["64", "67"],
                               "21003-3.0": ["66", "69"], "50-2.0": ["181", "174.5"], "12144-3.0": ["180", "174"],
                               "21002-2.0": ["82", "70"], "20201-2.0": ["x", "y"]})  # other fields are ignored
    path = tmp_path / "ukb.csv"
    covariates.to_csv(path, index=False)
    out = tmp_path / "phen.parquet"
    result = cli("phenotypes", str(output["config"]), "--out", str(out), "--covariates", str(path),
                 "--min-stratum", "2")
    assert result.exit_code == 0, result.output
    assert "covariates for 4 rows (sex and age for 4)" in result.output
    got = pd.read_parquet(out).set_index(["participant_id", "visit"])
    height = {(pids[0], "2"): 181.0, (pids[1], "2"): 174.5, (pids[0], "3"): 180.0, (pids[1], "3"): 174.0}
    for key, h in height.items():
        row = got.loc[key]
        assert row["sex"] == "male" and row["height_cm"] == h
        assert row["age_band"] == "60-69"
        assert row["liver_volume_ml_per_height_squared_m2"] == pytest.approx(row["liver_volume_ml"] / (h / 100) ** 2)
        assert row["vat_volume_ml_per_height_squared_m2"] == pytest.approx(row["vat_volume_ml"] / (h / 100) ** 2)
    assert got.loc[(pids[0], "2"), "weight_kg"] == 82 and np.isnan(got.loc[(pids[0], "3"), "weight_kg"])
    # two values per stratum (visit x sex x age band): median halfway, MAD half the gap, so z = +-1/1.4826
    for visit in ("2", "3"):
        a, b = (got.loc[(p, visit), "liver_volume_ml"] for p in pids)
        assert got.loc[(pids[0], visit), "liver_volume_ml_z"] == pytest.approx(np.sign(a - b) / 1.4826)
    assert not got["n_outliers"].any()
    assert not any(c.endswith("_per_height_squared_m2") and not c.startswith(tuple(n for n, r in RULES.items() if r[0] == "volume"))
                   for c in got.columns)


@pytest.mark.parametrize("columns, message", [
    ({"id": ["1"], "sex": ["f"]}, "no participant column; expected one of ['eid', 'f.eid', 'participant_id']"),
    ({"eid": ["1"], "sex": ["1"]}, "column 'sex' has unknown sex code(s) ['1']"),
    ({"eid": ["1"], "31-0.0": ["2"]}, "column '31-0.0' has unknown sex code(s) ['2']"),
    ({"eid": ["1"], "height": ["1.72"]}, "heights look like metres (median 1.72)"),
    ({"eid": ["1"], "age": ["sixty"]}, "column 'age' has non-numeric value 'sixty'"),
    ({"eid": ["1", "1"], "age": ["60", "61"]}, "participant 1 (no visit column) is listed more than once"),
    ({"eid": ["1"], "age": ["60"], "p21003_i2": ["60"]}, "['age_years'] given both"),
    ({"eid": ["1"], "bmi": ["25"]}, "no covariate column"),
])
def test_bad_covariates_are_one_line_naming_the_file(columns, message):
    with pytest.raises(CovariateError) as err:
        normalise_covariates(pd.DataFrame(columns), "/data/cov.csv")
    assert str(err.value).startswith("/data/cov.csv: ") and message in str(err.value)


def test_bad_covariates_file_exits_2(output, tmp_path):
    path = tmp_path / "cov.csv"
    path.write_text("participant,sex\n1,f\n")
    result = CliRunner().invoke(app, ["tables", "phenotypes", str(output["config"]), "--out",
                                      str(tmp_path / "p.parquet"), "--covariates", str(path)])
    assert result.exit_code == 2 and result.output.count("\n") == 1
    assert result.output.startswith(f"error: {path}: no participant column")


def test_covariate_names_and_visits():
    """Plain names with units, a visit column, RAP-style field names, and the visit fallbacks."""
    plain = normalise_covariates(pd.DataFrame({"participant_id": ["7", "7"], "visit": ["2", "3"], "sex": ["F", "f"],
                                               "age_years": ["60.5", "62"], "height_m": ["1.6", "1.61"]}), "p.csv")
    assert plain["height_cm"].tolist() == pytest.approx([160.0, 161.0]) and set(plain["sex"]) == {"female"}
    rap = normalise_covariates(pd.DataFrame({"eid": [1000001.0], "p31": ["Female"], "p21003_i2": ["70"],
                                             "f.21002.3.0": ["66"]}), "rap.parquet")
    assert rap["participant_id"].tolist() == ["1000001"] * 3  # a float eid column reads as the integer's text
    both = normalise_covariates(pd.DataFrame({"eid": ["1", "2"], "12144-2.0": ["170", "171"], "50-2.0": ["175", None]}),
                                "h.csv")
    assert both["height_cm"].tolist() == [175.0, 171.0]  # field 50 first, 12144 where 50 is missing
    keys = pd.DataFrame({"participant_id": ["1000001", "1000001", "1000001", "9"], "visit": ["2", "3", None, "2"]})
    got = attach_covariates(keys, rap)
    assert got["sex"].tolist() == ["female", "female", "female", None]  # sex holds for every visit
    np.testing.assert_array_equal(got["age_years"], [70.0, np.nan, np.nan, np.nan])
    np.testing.assert_array_equal(got["weight_kg"], [np.nan, 66.0, np.nan, np.nan])  # visit None: ambiguous


# -- robust z and outliers -------------------------------------------------------------------------
def test_robust_z_within_strata_against_hand_values():
    rng = np.random.default_rng(5)
    values = pd.Series(rng.normal(100, 10, 25))
    strata = pd.DataFrame({"visit": "2", "sex": ["female"] * 12 + ["male"] * 10 + [None] * 3,
                           "age_band": ["60-69"] * 25})
    z = stratified_robust_z(values, strata, min_stratum=11)
    x = values.to_numpy()[:12]
    med = np.median(x)
    mad = np.median(np.abs(x - med))
    np.testing.assert_allclose(z[:12], (x - med) / (1.4826 * mad))
    assert z[12:].isna().all()  # 10 males are fewer than 11; sex unknown is never assessed


def test_planted_outlier_is_flagged():
    """40 participants of one sex and age band at visit 2; one liver four times the median."""
    rng = np.random.default_rng(11)
    n = 40
    table = pd.DataFrame({"participant_id": [str(1000000 + i) for i in range(n)], "visit": "2"})
    for p in PHENOTYPES:
        table[p.name] = rng.normal(100, 5, n)
        table[f"{p.name}_qc"] = ""
    table.loc[17, "liver_volume_ml"] = 400.0
    table["n_qc_flags"] = 0
    covariates = normalise_covariates(pd.DataFrame({"eid": table["participant_id"], "sex": "m", "age": "55",
                                                    "height": "175"}), "cov.csv")
    out = with_covariates(table, covariates)
    x = table["liver_volume_ml"].to_numpy()
    expected = (400 - np.median(x)) / (1.4826 * np.median(np.abs(x - np.median(x))))
    assert out.loc[17, "liver_volume_ml_z"] == pytest.approx(expected) and expected > 4
    assert out["liver_volume_ml_outlier"].tolist() == [i == 17 for i in range(n)]
    assert out.loc[17, "n_outliers"] >= 1
    first = outlier_rows(out).iloc[0]
    assert (first["participant_id"], first["phenotype"], first["value"]) == ("1000017", "liver_volume_ml", 400.0)
    assert out.loc[0, "liver_volume_ml_per_height_squared_m2"] == pytest.approx(x[0] / 1.75 ** 2)

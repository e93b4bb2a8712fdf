"""``mrseg-cohort agreement`` and the report's Agreement section on phantom outputs whose answer is known.

Outputs are built without Ray, as tests/test_phenotypes.py builds its output: eight phantom participants
(visit 2) stitched by the pipeline's own stages, labelled with the phantom's truth (base and
body-composition models), measured and published. Output ``a`` is the one compared; ``b`` holds the
same rows (two outputs of the same scans, as two runs of one deterministic configuration publish);
``c`` differs from ``a`` in one participant, whose liver label was cut before measuring.

The synthetic reference is the phantom truth's VAT and ASAT volumes in litres (UK Biobank fields
22407/22408 at instance 2), with a known bias and a known noise whose sample mean is exactly 0 and
whose sample SD is exactly SIGMA, so the recovered bias and SD are the planted ones; one participant's
ASAT carries a planted error far outside the limits.
"""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from conftest import DEMO_BODY_COMP_MODEL, DEMO_MODEL, publish_rows, write_job_yaml
from mrseg_cohort.agreement.compare import SUMMARY_COLUMNS, agreement_tables
from mrseg_cohort.agreement.files import read_agreement, table_uris
from mrseg_cohort.agreement.mapping import identity_mapping, load_mapping
from mrseg_cohort.agreement.reference import normalise_reference
from mrseg_cohort.agreement.statistics import KEYS, agreement_statistics
from mrseg_cohort.cli import app
from mrseg_cohort.config import load_config
from mrseg_cohort.io.nifti import read_labels
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phantom.cohort import PhantomSpec, participant_id, write_phantom_cohort
from mrseg_cohort.report import anchor_for
from mrseg_cohort.report import html as h
from mrseg_cohort.ledger.work_units import ScanUnit

SPEC = PhantomSpec(participants=8, seed=24, visit="2", scale=3.0)  # coarse: quick to write, stitch, measure
STORE = Store()
PIDS = [participant_id(SPEC.seed, i) for i in range(SPEC.participants)]
CHANGED = PIDS[5]          # output c: this participant's liver cut before measuring
PLANTED = PIDS[2]          # the reference: this participant's ASAT far off
VAT_BIAS_ML, ASAT_BIAS_ML, SIGMA_ML, PLANTED_ML = 150.0, -60.0, 40.0, 900.0
NOT_PROCESSED = ["9990001", "9990002"]


def cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


# -- outputs ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mrseg_cohort.manifest import discover
    from mrseg_cohort.pipeline import stages
    from mrseg_cohort.pipeline.run import software_versions
    from mrseg_cohort.segmentation.segmenter import ModelSpec, Segmentation

    root = tmp_path_factory.mktemp("agreement")
    phantoms = root / "cohort"
    truth = write_phantom_cohort(STORE, str(phantoms), SPEC)
    models = [{"name": "base", "weights": str(DEMO_MODEL)},
              {"name": "body_comp", "weights": str(DEMO_BODY_COMP_MODEL), "labels": "body_comp", "modalities": ["MRI"]}]
    configs = {name: write_job_yaml(root / f"{name}.yaml", str(phantoms), str(root / f"out-{name}"), model=None,
                                    models=models) for name in "abc"}
    specs = tuple(ModelSpec(name, path, (0,), "checkpoint_final.pth", 0.5, False, ("MRI",), None, "0" * 64, lm.names)
                  for name, path, lm in (("base", str(DEMO_MODEL), MRSEG),
                                         ("body_comp", str(DEMO_BODY_COMP_MODEL), BODY_COMPOSITION)))
    contexts = {name: stages.RunContext(load_config(configs[name]), specs, f"20260101T000000Z-{name}",
                                        software_versions(), "cpu") for name in "ac"}
    rows_a, rows_c = {}, {}
    for source in discover(contexts["a"].job, STORE):
        loaded = stages.read_and_stitch(contexts["a"], source)
        folder = join_uri(str(phantoms), "truth", *source.key)
        labels = {m: read_labels(STORE, join_uri(folder, f)).array
                  for m, f in (("base", "labels.nii.gz"), ("body_comp", "body_comp.nii.gz"))}
        unit = ScanUnit(source, ("base", "body_comp"))
        rows_a[unit.key] = stages.finish(contexts["a"], unit, loaded, {"in": Segmentation(labels, {}, {})})
        rows_c[unit.key] = rows_a[unit.key]
        if source.participant_id == CHANGED:
            cut = labels["base"].copy()
            liver = cut == MRSEG.id_of("liver")
            z = np.nonzero(liver)[0]
            cut[liver & (np.arange(cut.shape[0])[:, None, None] > np.percentile(z, 40))] = 0
            rows_c[unit.key] = stages.finish(contexts["c"], unit, loaded,
                                             {"in": Segmentation({**labels, "base": cut}, {}, {})})
    publish_rows(contexts["a"].outputs(), "20260101T000000Z-a-00001", rows_a)
    context_b = stages.RunContext(load_config(configs["b"]), specs, "20260101T000000Z-b", software_versions(), "cpu")
    publish_rows(context_b.outputs(), "20260101T000000Z-b-00001", rows_a)
    publish_rows(contexts["c"].outputs(), "20260101T000000Z-c-00001", rows_c)
    return {"root": root, "configs": configs, "truth": truth, "out": {n: root / f"out-{n}" for n in "abc"}}


@pytest.fixture(scope="module")
def ours(cohort):
    """Our phenotype table of output a, through the CLI."""
    path = cohort["root"] / "phenotypes.parquet"
    assert cli("tables", "phenotypes", str(cohort["configs"]["a"]), "--out", str(path)).exit_code == 0
    return pd.read_parquet(path)


def _truth_ml(cohort, structure: str) -> pd.Series:
    truth = cohort["truth"]
    rows = truth[(truth["model"] == "body_comp") & (truth["structure"] == structure)]
    return rows.set_index("participant_id")["volume_ml"].reindex(PIDS)


def _noise(seed: int) -> np.ndarray:
    """Eight values with sample mean exactly 0 and sample SD exactly SIGMA_ML, all within 1.5 SD."""
    z = np.random.default_rng(seed).permutation(np.linspace(-1.0, 1.0, len(PIDS)))
    return SIGMA_ML * (z - z.mean()) / z.std(ddof=1)


@pytest.fixture(scope="module")
def reference(cohort, ours):
    """UK Biobank-style extract: eid, 22407-2.0 and 22408-2.0 in litres, a site column, and two
    participants this output did not process."""
    vat = _truth_ml(cohort, "visceral_fat") + VAT_BIAS_ML + _noise(1)
    asat = _truth_ml(cohort, "abdominal_subcutaneous_fat") + ASAT_BIAS_ML + _noise(2)
    asat[PLANTED] += PLANTED_ML
    frame = pd.DataFrame({"eid": PIDS + NOT_PROCESSED,
                          "22407-2.0": np.r_[vat.to_numpy() / 1000, 2.5, 3.0],
                          "22408-2.0": np.r_[asat.to_numpy() / 1000, 4.0, np.nan],
                          "site": ["north", "south"] * 5})
    path = cohort["root"] / "ukb_extract.csv"
    frame.to_csv(path, index=False)
    return {"path": path, "frame": frame, "vat_ml": vat, "asat_ml": asat}


@pytest.fixture(scope="module")
def ukbb(cohort, reference):
    """``agreement a.yaml --reference ukb_extract.csv --map ukbb`` into the output's own folder."""
    result = cli("agreement", str(cohort["configs"]["a"]), "--reference", str(reference["path"]), "--map", "ukbb")
    assert result.exit_code == 0, result.output
    files = read_agreement(STORE, str(cohort["out"]["a"] / "agreement" / "agreement.parquet"))
    return {"files": files, "output": result.output}


def _row(summary: pd.DataFrame, phenotype: str, stratum: str = "all", value: str = "") -> dict:
    hit = summary[(summary["phenotype"] == phenotype) & (summary["stratum"] == stratum)
                  & (summary["stratum_value"] == value)]
    assert len(hit) == 1, (phenotype, stratum, value, summary[["phenotype", "stratum", "stratum_value"]])
    return hit.iloc[0].to_dict()


# -- the synthetic cohort with a known answer ----------------------------------------------------------------
def test_our_depot_volumes_are_the_phantom_truth(cohort, ours):
    """The premise of the known answer: our VAT and ASAT are the truth volumes (to the float32 precision
    of the spacing stored in the label files), without QC reasons."""
    table = ours.set_index("participant_id").reindex(PIDS)
    assert table["vat_volume_ml"].to_numpy() == pytest.approx(_truth_ml(cohort, "visceral_fat").to_numpy(), rel=1e-6)
    assert table["asat_volume_ml"].to_numpy() == pytest.approx(
        _truth_ml(cohort, "abdominal_subcutaneous_fat").to_numpy(), rel=1e-6)
    assert (table["vat_volume_ml_qc"] == "").all() and (table["asat_volume_ml_qc"] == "").all()


def test_recovers_planted_bias_and_limits_through_the_litre_mapping(ukbb):
    summary = ukbb["files"].summary
    assert list(summary.columns) == SUMMARY_COLUMNS
    vat = _row(summary, "vat_volume_ml")
    assert vat["reference_column"] == "22407" and vat["reference_unit"] == "L" and vat["unit"] == "mL"
    assert (vat["n_paired"], vat["n_not_processed"], vat["n_missing_reference"]) == (8, 2, 0)
    # ours - reference = -(bias + noise): the planted values (noise mean 0, SD SIGMA), up to the 1e-7
    # relative difference of our volumes from the truth's (float32 spacing): well under 0.01 mL
    assert vat["bias"] == pytest.approx(-VAT_BIAS_ML, abs=0.01)
    assert vat["sd_diff"] == pytest.approx(SIGMA_ML, abs=0.01)
    assert vat["loa_lower"] == pytest.approx(-VAT_BIAS_ML - 1.96 * SIGMA_ML, abs=0.03)
    assert vat["loa_upper"] == pytest.approx(-VAT_BIAS_ML + 1.96 * SIGMA_ML, abs=0.03)
    for key, true in (("bias", -VAT_BIAS_ML), ("loa_lower", -VAT_BIAS_ML - 1.96 * SIGMA_ML),
                      ("loa_upper", -VAT_BIAS_ML + 1.96 * SIGMA_ML)):
        assert vat[f"{key}_ci_lower"] < true < vat[f"{key}_ci_upper"], key
    assert vat["n_outside_loa"] == 0 and vat["ols_slope"] == pytest.approx(1.0, abs=0.2)
    assert "correlation" not in vat["note"] and vat["differs"].startswith("AMRA's VAT")
    asat = _row(summary, "asat_volume_ml")
    assert (asat["n_paired"], asat["n_not_processed"]) == (8, 1)  # the second unprocessed eid has no ASAT


def test_lists_exactly_the_planted_outlier(ukbb):
    outside = ukbb["files"].outside_loa
    assert list(zip(outside["participant_id"], outside["visit"], outside["phenotype"])) == \
        [(PLANTED, "2", "asat_volume_ml")]
    row = outside.iloc[0]
    assert row["difference"] < row["loa_lower"] and row["z"] < -1.96


def test_values_hold_the_converted_reference_and_every_statistic_recomputes(ukbb, reference):
    files = ukbb["files"]
    vat = files.values[files.values["phenotype"] == "vat_volume_ml"].set_index("participant_id").reindex(PIDS)
    assert vat["reference"].to_numpy() == pytest.approx(reference["vat_ml"].to_numpy(), rel=1e-12)
    assert vat["reference_raw"].astype(float).to_numpy() == pytest.approx(reference["vat_ml"].to_numpy() / 1000)
    assert (vat["status"] == "paired").all() and not vat["outside_loa"].any()
    expected = agreement_statistics(vat["ours"].to_numpy(), vat["reference"].to_numpy())
    found = _row(files.summary, "vat_volume_ml")
    for key in KEYS:
        if key != "n":
            assert found[key] == pytest.approx(expected[key], rel=1e-12, nan_ok=True), key


def test_output_names_what_was_skipped_and_not_processed(ukbb):
    text = ukbb["output"]
    assert "not compared: gluteal_ff_mean_pct (field 22435); liver_ff_median_pct (field 22436); " \
           "liver_ff_median_pct (field 40061)" in text
    assert "3 reference values are for participants or visits not in the output" in text
    assert "1 outside the limits of agreement" in text


def test_a_plain_table_in_millilitres_without_visits_agrees_with_the_litre_extract(cohort, reference, ukbb, tmp_path):
    """The same reference in mL under plain column names, no visit column, mapped by a user's YAML:
    the same statistics (unit conversion is exact), the visit taken as the output's only one."""
    plain = pd.DataFrame({"participant_id": PIDS, "vat_ml": reference["vat_ml"].to_numpy()})
    plain.to_parquet(tmp_path / "ref.parquet")
    mapping = {"name": "mine", "pairs": [{"phenotype": "vat_volume_ml", "column": "vat_ml", "unit": "mL"}]}
    (tmp_path / "map.yaml").write_text(yaml.safe_dump(mapping))
    result = cli("agreement", str(cohort["configs"]["a"]), "--reference", str(tmp_path / "ref.parquet"), "--map",
                 str(tmp_path / "map.yaml"), "--out", str(tmp_path / "agr.csv"))
    assert result.exit_code == 0, result.output
    assert "its values were taken as visit 2" in result.output
    mine = read_agreement(STORE, str(tmp_path / "agr.csv")).summary
    theirs = _row(ukbb["files"].summary, "vat_volume_ml")
    found = _row(mine, "vat_volume_ml")
    for key in ("bias", "sd_diff", "loa_lower", "loa_upper", "icc_a1", "icc_c1", "ccc", "deming_slope"):
        assert found[key] == pytest.approx(theirs[key], rel=1e-9), key
    assert set(table_uris(str(tmp_path / "agr.csv")).values()) <= {str(p) for p in tmp_path.iterdir()}


def test_strata_by_sex_and_site(cohort, reference, tmp_path):
    covariates = pd.DataFrame({"eid": PIDS, "31-0.0": ["0", "1"] * 4, "21003-2.0": ["60"] * 8})
    covariates.to_csv(tmp_path / "cov.csv", index=False)
    out = tmp_path / "strata.parquet"
    result = cli("agreement", str(cohort["configs"]["a"]), "--reference", str(reference["path"]), "--map", "ukbb",
                 "--covariates", str(tmp_path / "cov.csv"), "--by", "site", "--out", str(out))
    assert result.exit_code == 0, result.output
    files = read_agreement(STORE, str(out))
    summary, values = files.summary, files.values
    vat = values[values["phenotype"] == "vat_volume_ml"]
    assert set(vat["sex"]) == {"female", "male"} and set(vat["site"]) == {"north", "south"}
    for stratum, levels in (("sex", ("female", "male")), ("site", ("north", "south")), ("visit", ("2",))):
        rows = [_row(summary, "vat_volume_ml", stratum, level) for level in levels]
        assert sum(r["n_paired"] for r in rows) == 8
        for level, row in zip(levels, rows):
            sub = vat[(vat[stratum] == level) & (vat["status"] == "paired")]
            expected = agreement_statistics(sub["ours"].to_numpy(), sub["reference"].to_numpy())
            assert row["bias"] == pytest.approx(expected["bias"], rel=1e-12)
            assert row["icc_a1"] == pytest.approx(expected["icc_a1"], rel=1e-12)
    assert pd.isna(_row(summary, "vat_volume_ml", "sex", "female")["n_not_processed"])


# -- two outputs -------------------------------------------------------------------------------------------
def test_two_outputs_of_the_same_scans_agree_perfectly(cohort, tmp_path):
    out = tmp_path / "ab.parquet"
    result = cli("agreement", str(cohort["configs"]["a"]), "--reference", str(cohort["configs"]["b"]),
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    files = read_agreement(STORE, str(out))
    overall = files.summary[files.summary["stratum"] == "all"]
    compared = overall[overall["n_paired"] >= 3]
    assert len(compared) >= 20  # volumes, fat fractions, muscle groups of both models
    assert (compared["bias"] == 0).all() and (compared["sd_diff"] == 0).all()
    assert (compared["icc_a1"] == 1).all() and (compared["icc_c1"] == 1).all()
    assert np.allclose(compared["ccc"].to_numpy(dtype=float), 1.0) and (compared["n_outside_loa"] == 0).all()
    assert files.outside_loa.empty and (overall["n_missing_reference"] == 0).all()
    assert "0 outside the limits of agreement" in result.output


def test_one_changed_label_map_lists_exactly_that_participant(cohort, tmp_path):
    out = tmp_path / "ac.parquet"
    result = cli("agreement", str(cohort["configs"]["a"]), "--reference", str(cohort["configs"]["c"]),
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    files = read_agreement(STORE, str(out))
    assert set(files.outside_loa["participant_id"]) == {CHANGED}
    assert "liver_volume_ml" in set(files.outside_loa["phenotype"])
    liver = _row(files.summary, "liver_volume_ml")
    assert liver["bias"] > 0 and liver["n_outside_loa"] == 1  # ours (a) has the whole liver
    assert _row(files.summary, "spleen_volume_ml")["sd_diff"] == 0


# -- bad inputs ------------------------------------------------------------------------------------------------
def _map(tmp_path, pairs: list[dict]) -> str:
    path = tmp_path / "map.yaml"
    path.write_text(yaml.safe_dump({"name": "bad", "pairs": pairs}))
    return str(path)


BAD = {
    "reference without a participant column": (
        lambda d: {"reference": pd.DataFrame({"id": ["1"], "22407-2.0": ["1.2"]})}, (), "no participant column"),
    "mapping names a phenotype we do not have": (
        lambda d: {"map": [{"phenotype": "vat_volume", "field": 22407, "unit": "L"}]}, (),
        "pairs[0].phenotype: 'vat_volume' is not a phenotype column (did you mean 'vat_volume_ml'?)"),
    "mapping names a reference column that is not there": (
        lambda d: {"map": [{"phenotype": "vat_volume_ml", "column": "vat_litres", "unit": "L"}]}, (),
        "no column for column 'vat_litres'"),
    "unit that cannot be converted": (
        lambda d: {"map": [{"phenotype": "vat_volume_ml", "field": 22407, "unit": "kg"}]}, (),
        "unit 'kg' cannot be converted to mL"),
    "all references missing": (
        lambda d: {"reference": pd.DataFrame({"eid": NOT_PROCESSED, "22407-2.0": ["1.0", "2.0"]})}, (),
        "none of the 8 participant x visits of the output has a reference value"),
    "unknown QC reason": (lambda d: {}, ("--keep-qc", "touching"), "--keep-qc: unknown QC reason(s) ['touching']"),
    "stratum column nowhere": (lambda d: {}, ("--by", "centre"), "--by centre: no column 'centre'"),
    "summary of an unknown format": (lambda d: {}, ("--out", "agreement.xlsx"), "is a .parquet or .csv file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_are_one_line_and_exit_2(cohort, reference, tmp_path, case):
    make, extra, phrase = BAD[case]
    given = make(tmp_path)
    ref = str(reference["path"])
    if "reference" in given:
        ref = str(tmp_path / "ref.csv")
        given["reference"].to_csv(ref, index=False)
    args = ["agreement", str(cohort["configs"]["a"]), "--reference", ref,
            "--map", _map(tmp_path, given["map"]) if "map" in given else "ukbb", *extra]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "agreement.parquet")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
    assert phrase in result.output and "Traceback" not in result.output
    assert not (tmp_path / "agreement.parquet").exists()


# -- pure parts ------------------------------------------------------------------------------------------------
def test_statuses_and_their_order():
    ours = pd.DataFrame({"participant_id": list("123456"), "visit": "2",
                         "liver_volume_ml": [1.0, np.nan, 3.0, 4.0, 5.0, 6.0],
                         "liver_volume_ml_qc": ["", "absent", "touches_border", "", "", ""]})
    reference = normalise_reference(pd.DataFrame({
        "eid": ["1", "2", "3", "4", "5", "6", "7"], "visit": ["2"] * 7,
        "liver_volume_ml": ["1.5", "2", "3", "", "-1", "n/a", "9"]}), "r.csv")
    mapping = load_mapping(yaml.safe_dump({"name": "t", "pairs": [
        {"phenotype": "liver_volume_ml", "column": "liver_volume_ml", "unit": "mL", "error_values": [-1]}]}), "m.yaml")
    result = agreement_tables(ours, reference, mapping, "r.csv")
    status = dict(zip(result.values["participant_id"], result.values["status"]))
    assert status == {"1": "paired", "2": "missing_ours", "3": "qc_ours", "4": "missing_reference",
                      "5": "reference_error", "6": "reference_error"}
    row = result.summary.iloc[0]
    assert (row["n_paired"], row["n_missing_ours"], row["n_qc_ours"], row["n_missing_reference"],
            row["n_reference_error"], row["n_not_processed"]) == (1, 1, 1, 1, 2, 1)
    kept = agreement_tables(ours, reference, mapping, "r.csv", keep_qc=frozenset({"touches_border"}))
    assert dict(zip(kept.values["participant_id"], kept.values["status"]))["3"] == "paired"


def test_error_columns_and_the_other_outputs_qc_exclude_reference_values():
    ours = pd.DataFrame({"participant_id": ["1", "2", "3"], "visit": "2", "spleen_volume_ml": [1.0, 2.0, 3.0],
                         "spleen_volume_ml_qc": ""})
    reference = normalise_reference(pd.DataFrame({"participant_id": ["1", "2", "3"], "visit": ["2"] * 3,
                                                  "spleen_volume_ml": [1.0, 2.0, 3.0],
                                                  "spleen_volume_ml_qc": ["", "fragmented", ""]}), "other output")
    result = agreement_tables(ours, reference, identity_mapping(reference.columns), "other output")
    assert list(result.values["status"]) == ["paired", "qc_reference", "paired"]
    ukb = normalise_reference(pd.DataFrame({"eid": [1, 2, 3], "22407-2.0": [0.001, 0.002, 0.003],
                                            "22411-2.0": [None, "1", None]}), "ukb.parquet")
    mapping = load_mapping(yaml.safe_dump({"name": "t", "pairs": [
        {"phenotype": "spleen_volume_ml", "field": 22407, "unit": "L", "error_columns": [22411]}]}), "m.yaml")
    flagged = agreement_tables(ours, ukb, mapping, "ukb.parquet")
    assert list(flagged.values["status"]) == ["paired", "reference_error", "paired"]
    assert flagged.values["reference"].tolist()[0] == pytest.approx(1.0)


def test_by_a_uk_biobank_field_takes_each_instances_value():
    """--by 54 (assessment centre, per instance) from a Parquet extract: numbers become text strata."""
    ours = pd.DataFrame({"participant_id": ["1", "1", "2"], "visit": ["2", "3", "2"],
                         "spleen_volume_ml": [100.0, 110.0, 90.0], "spleen_volume_ml_qc": ""})
    extract = normalise_reference(pd.DataFrame({"eid": [1, 2], "22407-2.0": [0.1, 0.09], "22407-3.0": [0.11, None],
                                                "54-2.0": [11025.0, 11027.0], "54-3.0": [11026.0, None]}), "x.parquet")
    mapping = load_mapping(yaml.safe_dump({"name": "t", "pairs": [
        {"phenotype": "spleen_volume_ml", "field": 22407, "unit": "L"}]}), "m.yaml")
    result = agreement_tables(ours, extract, mapping, "x.parquet", by=("54",))
    assert result.values["54"].tolist() == ["11025", "11026", "11027"]
    centres = result.summary[result.summary["stratum"] == "54"]
    assert centres["stratum_value"].tolist() == ["11025", "11026", "11027"]
    assert centres["n_paired"].tolist() == [1, 1, 1] and list(result.values["difference"]) == pytest.approx([0, 0, 0])


def test_reference_shapes():
    rap = normalise_reference(pd.DataFrame({"eid": [1000001.0, 1000002.0], "p22407_i2": [1.0, 2.0],
                                            "p22407_i3": [1.1, None], "f.22408.2.0": [3.0, 4.0], "site": ["x", "y"],
                                            "22407-2.1": [9.0, 9.0]}), "rap.parquet")
    assert rap[["participant_id", "visit"]].values.tolist() == [["1000001", "2"], ["1000002", "2"], ["1000001", "3"]]
    assert rap["22407"].tolist() == [1.0, 2.0, 1.1] and rap["site"].tolist() == ["x", "y", "x"]
    with pytest.raises(ValueError, match="r.csv: participant 7 at visit 2 is listed more than once"):
        normalise_reference(pd.DataFrame({"eid": ["7", "7"], "visit": ["2", "2"], "a": [1, 2]}), "r.csv")
    with pytest.raises(ValueError, match="has both a 'visit' column and UK Biobank field columns"):
        normalise_reference(pd.DataFrame({"eid": ["7"], "visit": ["2"], "22407-2.0": [1.0]}), "r.csv")
    ours = pd.DataFrame({"participant_id": ["7", "7"], "visit": ["2", "3"], "spleen_volume_ml": [1.0, 2.0]})
    bare = normalise_reference(pd.DataFrame({"eid": ["7"], "spleen_volume_ml": [1.0]}), "r.csv")
    with pytest.raises(ValueError, match=r"names no visit .* the output has visits \['2', '3'\]; give --reference"):
        agreement_tables(ours, bare, identity_mapping(bare.columns), "r.csv")
    told = agreement_tables(ours, bare, identity_mapping(bare.columns), "r.csv", reference_visit="3")
    assert list(told.values["status"]) == ["missing_reference", "paired"] and told.visit_assumed == "3"


def test_shipped_ukbb_mapping_is_documented_and_marks_unconfirmed_fields():
    from mrseg_cohort.agreement.mapping import shipped_mapping

    path = shipped_mapping("ukbb")
    mapping = load_mapping(path.read_bytes(), str(path))
    fields = {p.field: p for p in mapping.pairs}
    assert set(fields) == {22407, 22408, 22435, 22436, 40061}
    assert fields[22407].unit == "L" and fields[22407].factor == 1000.0 and fields[22436].unit == "%"
    assert [n.field for n in mapping.not_comparable] == [22409]
    for entry in (*mapping.pairs, *mapping.not_comparable):
        assert entry.confirmed is not None and entry.evidence, entry  # every field says how far it was checked
    assert all(p.optional and p.differs for p in mapping.pairs)
    text = path.read_text()
    assert "NOT CONFIRMED" in text and len(re.findall(r"^ +confirmed: false$", text, re.M)) == 6


# -- the report --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def report(cohort, ukbb):
    """The report of output a, with the Agreement section of the ``ukbb`` comparison found in the output;
    no random sample and no structure outliers (--min-scans 100), so the only preview is the agreement
    outlier's."""
    out = cohort["root"] / "report.html"
    result = cli("report", str(cohort["configs"]["a"]), "--out", str(out), "--sample", "0", "--min-scans", "100")
    assert result.exit_code == 0, result.output
    return {"path": out, "html": out.read_text(), "output": result.output}


def _section(html: str) -> str:
    start = html.index('<section id="agreement">')
    return html[start: html.index("</section>", start)]


def test_report_has_an_agreement_section_with_plots_and_linked_outliers(report, ukbb):
    section = _section(report["html"])
    assert '<a href="#agreement">Agreement</a>' in report["html"]
    assert "1 outside the limits of agreement" in report["output"]

    class Images(HTMLParser):
        def __init__(self):
            super().__init__()
            self.found = []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img" and attrs.get("class") == "agreement":
                self.found.append(attrs)

    parser = Images()
    parser.feed(section)
    assert len(parser.found) == 2  # one per compared pair: VAT and ASAT
    for img in parser.found:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))).convert("RGB"))
        assert picture.shape[1] >= 800 and len(np.unique(picture.reshape(-1, 3), axis=0)) > 50
    anchor = anchor_for((PLANTED, "2"))
    assert f'href="#{anchor}"' in section and f'id="{anchor}"' in report["html"]  # outlier -> its preview
    assert "AMRA&#x27;s VAT" in section and "asat_volume_ml vs field 22408" in section


def test_report_agreement_option_reads_a_file_elsewhere(cohort, tmp_path):
    """``report --agreement FILE``: the section of that file (output c as the reference, liver volume only)."""
    mapping = {"name": "liver", "pairs": [{"phenotype": "liver_volume_ml", "column": "liver_volume_ml", "unit": "mL"}]}
    (tmp_path / "liver.yaml").write_text(yaml.safe_dump(mapping))
    elsewhere = tmp_path / "mine.parquet"
    assert cli("agreement", str(cohort["configs"]["a"]), "--reference", str(cohort["configs"]["c"]), "--map",
               str(tmp_path / "liver.yaml"), "--out", str(elsewhere)).exit_code == 0
    out = tmp_path / "report.html"
    result = cli("report", str(cohort["configs"]["a"]), "--out", str(out), "--sample", "0", "--min-scans", "100",
                 "--agreement", str(elsewhere))
    assert result.exit_code == 0, result.output
    section = _section(out.read_text())
    assert "liver_volume_ml vs column" in section and str(elsewhere) in section
    missing = cli("report", str(cohort["configs"]["a"]), "--out", str(out), "--agreement", str(tmp_path / "no.parquet"))
    assert missing.exit_code == 2 and "no such agreement table" in missing.output


@pytest.fixture(scope="session")
def chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing in CI: .ci/run must install it (apt-get install -y chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    return exe


def _screenshot(chromium: str, page, tmp_path, height: int) -> np.ndarray:
    shot = tmp_path / f"{page.stem}.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--force-device-scale-factor=1", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
               "--enable-logging=stderr", "--v=0", f"--screenshot={shot}", f"--window-size=1400,{height}",
               page.as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line]
    assert not console, console
    return np.asarray(Image.open(shot).convert("RGB"))


@pytest.mark.browser
def test_agreement_section_in_headless_chromium(chromium, report, ukbb, tmp_path):
    """The whole report loads without console errors; the Agreement section, rendered on a page of its
    own, shows each plot pixel for pixel (rows of the embedded PNGs are found in the screenshot)."""
    full = _screenshot(chromium, report["path"], tmp_path, 3000)
    assert len(np.unique(full.reshape(-1, 3), axis=0)) > 50
    section = _section(report["html"]) + "</section>"
    page = tmp_path / "agreement.html"
    page.write_text(h.page("agreement", "", [], [section]))
    shot = _screenshot(chromium, page, tmp_path, 4000)
    rows = [r.tobytes() for r in shot]
    plots = re.findall(r'<img src="data:image/png;base64,([^"]+)" alt="agreement plots', section)
    assert len(plots) == 2
    for src in plots:
        picture = np.asarray(Image.open(io.BytesIO(base64.b64decode(src))).convert("RGB"))
        busy = int(np.argmax((picture != 255).any(axis=2).sum(axis=1)))  # the row with the most drawing
        needle = picture[busy].tobytes()
        assert any(row.find(needle) % 3 == 0 for row in rows if needle in row), "an agreement plot is not shown"

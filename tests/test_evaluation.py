"""mrseg_cohort.evaluation and ``mrseg-cohort evaluate``: pairing, label maps, geometry errors,
vessel consistency on phantoms with known broken vessels, and the written tables."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from typer.testing import CliRunner

from mrseg_cohort import evaluation as ev
from mrseg_cohort.cli import app
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.nifti import read_labels, write_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import MRSEG, VESSEL_NAMES
from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = next((p for p in (REPO / "shared/data/totalsegmentator-examples",
                             REPO.parent / "shared/data/totalsegmentator-examples") if p.is_dir()), None)
MAPS = REPO / "configs/label_maps"
BROKEN = (2, 3)  # phantom indices whose predicted aorta is cut in two (render's broken_vessel)
STORE = Store()


def write(path: Path, array: np.ndarray, grid: Grid) -> str:
    write_volume(STORE, str(path), Volume(array.astype(np.uint8), grid), np.uint8)
    return str(path)


def run(*args: str):
    return CliRunner().invoke(app, ["evaluate", *args], catch_exceptions=False)


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory) -> dict:
    """4 phantom references and predictions: the prediction equals the reference except that the
    aorta of participants 2 and 3 is broken into two pieces."""
    root = tmp_path_factory.mktemp("phantoms")
    spec = PhantomSpec(participants=4, seed=3)
    broken = PhantomSpec(participants=4, seed=3, broken_vessel="aorta")
    preds = {}
    for i in range(4):
        ref = render_spec_participant(spec, i)
        pred = render_spec_participant(broken, i).labels if i in BROKEN else ref.labels
        write(root / "ref" / f"case{i}.nii.gz", ref.labels, ref.grid)
        write(root / "pred" / f"case{i}.nii.gz", pred, ref.grid)
        preds[f"case{i}"] = pred
    return {"root": root, "preds": preds, "grid": ref.grid}


# -- the command ------------------------------------------------------------------------------------
def test_cli_on_a_folder_pair_writes_every_table(phantoms, tmp_path):
    root, out = phantoms["root"], tmp_path / "out"
    result = run("--pred", str(root / "pred"), "--ref", str(root / "ref"), "--out", str(out), "--group", "UKBB")
    assert result.exit_code == 0, result.output
    for name in ("pairs.parquet", "per_class.parquet", "summary.parquet", "summary.csv"):
        assert (out / name).is_file()
    for metric in ev.TABLE_METRICS:
        for suffix in ("parquet", "csv", "md"):
            assert (out / f"table_{metric}.{suffix}").is_file()
    per_class = pd.read_parquet(out / "per_class.parquet")
    assert len(per_class) == 4 * 40 and set(per_class["pair_id"]) == {f"case{i}" for i in range(4)}
    present = per_class[per_class["n_voxels_ref"] > 0]
    intact = present[present["pair_id"].isin(["case0", "case1"])]  # the others' aorta is cut
    assert (intact["dice"] == 1).all() and (intact["hd95_mm"] == 0).all()
    assert (intact["volume_pred_ml"] == intact["volume_ref_ml"]).all()
    table = pd.read_parquet(out / "table_dice.parquet")
    assert list(table.columns) == ["structure", "UKBB"] and table["structure"].iloc[-1] == "all structures"
    assert table.set_index("structure").loc["liver", "UKBB"] == "1.00 ± 0.00"
    markdown = (out / "table_dice.md").read_text()
    assert markdown.startswith("| structure | UKBB |") and "| liver | 1.00 ± 0.00 |" in markdown


def test_vessel_consistency_of_phantoms_with_known_broken_vessels(phantoms):
    root = phantoms["root"]
    pairs = ev.pairs_from_folders(STORE, str(root / "pred"), str(root / "ref"))
    results = ev.evaluate_pairs(STORE, pairs, ev.identity_options(MRSEG))
    _, per_class = ev.frames(results, pairs)
    summary = ev.summarise(per_class, ["group"], MRSEG).set_index("structure")
    assert summary.loc["aorta", "vc"] == pytest.approx(2 / 4) and summary.loc["aorta", "n_vc"] == 4
    assert summary.loc["aorta", "vc_ref"] == 1.0
    # every vessel: the share recomputed with scipy's labelling, 26-connected
    for name in VESSEL_NAMES:
        counts = [ndimage.label(p == MRSEG.id_of(name), np.ones((3, 3, 3)))[1] for p in phantoms["preds"].values()]
        present = [c for c in counts if c]
        assert summary.loc[name, "vc"] == pytest.approx(sum(c == 1 for c in present) / len(present))
    assert math.isnan(summary.loc["liver", "vc"])  # VC is for vessels only
    table = ev.paper_table(summary.reset_index(), per_class, ["group"], "vc")
    assert list(table["structure"]) == list(VESSEL_NAMES)


def test_pairs_list_with_groups_gives_one_column_per_group(phantoms, tmp_path):
    root = phantoms["root"]
    rows = [{"pred": f"pred/case{i}.nii.gz", "ref": f"ref/case{i}.nii.gz", "dataset": "A" if i < 2 else "B"}
            for i in range(4)]
    pd.DataFrame(rows).to_csv(root / "pairs.csv", index=False)
    result = run("--pairs", str(root / "pairs.csv"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    hd = pd.read_csv(tmp_path / "out" / "table_hd95_mm.csv", dtype=str, keep_default_na=False)
    assert list(hd.columns) == ["structure", "A", "B", "all"]
    cells = hd.drop(columns="structure").to_numpy().ravel()
    assert all(c == "-" or re.fullmatch(r"\d+\.\d ± \d+\.\d( \[\d+ inf\])?", c) for c in cells), cells
    summary = pd.read_parquet(tmp_path / "out" / "summary.parquet")
    aorta = summary[summary["structure"] == "aorta"].set_index("group")
    assert aorta.loc["A", "dice_mean"] == 1.0 and aorta.loc["B", "dice_mean"] < 1.0
    assert aorta.loc["all", "n_pairs"] == 4


def test_geometry_mismatch_missing_and_unreadable_files_are_error_rows(phantoms, tmp_path):
    grid = Grid((6, 8, 8), (3.0, 1.5, 1.5))
    labels = np.zeros(grid.shape, np.uint8); labels[2:4, 2:6, 2:6] = 5
    for name in ("good", "spacing", "missing", "broken"):
        write(tmp_path / "ref" / f"{name}.nii.gz", labels, grid)
    write(tmp_path / "pred" / "good.nii.gz", labels, grid)
    write(tmp_path / "pred" / "spacing.nii.gz", labels, Grid(grid.shape, (3.0, 1.5, 2.0)))
    (tmp_path / "pred" / "broken.nii.gz").write_bytes(b"not a nifti file")
    result = run("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out", str(tmp_path / "out"))
    assert result.exit_code == 1
    pairs = pd.read_parquet(tmp_path / "out" / "pairs.parquet").set_index("pair_id")
    assert pairs.loc["good", "status"] == "ok"
    mismatch = pairs.loc["spacing", "error"]
    assert pairs.loc["spacing", "status"] == "error" and "spacing" in mismatch
    assert str(tmp_path / "pred" / "spacing.nii.gz") in mismatch
    assert str(tmp_path / "ref" / "spacing.nii.gz") in mismatch
    assert "no prediction" in pairs.loc["missing", "error"]
    assert pairs.loc["broken", "status"] == "error" and "broken.nii.gz" in pairs.loc["broken", "error"]
    per_class = pd.read_parquet(tmp_path / "out" / "per_class.parquet")
    assert set(per_class["pair_id"]) == {"good"}

    # with --resample-mm both go onto one grid and the pair is evaluated, the difference noted
    result = run("--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref"), "--out",
                 str(tmp_path / "out2"), "--resample-mm", "3,1.5,1.5")
    pairs = pd.read_parquet(tmp_path / "out2" / "pairs.parquet").set_index("pair_id")
    assert pairs.loc["spacing", "status"] == "ok" and "spacing" in pairs.loc["spacing", "geometry_note"]
    assert bool(pairs.loc["spacing", "resampled"])


def test_usage_errors_exit_2(tmp_path):
    assert run("--out", str(tmp_path)).exit_code == 2
    assert run("--pred", str(tmp_path), "--ref", str(tmp_path), "--out", str(tmp_path / "o")).exit_code == 2


# -- label maps -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["totalsegmentator_total_mr.json", "totalsegmentator_total.json"])
def test_totalsegmentator_maps_cover_mrsegmentator(name):
    options = ev.options_with_map(STORE, str(MAPS / name), MRSEG)
    names = json.loads((MAPS / name).read_text())["reference_labels"]
    target = {names[str(v)]: MRSEG[int(options.ref_lut[v])].name for v in options.ref_listed if options.ref_lut[v]}
    assert set(target.values()) == set(MRSEG.names.values())  # every MRSeg class has a source
    assert target["iliopsoas_left"] == "left_iliopsoas_muscle" and target["kidney_right"] == "right_kidney"
    assert {s for n, s in target.items() if n.startswith("vertebrae")} == {"spine"}
    assert {s for n, s in target.items() if n.startswith("lung")} == {"left_lung", "right_lung"}


def test_map_errors_name_the_file_and_the_entry(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"reference_labels": {"1": "kidney_left"}, "map": {"kidney_left": "left_kidny"}}))
    with pytest.raises(ConfigError, match=r"bad\.json.*left_kidny"):
        ev.options_with_map(STORE, str(bad), MRSEG)
    bad.write_text(json.dumps({"map": {"lung": "left_lung"}}))
    with pytest.raises(ConfigError, match=r"bad\.json.*'lung'"):
        ev.options_with_map(STORE, str(bad), MRSEG)
    flat = tmp_path / "flat.json"
    flat.write_text(json.dumps({"7": "liver", "8": 3, "9": None}))
    options = ev.options_with_map(STORE, str(flat), MRSEG)
    assert (options.ref_lut[7], options.ref_lut[8], options.ref_lut[9]) == (5, 3, 0)


@pytest.mark.skipif(EXAMPLES is None, reason="shared/data/totalsegmentator-examples is not here")
def test_real_totalsegmentator_reference_through_the_map(tmp_path):
    ref_uri = str(EXAMPLES / "mr_seg_totalsegmentator_mri.nii.gz")
    ref = read_labels(STORE, ref_uri)
    options = ev.options_with_map(STORE, str(MAPS / "totalsegmentator_total_mr.json"), MRSEG)
    pred_uri = write(tmp_path / "pred.nii.gz", options.ref_lut[ref.array], ref.grid)
    result = ev.evaluate_pair(STORE, ev.Pair("mr", pred_uri, ref_uri), options)
    assert result.row["status"] == "ok", result.row["error"]
    present = [c for c in result.classes if c["n_voxels_ref"] > 0]
    assert len(present) >= 15 and all(c["dice"] == 1.0 and c["hd95_mm"] == 0.0 for c in present)
    assert result.row["ref_unmapped_values"] == []
    # without the map, TotalSegmentator values are taken as MRSeg values: spine != vertebrae
    plain = ev.evaluate_pair(STORE, ev.Pair("mr", pred_uri, ref_uri), ev.identity_options(MRSEG))
    assert plain.row["ref_unmapped_values"] and min(c["dice"] for c in plain.classes if c["n_voxels_ref"]) < 1


def test_resampling_keeps_extent_and_labels():
    grid = Grid((4, 6, 6), (3.0, 2.0, 2.0), (10.0, -5.0, 2.0))
    labels = np.zeros(grid.shape, np.uint8); labels[1:3, 2:4, 2:4] = 9
    target = ev.resampled_grid(grid, (1.5, 1.0, 1.0))
    assert target.shape == (8, 12, 12) and target.origin_mm == grid.origin_mm
    out = ev.resample_nearest(Volume(labels, grid), target)
    assert np.count_nonzero(out.array == 9) == 64  # 64 x 1.5 mm3 = 96 mm3 = 8 x 12 mm3, as before
    same = ev.resample_nearest(Volume(labels, grid), grid)
    assert np.array_equal(same.array, labels)


@pytest.mark.slow
def test_ray_path_gives_the_same_rows(phantoms):
    from mrseg_cohort.pipeline.evaluate import evaluate_pairs_ray

    root = phantoms["root"]
    pairs = ev.pairs_from_folders(STORE, str(root / "pred"), str(root / "ref"))[:2]
    pairs.append(ev.Pair("missing", "", str(root / "ref" / "case0.nii.gz")))
    options = ev.identity_options(MRSEG)
    local = ev.evaluate_pairs(STORE, pairs, options)
    remote = evaluate_pairs_ray(STORE, pairs, options, num_cpus=1)
    assert [r.row["status"] for r in remote] == ["ok", "ok", "error"]
    classes = [pd.DataFrame([c for r in results for c in r.classes]) for results in (remote, local)]
    assert classes[0].equals(classes[1])
    rows = [[{k: v for k, v in r.row.items() if k != "seconds"} for r in results] for results in (remote, local)]
    assert rows[0] == rows[1]

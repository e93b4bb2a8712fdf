"""Cohort layouts (mrseg_cohort.manifest.discover): UK Biobank zips and bulk files, NAKO patterns, NIfTI
folders with a CT; local folders with spaces in their paths (UK Biobank RAP) and the S3 server."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import shared_file
from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import BadScanError, ConfigError
from mrseg_cohort.io.nifti import ReadLimits, read_volume
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.loading import load_scan
from mrseg_cohort.manifest import discover, manifest_frame


def job(input_uri: str, storage: dict | None = None, **sections) -> JobConfig:
    """A JobConfig for discovery (the model is never opened)."""
    data = {"cohort": {"name": "t", "layout": "ukbb-dicom-zip"},
            "input": {"uri": input_uri, "storage": storage or {}},
            "model": {"weights": "unused"}, "output": {"uri": "unused"}}
    for key, value in sections.items():
        data[key] = {**data.get(key, {}), **value}
    return JobConfig.model_validate(data)


@pytest.fixture(params=["file", "s3"])
def bulk(request, tmp_path):
    """(store, storage options, root): a RAP-like local 'Bulk/Whole body MRI' folder, or an S3 prefix."""
    if request.param == "file":
        return Store(), {}, str(tmp_path / "UKB RAP" / "Bulk" / "Whole body MRI")
    store, root = request.getfixturevalue("s3_root")
    return store, store.options, root


def _touch(store: Store, root: str, *names: str) -> None:
    for name in names:
        store.write_bytes(join_uri(root, name), b"PK")


# -- UK Biobank ---------------------------------------------------------------------------------------
def test_ukbb_zips_by_name(bulk):
    store, options, root = bulk
    _touch(store, root, "10/1000001_20201_2_0.zip", "10/1000001_20201_3_0.zip", "10/1000002_20201_2_0.zip",
           "1000003_20204_2_0.zip", "1000004_20201_2_0.zip.part", ".1000005_20201_2_0.zip", "readme.txt")
    sources = discover(job(root, options), store)
    assert [(s.participant_id, s.visit) for s in sources] == [("1000001", "2"), ("1000001", "3"), ("1000002", "2")]
    first = sources[0]
    assert first.layout == "ukbb-dicom-zip" and first.modality == "MRI"
    assert first.uris == (join_uri(root, "10/1000001_20201_2_0.zip"),)
    frame = manifest_frame(sources)
    assert frame["participant_id"].map(type).eq(str).all() and list(frame["n_files"]) == [1, 1, 1]


def test_ukbb_bulk_file_selects_participant_and_instance(bulk, tmp_path):
    store, options, root = bulk
    _touch(store, root, "1000001_20201_2_0.zip", "1000001_20201_3_0.zip", "1000002_20201_2_0.zip",
           "1000003_20201_2_0.zip")
    selection = tmp_path / "my bulk file.bulk"
    selection.write_text("# exported from the RAP\n1000001 20201_2_0\n1000003 20201_2_0\n1000009 20201_2_0\n\n"
                         "1000002\n")
    sources = discover(job(root, options, input={"participants_file": str(selection)}), store)
    assert [(s.participant_id, s.visit) for s in sources] == [("1000001", "2"), ("1000002", "2"), ("1000003", "2")]
    selection.write_text("1000001 20201_2_0\n1000001,20201_2_0\n")
    with pytest.raises(ConfigError, match="line 2"):
        discover(job(root, options, input={"participants_file": str(selection)}), store)


def test_phantom_cli_writes_a_discoverable_ukbb_cohort(tmp_path):
    from mrseg_cohort.cli import app

    out = tmp_path / "RAP project" / "Bulk"
    runner = CliRunner()
    result = runner.invoke(app, ["phantom", str(out), "-n", "1", "--format", "dicom-zip", "--visit", "2"])
    assert result.exit_code == 0, result.output
    [source] = discover(job(str(out)), Store())
    assert (source.participant_id, source.visit) == ("1000000", "2")
    assert (out / "truth" / "1000000" / "2" / "labels.nii.gz").exists()
    bad = runner.invoke(app, ["phantom", str(tmp_path / "x"), "--format", "dicom-zip", "--layout", "nako"])
    assert bad.exit_code == 2 and "needs --layout ukbb" in bad.output


# -- NAKO ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern,names,expected", [
    ("nako/{participant_id}_{visit}/{contrast}_s{station}.nii.gz",
     [f"nako/100123_1/{c}_s{k}.nii.gz" for c in ("in", "opp", "W", "F") for k in (1, 2, 10)]
     + ["nako/100123_1/t2_haste_s1.nii.gz", "nako/100124_1/in_s1.nii.gz"],
     {("100123", "1"): {"in": [1, 2, 10], "opp": [1, 2, 10], "W": [1, 2, 10], "F": [1, 2, 10]},
      ("100124", "1"): {"in": [1]}}),
    ("{participant_id}/{contrast}.nii.gz",  # already stitched, one file per contrast, visit from the config
     ["100123/in.nii.gz", "100123/W.nii.gz", "100123/F.nii.gz", "100123/in.json", "A_7/in.nii.gz"],
     {("100123", "0"): {"in": [0], "W": [0], "F": [0]}, ("A_7", "0"): {"in": [0]}}),
])
def test_nako_patterns(pattern, names, expected, tmp_path):
    root = str(tmp_path / "NAKO export 2024")
    store = Store()
    _touch(store, root, *names)
    cfg = job(root, cohort={"layout": "nako-nifti", "pattern": pattern},
              contrasts={"available": ["in", "opp", "W", "F"], "segment": ["in"], "fat": "F", "water": "W"})
    sources = discover(cfg, store)
    found = {s.key: {c: [int(u.rsplit("_s", 1)[1].split(".")[0]) if "{station}" in pattern else 0
                         for u in uris] for c, uris in s.files} for s in sources}
    assert found == expected  # stations in numeric order: 1, 2, 10


def test_pattern_errors_are_config_errors(tmp_path):
    for pattern, match in (("{participant_id}/{modality}.nii.gz", "unknown placeholder"),
                           ("{visit}/{contrast}.nii.gz", "needs {participant_id}")):
        with pytest.raises(ConfigError, match=match):
            discover(job(str(tmp_path), cohort={"layout": "nako-nifti", "pattern": pattern}), Store())


# -- NIfTI folders, with a real CT --------------------------------------------------------------------
def test_nifti_folder_with_a_ct(tmp_path):
    ct = shared_file("ct.nii.gz")
    root = tmp_path / "CT cohort"
    root.mkdir()
    shutil.copy(ct, root / "sub-ct001_ses-2_ct.nii.gz")
    (root / "sub-ct002_ses-1_ct.nii").write_bytes(gzip.decompress(ct.read_bytes()))  # plain .nii is fine too
    (root / "sub-ct001_ses-2_ct.json").write_text("{}")
    (root / "scanner-qa.nii.gz").write_bytes(b"")
    cfg = job(str(root), cohort={"layout": "nifti-folder", "modality": "CT",
                                 "participant_regex": r"^sub-(?P<participant_id>[^_]+)_ses-(?P<visit>\d+)"},
              contrasts={"available": ["ct"], "segment": ["ct"], "fat": None, "water": None})
    sources = discover(cfg, Store())
    assert [(s.participant_id, s.visit, s.modality, s.contrasts) for s in sources] == [
        ("ct001", "2", "CT", ("ct",)), ("ct002", "1", "CT", ("ct",))]
    loaded = load_scan(Store(), sources[0], cfg.contrasts, cfg.stitching, ReadLimits())
    original = read_volume(Store(), str(ct))
    image = loaded.images["ct"]
    assert original.grid.axis_codes() == "RAS" and image.grid.is_close(original.grid), \
        image.grid.mismatch(original.grid)
    assert np.allclose(image.array, original.array) and image.array.min() < -500  # HU, air


def test_nifti_folder_two_files_for_one_scan_fail_that_scan_only(tmp_path):
    _touch(Store(), str(tmp_path), "p1_a.nii.gz", "p1_b.nii.gz", "p2_a.nii.gz")
    cfg = job(str(tmp_path), cohort={"layout": "nifti-folder"})
    p1, p2 = discover(cfg, Store())
    assert (p1.participant_id, p2.participant_id, p2.problem) == ("p1", "p2", "")
    assert "2 input files map to participant p1 visit 0" in p1.problem and "cohort.participant_regex" in p1.problem
    assert str(tmp_path / "p1_a.nii.gz") in p1.problem and str(tmp_path / "p1_b.nii.gz") in p1.problem
    with pytest.raises(BadScanError, match="2 input files map to participant p1") as info:
        load_scan(Store(), p1, cfg.contrasts, cfg.stitching, ReadLimits())
    assert (info.value.stage, info.value.uri) == ("read", str(tmp_path / "p1_a.nii.gz"))


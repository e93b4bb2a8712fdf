"""Tests of ``mrseg-cohort measure``: label maps and images on disk in, Parquet tables out."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from mrseg_cohort.biomarkers import INTENSITY_COLUMNS, SCAN_COLUMNS, STRUCTURE_COLUMNS
from mrseg_cohort.cli import app
from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.nifti import write_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import MRSEG
from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant


@pytest.fixture(scope="module")
def scan_files(tmp_path_factory):
    """A phantom's truth labels and its fat, water and in-phase images as NIfTI files."""
    folder = tmp_path_factory.mktemp("scan with spaces")
    r = render_spec_participant(PhantomSpec(participants=1, seed=5), 0)
    store = Store()
    paths = {name: str(folder / f"{name}.nii.gz") for name in ("labels", "fat", "water", "in")}
    write_volume(store, paths["labels"], Volume(r.labels, r.grid), np.uint8)
    for name, array in (("fat", r.fat), ("water", r.water), ("in", r.in_phase)):
        write_volume(store, paths[name], Volume(np.rint(array).astype(np.int16), r.grid), np.int16)
    cropped = r.grid.crop((0, 0, 0), (r.grid.shape[0] - 4, *r.grid.shape[1:]))
    paths["fat_cropped"] = str(folder / "fat_cropped.nii.gz")
    write_volume(store, paths["fat_cropped"], Volume(np.rint(r.fat[:-4]).astype(np.int16), cropped), np.int16)
    return paths, r


def _invoke(*args: str):
    return CliRunner().invoke(app, ["measure", *args])


def test_measure_writes_tables_readable_by_pandas_duckdb_polars(scan_files, tmp_path):
    import duckdb
    import pandas as pd
    import polars as pl

    paths, r = scan_files
    out = tmp_path / "out" / "structures.parquet"
    result = _invoke(paths["labels"], "--fat", paths["fat"], "--water", paths["water"],
                     "--image", f"in={paths['in']}", "--contrast", "in", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "40 of 40 structures present" in result.stdout

    frame = pd.read_parquet(out)
    assert list(frame.columns) == ["labels_uri", *STRUCTURE_COLUMNS]
    assert len(frame) == 40 and frame["structure"].tolist() == list(MRSEG.names.values())
    assert str(frame["structure_id"].dtype) == "int16"
    assert (frame["n_voxels"] == [np.count_nonzero(r.labels == i) for i in MRSEG]).all()
    liver = frame.set_index("structure").loc["liver"]
    assert liver["ff_median_pct"] == pytest.approx(r.ff_truth["liver"], abs=0.5)  # int16 rounding included
    assert not math.isnan(liver["mean_intensity"])

    rows = duckdb.sql(f"SELECT count(*), sum(n_voxels) FROM read_parquet('{out}')").fetchall()[0]
    assert rows == (40, int(np.count_nonzero(r.labels)))
    polars_frame = pl.read_parquet(out)
    assert polars_frame.height == 40
    assert polars_frame.filter(pl.col("structure") == "aorta")["single_component"].to_list() == [True]
    assert polars_frame.filter(pl.col("structure") == "liver")["single_component"].to_list() == [None]

    scan = pd.read_parquet(tmp_path / "out" / "structures.scan.parquet")
    assert list(scan.columns) == ["labels_uri", *SCAN_COLUMNS] and len(scan) == 1
    assert not scan["swap_suspected"].iloc[0] and scan["n_lr_implausible"].iloc[0] == 0
    intensities = pl.read_parquet(tmp_path / "out" / "structures.intensity.parquet")
    assert intensities.columns == ["labels_uri", *INTENSITY_COLUMNS]
    assert sorted(set(intensities["image_contrast"])) == ["fat", "in", "water"]


def test_measure_without_images(scan_files, tmp_path):
    paths, _ = scan_files
    out = tmp_path / "labels_only.parquet"
    result = _invoke(paths["labels"], "--out", str(out))
    assert result.exit_code == 0, result.output
    import pandas as pd

    frame = pd.read_parquet(out)
    assert frame["ff_median_pct"].isna().all() and frame["mean_intensity"].isna().all()
    assert not (tmp_path / "labels_only.intensity.parquet").exists()


def test_grid_mismatch_exits_2_with_one_line(scan_files, tmp_path):
    paths, _ = scan_files
    out = tmp_path / "never.parquet"
    result = _invoke(paths["labels"], "--fat", paths["fat_cropped"], "--water", paths["water"], "--out", str(out))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: image 'fat' is not on the label map's grid")
    assert "shape" in lines[0]
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--fat", "F.nii.gz"], "--fat and --water must be given together"),
    (["--image", "no-equals-sign"], "--image must be NAME=URI"),
    (["--connectivity", "8"], "--connectivity must be 6, 18 or 26"),
    (["--contrast", "t2"], "--contrast 't2' is not one of the images"),
    (["--labels", "nonsense"], "--labels must be one of"),
])
def test_bad_arguments_exit_2(scan_files, tmp_path, args, message):
    paths, _ = scan_files
    result = _invoke(paths["labels"], *args, "--out", str(tmp_path / "x.parquet"))
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_missing_labels_file_exits_2(tmp_path):
    result = _invoke(str(tmp_path / "absent.nii.gz"), "--out", str(tmp_path / "x.parquet"))
    assert result.exit_code == 2 and result.stderr.startswith("error:")


@pytest.mark.parametrize("style", ["dataset", "value_to_name"])
def test_label_map_from_json(scan_files, tmp_path, style):
    import pandas as pd

    paths, r = scan_files
    names = {"1": "spleen", "5": "liver", "13": "aorta"}
    data = {"labels": {"background": 0, **{n: int(v) for v, n in names.items()}}} if style == "dataset" else names
    label_json = tmp_path / "labels.json"
    label_json.write_text(json.dumps(data))
    out = tmp_path / "custom.parquet"
    result = _invoke(paths["labels"], "--labels", str(label_json), "--out", str(out))
    assert result.exit_code == 0, result.output
    frame = pd.read_parquet(out)
    assert frame["structure"].tolist() == ["spleen", "liver", "aorta"]
    assert frame["n_voxels"].tolist() == [np.count_nonzero(r.labels == v) for v in (1, 5, 13)]
    scan = pd.read_parquet(tmp_path / "custom.scan.parquet")
    assert scan["n_voxels_unknown_label"].iloc[0] > 0  # the other 37 MRSeg classes


def test_fat_fractions_of_a_file_not_in_axial_slices_come_with_a_warning_naming_it(scan_files, tmp_path):
    """The same voxels stored with the slices (array axis 0) running front to back: fat fractions erode
    within the file's slices, which are coronal here, and this was not said (docs/measures.md defines
    in-plane by the file's slices)."""
    from mrseg_cohort.geometry import Grid

    paths, r = scan_files
    coronal = Grid(r.grid.shape, r.grid.spacing_mm, r.grid.origin_mm, (1, 0, 0, 0, 0, 1, 0, 1, 0))
    store = Store()
    files = {name: str(tmp_path / f"{name}.nii.gz") for name in ("labels", "fat", "water")}
    write_volume(store, files["labels"], Volume(r.labels, coronal), np.uint8)
    for name, array in (("fat", r.fat), ("water", r.water)):
        write_volume(store, files[name], Volume(np.rint(array).astype(np.int16), coronal), np.int16)
    for source, plane in ((files, "coronal"), (paths, None)):
        result = _invoke(source["labels"], "--fat", source["fat"], "--water", source["water"],
                         "--out", str(tmp_path / f"{plane}.parquet"))
        assert result.exit_code == 0, result.output
        warned = [line for line in result.stderr.splitlines() if "slices" in line]
        if plane is None:
            assert warned == [], result.stderr
        else:
            assert len(warned) == 1 and warned[0].startswith(f"warning: {source['labels']} is stored in coronal slices")

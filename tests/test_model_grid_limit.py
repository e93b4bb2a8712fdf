"""The model grid is sized from the header before inference allocates it (issue 23: a NIfTI with 50 mm
or 1e6 mm spacing made the workers ask for tens of GB, and Ray's OOM killer ended them). A scan above
``limits.max_model_voxels`` fails with a ``failures`` row naming its spacing; the job goes on."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_job_yaml
from mrseg_cohort.cli import app
from mrseg_cohort.config import LimitsConfig, ModelConfig
from mrseg_cohort.errors import ScanTooLargeError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.limits import MAX_MODEL_VOXELS
from mrseg_cohort.io.nifti import write_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.segmentation.engine import model_grid_shape
from mrseg_cohort.segmentation.segmenter import Segmenter, check_model

MRSEG_SPACING = (1.5, 1.5, 1.5)
"""MRSegmentator's grid as ../shared/tools/gpu-anchor assumes it (its plans ship only with its weights)."""


def _body(shape=(16, 16, 16), spacing=(3.0, 2.0, 2.0)) -> Volume:
    """A bright block inside a dark field of view: something to segment."""
    array = np.zeros(shape, np.float32)
    array[4:-4, 4:-4, 4:-4] = 100.0
    return Volume(array, Grid(shape, spacing))


def test_the_model_grid_is_nnunets_shape():
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    for shape, spacing, target in (((370, 174, 224), (3.0, 2.23, 2.23), MRSEG_SPACING),
                                   ((16, 16, 16), (50.0, 50.0, 50.0), (6.0, 4.464, 4.464)),
                                   ((7, 9, 11), (0.7, 1.3, 2.9), (1.0, 1.0, 1.0))):
        assert model_grid_shape(shape, spacing, target) == tuple(compute_new_shape(shape, spacing, target))


def test_the_default_limit_passes_whole_body_cohort_scans_and_refuses_wrong_spacings():
    ukbb = model_grid_shape((370, 174, 224), (3.0, 2.23, 2.23), MRSEG_SPACING)  # stitched UK Biobank Dixon
    nako = model_grid_shape((316, 260, 320), (3.0, 1.4, 1.4), MRSEG_SPACING)
    assert ukbb == (740, 259, 333) and math.prod(ukbb) == 63_822_780
    assert math.prod(nako) == 632 * 243 * 299
    assert LimitsConfig().max_model_voxels == MAX_MODEL_VOXELS >= 4 * math.prod(ukbb)
    fifty_mm = model_grid_shape((370, 174, 224), (50.0, 50.0, 50.0), MRSEG_SPACING)
    assert math.prod(fifty_mm) > 100 * MAX_MODEL_VOXELS


@pytest.fixture(scope="module")
def segmenter(demo_model):
    return Segmenter([check_model(ModelConfig(weights=str(demo_model)))], "cpu", threads=2)


@pytest.mark.parametrize("spacing,shown", [((1e6, 1e6, 1e6), "voxel spacing (1e+06, 1e+06, 1e+06) mm"),
                                           ((2e5, 2e5, 2.0), "voxel spacing (200000, 200000, 2) mm"),
                                           ((1e307, 1e307, 1e307), "grid as about 1e+307x"), ((1e308, 1e308, 1e308), "an unbounded number of voxels")])
def test_a_huge_spacing_is_refused_before_anything_is_allocated(segmenter, monkeypatch, spacing, shown):
    def no_allocation(*args, **kwargs):
        raise AssertionError("the image was preprocessed onto the model grid")

    runner = segmenter.runners["base"]
    monkeypatch.setattr(runner, "prepare", no_allocation)
    with pytest.raises(ScanTooLargeError) as info:
        segmenter(_body(spacing=spacing), "MRI", "in")
    message = str(info.value)
    assert info.value.stage == "segment" and shown in message and "limits.max_model_voxels" in message
    assert "model base's (6, 4.464, 4.464) mm grid" in message


def test_the_limit_is_what_decides(segmenter, demo_model):
    image = _body()
    labels = segmenter(image, "MRI", "in").labels["base"]  # 16 x 16 x 16 at 3 x 2 x 2 mm: 8 x 7 x 7 on the demo grid
    assert labels.shape == image.grid.shape and labels.dtype == np.uint8
    strict = Segmenter(segmenter.models, "cpu", threads=2, max_model_voxels=8 * 7 * 7 - 1)
    with pytest.raises(ScanTooLargeError, match=r"as 8x7x7 = 392 voxels, above the limit of 391"):
        strict(image, "MRI", "in")


def test_a_run_over_a_scan_with_a_huge_spacing_records_a_failure_and_goes_on(tmp_path, ray_local):
    cohort = tmp_path / "cohort"
    write_volume(Store(), str(cohort / "huge.nii.gz"), _body(spacing=(1e6, 1e6, 1e6)), np.float32)
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(tmp_path / "out"),
                            cohort={"layout": "nifti-folder"}, model={"tile_step_size": 1.0})
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 1, result.output
    [row] = pd.read_parquet(tmp_path / "out" / "tables" / "failures").to_dict("records")
    assert (row["participant_id"], row["stage"], row["error_type"]) == ("huge", "segment", "ScanTooLargeError"), row
    assert "voxel spacing (1e+06, 1e+06, 1e+06) mm" in row["message"] and "limits.max_model_voxels" in row["message"]

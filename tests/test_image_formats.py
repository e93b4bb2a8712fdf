"""MetaImage (.mha) and NRRD (.nrrd) inputs, read through SimpleITK as MRSegmentator reads them."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file, write_job_yaml
from mrseg_cohort.errors import BadScanError, ScanTooLargeError
from mrseg_cohort.io.images import IMAGE_SUFFIXES, image_stem, read_image, read_label_image
from mrseg_cohort.io.limits import ReadLimits
from mrseg_cohort.io.storage import Store


@pytest.mark.parametrize("suffix", [".mha", ".nrrd", ".nii"])
@pytest.mark.parametrize("name", ["mr.nii.gz", "ct.nii.gz"])
def test_every_format_reads_the_same_voxels_and_geometry(name, suffix, tmp_path):
    source = shared_file(name)
    reference = read_image(Store(), str(source))
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.ReadImage(str(source)), str(path))
    volume = read_image(Store(), str(path))
    assert np.array_equal(volume.array, reference.array)
    assert volume.grid.is_close(reference.grid, atol_mm=1e-4), volume.grid.mismatch(reference.grid)


def test_label_maps_in_mha_read_as_uint8(tmp_path):
    labels = np.zeros((4, 5, 6), np.uint16)
    labels[1:3, 2:4, 1:5] = 7
    path = tmp_path / "labels.mha"
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(path))
    volume = read_label_image(Store(), str(path))
    assert volume.array.dtype == np.uint8 and (volume.array == 7).sum() == 2 * 2 * 4


@pytest.mark.parametrize("case,phrase", [
    ("truncated", "cannot be read"), ("garbage", "not a readable .mha image"),
    ("vector", "components per voxel"), ("2d", "not 3-D"), ("nan", "NaN or infinite"),
])
def test_bad_files_are_refused_naming_the_file(case, phrase, tmp_path):
    path = tmp_path / f"bad_{case}.mha"
    good = sitk.GetImageFromArray(np.ones((6, 7, 8), np.float32))
    if case == "truncated":
        sitk.WriteImage(good, str(path))
        path.write_bytes(path.read_bytes()[:-100])
    elif case == "garbage":
        path.write_bytes(b"this is not an image" * 10)
    elif case == "vector":
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((6, 7, 8, 3), np.float32), isVector=True), str(path))
    elif case == "2d":
        sitk.WriteImage(sitk.GetImageFromArray(np.ones((7, 8), np.float32)), str(path))
    else:
        array = np.ones((6, 7, 8), np.float32)
        array[2, 3, 4] = np.nan
        sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    with pytest.raises(BadScanError, match=phrase) as err:
        read_image(Store(), str(path))
    assert err.value.uri == str(path)


def test_limits_are_checked_before_decoding(tmp_path):
    path = tmp_path / "big.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((40, 50, 60), np.float32)), str(path), True)
    with pytest.raises(ScanTooLargeError, match="limits.max_decompressed_mb"):
        read_image(Store(), str(path), ReadLimits(max_decompressed_mb=0.1))
    with pytest.raises(ScanTooLargeError, match="limits.max_dim"):
        read_image(Store(), str(path), ReadLimits(max_dim=50))


def test_one_definition_of_image_suffixes():
    assert IMAGE_SUFFIXES == (".nii.gz", ".nii", ".mha", ".nrrd")
    assert image_stem("case_0000.nii.gz") == "case_0000" and image_stem("a.b.mha") == "a.b"


def test_a_nifti_folder_cohort_of_mixed_formats_runs(tmp_path, ray_local):
    """The nifti-folder layout lists .mha and .nrrd scans beside NIfTI ones, and segments them."""
    from mrseg_cohort.config import load_config
    from mrseg_cohort.pipeline.run import run_job

    image = sitk.ReadImage(str(shared_file("mr.nii.gz")))
    (tmp_path / "in").mkdir()
    for pid, suffix in (("a", ".nii.gz"), ("b", ".mha"), ("c", ".nrrd")):
        sitk.WriteImage(image, str(tmp_path / "in" / f"{pid}{suffix}"))
    config = write_job_yaml(tmp_path / "job.yaml", str(tmp_path / "in"), str(tmp_path / "out"),
                            cohort={"name": "formats", "layout": "nifti-folder"},
                            contrasts={"available": ["in"], "segment": ["in"], "fat": None, "water": None})
    summary = run_job(load_config(config))
    assert (summary.done, summary.failed) == (3, 0)
    maps = [read_label_image(Store(), str(tmp_path / "out" / "labels" / pid / "0" / "in.nii.gz")).array
            for pid in "abc"]
    assert maps[0].any() and all(np.array_equal(m, maps[0]) for m in maps[1:])

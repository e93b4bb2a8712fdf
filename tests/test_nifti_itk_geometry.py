"""NIfTI geometry and scaling as SimpleITK reads them (MRSegmentator's reader), on headers whose
qform, sform and pixdim disagree, with no transform at all, and with odd scl_slope/scl_inter.

nibabel prefers any set sform and takes the voxel spacing from its columns; ITK's NiftiImageIO uses
the sform only when it is orthonormal and SCANNER_ANAT (or the qform is unset, or both agree),
otherwise the qform, and always takes the spacing from pixdim. Our reader must give ITK's grid, or
our labels land where MRSegmentator's do not (issue 22's agreement matrix).
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from mrseg_cohort.errors import BadScanError
from mrseg_cohort.io.nifti import read_labels, read_volume, write_volume
from mrseg_cohort.io.storage import Store

SCAN = np.diag([-2.0, -2.5, 3.0, 1.0])
SCAN[:3, 3] = (40.0, -30.0, 12.0)
MOVED = SCAN.copy()
MOVED[:3, :3] = Rotation.from_euler("z", 10, degrees=True).as_matrix() @ SCAN[:3, :3]
MOVED[0, 3] += 7.0
SHEARED = SCAN.copy()
SHEARED[0, 1] = 1.0


def _write(path, qform, qcode, sform, scode, pixdim_scale=1.0, units=2 + 8, nifti2=False):
    data = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    klass = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    header = klass.header_class()
    header.set_data_dtype(np.int16)
    header.set_data_shape(data.shape)
    header.set_qform(qform, code=qcode)
    header.set_sform(sform, code=scode)
    header["pixdim"][1:4] = header["pixdim"][1:4] * pixdim_scale
    header["xyzt_units"] = units
    nib.save(klass(data, None, header), str(path))
    written = nib.load(str(path)).header
    assert int(written["qform_code"]) == qcode and int(written["sform_code"]) == scode
    return path


HEADERS = {
    "qform and sform (scanner) agree": (SCAN, 1, SCAN, 1, {}),
    "sform scanner, qform elsewhere": (SCAN, 1, MOVED, 1, {}),
    "sform aligned, qform elsewhere": (SCAN, 1, MOVED, 2, {}),
    "sform talairach, qform elsewhere": (SCAN, 1, MOVED, 3, {}),
    "sform MNI, qform elsewhere": (SCAN, 1, MOVED, 4, {}),
    "sform only": (MOVED, 0, SCAN, 1, {}),
    "qform only": (SCAN, 1, MOVED, 0, {}),
    "sform sheared": (SCAN, 1, SHEARED, 1, {}),
    "pixdim not the sform's scales": (SCAN, 0, SCAN, 1, {"pixdim_scale": 0.8}),
    "no transform": (SCAN, 0, SCAN, 0, {}),
    "spacing in micrometres": (SCAN, 1, SCAN, 1, {"units": 3 + 8}),
}


@pytest.mark.parametrize("case", list(HEADERS))
@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_grid_is_simpleitks(case, suffix, tmp_path):
    qform, qcode, sform, scode, options = HEADERS[case]
    path = _write(tmp_path / f"x{suffix}", qform, qcode, sform, scode, **options)
    reference = sitk.ReadImage(str(path))
    volume = read_volume(Store(), str(path))
    np.testing.assert_allclose(volume.grid.spacing_xyz_mm, reference.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(volume.grid.origin_mm, reference.GetOrigin(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(volume.grid.direction, reference.GetDirection(), rtol=0, atol=1e-9)
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(reference).astype(np.float32))
    # labels written on that grid are read back by SimpleITK on the input's grid
    write_volume(Store(), str(tmp_path / "labels.nii.gz"), volume.with_array(volume.array.astype(np.uint8)), np.uint8)
    again = sitk.ReadImage(str(tmp_path / "labels.nii.gz"))
    np.testing.assert_allclose(again.GetOrigin(), reference.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(again.GetSpacing(), reference.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(again.GetDirection(), reference.GetDirection(), atol=1e-6)
    assert read_labels(Store(), str(tmp_path / "labels.nii.gz")).grid.is_close(volume.grid, atol_mm=1e-4)


@pytest.mark.parametrize("case", ["sform aligned, qform elsewhere", "sform scanner, qform elsewhere", "no transform"])
def test_nifti2_is_placed_as_its_nifti1_twin(case, tmp_path):
    """SimpleITK cannot read NIfTI-2 (so MRSegmentator cannot): the same fields in a NIfTI-2 header
    give the grid SimpleITK gives the NIfTI-1 file."""
    qform, qcode, sform, scode, options = HEADERS[case]
    twin = sitk.ReadImage(str(_write(tmp_path / "one.nii", qform, qcode, sform, scode, **options)))
    volume = read_volume(Store(), str(_write(tmp_path / "two.nii.gz", qform, qcode, sform, scode, nifti2=True,
                                             **options)))
    np.testing.assert_allclose(volume.grid.spacing_xyz_mm, twin.GetSpacing(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(volume.grid.origin_mm, twin.GetOrigin(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(volume.grid.direction, twin.GetDirection(), rtol=0, atol=1e-9)


@pytest.mark.parametrize("value", [0.0, np.nan])
def test_zero_or_nan_pixdim_is_refused_not_read_as_1_mm(value, tmp_path):
    """ITK (so MRSegmentator) silently reads a zero pixdim as 1 mm; a cohort tool refuses the file."""
    path = _write(tmp_path / "x.nii", SCAN, 0, SCAN, 1)
    raw = bytearray(path.read_bytes())
    raw[80:84] = np.float32(value).tobytes()  # pixdim[1]
    path.write_bytes(bytes(raw))
    with pytest.raises(BadScanError, match=r"pixdim.*x\.nii"):
        read_volume(Store(), str(path))


def test_header_without_a_usable_transform_is_refused(tmp_path):
    """A sheared sform and no qform: ITK has no orthonormal direction to use (MRSegmentator fails)."""
    path = _write(tmp_path / "x.nii.gz", SCAN, 0, SHEARED, 1)
    with pytest.raises(RuntimeError):
        sitk.ReadImage(str(path))
    with pytest.raises(BadScanError, match="orthonormal"):
        read_volume(Store(), str(path))


SCALINGS = [(0.73, 12.5), (2.0, 0.0), (1.0, -3.3), (-1.0, 3.0), (0.0, 5.0), (np.nan, 5.0), (2.0, np.nan),
            (1e-30, 2.0), (np.inf, 0.0), (0.0, 0.0), (np.nan, np.nan), (1.0, 0.0)]


@pytest.mark.parametrize("dtype", [np.int16, np.uint16, np.int32, np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("slope,inter", SCALINGS)
def test_scaling_is_simpleitks(dtype, slope, inter, tmp_path):
    """Values equal SimpleITK's bit for bit, odd headers included (nibabel ignores the intercept when
    the slope is 0 and refuses a NaN intercept; ITK applies the one and drops the other)."""
    rng = np.random.default_rng(3)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    low, high = (max(info.min, -40000), min(info.max, 2 ** 26)) if info else (-3000.0, 3000.0)
    data = (rng.uniform(low, high, size=(9, 8, 7))).astype(dtype)
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_data_shape(data.shape)
    header.set_qform(SCAN, code=1)
    header.set_sform(SCAN, code=1)
    header["scl_slope"], header["scl_inter"] = slope, inter
    header["vox_offset"] = 352
    path = tmp_path / "x.nii"
    path.write_bytes(header.binaryblock + bytes(4) + data.tobytes(order="F"))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32)
    ours = read_volume(Store(), str(path)).array
    assert ours.dtype == np.float32 and np.array_equal(ours, reference)

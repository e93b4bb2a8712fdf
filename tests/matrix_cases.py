"""Input cases of the agreement matrix with MRSegmentator's ``infer()`` (tests/test_mrsegmentator_matrix.py).

Every case is a real scan of ../shared/data (the abdominal MRI, 3 mm, LPS, int16; the abdominal
CT, 3 mm, RAS, int16), cropped small so that a case costs about a second, then changed along one
axis that users meet: axis order and flips, spacing, oblique directions, size, storage type, NIfTI
scaling and qform/sform headers, file format. Files are written with SimpleITK or nibabel, never
with this tool's own writer, so a fault in our io cannot hide in the inputs.

Axis orders and flips: the 48 orders and flips are one permutation each; :data:`COVERING_LAYOUTS`
is a subset of 8 in which each of the 6 axis orders and each of the 8 flip patterns occurs at least
once (and both handednesses), so a fault tied to one order or one flipped axis shows up;
``MRSEG_MATRIX_ALL_LAYOUTS=1`` adds all 48.
"""

from __future__ import annotations

import gzip
import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

Writer = Callable[[sitk.Image, Path], None]

COVERING_LAYOUTS = ("LPS", "RAI", "LAI", "LSA", "PRS", "ASL", "ILA", "IAL")
"""DICOM orientation codes (the direction each index axis x, y, z points to). Axis orders: xyz
(LPS, RAI, LAI), xzy (LSA), yxz (PRS), yzx (ASL), zxy (ILA), zyx (IAL); flip patterns (+ = L, P or
S): +++, ---, +--, ++-, +-+, -++, -+-, --+; RAI is left-handed, LPS right-handed."""

_LETTERS = (("L", "R"), ("P", "A"), ("S", "I"))


def all_layouts() -> tuple[str, ...]:
    """The 48 orientation codes (6 axis orders x 8 flip patterns)."""
    return tuple("".join(_LETTERS[w][f] for w, f in zip(perm, flips))
                 for perm in itertools.permutations(range(3)) for flips in itertools.product((0, 1), repeat=3))


@dataclass(frozen=True)
class Case:
    """One input file of the matrix.

    Attributes:
        name: the file's stem and its participant id in the nifti-folder layout.
        source: ``mr`` or ``ct`` (which real scan it is made from).
        axis: the matrix axis the case varies (``layout``, ``spacing``, ``oblique``, ...).
        what: what was done to the scan, in words.
        suffix: file ending (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``).
        write: writes the case from the cropped source image.
        five_folds: also run with the demo model as 5 NoMirroring folds.
    """

    name: str
    source: str
    axis: str
    what: str
    suffix: str
    write: Writer
    five_folds: bool = False

    @property
    def modality(self) -> str:
        return "CT" if self.source == "ct" else "MRI"

    @property
    def file_name(self) -> str:
        return self.name + self.suffix


def cropped_source(path: Path, source: str) -> sitk.Image:
    """The real scan cropped to the body (MR 64 x 56 x 20, CT 80 x 80 x 30 voxels, x y z)."""
    image = sitk.ReadImage(str(path))
    return image[20:84, 10:66, :] if source == "mr" else image[20:100, 10:90, :]


# -- writers ----------------------------------------------------------------------------------------
def _save(image: sitk.Image, path: Path) -> None:
    sitk.WriteImage(image, str(path), useCompression=path.name.endswith(".gz"))


def oriented(code: str) -> Writer:
    """The scan with its axes permuted and flipped to ``code`` (world positions unchanged)."""
    return lambda image, path: _save(sitk.DICOMOrient(image, code), path)


def resampled(spacing_xyz: tuple[float, float, float], code: str | None = None) -> Writer:
    """The scan resampled (linear, SimpleITK) to ``spacing_xyz`` mm over its own extent, rounded back
    to its storage type, optionally reoriented to ``code``."""
    def write(image: sitk.Image, path: Path) -> None:
        extent = np.array(image.GetSize()) * np.array(image.GetSpacing())
        size = [int(v) for v in np.floor(extent / np.array(spacing_xyz))]
        start = np.array(image.GetOrigin()) + np.array(image.GetDirection()).reshape(3, 3) @ (
            (np.array(spacing_xyz) - np.array(image.GetSpacing())) / 2)  # same outer edge
        out = sitk.Resample(sitk.Cast(image, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                            tuple(start), spacing_xyz, image.GetDirection(), 0.0, sitk.sitkFloat32)
        out = sitk.Cast(sitk.Round(out), image.GetPixelID())
        _save(sitk.DICOMOrient(out, code) if code else out, path)
    return write


def respaced(spacing_xyz: tuple[float, float, float]) -> Writer:
    """The same voxels with another spacing in the header (a larger field of view: several tiles)."""
    def write(image: sitk.Image, path: Path) -> None:
        out = sitk.Image(image)
        out.SetSpacing(spacing_xyz)
        _save(out, path)
    return write


def rotated(degrees_xyz: tuple[float, float, float], code: str | None = None) -> Writer:
    """The scan's direction turned by the rotation with these Euler angles (extrinsic x, y, z, degrees)
    about its first voxel: an oblique acquisition; optionally reoriented to ``code`` afterwards."""
    def write(image: sitk.Image, path: Path) -> None:
        turn = Rotation.from_euler("xyz", degrees_xyz, degrees=True).as_matrix()
        out = sitk.Image(image)
        out.SetDirection(tuple((turn @ np.array(image.GetDirection()).reshape(3, 3)).ravel()))
        _save(sitk.DICOMOrient(out, code) if code else out, path)
    return write


def cropped(size_xyz: tuple[int, int, int]) -> Writer:
    """The first ``size_xyz`` voxels of the scan."""
    return lambda image, path: _save(image[:size_xyz[0], :size_xyz[1], :size_xyz[2]], path)


def stored_as(pixel: int, scale: float = 1.0, offset: float = 0.0) -> Writer:
    """The scan's values ``v * scale + offset`` stored as SimpleITK pixel type ``pixel``."""
    def write(image: sitk.Image, path: Path) -> None:
        values = sitk.GetArrayFromImage(image).astype(np.float64) * scale + offset
        dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel)).dtype
        out = sitk.GetImageFromArray(values.astype(dtype))
        out.CopyInformation(image)
        _save(out, path)
    return write


def ras_affine(image: sitk.Image) -> np.ndarray:
    """nibabel's RAS affine of a SimpleITK image (index order x, y, z)."""
    lps = np.eye(4)
    lps[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _moved(affine: np.ndarray, degrees: float, shift_mm: float) -> np.ndarray:
    """``affine`` turned by ``degrees`` about world z through its first voxel, shifted along x."""
    out = affine.copy()
    out[:3, :3] = Rotation.from_euler("z", degrees, degrees=True).as_matrix() @ affine[:3, :3]
    out[0, 3] += shift_mm
    return out


def nifti_header(qform: str = "same", qform_code: int = 1, sform: str = "same", sform_code: int = 1,
                 slope: float | None = None, inter: float | None = None, pixdim_scale: float = 1.0,
                 dtype: type = np.int16) -> Writer:
    """The scan as a NIfTI-1 file written by nibabel with the header fields chosen here.

    ``qform``/``sform``: ``same`` (the scan's affine), ``moved`` (turned 10 degrees and shifted
    7 mm: another position), ``sheared`` (a non-orthogonal matrix). ``slope``/``inter``: scl_slope
    and scl_inter (the stored values are the scan's, so the image is ``v * slope + inter``).
    ``pixdim_scale``: pixdim[1:4] times this, leaving the matrices alone (spacing and sform disagree).
    Unsigned ``dtype``: the scan's values shifted to start at 0.
    """
    def matrix(kind: str, affine: np.ndarray) -> np.ndarray:
        if kind == "moved":
            return _moved(affine, 10.0, 7.0)
        if kind == "sheared":
            out = affine.copy()
            out[0, 1] += 0.4 * np.linalg.norm(affine[:3, 1])
            return out
        return affine

    def write(image: sitk.Image, path: Path) -> None:
        affine = ras_affine(image)
        values = sitk.GetArrayFromImage(image).transpose(2, 1, 0)
        data = (values - min(values.min(), 0) if np.dtype(dtype).kind == "u" else values).astype(dtype)
        header = nib.Nifti1Header()
        header.set_data_dtype(dtype)
        header.set_data_shape(data.shape)
        header.set_qform(matrix(qform, affine), code=qform_code)  # also sets pixdim from the qform
        header.set_sform(matrix(sform, affine), code=sform_code)
        header["pixdim"][1:4] = header["pixdim"][1:4] * pixdim_scale
        header["xyzt_units"] = 2 + 8
        header["scl_slope"], header["scl_inter"] = (np.nan, np.nan) if slope is None else (slope, inter or 0.0)
        header["vox_offset"] = 352
        # the bytes by hand: nibabel's writer would reset scl_slope/scl_inter and may rewrite pixdim
        raw = header.binaryblock + bytes(4) + data.tobytes(order="F")
        path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
        written = nib.load(str(path)).header
        assert int(written["qform_code"]) == qform_code and int(written["sform_code"]) == sform_code
        assert np.array_equal(written["pixdim"], header["pixdim"])
    return write


# -- the cases ---------------------------------------------------------------------------------------
def matrix_cases(all_48_layouts: bool | None = None) -> list[Case]:
    """Every case of the matrix (see module docstring); all 48 layouts when asked (or
    ``MRSEG_MATRIX_ALL_LAYOUTS=1``)."""
    if all_48_layouts is None:
        all_48_layouts = os.environ.get("MRSEG_MATRIX_ALL_LAYOUTS") == "1"
    gz = ".nii.gz"
    cases = [Case(f"mr-layout-{code.lower()}", "mr", "layout", f"axes permuted and flipped to {code} (3 mm)", gz,
                  oriented(code), five_folds=code in ("LPS", "ILA"))
             for code in (all_layouts() if all_48_layouts else COVERING_LAYOUTS + ("RAS",))]
    cases += [
        Case("ct-layout-ras", "ct", "layout", "CT as shipped (RAS, 3 mm)", gz, oriented("RAS"), five_folds=True),
        Case("ct-layout-lps", "ct", "layout", "CT reoriented to LPS", gz, oriented("LPS")),
        Case("ct-layout-sal", "ct", "layout", "CT with every axis moved (SAL)", gz, oriented("SAL")),
        # spacing
        Case("mr-spacing-aniso", "mr", "spacing", "resampled to 2.0 x 2.0 x 4.5 mm (x y z), axial", gz,
             resampled((2.0, 2.0, 4.5))),
        Case("mr-spacing-aniso-coronal", "mr", "spacing", "2.0 x 2.0 x 4.5 mm stored as coronal slices (LIP): "
             "array in-plane 2.0 x 4.5 mm", gz, resampled((2.0, 2.0, 4.5), "LIP")),
        Case("mr-spacing-aniso-sagittal", "mr", "spacing", "2.0 x 2.0 x 4.5 mm stored as sagittal slices (PIL)",
             gz, resampled((2.0, 2.0, 4.5), "PIL"), five_folds=True),
        Case("mr-spacing-aniso-strong", "mr", "spacing", "resampled to 1.0 x 1.0 x 6.0 mm (nnU-Net resamples "
             "z separately)", gz, resampled((1.0, 1.0, 6.0))),
        Case("mr-spacing-nonsquare-x2.4-y3.0", "mr", "spacing", "non-square pixels: columns 2.4 mm, rows 3.0 mm "
             "(x y), 3 mm slices", gz, resampled((2.4, 3.0, 3.0)), five_folds=True),
        Case("mr-spacing-nonsquare-x3.0-y2.4-ras", "mr", "spacing", "non-square pixels: columns 3.0 mm, rows "
             "2.4 mm, stored RAS", gz, resampled((3.0, 2.4, 3.0), "RAS")),
        Case("ct-spacing-nonsquare-x2.4-y3.0", "ct", "spacing", "CT with non-square pixels 2.4 x 3.0 mm", gz,
             resampled((2.4, 3.0, 3.0), "RAS")),
        Case("mr-spacing-coarse-multitile", "mr", "spacing", "header spacing 9 x 9 x 3 mm: 4 sliding-window "
             "tiles", gz, respaced((9.0, 9.0, 3.0)), five_folds=True),
        # oblique
        Case("mr-oblique-z5", "mr", "oblique", "direction turned 5 degrees about z", gz, rotated((0, 0, 5))),
        Case("mr-oblique-x15", "mr", "oblique", "direction turned 15 degrees about x", gz, rotated((15, 0, 0))),
        Case("mr-oblique-y30", "mr", "oblique", "direction turned 30 degrees about y", gz, rotated((0, 30, 0))),
        Case("mr-oblique-xyz", "mr", "oblique", "turned 10, 20, 25 degrees about x, y, z", gz,
             rotated((10, 20, 25)), five_folds=True),
        Case("mr-oblique-z30-ras", "mr", "oblique", "turned 30 degrees about z, then stored RAS", gz,
             rotated((0, 0, 30), "RAS")),
        # size
        Case("mr-size-odd", "mr", "size", "odd sizes 63 x 47 x 19", gz, cropped((63, 47, 19))),
        Case("mr-size-thin", "mr", "size", "5 slices (15 mm; the patch is 32 slices of 6 mm)", gz,
             cropped((64, 56, 5))),
        # storage
        Case("mr-dtype-uint16", "mr", "storage", "uint16 (values + 100)", gz, stored_as(sitk.sitkUInt16, 1, 100)),
        Case("mr-dtype-float32", "mr", "storage", "float32 (values x 0.731 + 5.3)", gz,
             stored_as(sitk.sitkFloat32, 0.731, 5.3)),
        Case("mr-dtype-float64", "mr", "storage", "float64 (values x 0.731 + 5.3)", gz,
             stored_as(sitk.sitkFloat64, 0.731, 5.3), five_folds=True),
        Case("mr-nifti-scl", "mr", "NIfTI header", "int16 with scl_slope 0.73, scl_inter 12.5", gz,
             nifti_header(slope=0.73, inter=12.5), five_folds=True),
        Case("mr-nifti-scl-uint16", "mr", "NIfTI header", "uint16 (values + 47) with scl_slope 2.0", gz,
             nifti_header(slope=2.0, dtype=np.uint16)),
        Case("mr-nifti-sform-only", "mr", "NIfTI header", "sform only (qform_code 0)", gz,
             nifti_header(qform="moved", qform_code=0)),
        Case("mr-nifti-qform-only", "mr", "NIfTI header", "qform only (sform_code 0)", gz,
             nifti_header(sform="moved", sform_code=0)),
        Case("mr-nifti-qs-scanner", "mr", "NIfTI header", "qform (code 1) and sform (code 1, scanner) disagree "
             "by 10 degrees and 7 mm", gz, nifti_header(sform="moved")),
        Case("mr-nifti-qs-aligned", "mr", "NIfTI header", "qform (code 1) and sform (code 2, aligned) disagree "
             "by 10 degrees and 7 mm", gz, nifti_header(sform="moved", sform_code=2)),
        Case("mr-nifti-qs-mni", "mr", "NIfTI header", "qform (code 1) and sform (code 4, MNI) disagree", gz,
             nifti_header(sform="moved", sform_code=4)),
        Case("mr-nifti-sform-sheared", "mr", "NIfTI header", "sform (code 1) sheared, qform (code 1) the scan's",
             gz, nifti_header(sform="sheared")),
        Case("mr-nifti-pixdim-differs", "mr", "NIfTI header", "pixdim 0.8 x the sform's column lengths "
             "(qform_code 0)", gz, nifti_header(qform_code=0, pixdim_scale=0.8)),
        Case("mr-nifti-no-transform", "mr", "NIfTI header", "neither qform nor sform (both codes 0)", gz,
             nifti_header(qform_code=0, sform_code=0)),
        Case("mr-nifti-qform-left-handed", "mr", "NIfTI header", "qform only, left-handed (stored RPS: qfac -1)",
             gz, lambda image, path: nifti_header(sform_code=0)(sitk.DICOMOrient(image, "RPS"), path)),
        Case("mr-nifti-scl-slope0", "mr", "NIfTI header", "scl_slope 0 (no scaling, by the standard), "
             "scl_inter 5", gz, nifti_header(slope=0.0, inter=5.0)),
        # formats
        Case("mr-format-nii", "mr", "format", "uncompressed .nii", ".nii", oriented("LPS")),
        Case("mr-format-mha", "mr", "format", "MetaImage .mha", ".mha", oriented("LPS")),
        Case("mr-format-nrrd", "mr", "format", "NRRD .nrrd", ".nrrd", oriented("LPS")),
        Case("mr-format-mha-oblique-ras", "mr", "format", ".mha, turned 20 degrees about z, stored RAS", ".mha",
             rotated((0, 0, 20), "RAS")),
        Case("mr-format-nrrd-float32-ras", "mr", "format", ".nrrd float32, stored RAS", ".nrrd",
             lambda image, path: oriented("RAS")(sitk.Cast(image, sitk.sitkFloat32), path)),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def write_cases(cases: list[Case], sources: dict[str, Path], folder: Path) -> dict[str, Path]:
    """Write every case under ``folder/<modality>/``; returns case name -> file."""
    crops = {name: cropped_source(path, name) for name, path in sources.items()}
    out = {}
    for case in cases:
        sub = folder / case.modality
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / case.file_name
        case.write(crops[case.source], path)
        out[case.name] = path
    return out


def write_demo_as_five_folds(demo: Path, folder: Path, relative_noise: float = 0.03) -> Path:
    """The demo model as MRSegmentator's weights are laid out: 5 folds, trainer
    ``nnUNetTrainerNoMirroring`` (no test-time mirroring). Fold 0 holds the demo weights; fold f > 0
    the same weights times ``1 + relative_noise * N(0, 1)`` (seed f), so the folds differ and their
    average is a real ensemble. Returns ``folder``."""
    import shutil

    import torch

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(demo / name, folder / name)
    checkpoint = torch.load(demo / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    for fold in range(5):
        generator = torch.Generator().manual_seed(fold)
        weights = {k: v if fold == 0 or not v.is_floating_point()
                   else v * (1 + relative_noise * torch.randn(v.shape, generator=generator, dtype=v.dtype))
                   for k, v in checkpoint["network_weights"].items()}
        (folder / f"fold_{fold}").mkdir(exist_ok=True)
        torch.save({**checkpoint, "network_weights": weights, "trainer_name": "nnUNetTrainerNoMirroring",
                    "inference_allowed_mirroring_axes": None}, folder / f"fold_{fold}" / "checkpoint_final.pth")
    return folder

"""Checks every image reader applies before and after decoding: sizes, dimensions, voxel values.

Shared by the NIfTI reader (nibabel), the SimpleITK reader (.mha, .nrrd) and the DICOM reader, so
that a bad file gets the same clear error whatever its format.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from mrseg_cohort.errors import BadScanError, ScanTooLargeError

if TYPE_CHECKING:
    from mrseg_cohort.config import LimitsConfig


MAX_MODEL_VOXELS = 300_000_000
"""Default ``limits.max_model_voxels``: the most voxels a scan may have on a model's grid. A UK
Biobank whole-body scan (224 x 174 x 370 voxels at 2.23 x 2.23 x 3 mm) is 333 x 259 x 740 = 64 M
voxels on a 1.5 mm grid, a NAKO one (320 x 260 x 316 at 1.4 x 1.4 x 3 mm) 46 M; each voxel costs
about 100 bytes in inference (41 float16 logits per fold, the image in float64 while it is resampled)."""


@dataclass(frozen=True)
class ReadLimits:
    """Bounds one input file must respect before it is read into memory.

    Attributes:
        max_file_mb: size of the stored (possibly compressed) file, MB (1e6 bytes).
        max_decompressed_mb: size of the decoded voxel data, MB.
        max_dim: largest number of voxels along any axis.
        min_dim: smallest number of voxels along any spatial axis (a 3-D image needs depth).
    """

    max_file_mb: float = 2000.0
    max_decompressed_mb: float = 4000.0
    max_dim: int = 2048
    min_dim: int = 2

    @classmethod
    def from_config(cls, limits: "LimitsConfig") -> "ReadLimits":
        """The bounds of a config's ``limits`` section."""
        return cls(limits.max_file_mb, limits.max_decompressed_mb, limits.max_dim)


def check_file_size(n_bytes: int, uri: str, limits: ReadLimits) -> None:
    """Raise :class:`ScanTooLargeError` for a stored file above ``limits.max_file_mb``."""
    if n_bytes > limits.max_file_mb * 1e6:
        raise ScanTooLargeError(f"file is {n_bytes / 1e6:.0f} MB, above the limit of "
                                f"{limits.max_file_mb:.0f} MB (limits.max_file_mb)", uri=uri)


def check_image_shape(shape: tuple[int, ...], uri: str, limits: ReadLimits) -> tuple[int, ...]:
    """``shape`` (index order x, y, z[, t, ...] as headers give it) if it is one 3-D volume within
    ``limits``; else :class:`BadScanError` / :class:`ScanTooLargeError` naming ``uri``."""
    spatial, extra = shape[:3], shape[3:]
    if any(d <= 0 for d in shape):
        raise BadScanError(f"header gives a zero-size or negative dimension {shape}", uri=uri)
    if len(spatial) < 3 or min(spatial) < limits.min_dim:
        raise BadScanError(f"image is not 3-D: shape {shape}; a whole-body scan needs x, y and z "
                           f"(at least {limits.min_dim} voxels each)", uri=uri)
    if any(d != 1 for d in extra):
        raise BadScanError(f"image is {len(shape)}-D with shape {shape}; expected one 3-D volume "
                           "(split 4-D series into one file per volume)", uri=uri)
    if max(spatial) > limits.max_dim:
        raise ScanTooLargeError(f"header dimensions {spatial} exceed the limit of {limits.max_dim} "
                                "voxels per axis (limits.max_dim)", uri=uri)
    return shape


def check_decoded_size(n_bytes: int, shape: tuple[int, ...], uri: str, limits: ReadLimits) -> None:
    """Raise :class:`ScanTooLargeError` when decoding would allocate more than the limit."""
    if n_bytes > limits.max_decompressed_mb * 1e6:
        raise ScanTooLargeError(f"image of shape {shape} holds {n_bytes / 1e6:.0f} MB of voxels, above "
                                f"the limit of {limits.max_decompressed_mb:.0f} MB "
                                f"(limits.max_decompressed_mb)", uri=uri)


def checked_voxels(array: np.ndarray, dtype: type, uri: str) -> np.ndarray:
    """``array`` as ``dtype``: a float image must be finite everywhere; an integer dtype means a
    label map (integer values within the dtype's range)."""
    if np.issubdtype(dtype, np.floating):
        array = np.asarray(array, dtype=dtype)
        bad = int(np.count_nonzero(~np.isfinite(array)))
        if bad:
            raise BadScanError(f"image has {bad} NaN or infinite voxels; fix or exclude the file", uri=uri)
        return array
    info = np.iinfo(dtype)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise BadScanError("label map holds non-integer values; expected integer labels", uri=uri)
    if array.size and (array.min() < info.min or array.max() > info.max):
        raise BadScanError(f"label values span {array.min()}..{array.max()}, outside "
                           f"{np.dtype(dtype).name} ({info.min}..{info.max})", uri=uri)
    return array.astype(dtype, copy=False)


def check_model_grid(model_shape: tuple[int, ...] | None, spacing_mm: tuple[float, ...],
                     model_spacing_mm: tuple[float, ...], max_voxels: int, model: str) -> None:
    """Raise :class:`ScanTooLargeError` when an image at ``spacing_mm`` would take more than
    ``max_voxels`` voxels on model ``model``'s grid (``model_shape``, None when it has no finite
    size); called before anything of that size is allocated."""
    voxels = math.prod(model_shape) if model_shape is not None else math.inf
    if voxels > max_voxels:
        size = "x".join(map(_count, model_shape)) + f" = {_count(voxels)}" if model_shape is not None \
            else "an unbounded number of"
        raise ScanTooLargeError(f"voxel spacing {_mm(spacing_mm)} mm puts the image on model {model}'s "
                                f"{_mm(model_spacing_mm)} mm grid as {size} voxels, above the limit of "
                                f"{max_voxels:.3g} (limits.max_model_voxels); check the file's voxel spacing "
                                "(pixdim), or raise the limit", stage="segment")


def _count(n: int) -> str:
    """``n`` as written in a message: exact up to a million, else three digits (``3.43e+19``)."""
    if n < 10**6:
        return str(n)
    return f"{n:.3g}" if n < 10**300 else f"about 1e+{len(str(n)) - 1}"


def _mm(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"

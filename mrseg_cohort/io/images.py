"""Which files are images, and one reader for all of them (NIfTI, MetaImage, NRRD).

The one definition of the image suffixes the tool reads: the nifti-folder layout, the QC report
and evaluation all ask here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mrseg_cohort.io.limits import ReadLimits

if TYPE_CHECKING:
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.io.storage import Store

NIFTI_SUFFIXES = (".nii.gz", ".nii")
SITK_SUFFIXES = (".mha", ".nrrd")
"""Single-file formats read through SimpleITK (:mod:`mrseg_cohort.io.sitk_image`; header and voxels in one object)."""
IMAGE_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
"""Every image file ending read as a scan (``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``)."""


def image_suffix(name: str) -> str | None:
    """The image suffix ``name`` ends with (case-insensitive), or None."""
    lower = name.lower()
    return next((s for s in IMAGE_SUFFIXES if lower.endswith(s)), None)


def image_stem(name: str) -> str:
    """``name`` without its image suffix (``case.nii.gz`` -> ``case``)."""
    suffix = image_suffix(name)
    return name[: -len(suffix)] if suffix else name


def read_image(store: Store, uri: str, limits: ReadLimits = ReadLimits(), dtype: type = np.float32) -> Volume:
    """Any supported image as a (z, y, x) Volume; an integer ``dtype`` reads a label map."""
    from mrseg_cohort.io.nifti import read_volume as read_nifti_volume  # here: listing files needs neither reader
    from mrseg_cohort.io.sitk_image import read_sitk_volume

    if image_suffix(uri) in SITK_SUFFIXES:
        return read_sitk_volume(store, uri, limits, dtype)
    return read_nifti_volume(store, uri, limits, dtype)


def read_label_image(store: Store, uri: str, limits: ReadLimits = ReadLimits()) -> Volume:
    """A label map of any supported format as uint8 (refuses non-integer values and values > 255)."""
    return read_image(store, uri, limits, np.uint8)

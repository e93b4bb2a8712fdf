"""MetaImage (.mha) and NRRD (.nrrd) images through SimpleITK, as :class:`Volume` (MRSegmentator
reads these as well as NIfTI).

SimpleITK reads local files only: the bytes (from any fsspec URI) go to a private temporary file.
The header is read first and checked against :class:`ReadLimits` before any voxel data is decoded.
SimpleITK's geometry is already LPS, and its arrays (z, y, x): no conversion is needed.
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
import SimpleITK as sitk

from mrseg_cohort.errors import BadScanError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.images import SITK_SUFFIXES
from mrseg_cohort.io.limits import ReadLimits, check_decoded_size, check_file_size, check_image_shape, checked_voxels
from mrseg_cohort.io.storage import Store


def read_sitk_volume(store: Store, uri: str, limits: ReadLimits = ReadLimits(), dtype: type = np.float32) -> Volume:
    """Read a 3-D ``.mha`` or ``.nrrd`` image from any URI as a (z, y, x) Volume.

    Raises:
        BadScanError: unreadable, not one 3-D scalar volume, or NaN/inf voxels (float ``dtype``).
        ScanTooLargeError: beyond ``limits`` (checked from the header, before decoding voxels).
    """
    suffix = next((s for s in SITK_SUFFIXES if uri.lower().endswith(s)), None)
    if suffix is None:
        raise BadScanError(f"not a {' or '.join(SITK_SUFFIXES)} file", uri=uri)
    check_file_size(store.size(uri), uri, limits)
    raw = store.read_bytes(uri)
    with tempfile.TemporaryDirectory(prefix="mrseg-sitk-") as folder:
        path = os.path.join(folder, "image" + suffix)
        with open(path, "wb") as f:
            f.write(raw)
        del raw
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError as err:
            raise BadScanError(f"not a readable {suffix} image: {_first_line(err)}", uri=uri) from err
        size = tuple(int(s) for s in reader.GetSize())
        check_image_shape(size, uri, limits)
        if reader.GetNumberOfComponents() != 1:
            raise BadScanError(f"image has {reader.GetNumberOfComponents()} components per voxel; expected "
                               "one scalar value per voxel", uri=uri)
        itemsize = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], reader.GetPixelID())).dtype.itemsize
        check_decoded_size(int(np.prod(size)) * itemsize, size, uri, limits)
        try:
            image = reader.Execute()
        except RuntimeError as err:
            raise BadScanError(f"voxel data of the {suffix} image cannot be read (truncated or corrupt): "
                               f"{_first_line(err)}", uri=uri) from err
    array = sitk.GetArrayFromImage(image)
    array = array.reshape(array.shape[-3:])  # a 4-D image with one time point: its 3-D volume
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(image.GetDimension(), -1)[:3, :3]
    grid = Grid(array.shape, tuple(image.GetSpacing()[:3])[::-1], tuple(image.GetOrigin()[:3]),
                tuple(direction.ravel()))
    return Volume(np.ascontiguousarray(checked_voxels(array, dtype, uri)), grid)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(err).__name__

"""Volumes as DICOM series in zip files (phantoms and tests); the inverse of :mod:`mrseg_cohort.io.dicom`.

Each (z, y, x) slice becomes one single-frame MR (or CT) Image Storage file, explicit VR little endian:
ImageOrientationPatient from the grid's x and y directions, ImagePositionPatient from the slice's
first voxel, PixelSpacing (y, x) and SliceThickness/SpacingBetweenSlices from the spacing. Voxels
must be integer-valued (after the rescale slope); they are stored as 16-bit unsigned with
RescaleIntercept = the minimum when it is negative, as scanners store CT. Equal inputs give equal
bytes (UIDs derive from ``uid_seed``; zip entries carry a fixed date).
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds

from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.storage import Store

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class SeriesHeader:
    """What a series says about itself besides geometry and pixels.

    Attributes:
        acquired_s: AcquisitionTime/SeriesTime as seconds since midnight.
        rescale_slope: stored value x slope + intercept = voxel value.
        uid_seed: entropy for the slices' SOPInstanceUIDs (same seed, same UIDs).
    """

    patient_id: str
    study_uid: str
    series_uid: str
    frame_uid: str
    description: str
    series_number: int
    acquired_s: float
    date: str = "20200101"
    modality: str = "MR"
    manufacturer: str = "SIEMENS"
    model_name: str = "Aera"
    field_strength_t: float = 1.5
    rescale_slope: float = 1.0
    uid_seed: str = ""


def new_uid(*parts: object) -> str:
    """A DICOM UID derived from ``parts`` (deterministic)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def encode_series(volume: Volume, header: SeriesHeader) -> list[tuple[str, bytes]]:
    """(member name ``<SOPInstanceUID>.dcm``, file bytes) per slice of ``volume``.

    Raises:
        ValueError: voxels not integer multiples of the rescale slope, or a range beyond 16 bits.
    """
    stored, intercept = _stored_values(volume.array, header.rescale_slope)
    grid = volume.grid
    direction = grid.direction_matrix
    orientation = [*direction[:, 0], *direction[:, 1]]
    sop_class = CT_IMAGE_STORAGE if header.modality == "CT" else MR_IMAGE_STORAGE
    ds = _series_dataset(header, sop_class, orientation, grid.spacing_mm)  # shared; per-slice fields below
    ds.RescaleIntercept = format_number_as_ds(float(intercept))
    ds.Rows, ds.Columns = grid.shape[1], grid.shape[2]
    out = []
    for k in range(grid.shape[0]):
        position = grid.zyx_to_world(np.array([k, 0.0, 0.0]))
        sop_uid = new_uid(header.uid_seed, header.series_uid, k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [format_number_as_ds(float(v)) for v in position]
        ds.SliceLocation = format_number_as_ds(float(position[2]))
        ds.PixelData = np.ascontiguousarray(stored[k]).astype("<u2").tobytes()
        sink = io.BytesIO()
        ds.save_as(sink, enforce_file_format=True)
        out.append((f"{sop_uid}.dcm", sink.getvalue()))
    return out


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    """A deflated zip of ``members`` in the given order, with fixed entry dates."""
    sink = io.BytesIO()
    with zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return sink.getvalue()


def write_series_zip(store: Store, uri: str, volume: Volume, header: SeriesHeader) -> None:
    """Publish ``volume`` as one DICOM series zipped at ``uri`` (atomic)."""
    store.write_bytes(uri, zip_bytes(encode_series(volume, header)))


def _stored_values(array: np.ndarray, slope: float) -> tuple[np.ndarray, float]:
    """Unsigned 16-bit stored values and the intercept: voxel = stored * slope + intercept."""
    if slope <= 0:
        raise ValueError(f"rescale_slope must be positive, not {slope}")
    lo = float(np.min(array)) if array.size else 0.0
    intercept = min(0.0, float(np.floor(lo)))
    stored = (np.asarray(array, dtype=np.float64) - intercept) / slope
    rounded = np.rint(stored)
    if not np.allclose(stored, rounded, atol=1e-3):
        raise ValueError(f"voxels must be integer multiples of the rescale slope {slope} to be stored losslessly")
    if rounded.size and rounded.max() > 65535:
        raise ValueError(f"voxel range {lo}..{float(np.max(array))} does not fit 16 bits with slope {slope}")
    return rounded.astype(np.uint16), intercept


def _series_dataset(header: SeriesHeader, sop_class: str, orientation: list[float],
                    spacing_zyx: tuple[float, float, float]) -> Dataset:
    """The elements every slice of the series shares."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.StudyInstanceUID, ds.SeriesInstanceUID = header.study_uid, header.series_uid
    ds.FrameOfReferenceUID = header.frame_uid
    ds.PatientID = header.patient_id
    ds.PatientName = header.patient_id
    ds.PatientPosition = "HFS"
    ds.Modality = header.modality
    ds.Manufacturer, ds.ManufacturerModelName = header.manufacturer, header.model_name
    if header.modality == "MR":
        ds.MagneticFieldStrength = format_number_as_ds(header.field_strength_t)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "DIXON", "NONE"]
    else:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesDescription = header.description
    ds.SeriesNumber, ds.AcquisitionNumber = header.series_number, 1
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = header.date
    ds.StudyTime = _tm(0.0)
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = _tm(header.acquired_s)
    ds.ImageOrientationPatient = [format_number_as_ds(float(v)) for v in orientation]
    ds.PixelSpacing = [format_number_as_ds(float(spacing_zyx[1])), format_number_as_ds(float(spacing_zyx[2]))]
    ds.SliceThickness = ds.SpacingBetweenSlices = format_number_as_ds(float(spacing_zyx[0]))
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope = format_number_as_ds(header.rescale_slope)
    ds.RescaleType = "HU" if header.modality == "CT" else "US"
    return ds


def _tm(seconds: float) -> str:
    """DICOM TM ``HHMMSS.ffffff`` for seconds since midnight."""
    seconds = seconds % 86400
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{int(h):02d}{int(m):02d}{s:09.6f}"

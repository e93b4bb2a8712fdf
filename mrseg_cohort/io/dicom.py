"""DICOM series out of zip files, as :class:`~mrseg_cohort.geometry.Volume` (UK Biobank field 20201).

A UK Biobank whole-body Dixon zip (``<eid>_20201_<instance>_0.zip``) holds the ``.dcm`` slices of
24 series: 6 stations x 4 contrasts, described ``Dixon_noBH_<c>`` or ``Dixon_BH_17s_<c>`` with
``<c>`` one of ``in``, ``opp``, ``F`` (fat), ``W`` (water).

Geometry: DICOM patient coordinates are LPS, as our :class:`~mrseg_cohort.geometry.Grid`. Per series,
index axis x runs along the rows (first three ImageOrientationPatient values), y along the columns
(last three), z along their cross product (the slice normal); slices are sorted by their position
along that normal, so the array is (z, y, x) = (slice, row, column) with
``spacing_mm = (slice spacing, PixelSpacing[0], PixelSpacing[1])`` and the first slice's
ImagePositionPatient as origin. Voxel values are the modality values (RescaleSlope/Intercept applied),
as float32: pydicom's ``apply_modality_lut(ds.pixel_array, ds)`` value for value. Uncompressed
little-endian slices (UK Biobank's) take a shorter path to the same values and strings
(:func:`_plain_slice`): pydicom's element parser without the datasets ``dcmread`` builds, header
numbers and strings read from their bytes, the stored integers straight from the PixelData bytes
with pydicom's correction of unused high bits, and the rescale applied once per series as pydicom
applies it per slice; anything else (compressed, big-endian, a Modality LUT Sequence, several
frames, a string outside printable ASCII) goes through ``dcmread`` (:func:`_pydicom_slice`).

The zip is read once, as a stream through :meth:`Store.open_read` (members in file order); sizes
and dimensions are checked against :class:`ReadLimits` before anything is decompressed or allocated.
"""

from __future__ import annotations

import io
import logging
import math
import zipfile
import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pydicom
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.filereader import data_element_generator
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pydicom.values import converters

from mrseg_cohort.errors import BadScanError, ScanTooLargeError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.limits import ReadLimits
from mrseg_cohort.io.storage import Store

log = logging.getLogger(__name__)

UKBB_CONTRASTS: dict[str, str] = {"in": "in", "opp": "opp", "F": "fat", "W": "water"}
"""SeriesDescription suffix (after the last ``_``) -> our contrast name."""
UKBB_STATIONS = 6
POSITION_TOLERANCE_MM = 0.01
"""Absolute tolerance of slice positions (DICOM decimal strings carry about 16 digits)."""
_REQUIRED = ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing",
             "Rows", "Columns")
_NATIVE_SYNTAXES = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


@dataclass(frozen=True)
class DicomSeries:
    """One series of a zip, assembled into a volume.

    Attributes:
        uid: SeriesInstanceUID.
        description: SeriesDescription ("" when absent).
        acquired: (date, seconds since midnight) of the earliest AcquisitionTime (else SeriesTime)
            of its slices; ("", nan) when neither is present. Later acquisitions compare greater.
        members: zip member names of its slices, in slice order.
        volume: the slices as a (z, y, x) float32 volume on an LPS grid.
    """

    uid: str
    description: str
    acquired: tuple[str, float]
    members: tuple[str, ...]
    volume: Volume

    @property
    def z_center_mm(self) -> float:
        """World S coordinate (LPS z, mm) of the volume's centre."""
        return float(self.volume.grid.corners_world()[:, 2].mean())

    @property
    def z_extent_mm(self) -> tuple[float, float]:
        z = self.volume.grid.corners_world()[:, 2]
        return float(z.min()), float(z.max())


@dataclass
class _Slice:
    member: str
    position: np.ndarray      # ImagePositionPatient, LPS mm
    orientation: np.ndarray   # ImageOrientationPatient, 6 direction cosines
    spacing: tuple[float, float]  # PixelSpacing: between rows, between columns (mm)
    pixels: np.ndarray        # (rows, columns): stored integers (see rescale), or float32 modality values
    rescale: tuple[float, float] | None  # (RescaleSlope, RescaleIntercept) still to apply to pixels
    acquired: tuple[str, float]
    description: str


def read_zip_series(store: Store, uri: str, limits: ReadLimits = ReadLimits()) -> list[DicomSeries]:
    """Every DICOM series in the zip at ``uri``, members read once in file order.

    Members not ending in ``.dcm`` (folders, UK Biobank's ``manifest.cvs``) are skipped.

    Raises:
        BadScanError: not a zip, a corrupt or truncated member, a ``.dcm`` member that is not DICOM or
            lacks geometry, a series whose slices disagree (size, orientation) or are unevenly spaced;
            the message names the member or series.
        ScanTooLargeError: file size, decompressed size or dimensions beyond ``limits``.
        FileNotFoundError / PermissionError / StorageError: from storage, naming ``uri``.
    """
    size = store.size(uri)
    if size > limits.max_file_mb * 1e6:
        raise ScanTooLargeError(f"zip is {size / 1e6:.0f} MB, above the limit of {limits.max_file_mb:.0f} MB "
                                "(limits.max_file_mb)", stage="read", uri=uri)
    by_series: dict[str, list[_Slice]] = {}
    with store.open_read(uri) as raw:
        try:
            archive = zipfile.ZipFile(raw)
        except (zipfile.BadZipFile, EOFError, ValueError) as err:
            raise BadScanError(f"not a readable zip file ({err}); the file may be truncated: re-download it",
                               stage="read", uri=uri) from err
        with archive:
            members = sorted((i for i in archive.infolist() if not i.is_dir()), key=lambda i: i.header_offset)
            dicoms = []
            for info in members:
                if info.filename.lower().endswith(".dcm"):
                    dicoms.append(info)
                else:
                    log.debug("skipping zip member %s of %s (not .dcm)", info.filename, uri)
            total = sum(i.file_size for i in dicoms)
            if total > limits.max_decompressed_mb * 1e6:
                raise ScanTooLargeError(f"zip members hold {total / 1e6:.0f} MB uncompressed, above the limit of "
                                        f"{limits.max_decompressed_mb:.0f} MB (limits.max_decompressed_mb)",
                                        stage="read", uri=uri)
            for info in dicoms:
                uid, one = _read_slice(archive, info, uri, limits)
                by_series.setdefault(uid, []).append(one)
    if not by_series:
        raise BadScanError("zip holds no .dcm files", stage="read", uri=uri)
    out = []
    for uid in list(by_series):  # pop as we go: slices and stacked volume are not all held twice
        out.append(_assemble(uid, by_series.pop(uid), uri, limits))
    return out


def read_ukbb_zip(store: Store, uri: str, limits: ReadLimits = ReadLimits(),
                  n_stations: int = UKBB_STATIONS) -> dict[str, list[Volume]]:
    """The Dixon stations of a UK Biobank field-20201 zip: contrast -> station volumes.

    Contrasts are ``in``, ``opp``, ``fat``, ``water``; stations are ordered by position, most superior
    first. Two series of one contrast at the same position (a repeated station): the later
    acquisition is kept and the other logged. Series of other descriptions are ignored (logged).

    Raises:
        BadScanError: fewer or more than ``n_stations`` stations in some contrast (the message names
            the contrast and the position of the missing station), or anything :func:`read_zip_series`
            raises.
    """
    series = read_zip_series(store, uri, limits)
    by_contrast: dict[str, list[DicomSeries]] = {c: [] for c in UKBB_CONTRASTS.values()}
    for s in series:
        contrast = ukbb_contrast(s.description)
        if contrast is None:
            log.info("%s: ignoring series %r (%s): not a Dixon in/opp/F/W series", uri, s.description, s.uid)
            continue
        by_contrast[contrast].append(s)
    stations = {c: _drop_repeats(c, found, uri) for c, found in by_contrast.items()}
    _check_complete(stations, n_stations, uri)
    return {c: [s.volume for s in found] for c, found in stations.items()}


def ukbb_contrast(description: str) -> str | None:
    """Our contrast name for a UK Biobank SeriesDescription (``Dixon_BH_17s_W`` -> ``water``), or None."""
    suffix = description.strip().rsplit("_", 1)[-1] if "_" in description else ""
    return UKBB_CONTRASTS.get(suffix)


# -- one member -------------------------------------------------------------------------------------
def _read_slice(archive: zipfile.ZipFile, info: zipfile.ZipInfo, uri: str,
                limits: ReadLimits) -> tuple[str, _Slice]:
    """(SeriesInstanceUID, slice) of one member: through :func:`_plain_slice` when the member is a
    plain slice, else through pydicom's ``dcmread`` (:func:`_pydicom_slice`); the two give the same
    values and errors wherever the first answers."""
    name = info.filename
    try:
        data = archive.read(info)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as err:
        raise BadScanError(f"zip member {name} is corrupt or truncated ({err}); re-download the zip",
                           stage="read", uri=uri) from err
    except RuntimeError as err:  # zipfile's word for an encrypted member (no password given)
        raise BadScanError(f"zip member {name} cannot be read: {err}; give the zip unencrypted",
                           stage="read", uri=uri) from err
    parsed = _part10_elements(data)
    if parsed is not None:
        plain = _plain_slice(parsed, name, uri, limits)
        if plain is not None:
            return plain
    return _pydicom_slice(data, name, uri, limits)


def _pydicom_slice(data: bytes, name: str, uri: str, limits: ReadLimits) -> tuple[str, _Slice]:
    """(SeriesInstanceUID, slice) of one member's bytes, read with ``dcmread``; the header numbers
    and pixels of a plain slice still from their bytes (:func:`_plain_header`)."""
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as err:  # pydicom raises many types for files that are not DICOM
        raise BadScanError(f"zip member {name} is not a DICOM file ({type(err).__name__}: {err})",
                           stage="read", uri=uri) from err
    try:
        return _dataset_slice(ds, name, uri, limits)
    except (BadScanError, ScanTooLargeError):
        raise
    except Exception as err:  # an element pydicom cannot convert (an unknown VR, a malformed value)
        raise BadScanError(f"zip member {name}: unreadable header ({type(err).__name__}: {err})",
                           stage="read", uri=uri) from err


def _dataset_slice(ds: pydicom.Dataset, name: str, uri: str, limits: ReadLimits) -> tuple[str, _Slice]:
    missing = [k for k in _REQUIRED if k not in ds]
    if missing or "PixelData" not in ds:
        raise BadScanError(f"zip member {name} lacks {missing or ['PixelData']}; a station slice needs "
                           "position, orientation, spacing and pixels", stage="read", uri=uri)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    header = _plain_header(_dataset_items(ds), syntax)
    rows, cols = (header.rows, header.cols) if header is not None else (int(ds.Rows), int(ds.Columns))
    _check_slice_size(rows, cols, name, uri, limits)
    try:
        values = _stored_values(ds.PixelData, header) if header is not None else None
        if values is not None:  # the plain case, its numbers read from their bytes
            rescale, position, orientation, spacing = header.rescale, header.position, header.orientation, header.spacing
        else:  # anything else (or too few pixel bytes, which pydicom words): pydicom decodes, converts, rescales
            pixels = ds.pixel_array
            if pixels.shape != (rows, cols):
                raise ValueError(f"pixel array of shape {pixels.shape}, expected ({rows}, {cols}) (one frame)")
            values, rescale = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float32), None
            position = np.array([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
            orientation = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
            spacing = tuple(float(v) for v in ds.PixelSpacing)
        if position.shape != (3,) or orientation.shape != (6,) or len(spacing) != 2:
            raise ValueError("ImagePositionPatient needs 3 values, ImageOrientationPatient 6, PixelSpacing 2")
    except Exception as err:  # pydicom/numpy raise many types for malformed pixel data or geometry
        raise BadScanError(f"zip member {name}: unreadable pixels or geometry ({type(err).__name__}: {err})",
                           stage="read", uri=uri) from err
    if rescale is None and not np.all(np.isfinite(values)):
        raise BadScanError(f"zip member {name} has NaN or infinite voxels", stage="read", uri=uri)
    uid, description = str(ds.SeriesInstanceUID), str(ds.get("SeriesDescription", ""))
    acquired = _acquired(lambda keyword: str(ds.get(keyword, "") or ""))
    return uid, _Slice(name, position, orientation, spacing, values, rescale, acquired, description)


def _check_slice_size(rows: int, cols: int, name: str, uri: str, limits: ReadLimits) -> None:
    if max(rows, cols) > limits.max_dim:
        raise ScanTooLargeError(f"zip member {name} is {rows} x {cols} pixels, above the limit of "
                                f"{limits.max_dim} (limits.max_dim)", stage="read", uri=uri)


# -- the plain slice: UK Biobank's, read from its elements' bytes --------------------------------------
_ElementOf = Callable[[int], "RawDataElement | pydicom.DataElement | None"]
"""A slice's element of a tag (an int), None when the slice lacks it."""

_TAGS = {keyword: tag_for_keyword(keyword) for keyword in (
    *_REQUIRED, "PixelData", "NumberOfFrames", "ModalityLUTSequence", "PhotometricInterpretation",
    "SeriesDescription", "AcquisitionDate", "AcquisitionTime", "SeriesDate",
    "SeriesTime", "ContentDate", "ContentTime")}
_VRS = {keyword: dictionary_VR(tag) for keyword, tag in _TAGS.items()}
_TRANSFER_SYNTAX = 0x00020010
_CHARACTER_SET = 0x00080005
_META_GROUP_LENGTH = 0x00020000
_DICOM_ENCODINGS = frozenset(python_encoding.values()) | {default_encoding}
"""Python's names of the DICOM character sets (pydicom also takes any codec's name, e.g. cp037)."""
_UNDEFINED_LENGTH = 0xFFFFFFFF
class _NotPlain(Exception):
    """An element :func:`_plain_slice` leaves to pydicom."""


def _part10_elements(data: bytes) -> _Part10 | None:
    """The transfer syntax UID and raw elements by tag of a DICOM Part 10 file in a native little-endian
    syntax, from pydicom's own element parser (:func:`pydicom.filereader.data_element_generator`, the
    one ``dcmread`` runs) without the datasets ``dcmread`` builds around it (two thirds of its time
    on UK Biobank's slices), converting what ``dcmread`` converts while it reads (the transfer syntax,
    the character set). None for anything ``dcmread`` would read another way or refuse: no
    preamble, a file meta group not in Explicit VR Little Endian or naming another syntax, a command
    set, a dataset whose first element contradicts the syntax's VR encoding (pydicom then switches),
    an element cut short, any parser error. The caller then reads the file with ``dcmread``."""
    if len(data) < 138 or data[128:132] != b"DICM":
        return None
    fp = io.BytesIO(data)
    fp.seek(132)
    try:
        meta = {e.tag: e for e in data_element_generator(fp, False, True, stop_when=_after_file_meta)}
        syntax_element = meta.get(_TRANSFER_SYNTAX)
        if syntax_element is None or syntax_element.VR != "UI" \
                or any(not isinstance(e, RawDataElement) or e.VR not in converters for e in meta.values()):
            return None
        for tag in {next(iter(meta)), _META_GROUP_LENGTH} & meta.keys():  # dcmread converts these two
            convert_raw_data_element(meta[tag])
        syntax = str(convert_raw_data_element(syntax_element).value)
        if syntax not in _NATIVE_SYNTAXES:
            return None
        implicit = syntax == ImplicitVRLittleEndian
        head = data[fp.tell():fp.tell() + 6]
        if len(head) < 6 or head[:2] == b"\x00\x00" or (not (0x40 < head[4] < 0x5B and 0x40 < head[5] < 0x5B)) != implicit:
            return None
        elements = {e.tag: e for e in data_element_generator(fp, implicit, True)}
        encodings = [default_encoding]
        if _CHARACTER_SET in elements:  # converted as dcmread converts it while it reads (it may refuse it)
            encodings = convert_encodings(convert_raw_data_element(elements[_CHARACTER_SET]).value)
    except Exception:  # noqa: BLE001 - malformed bytes: dcmread reads them again and words the error
        return None
    if any(isinstance(e, RawDataElement) and e.length not in (_UNDEFINED_LENGTH, len(e.value or b""))
           for e in elements.values()):
        return None
    return _Part10(syntax, elements, all(e in _DICOM_ENCODINGS for e in encodings))


@dataclass(frozen=True)
class _Part10:
    syntax: str                              # transfer syntax UID
    elements: dict[int, RawDataElement]      # the dataset's elements by tag, unconverted
    standard_text: bool                      # text in a DICOM character set (printable ASCII reads as ASCII)


def _after_file_meta(tag: int, vr: str | None, length: int) -> bool:
    return tag >> 16 != 2


def _plain_slice(part10: _Part10, name: str, uri: str, limits: ReadLimits) -> tuple[str, _Slice] | None:
    """(SeriesInstanceUID, slice) of a plain slice read from its elements' bytes, every value as
    :func:`_pydicom_slice` gives it; None for any other (or one it would refuse: it words why)."""
    element = part10.elements.get
    if any(element(_TAGS[keyword]) is None for keyword in (*_REQUIRED, "PixelData")):
        return None
    pixel_data = element(_TAGS["PixelData"])
    if not isinstance(pixel_data, RawDataElement) or pixel_data.VR not in (None, "OB", "OW") \
            or not isinstance(pixel_data.value, bytes):
        return None  # another VR, undefined length or empty: dcmread's path decides
    header = _plain_header(element, part10.syntax)
    if header is None:
        return None
    _check_slice_size(header.rows, header.cols, name, uri, limits)
    values = _stored_values(pixel_data.value, header)
    if values is None:
        return None
    try:
        uid = _plain_text(element(_TAGS["SeriesInstanceUID"]), "UI")
        if not part10.standard_text:
            raise _NotPlain  # a Python codec named as character set: pydicom decodes with it
        description = _plain_text(element(_TAGS["SeriesDescription"]), "LO")
        acquired = _acquired(lambda keyword: _plain_text(element(_TAGS[keyword]), _VRS[keyword]))
    except _NotPlain:
        return None
    return uid, _Slice(name, header.position, header.orientation, header.spacing, values, header.rescale, acquired,
                       description)


def _plain_text(raw: RawDataElement | None, vr: str) -> str:
    """A string element's value as pydicom gives it (trailing spaces and NULs removed; "" when the
    slice lacks it), read from its bytes when they are printable ASCII without a backslash (one
    value); :class:`_NotPlain` otherwise (another character, several values, an unexpected VR).
    Printable ASCII bytes decode as ASCII in every DICOM character set (no escape code switches
    sets); :func:`_plain_slice` reads a description so only in those."""
    if raw is None:
        return ""
    if not isinstance(raw, RawDataElement) or raw.VR not in (None, vr):
        raise _NotPlain
    value = (raw.value or b"").rstrip(b" \x00")
    if not value.isascii() or b"\\" in value or value[:1] == b" " or not value.decode("ascii").isprintable():
        raise _NotPlain  # (a leading space: pydicom strips it off a UID, keeps it on a description)
    return value.decode("ascii")


@dataclass(frozen=True)
class _PlainHeader:
    """The numbers of an uncompressed little-endian single-frame grey slice (see :func:`_plain_header`)."""

    rows: int
    cols: int
    bits: int                     # BitsAllocated: 8, 16 or 32
    stored: int                   # BitsStored, 0 < stored <= bits
    signed: bool                  # PixelRepresentation 1
    position: np.ndarray          # ImagePositionPatient (3)
    orientation: np.ndarray       # ImageOrientationPatient (6)
    spacing: tuple[float, ...]    # PixelSpacing
    rescale: tuple[float, float] | None  # (RescaleSlope, RescaleIntercept) when both are present


_DS = {"ImagePositionPatient": 0x00200032, "ImageOrientationPatient": 0x00200037, "PixelSpacing": 0x00280030,
       "RescaleSlope": 0x00281053, "RescaleIntercept": 0x00281052}
_US = {"Rows": 0x00280010, "Columns": 0x00280011, "SamplesPerPixel": 0x00280002, "BitsAllocated": 0x00280100,
       "BitsStored": 0x00280101, "PixelRepresentation": 0x00280103}
_ABSENT = object()


def _dataset_items(ds: pydicom.Dataset) -> _ElementOf:
    """``ds``'s elements by tag, unconverted (as :func:`_part10_elements` gives them)."""
    def element(tag: int):
        try:
            return ds.get_item(tag)
        except KeyError:
            return None
    return element


def _plain_header(element: _ElementOf, syntax: str | None) -> _PlainHeader | None:
    """The header numbers of a slice that :func:`_stored_values` can decode, read from the elements'
    raw bytes as pydicom converts them (a decimal string's values are ``float`` of each of its
    backslash-separated parts, as ``DSfloat``; an unsigned short the two little-endian bytes), at a
    fraction of pydicom's per-element cost; None for any other slice, or any element not plainly
    encoded (another VR, an empty or odd value, one already converted): the caller then asks pydicom
    for everything, so both paths give the same values wherever this one answers.

    The plain case is pydicom's native decoder's: Explicit or Implicit VR Little Endian, one frame,
    one sample per pixel, MONOCHROME1/2, 8, 16 or 32 bits allocated, no Modality LUT Sequence."""
    if syntax not in _NATIVE_SYNTAXES or element(_TAGS["NumberOfFrames"]) is not None \
            or element(_TAGS["ModalityLUTSequence"]) is not None:
        return None
    try:
        if _plain_text(element(_TAGS["PhotometricInterpretation"]), "CS") not in ("MONOCHROME1", "MONOCHROME2"):
            return None
    except _NotPlain:
        return None
    us = {k: _raw_number(element(tag), "US") for k, tag in _US.items()}
    ds_values = {k: _raw_number(element(tag), "DS") for k, tag in _DS.items()}
    if any(v is None for v in (*us.values(), *ds_values.values())):
        return None
    samples = us["SamplesPerPixel"] or 1  # absent or 0: one sample, as the path before read it
    bits, representation = us["BitsAllocated"], us["PixelRepresentation"]
    stored = us["BitsStored"] if us["BitsStored"] not in (_ABSENT, 0) else bits  # absent or 0: BitsAllocated
    if any(us[k] is _ABSENT for k in ("Rows", "Columns", "BitsAllocated", "PixelRepresentation")) \
            or us["Rows"] == 0 or us["Columns"] == 0 \
            or samples not in (_ABSENT, 1) or bits not in (8, 16, 32) or representation not in (0, 1) \
            or not 0 < stored <= bits \
            or any(ds_values[k] is _ABSENT for k in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")):
        return None
    slope, intercept = ds_values["RescaleSlope"], ds_values["RescaleIntercept"]
    rescale = None
    if slope is not _ABSENT and intercept is not _ABSENT:
        if len(slope) != 1 or len(intercept) != 1:
            return None
        rescale = (slope[0], intercept[0])
    position, orientation = (np.array(ds_values[k], dtype=np.float64)
                             for k in ("ImagePositionPatient", "ImageOrientationPatient"))
    if position.shape != (3,) or orientation.shape != (6,) or len(ds_values["PixelSpacing"]) != 2:
        return None  # pydicom's path words it
    return _PlainHeader(us["Rows"], us["Columns"], bits, stored, bool(representation), position, orientation,
                        tuple(ds_values["PixelSpacing"]), rescale)


def _raw_number(raw: RawDataElement | None, vr: str):
    """An element's value from its raw bytes: an int (US, one value) or a list of floats (DS);
    ``_ABSENT`` when the slice lacks it; None when it is not plainly encoded (see :func:`_plain_header`)."""
    if raw is None:
        return _ABSENT
    if not isinstance(raw, RawDataElement) or raw.VR not in (None, vr) or not raw.is_little_endian \
            or not raw.value:
        return None
    if vr == "US":
        return int.from_bytes(raw.value, "little") if len(raw.value) == 2 else None
    values = []
    for part in raw.value.decode("latin-1").rstrip(" \x00").split("\\"):
        try:
            values.append(float(part))  # DSfloat's value: float() of the part, spaces around it ignored
        except ValueError:  # an empty or malformed part: pydicom's conversion decides
            return None
    return values


def _stored_values(pixel_data: bytes, header: _PlainHeader) -> np.ndarray | None:
    """The stored integers of a plain slice (:func:`_plain_header`) as pydicom's ``pixel_array``
    gives them, from its PixelData bytes, without pydicom's per-slice decoder set-up (its rescale,
    ``header.rescale``, is applied per series); None when PixelData holds another number of bytes than
    one frame's (and a pad byte): too few, or more (another frame, or Rows, Columns or BitsAllocated
    that do not describe it), where pydicom words the error.

    pydicom's native decoder reads ``rows * cols`` values of BitsAllocated bits (little-endian,
    signed per PixelRepresentation) and, when BitsStored < BitsAllocated, shifts each value left and
    back right by the unused bits (clearing them, or extending the sign): done here alike."""
    dtype = np.dtype(f"<{'i' if header.signed else 'u'}{header.bits // 8}")
    n = header.rows * header.cols
    if len(pixel_data) not in (n * dtype.itemsize, n * dtype.itemsize + 1):  # (+ the pad to even length)
        return None
    values = np.frombuffer(pixel_data, dtype=dtype, count=n).reshape(header.rows, header.cols)
    if header.stored < header.bits:
        shift = header.bits - header.stored
        values = np.right_shift(np.left_shift(values, shift), shift)
    return values


_ACQUISITION_KEYS = (("AcquisitionDate", "AcquisitionTime"), ("SeriesDate", "SeriesTime"),
                     ("ContentDate", "ContentTime"))


def _acquired(text: Callable[[str], str]) -> tuple[str, float]:
    """(date, seconds since midnight) of the first of AcquisitionTime, SeriesTime, ContentTime a
    slice has, with its date; ("", nan) when none. ``text``: an element's value by keyword, ""
    when absent."""
    for date_key, time_key in _ACQUISITION_KEYS:
        value = text(time_key).strip()
        if value:
            return text(date_key), _seconds(value)
    return "", float("nan")


def _seconds(tm: str) -> float:
    """DICOM TM ``HHMMSS.ffffff`` (or ``HH:MM:SS``) -> seconds since midnight; NaN when unparsable."""
    tm = tm.replace(":", "")
    try:
        whole, _, frac = tm.partition(".")
        h, m, s = int(whole[0:2]), int(whole[2:4] or 0), int(whole[4:6] or 0)
        return h * 3600 + m * 60 + s + (float("0." + frac) if frac else 0.0)
    except ValueError:
        return float("nan")


# -- one series -------------------------------------------------------------------------------------
def _assemble(uid: str, slices: list[_Slice], uri: str, limits: ReadLimits) -> DicomSeries:
    """Sort the slices of one series along their normal and stack them on one grid."""
    first = slices[0]
    what = f"series {first.description or uid!r}"
    for s in slices[1:]:
        if s.pixels.shape != first.pixels.shape:
            raise BadScanError(f"{what}: member {s.member} is {s.pixels.shape} pixels, {first.member} is "
                               f"{first.pixels.shape}; one series needs one slice size", stage="read", uri=uri)
    unusable = next((s for s in slices if not all(v > 0 and math.isfinite(v) for v in s.spacing)), None)
    if unusable is not None:  # (before comparing members: NaN equals nothing, not even itself)
        raise BadScanError(f"{what}: member {unusable.member} has PixelSpacing {unusable.spacing}, not positive "
                           "and finite", stage="read", uri=uri)
    unoriented = next((s for s in slices if not np.all(np.isfinite(s.orientation))), None)
    if unoriented is not None:
        raise BadScanError(f"{what}: member {unoriented.member} has ImageOrientationPatient "
                           f"({', '.join(map(str, unoriented.orientation))}), not finite", stage="read", uri=uri)
    others = slices[1:]  # np.allclose(other, first, atol=1e-4) for all at once
    differ = ~np.isclose(np.reshape([s.orientation for s in others], (-1, 6)), first.orientation,
                         atol=1e-4).all(axis=1)
    if differ.any():
        raise BadScanError(f"{what}: member {others[int(np.argmax(differ))].member} has another "
                           f"ImageOrientationPatient than {first.member}", stage="read", uri=uri)
    differ = ~np.isclose(np.reshape([s.spacing for s in others], (-1, 2)), first.spacing, atol=1e-4).all(axis=1)
    if differ.any():
        other = others[int(np.argmax(differ))]
        raise BadScanError(f"{what}: member {other.member} has PixelSpacing {other.spacing}, {first.member} "
                           f"{first.spacing}", stage="read", uri=uri)
    unplaced = next((s for s in slices if not np.all(np.isfinite(s.position))), None)
    if unplaced is not None:
        raise BadScanError(f"{what}: member {unplaced.member} has ImagePositionPatient "
                           f"({', '.join(map(str, unplaced.position))}), not finite", stage="read", uri=uri)
    if len(slices) < limits.min_dim or len(slices) > limits.max_dim:
        raise (BadScanError if len(slices) < limits.min_dim else ScanTooLargeError)(
            f"{what} has {len(slices)} slices; a station needs {limits.min_dim} to {limits.max_dim} "
            "(limits.min_dim, limits.max_dim)", stage="read", uri=uri)
    row, col = first.orientation[:3], first.orientation[3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise BadScanError(f"{what}: ImageOrientationPatient {tuple(first.orientation)} is not two orthogonal "
                           "unit vectors", stage="read", uri=uri)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)
    slices = sorted(slices, key=lambda s: float(s.position @ normal))
    along = np.array([s.position @ normal for s in slices])
    steps = np.diff(along)
    dz = float(np.median(steps))
    tolerance = POSITION_TOLERANCE_MM + 1e-3 * abs(dz)
    if dz <= tolerance:
        k = int(np.argmin(steps))
        raise BadScanError(f"{what}: members {slices[k].member} and {slices[k + 1].member} lie at the same "
                           "position; one series must hold one volume", stage="read", uri=uri)
    bad = np.flatnonzero(np.abs(steps - dz) > tolerance)
    if bad.size:
        k = int(bad[0])
        raise BadScanError(f"{what}: slice spacing varies ({steps.min():.3f} to {steps.max():.3f} mm, median "
                           f"{dz:.3f} mm); gap of {steps[k]:.3f} mm between members {slices[k].member} and "
                           f"{slices[k + 1].member} (a missing or extra slice)", stage="read", uri=uri)
    offsets = np.array([s.position - slices[0].position for s in slices]) - np.outer(along - along[0], normal)
    if np.abs(offsets).max() > POSITION_TOLERANCE_MM + 1e-3 * abs(dz) * len(slices):
        raise BadScanError(f"{what}: slice positions do not lie on a line along the slice normal (sheared or "
                           "tilted stack); not a regular grid", stage="read", uri=uri)
    array = _modality_values(slices, what, uri)
    rows, cols = array.shape[1:]
    direction = np.column_stack([row, col, normal])
    grid = Grid((len(slices), rows, cols), (dz, first.spacing[0], first.spacing[1]),
                tuple(slices[0].position), tuple(direction.ravel()))
    acquired = min((s.acquired for s in slices if not math.isnan(s.acquired[1])), default=("", float("nan")))
    return DicomSeries(uid, first.description, acquired, tuple(s.member for s in slices), Volume(array, grid))


def _modality_values(slices: list[_Slice], what: str, uri: str) -> np.ndarray:
    """(z, y, x) float32 modality values of the sorted slices: stored values rescaled as pydicom's
    ``apply_modality_lut`` does (``float64(stored) * slope``, then ``+ intercept``), at once for a
    series whose slices share one rescale."""
    rows, cols = slices[0].pixels.shape
    array = np.empty((len(slices), rows, cols), dtype=np.float32)
    rescales = {s.rescale for s in slices}
    dtypes = {s.pixels.dtype for s in slices}
    if len(rescales) == 1 and None not in rescales and len(dtypes) == 1 \
            and _exact_in_float32(dtypes.pop(), *next(iter(rescales))):
        (slope, intercept), = rescales  # every value an integer below 2**24: float32 arithmetic is exact
        for k, s in enumerate(slices):
            array[k] = s.pixels
        if slope != 1:
            array *= np.float32(slope)
        array += np.float32(intercept)  # always, as pydicom: -0.0 (a zero times a negative slope) + 0 is +0.0
    elif len(rescales) == 1 and None not in rescales:
        (slope, intercept), = rescales
        scaled = np.stack([s.pixels for s in slices]).astype(np.float64) * slope
        scaled += intercept
        array[...] = scaled
    else:
        for k, s in enumerate(slices):
            if s.rescale is None:
                array[k] = s.pixels
            else:
                scaled = s.pixels.astype(np.float64) * s.rescale[0]
                scaled += s.rescale[1]
                array[k] = scaled
    finite = np.isfinite(array).all(axis=(1, 2))
    if not finite.all():
        raise BadScanError(f"{what}: zip member {slices[int(np.argmin(finite))].member} has NaN or infinite voxels",
                           stage="read", uri=uri)
    return array


def _exact_in_float32(dtype: np.dtype, slope: float, intercept: float) -> bool:
    """Whether ``stored * slope + intercept`` is an integer of magnitude at most 2**24 for every
    value of integer ``dtype``: then float32 holds each step exactly, and the float32 result equals
    pydicom's float64 one cast to float32 (UK Biobank's slope 1, intercept 0 on 12 bits)."""
    if dtype.kind not in "iu" or not (float(slope).is_integer() and float(intercept).is_integer()):
        return False
    info = np.iinfo(dtype)
    largest = max(abs(int(info.min)), int(info.max))
    return largest * abs(slope) + abs(intercept) <= 2 ** 24 and largest * abs(slope) <= 2 ** 24


# -- UK Biobank stations ----------------------------------------------------------------------------
def _same_station(a: DicomSeries, b: DicomSeries) -> bool:
    """Series that cover (mostly) the same z range: their overlap exceeds half the shorter one."""
    (a0, a1), (b0, b1) = a.z_extent_mm, b.z_extent_mm
    overlap = min(a1, b1) - max(a0, b0)
    return overlap > 0.5 * min(a1 - a0, b1 - b0)


def _drop_repeats(contrast: str, found: list[DicomSeries], uri: str) -> list[DicomSeries]:
    """One series per station position (the latest acquisition), most superior first."""
    kept: list[DicomSeries] = []
    for s in sorted(found, key=lambda s: _acquisition_order(s), reverse=True):  # latest first
        twin = next((k for k in kept if _same_station(k, s)), None)
        if twin is None:
            kept.append(s)
        else:
            log.warning("%s: contrast %s has two series at z=%.1f mm: keeping the later acquisition %r (%s, %s), "
                        "dropping %r (%s, %s)", uri, contrast, twin.z_center_mm, twin.description, twin.uid,
                        _fmt_time(twin.acquired), s.description, s.uid, _fmt_time(s.acquired))
    return sorted(kept, key=lambda s: s.z_center_mm, reverse=True)


def _acquisition_order(s: DicomSeries) -> tuple:
    date, seconds = s.acquired
    return (date, -1.0 if math.isnan(seconds) else seconds, s.uid)


def _fmt_time(acquired: tuple[str, float]) -> str:
    date, seconds = acquired
    if math.isnan(seconds):
        return "time unknown"
    h, m, s = int(seconds // 3600), int(seconds % 3600 // 60), seconds % 60
    return f"{date + ' ' if date else ''}{h:02d}:{m:02d}:{s:04.1f}"


def _check_complete(stations: dict[str, list[DicomSeries]], n_stations: int, uri: str) -> None:
    """Raise naming every missing or extra station unless each contrast has ``n_stations``."""
    counts = {c: len(v) for c, v in stations.items()}
    if all(n == n_stations for n in counts.values()):
        return
    reference = max(stations, key=lambda c: counts[c])
    ref = stations[reference]
    problems = []
    if counts[reference] != n_stations:
        where = ", ".join(f"{s.z_center_mm:.1f}" for s in ref)
        problems.append(f"contrast {reference} has {counts[reference]} stations (at z={where} mm), "
                        f"expected {n_stations}")
    for contrast, found in stations.items():
        if contrast == reference or counts[contrast] == counts[reference]:
            continue
        if not found:
            problems.append(f"contrast {contrast} has no series, expected {counts[reference]} like {reference}")
            continue
        missing = [s for s in ref if not any(_same_station(s, f) for f in found)]
        extra = [f for f in found if not any(_same_station(s, f) for s in ref)]
        detail = "; ".join([f"station at z={s.z_center_mm:.1f} mm missing ({reference}: {s.description!r})"
                            for s in missing] + [f"extra station at z={f.z_center_mm:.1f} mm ({f.description!r})"
                                                 for f in extra])
        problems.append(f"contrast {contrast} has {counts[contrast]} stations, expected {counts[reference]} like "
                        f"{reference}" + (f": {detail}" if detail else ""))
    usable = sum(counts.values())
    raise BadScanError(f"zip holds {usable} usable Dixon series, expected {n_stations * len(stations)} "
                       f"({n_stations} stations x {len(stations)} contrasts): " + "; ".join(problems),
                       stage="read", uri=uri)

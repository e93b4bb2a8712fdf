"""NIfTI in and out, as :class:`~mrseg_cohort.geometry.Volume` (the one RAS <-> LPS step).

nibabel decodes the voxels, in (x, y, z) index order; everything past this module uses (z, y, x)
arrays with LPS geometry as SimpleITK gives them. The geometry of a file read is SimpleITK's
(ITK's NiftiImageIO reads the header), because MRSegmentator reads through SimpleITK: where qform,
sform and pixdim disagree, ITK and nibabel place the image differently (:func:`itk_grid`). Headers
are checked against :class:`ReadLimits` before any voxel data is decompressed or allocated.
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import re
import tempfile
import threading
import zlib
from typing import Iterator

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from mrseg_cohort.errors import BadScanError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.limits import ReadLimits, check_decoded_size, check_file_size, check_image_shape, checked_voxels
from mrseg_cohort.io.storage import Store

__all__ = ["ReadLimits", "read_volume", "read_labels", "write_volume", "nifti_bytes", "volume_from_nifti_bytes",
           "itk_grid", "itk_scaling", "affine_from_grid"]

log = logging.getLogger(__name__)
_ITK_WARNINGS_OFF = threading.Lock()
"""Held while ITK's process-wide warning display is off for one header (:func:`itk_grid`)."""

_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def read_volume(store: Store, uri: str, limits: ReadLimits = ReadLimits(),
                dtype: type = np.float32) -> Volume:
    """Read a 3-D NIfTI image (``.nii`` or ``.nii.gz``) from any URI as a (z, y, x) Volume.

    Raises:
        BadScanError: not a NIfTI file, truncated, not 3-D, or NaN/inf voxels.
        ScanTooLargeError: beyond ``limits`` (checked from the header, before decompressing).
        FileNotFoundError / PermissionError / StorageError: from storage, naming ``uri``.
    """
    check_file_size(store.size(uri), uri, limits)
    return volume_from_nifti_bytes(store.read_bytes(uri), uri, limits, dtype)


def volume_from_nifti_bytes(raw: bytes, uri: str, limits: ReadLimits = ReadLimits(),
                            dtype: type = np.float32) -> Volume:
    """Decode NIfTI bytes (gzipped or not) into a Volume; see :func:`read_volume`."""
    is_gz = raw[:2] == b"\x1f\x8b"
    head = _gunzip_prefix(raw, 540, uri) if is_gz else raw[:540]
    header = _parse_header(head, uri)
    dims = header["dim"]
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise BadScanError(f"header gives {ndim} dimensions; a NIfTI image has 1 to 7", uri=uri)
    shape = check_image_shape(tuple(int(d) for d in dims[1:ndim + 1]), uri, limits)
    stored = np.dtype(header.get_data_dtype())
    if stored.fields is not None or stored.kind not in "biuf":  # RGB, complex: no one intensity per voxel
        raise BadScanError(f"voxels are stored as {_dtype_name(header)}; expected real numbers (a magnitude "
                           "image, or integer labels)", uri=uri)
    grid = itk_grid(header, uri)
    itemsize = stored.itemsize
    first_voxel = header.sizeof_hdr + 4  # after the header and its 4 extension bytes: 352 or 544
    if not first_voxel <= header["vox_offset"] < 2**31:  # (nan fails too)
        raise BadScanError(f"header's vox_offset {float(header['vox_offset']):g} is no place for the voxels of a "
                           f"single-file NIfTI (at least {first_voxel}, after the header)", uri=uri)
    n_bytes = int(header.get_data_offset()) + int(np.prod(shape)) * itemsize
    check_decoded_size(n_bytes, shape, uri, limits)
    data = _gunzip_all(raw, n_bytes, uri) if is_gz else raw
    if len(data) < n_bytes:
        raise BadScanError(f"file is truncated: {len(data)} bytes of image data where the header "
                           f"promises {n_bytes}; re-export or re-download it", uri=uri)
    scaling = itk_scaling(header)
    _check_intercept_without_slope(header, dtype, uri)
    # the voxels as nibabel's ArrayProxy reads them (the header's dtype and byte order, Fortran order
    # from vox_offset), from the buffer itself: no copy of the image, and no header fix-ups (the
    # geometry is ITK's, the scaling ITK's, below)
    array = np.frombuffer(data, dtype=stored, count=int(np.prod(shape)),
                          offset=int(header.get_data_offset())).reshape(shape, order="F")
    if scaling is not None:
        array = _itk_rescaled(array, *scaling)
    array = checked_voxels(array.reshape(array.shape[:3]) if array.ndim > 3 else array, dtype, uri)
    array = np.ascontiguousarray(array.transpose(2, 1, 0))
    return Volume(array if array.flags.writeable else array.copy(), grid)  # (bytes in: a read-only view)


def itk_grid(header: nib.Nifti1Header, uri: str = "") -> Grid:
    """The :class:`Grid` SimpleITK gives a NIfTI file with this (nibabel) header.

    ITK's NiftiImageIO reads the header itself (from a private temporary file), so its rules hold,
    not nibabel's: the voxel spacing is pixdim (scaled to mm by ``xyzt_units``) whichever transform
    is used; origin and direction come from the sform when it is an orthonormal direction times a
    scale and its code is SCANNER_ANAT, or the qform is unset, or the two nearly agree; otherwise from
    the qform; with neither set, identity at (0, 0, 0). (nibabel takes any set sform, and the spacing
    from its columns.) SimpleITK does not read NIfTI-2 files (nor, then, MRSegmentator): their
    header goes to ITK as NIfTI-1, so the same rules place them (matrices rounded to float32).

    A negative pixdim is read as ITK's image reader (SimpleITK's ``ReadImage``) reads it: the spacing
    made positive and that axis's direction reversed.

    Raises:
        BadScanError: a zero or non-finite pixdim[1:4] (ITK would read it as 1 mm without a word),
            or no transform with an orthonormal direction (ITK refuses the file).
    """
    pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
    if not np.all(np.isfinite(pixdim)) or np.any(pixdim == 0):
        shown = ", ".join(f"{v:.4g}" for v in pixdim)
        raise BadScanError(f"header voxel spacing pixdim[1:4] ({shown}) is zero or not finite; "
                           "fix the header's pixdim", uri=uri)
    if isinstance(header, nib.Nifti2Header):
        header = nib.Nifti1Header.from_header(header, check=False)
    reader = sitk.ImageFileReader()
    reader.SetImageIO("NiftiImageIO")
    with tempfile.TemporaryDirectory(prefix="mrseg-nifti-") as folder:
        path = os.path.join(folder, "header.nii")
        with open(path, "wb") as f:
            f.write(header.binaryblock + bytes(4))  # no extensions: the header is all ITK reads here
        reader.SetFileName(path)
        with _ITK_WARNINGS_OFF:  # (process-wide: threads reading headers take turns)
            warned = sitk.ProcessObject.GetGlobalWarningDisplay()
            sitk.ProcessObject.SetGlobalWarningDisplay(False)  # its warnings name the temporary file
            try:
                reader.ReadImageInformation()
            except RuntimeError as err:
                lines = [line.strip() for line in str(err).splitlines() if line.strip()]
                raise BadScanError(f"header has no usable geometry (qform and sform give no orthonormal "
                                   f"direction): {lines[-1][:200] if lines else type(err).__name__}",
                                   uri=uri) from err
            finally:
                sitk.ProcessObject.SetGlobalWarningDisplay(warned)
    _warn_if_the_sform_scales_otherwise(header, pixdim, uri)
    n = reader.GetDimension()
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(n, n)[:3, :3].copy()
    spacing = np.asarray(reader.GetSpacing()[:3], dtype=np.float64)
    flipped = spacing < 0  # a negative pixdim: ITK's image reader makes it positive and flips the axis
    spacing[flipped] *= -1
    direction[:, flipped] *= -1
    shape_xyz = tuple(int(d) for d in header["dim"][1:4])
    try:
        return Grid(shape_xyz[::-1], tuple(spacing)[::-1], tuple(reader.GetOrigin()[:3]), tuple(direction.ravel()))
    except ValueError as err:  # what ITK made of the header is no grid
        raise BadScanError(f"header geometry is not usable: {err}", uri=uri) from None


def _warn_if_the_sform_scales_otherwise(header: nib.Nifti1Header, pixdim: np.ndarray, uri: str) -> None:
    """A warning naming ``uri`` when the header's sform (set) gives other voxel sizes than pixdim:
    readers then disagree (ITK, so SimpleITK and MRSegmentator, and this reader take pixdim's; nibabel
    and FSL the sform's), and volumes with them."""
    if int(header["sform_code"]) <= 0:
        return
    scales = np.linalg.norm(np.asarray(header.get_sform(), dtype=np.float64)[:3, :3], axis=0)
    if np.allclose(scales, np.abs(pixdim), rtol=1e-3, atol=0):
        return
    log.warning("%s: the header's sform gives voxel sizes %s, its pixdim %s (in the header's units); read "
                "with pixdim's as SimpleITK (and so MRSegmentator) reads it: nibabel and FSL would take the "
                "sform's, and give other volumes", uri, _sizes(scales), _sizes(np.abs(pixdim)))


def _sizes(values: np.ndarray) -> str:
    return " x ".join(f"{v:.4g}" for v in values)


def itk_scaling(header: nib.Nifti1Header) -> tuple[float, float] | None:
    """(scl_slope, scl_inter) as SimpleITK applies them, or None when it leaves the values alone.

    ITK's rules (NiftiImageIO over niftilib), not nibabel's: a non-finite field counts as 0; a slope
    of 0 (or below double epsilon) counts as 1 *and the intercept still applies*; a finite slope
    with a NaN intercept scales without one. (nibabel ignores both fields when the slope is 0 or
    NaN, and refuses a NaN intercept.)"""
    eps = np.finfo(np.float64).eps
    slope, inter = (float(v) if np.isfinite(v) else 0.0 for v in (header["scl_slope"], header["scl_inter"]))
    if abs(slope) < eps:
        slope = 1.0
    return (slope, inter) if abs(slope - 1.0) > eps or abs(inter) > eps else None


def _check_intercept_without_slope(header: nib.Nifti1Header, dtype: type, uri: str) -> None:
    """An scl_inter with a zero or unset scl_slope is read in two ways: ITK (so SimpleITK and
    MRSegmentator, and :func:`itk_scaling`) adds it to every value, nibabel, FSL and AFNI ignore it
    (nifti1.h scales only with a nonzero slope). An image is read as ITK reads it, with a warning
    naming the file; a label map (integer ``dtype``) is refused: one reading shifts every label."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if (np.isfinite(slope) and slope != 0) or not np.isfinite(inter) or inter == 0:
        return
    if np.issubdtype(dtype, np.integer):
        raise BadScanError(f"label map header has scl_slope {slope:g} and scl_inter {inter:g}: readers disagree "
                           f"(ITK adds {inter:g} to every label, nibabel ignores it); write the labels unscaled "
                           "(scl_slope 1, scl_inter 0)", uri=uri)
    log.warning("%s: the header has scl_slope %g and scl_inter %g: read as SimpleITK (and so MRSegmentator) "
                "reads it, %g added to every value; nibabel, FSL and AFNI read the stored values", uri, slope,
                inter, inter)


def _itk_rescaled(array: np.ndarray, slope: float, inter: float) -> np.ndarray:
    """``array * slope + inter`` rounded as ITK rounds it: float64 stays float64; anything else is
    cast to float32 first, scaled in float64 and rounded once to float32."""
    if array.dtype.kind == "f" and array.dtype.itemsize == 8:  # (either byte order)
        return array * slope + inter
    return (array.astype(np.float32).astype(np.float64) * slope + inter).astype(np.float32)


def affine_from_grid(grid: Grid) -> np.ndarray:
    """nibabel's RAS affine for ``grid`` (index order x, y, z)."""
    return _LPS_FROM_RAS @ grid.index_to_world_affine()


GZIP_LEVEL = 3
"""gzip level of the NIfTI files written. A NAKO-sized label map (316 x 260 x 320, 41 labels) takes
0.05 s at levels 1-3 and 0.20 s at 6 (zlib's default) on one core of the development machine, and
390 KB at 3 against 246 KB at 6 (benchmarks/README.md §5): level 3 spends the least CPU time per
byte saved."""


def nifti_bytes(volume: Volume, dtype: type, compresslevel: int = GZIP_LEVEL) -> bytes:
    """Encode a Volume as gzipped NIfTI-1 bytes with ``dtype`` (e.g. uint8 labels, float32 images).

    qform and sform are both set (code 1, scanner) so nibabel, SimpleITK, 3D Slicer and ITK-SNAP
    agree on the geometry; the gzip header carries no timestamp, so equal inputs give equal bytes.
    """
    # (x, y, z) as a view: a C-ordered (z, y, x) array is already in NIfTI's x-fastest voxel order,
    # which nibabel then writes as it lies (a C-ordered copy would be transposed twice)
    data = volume.array.transpose(2, 1, 0).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, affine_from_grid(volume.grid))
    img.header.set_data_dtype(dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header["xyzt_units"] = 2 + 8  # mm, s
    return gzip.compress(img.to_bytes(), compresslevel=compresslevel, mtime=0)


def write_volume(store: Store, uri: str, volume: Volume, dtype: type) -> None:
    """Publish ``volume`` at ``uri`` as gzipped NIfTI, atomically (see :meth:`Store.write_bytes`)."""
    store.write_bytes(uri, nifti_bytes(volume, dtype))


def read_labels(store: Store, uri: str, limits: ReadLimits = ReadLimits()) -> Volume:
    """Read a label map as uint8 (refuses non-integer values and values above 255)."""
    raw = store.read_bytes(uri)
    return volume_from_nifti_bytes(raw, uri, limits, dtype=np.uint8)


# -- helpers ----------------------------------------------------------------------------------------
def _dtype_name(header: nib.Nifti1Header) -> str:
    """The header's datatype as NIfTI names it (``complex64``, ``RGB``), else numpy's name."""
    try:
        return str(header.get_value_label("datatype"))
    except Exception:  # noqa: BLE001 - a code nibabel has no label for
        return np.dtype(header.get_data_dtype()).name


def _gunzip_prefix(raw: bytes, n: int, uri: str) -> bytes:
    """The first ``n`` decompressed bytes (fewer when the data is shorter), across members."""
    out = b""
    try:
        for chunk in _gzip_chunks(raw, max_output=n):
            out += chunk
            if len(out) >= n:
                break
    except zlib.error as err:
        raise BadScanError(f"not a valid gzip file: {err}", uri=uri) from err
    except _GzipCut:
        pass  # the header check words it (too short), or the full read does
    return out[:n]


_GUNZIP_CHUNK = 16 << 20
"""Decompressed bytes per zlib call while reading a gzip stream (bounds memory beyond the image)."""
_FEED_MIN, _FEED_MAX = 1 << 10, 1 << 20
"""Compressed bytes per zlib call: from the first at a member's start, doubling to the second
(what zlib copies of the input left at a member's end stays within twice what the member took)."""
_NOT_ZERO = re.compile(rb"[^\x00]")


class _GzipCut(Exception):
    """The gzip data ends inside a member (before its end-of-stream marker and checksum)."""


def _gzip_chunks(raw: bytes, max_output: int = _GUNZIP_CHUNK) -> Iterator[bytes]:
    """The decompressed data of every gzip member of ``raw``, in chunks of at most ``max_output``
    bytes, each member read to its end so that zlib verifies its CRC. Members follow each other
    (bgzip, concatenated files), zero padding between them allowed; what follows the last member
    that is not gzip is ignored, as zlib's ``gzread`` ignores it. Time linear in ``len(raw)``.

    Raises:
        zlib.error: corrupt data or a failed checksum.
        _GzipCut: the data ends inside a member."""
    view, pos = memoryview(raw), 0
    while True:
        decomp, feed_size = zlib.decompressobj(16 + zlib.MAX_WBITS), _FEED_MIN
        while not decomp.eof:
            feed = decomp.unconsumed_tail
            if not feed:
                feed = view[pos:pos + feed_size]
                pos += len(feed)
                feed_size = min(2 * feed_size, _FEED_MAX)
                if not feed:
                    raise _GzipCut
            chunk = decomp.decompress(feed, max_output)
            if chunk:
                yield chunk
        pos -= len(decomp.unused_data)  # where the next member would start (CPython may leave the same
        # leftover in unconsumed_tail too, when the call that ended the member was fed the last one's)
        found = _NOT_ZERO.search(raw, pos)
        if found is None or raw[found.start():found.start() + 2] != b"\x1f\x8b":
            return
        pos = found.start()


def _gunzip_all(raw: bytes, n_bytes: int, uri: str) -> bytearray:
    """The first ``n_bytes`` of a gzip file's decompressed data (:func:`_gzip_chunks`: every member
    read to its checksum, so a corrupt file is refused, not read as noise, also where the damage makes
    the stream longer than the header's image). Data beyond the image is dropped as it comes; more
    than ``max(n_bytes, 64 MiB)`` of it is refused. The buffer grows with the data, from what the
    compressed bytes can hold at most (deflate expands at most about 1032-fold), not from the size
    the header promises."""
    out = bytearray(min(n_bytes, 1032 * len(raw) + (1 << 16)))  # filled in place
    filled, beyond, allowed_beyond = 0, 0, max(n_bytes, 64 << 20)
    try:
        for chunk in _gzip_chunks(raw):
            keep = max(0, min(len(chunk), n_bytes - filled))
            if filled + keep > len(out):
                out.extend(bytes(min(n_bytes, max(2 * len(out), filled + keep)) - len(out)))
            out[filled:filled + keep] = memoryview(chunk)[:keep]
            filled += keep
            beyond += len(chunk) - keep
            if beyond > allowed_beyond:
                raise BadScanError(f"gzip data holds more than {allowed_beyond} bytes beyond the "
                                   f"{n_bytes} bytes of image its header describes", uri=uri)
    except zlib.error as err:
        raise BadScanError(f"gzip data is corrupt ({err}); re-export or re-download the file", uri=uri) from err
    except _GzipCut:
        if filled < n_bytes:
            raise BadScanError(f"gzip stream is truncated after {filled} of {n_bytes} bytes; "
                               "re-download the file", uri=uri) from None
        raise BadScanError("gzip stream is truncated before its checksum (the image cannot be "
                           "verified); re-download the file", uri=uri) from None
    del out[filled:]  # a stream shorter than the header's image: the caller says so
    return out  # (not copied into bytes: the image may be gigabytes)


def _parse_header(head: bytes, uri: str) -> nib.Nifti1Header:
    """The NIfTI-1 or NIfTI-2 header (a :class:`nib.Nifti2Header` is a Nifti1Header too) at the start of
    ``head``, unchecked by nibabel but for its magic string."""
    if len(head) < 348:
        raise BadScanError(f"not a NIfTI file: only {len(head)} bytes", uri=uri)
    sizeof_hdr_le = int.from_bytes(head[:4], "little")
    sizeof_hdr_be = int.from_bytes(head[:4], "big")
    if 348 in (sizeof_hdr_le, sizeof_hdr_be):
        header_class, n = nib.Nifti1Header, 348
    elif 540 in (sizeof_hdr_le, sizeof_hdr_be):
        header_class, n = nib.Nifti2Header, 540
    else:
        raise BadScanError("not a NIfTI file (header size field is neither 348 nor 540)", uri=uri)
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:n]), check=False)
        _ = header.get_data_dtype()
    except Exception as err:
        raise BadScanError(f"NIfTI header is corrupt: {type(err).__name__}: {err}", uri=uri) from err
    single_file = b"n+1" if n == 348 else b"n+2"
    magic = bytes(header["magic"])
    if magic[:4] != single_file + b"\0":  # (ITK would read it as Analyze, without its transforms)
        raise BadScanError(f"NIfTI header is corrupt: magic string {magic.rstrip(bytes(1))!r}, not {single_file!r} "
                           "(a single-file NIfTI)", uri=uri)
    return header

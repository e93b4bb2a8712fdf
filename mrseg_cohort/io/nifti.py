"""NIfTI in and out, as :class:`~mrseg_cohort.geometry.Volume` (the one RAS <-> LPS step).

nibabel gives arrays in (x, y, z) index order with a RAS affine; everything past this module uses
(z, y, x) arrays with LPS geometry as SimpleITK gives them. Headers are checked against
:class:`ReadLimits` before any voxel data is decompressed or allocated.
"""

from __future__ import annotations

import gzip
import io
import zlib
import nibabel as nib
import numpy as np

from mrseg_cohort.errors import BadScanError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.limits import ReadLimits, check_decoded_size, check_file_size, check_image_shape, checked_voxels
from mrseg_cohort.io.storage import Store

__all__ = ["ReadLimits", "read_volume", "read_labels", "write_volume", "nifti_bytes", "volume_from_nifti_bytes",
           "grid_from_affine", "affine_from_grid"]

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
    header, image_class = _parse_header(head, uri)
    dims = header["dim"]
    ndim = int(dims[0])
    if not 1 <= ndim <= 7:
        raise BadScanError(f"header gives {ndim} dimensions; a NIfTI image has 1 to 7", uri=uri)
    shape = check_image_shape(tuple(int(d) for d in dims[1:ndim + 1]), uri, limits)
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    n_bytes = int(header.get_data_offset()) + int(np.prod(shape)) * itemsize
    check_decoded_size(n_bytes, shape, uri, limits)
    data = _gunzip_all(raw, n_bytes, uri) if is_gz else raw
    if len(data) < n_bytes:
        raise BadScanError(f"file is truncated: {len(data)} bytes of image data where the header "
                           f"promises {n_bytes}; re-export or re-download it", uri=uri)
    try:
        img = image_class.from_bytes(data)
        array = np.asanyarray(img.dataobj)
    except Exception as err:  # nibabel raises many types for corrupt files
        raise BadScanError(f"not a readable NIfTI image: {type(err).__name__}: {err}", uri=uri) from err
    array = checked_voxels(array.reshape(array.shape[:3]) if array.ndim > 3 else array, dtype, uri)
    return Volume(np.ascontiguousarray(array.transpose(2, 1, 0)), grid_from_affine(img.affine, array.shape, uri))


def grid_from_affine(affine_ras: np.ndarray, shape_xyz: tuple[int, ...], uri: str = "") -> Grid:
    """The :class:`Grid` of a nibabel image: RAS affine and (x, y, z) shape -> LPS and (z, y, x)."""
    lps = _LPS_FROM_RAS @ np.asarray(affine_ras, dtype=np.float64)
    columns = lps[:3, :3]
    spacing_xyz = np.linalg.norm(columns, axis=0)
    if np.any(spacing_xyz <= 0) or not np.all(np.isfinite(spacing_xyz)):
        shown = ", ".join(f"{v:.4g}" for v in spacing_xyz)
        raise BadScanError(f"header voxel spacing ({shown}) mm is not positive and finite", uri=uri)
    direction = columns / spacing_xyz
    return Grid(tuple(int(s) for s in shape_xyz[:3][::-1]), tuple(spacing_xyz[::-1]),
                tuple(lps[:3, 3]), tuple(direction.ravel()))


def affine_from_grid(grid: Grid) -> np.ndarray:
    """nibabel's RAS affine for ``grid`` (index order x, y, z)."""
    return _LPS_FROM_RAS @ grid.index_to_world_affine()


def nifti_bytes(volume: Volume, dtype: type, compresslevel: int = 6) -> bytes:
    """Encode a Volume as gzipped NIfTI-1 bytes with ``dtype`` (e.g. uint8 labels, float32 images).

    qform and sform are both set (code 1, scanner) so nibabel, SimpleITK, 3D Slicer and ITK-SNAP
    agree on the geometry; the gzip header carries no timestamp, so equal inputs give equal bytes.
    """
    data = np.ascontiguousarray(volume.array.transpose(2, 1, 0)).astype(dtype, copy=False)
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
def _gunzip_prefix(raw: bytes, n: int, uri: str) -> bytes:
    try:
        return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(raw, n)
    except zlib.error as err:
        raise BadScanError(f"not a valid gzip file: {err}", uri=uri) from err


def _gunzip_all(raw: bytes, n_bytes: int, uri: str) -> bytes:
    """Decompress at most ``n_bytes`` (+1, to see that more follows); when the stream ends within that,
    read it to its end so that zlib verifies the CRC (a corrupt file is refused, not read as noise)."""
    decomp = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = decomp.decompress(raw, n_bytes + 1)
        if len(out) <= n_bytes and not decomp.eof:
            out += decomp.decompress(decomp.unconsumed_tail, n_bytes + 1 - len(out))
    except zlib.error as err:
        raise BadScanError(f"gzip data is corrupt ({err}); re-export or re-download the file", uri=uri) from err
    if len(out) <= n_bytes and not decomp.eof:
        raise BadScanError(f"gzip stream is truncated after {len(out)} of {n_bytes} bytes; "
                           "re-download the file", uri=uri)
    return out


def _parse_header(head: bytes, uri: str):
    if len(head) < 348:
        raise BadScanError(f"not a NIfTI file: only {len(head)} bytes", uri=uri)
    sizeof_hdr_le = int.from_bytes(head[:4], "little")
    sizeof_hdr_be = int.from_bytes(head[:4], "big")
    if 348 in (sizeof_hdr_le, sizeof_hdr_be):
        klass, header_class, n = nib.Nifti1Image, nib.Nifti1Header, 348
    elif 540 in (sizeof_hdr_le, sizeof_hdr_be):
        klass, header_class, n = nib.Nifti2Image, nib.Nifti2Header, 540
    else:
        raise BadScanError("not a NIfTI file (header size field is neither 348 nor 540)", uri=uri)
    try:
        header = header_class.from_fileobj(io.BytesIO(head[:n]), check=False)
        _ = header.get_data_dtype()
    except Exception as err:
        raise BadScanError(f"NIfTI header is corrupt: {type(err).__name__}: {err}", uri=uri) from err
    return header, klass

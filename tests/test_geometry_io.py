"""NIfTI io: geometry against SimpleITK on real LPS and RAS scans, round trips, bad files."""

import gzip

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import shared_file
from mrseg_cohort.errors import BadScanError, ScanTooLargeError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.nifti import ReadLimits, nifti_bytes, read_labels, read_volume, volume_from_nifti_bytes
from mrseg_cohort.io.storage import Store


@pytest.mark.parametrize("name,codes", [("mr.nii.gz", "LPS"), ("ct.nii.gz", "RAS")])
def test_geometry_matches_simpleitk(name, codes):
    path = shared_file(name)
    volume = read_volume(Store(), str(path))
    image = sitk.ReadImage(str(path))
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(image).astype(np.float32))
    assert np.allclose(volume.grid.spacing_xyz_mm, image.GetSpacing())
    assert np.allclose(volume.grid.origin_mm, image.GetOrigin(), atol=1e-4)
    assert np.allclose(volume.grid.direction, image.GetDirection(), atol=1e-6)
    assert volume.grid.axis_codes() == codes
    # world position of a voxel agrees with SimpleITK's index -> physical point
    zyx = np.array([3, 7, 11])
    assert np.allclose(volume.grid.zyx_to_world(zyx), image.TransformIndexToPhysicalPoint([11, 7, 3]), atol=1e-4)
    assert np.allclose(volume.grid.world_to_zyx(volume.grid.zyx_to_world(zyx)), zyx)


@pytest.mark.parametrize("name", ["mr_seg_totalsegmentator_mri.nii.gz", "ct_seg_totalsegmentator.nii.gz"])
def test_label_round_trip_keeps_values_and_geometry(tmp_path, name):
    labels = read_labels(Store(), str(shared_file(name)))
    out = tmp_path / "x.nii.gz"
    out.write_bytes(nifti_bytes(labels, np.uint8))
    again = read_labels(Store(), str(out))
    assert again.grid.is_close(labels.grid) and np.array_equal(again.array, labels.array)
    img = sitk.ReadImage(str(out))
    assert img.GetPixelID() == sitk.sitkUInt8
    assert np.allclose(img.GetOrigin(), labels.grid.origin_mm, atol=1e-4)
    assert nifti_bytes(labels, np.uint8) == nifti_bytes(labels, np.uint8)  # deterministic bytes


def _nifti(shape, dtype=np.float32, fill=None) -> bytes:
    data = np.random.default_rng(0).normal(size=shape).astype(dtype) if fill is None else np.full(shape, fill, dtype)
    return nib.Nifti1Image(data, np.eye(4)).to_bytes()


@pytest.mark.parametrize("raw,message", [
    (b"not an image at all" * 30, "not a NIfTI file"),
    (gzip.compress(_nifti((8, 8, 8)))[:1000], "truncated"),
    (_nifti((8, 8, 8))[:600], "truncated"),
    (_nifti((8, 8)), "not 3-D"),
    (_nifti((8, 8, 8, 3)), "4-D"),
    (_nifti((8, 8, 8), fill=np.nan), "NaN"),
])
def test_bad_files_raise_clear_errors(raw, message):
    with pytest.raises(BadScanError, match=message) as info:
        volume_from_nifti_bytes(raw, "s3://bucket/p1/in.nii.gz")
    assert "s3://bucket/p1/in.nii.gz" in str(info.value)


def test_header_limits_checked_before_decompressing():
    raw = gzip.compress(_nifti((64, 64, 64)))
    with pytest.raises(ScanTooLargeError, match="max_dim"):
        volume_from_nifti_bytes(raw, "x", ReadLimits(max_dim=32))
    with pytest.raises(ScanTooLargeError, match="max_decompressed_mb"):
        volume_from_nifti_bytes(raw, "x", ReadLimits(max_decompressed_mb=0.5))


def test_single_volume_4d_is_accepted_as_3d():
    v = volume_from_nifti_bytes(_nifti((5, 6, 7, 1)), "x")
    assert v.grid.shape == (7, 6, 5)


def test_grid_crop_and_world():
    g = Grid((10, 20, 30), (3.0, 1.5, 1.0), (10.0, -5.0, 2.0))
    sub = g.crop((2, 3, 4), (5, 10, 20))
    assert sub.shape == (3, 7, 16)
    assert np.allclose(sub.origin_mm, (10 + 4 * 1.0, -5 + 3 * 1.5, 2 + 2 * 3.0))
    with pytest.raises(ValueError):
        Volume(np.zeros((2, 2, 2)), g)


@pytest.mark.parametrize("layout", ["C", "F", "flipped view"])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_nifti_bytes_do_not_depend_on_the_arrays_memory_layout(layout, dtype):
    """The writer hands nibabel a view in NIfTI's voxel order (no transposing copy): the bytes equal
    those of nibabel writing a C-ordered (x, y, z) copy, as it did before, whatever the array's layout."""
    from mrseg_cohort.io.nifti import GZIP_LEVEL, affine_from_grid

    rng = np.random.default_rng(4)
    base = rng.integers(0, 41, size=(9, 10, 11)).astype(np.float32)
    array = {"C": base, "F": np.asfortranarray(base), "flipped view": base[::-1][::-1]}[layout]
    volume = Volume(array, Grid(base.shape, (3.0, 1.5, 1.25), (1.0, 2.0, 3.0)))
    img = nib.Nifti1Image(np.ascontiguousarray(base.transpose(2, 1, 0)).astype(dtype), affine_from_grid(volume.grid))
    img.header.set_data_dtype(dtype)
    img.set_qform(img.affine, code=1)
    img.set_sform(img.affine, code=1)
    img.header["xyzt_units"] = 2 + 8
    assert nifti_bytes(volume, dtype) == gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0)


# -- damaged and unusual gzip files ---------------------------------------------------------------
def _labels_nifti() -> bytes:
    """A small label-map-like NIfTI (blocks of few values: deflate's output has long matches, so most
    damage still decodes to a valid stream, only a longer or different one)."""
    data = np.zeros((24, 20, 16), np.uint8)
    data[4:18, 3:15, 2:12] = 1
    data[8:12, 6:10, 4:9] = 7
    data[14:20, 12:18, 10:15] = 40
    return nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])).to_bytes()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=300, deadline=None, derandomize=True)
@given(position=st.floats(0.0, 1.0, exclude_max=True), xor=st.integers(1, 255))
def test_a_damaged_gzip_file_is_refused_or_read_as_the_original(position, xor):
    """A byte changed anywhere in a gzipped NIfTI: the file is refused naming it, or (damage in the
    gzip header's optional fields, which carry no data) read as the original. Before, damage that made
    the stream longer than the header's image was never checked against the CRC and read as noise
    (about 40 % of random one-byte changes on the real label maps were published)."""
    original = _labels_nifti()
    raw = bytearray(gzip.compress(original, mtime=0))
    raw[10 + int(position * (len(raw) - 10))] ^= xor  # past the magic, method and flags bytes
    expected = volume_from_nifti_bytes(original, "x", dtype=np.uint8).array
    try:
        got = volume_from_nifti_bytes(bytes(raw), "s3://bucket/p1/labels.nii.gz", dtype=np.uint8)
    except BadScanError as err:
        assert "s3://bucket/p1/labels.nii.gz" in str(err)
    else:
        assert np.array_equal(got.array, expected)


def _members(data: bytes, size: int, padding: bytes = b"") -> bytes:
    return padding.join(gzip.compress(data[i:i + size], mtime=0) for i in range(0, len(data), size))


@pytest.mark.parametrize("padding", [b"", bytes(7)])
def test_a_gzip_file_of_several_members_is_read_whole(padding):
    """bgzip and concatenated gzip files (members of 64 KiB) hold one stream, as Python's gzip, nibabel
    and SimpleITK read them; the first member alone was taken for a truncated file."""
    original = _nifti((40, 40, 40))
    raw = _members(original, 65280, padding)
    assert gzip.decompress(raw.replace(bytes(7), b"") if padding else raw) == original
    got = volume_from_nifti_bytes(raw, "x")
    assert np.array_equal(got.array, volume_from_nifti_bytes(original, "x").array)


def test_what_follows_the_gzip_stream_is_ignored_as_zlib_does():
    original = _nifti((8, 8, 8))
    got = volume_from_nifti_bytes(gzip.compress(original) + b"trailing bytes, not gzip", "x")
    assert np.array_equal(got.array, volume_from_nifti_bytes(original, "x").array)


def test_a_gzip_file_cut_before_its_checksum_is_refused():
    raw = gzip.compress(_nifti((8, 8, 8)))
    with pytest.raises(BadScanError, match="truncated before its checksum") as info:
        volume_from_nifti_bytes(raw[:-4], "s3://bucket/p1/in.nii.gz")
    assert "s3://bucket/p1/in.nii.gz" in str(info.value)


def test_far_more_decompressed_data_than_the_header_describes_is_refused():
    """Data past the image is read in bounded chunks (to its CRC) and dropped, up to 64 MiB."""
    raw = gzip.compress(_nifti((8, 8, 8)) + bytes(65 << 20), compresslevel=1)
    with pytest.raises(BadScanError, match="beyond the 2400 bytes of image"):
        volume_from_nifti_bytes(raw, "x")
    assert volume_from_nifti_bytes(gzip.compress(_nifti((8, 8, 8)) + bytes(1 << 20)), "x").grid.shape == (8, 8, 8)


@pytest.mark.parametrize("qform_code,axis", [(1, 0), (0, 0), (1, 2)])
def test_a_negative_pixdim_is_read_as_simpleitk_reads_it(tmp_path, qform_code, axis):
    """A negative pixdim (ITK's header information: a negative spacing, which our grid refused with a
    message naming no file): SimpleITK's ReadImage makes the spacing positive and reverses that axis's
    direction, and so do we; the voxels land where SimpleITK puts them."""
    import struct

    img = nib.Nifti1Image(np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4), np.diag([2.0, 3.0, 4.0, 1.0]))
    img.set_qform(img.affine, code=qform_code)
    img.set_sform(None, code=0)
    raw = bytearray(img.to_bytes())
    offset = 76 + 4 * (axis + 1)  # pixdim[axis + 1]
    raw[offset:offset + 4] = struct.pack("<f", -struct.unpack("<f", raw[offset:offset + 4])[0])
    path = tmp_path / "negative.nii"
    path.write_bytes(bytes(raw))
    volume = read_volume(Store(), str(path))
    reference = sitk.ReadImage(str(path))
    assert np.allclose(volume.grid.spacing_xyz_mm, reference.GetSpacing())
    assert np.allclose(volume.grid.direction, reference.GetDirection())
    assert np.allclose(volume.grid.origin_mm, reference.GetOrigin())
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(reference).astype(np.float32))


@pytest.mark.parametrize("kind", ["complex64", "RGB"])
def test_voxels_that_are_not_real_numbers_are_refused_naming_the_file(kind):
    """A complex fat or water image was cut to its real part without a word (fat fractions from the
    real parts), an RGB one ended in a TypeError traceback."""
    if kind == "RGB":
        data = np.zeros((6, 5, 4), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    else:
        data = (np.ones((6, 5, 4)) * np.exp(2.5j)).astype(np.complex64)
    raw = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    for dtype in (np.float32, np.uint8):
        with pytest.raises(BadScanError, match=f"stored as {kind}; expected real numbers") as info:
            volume_from_nifti_bytes(raw, "s3://bucket/p1/fat.nii.gz", dtype=dtype)
        assert "s3://bucket/p1/fat.nii.gz" in str(info.value)


def _with_scaling(data: np.ndarray, slope: float, inter: float) -> bytes:
    img = nib.Nifti1Image(data, np.eye(4))
    raw = bytearray(img.to_bytes())
    raw[112:120] = np.array([slope, inter], "<f4").tobytes()  # scl_slope, scl_inter
    return bytes(raw)


def test_a_label_map_with_an_intercept_and_no_slope_is_refused():
    """scl_slope 0, scl_inter 1 on a label map: ITK adds 1 to every label (background became the
    spleen, the spleen the right kidney, ...), nibabel reads the stored labels; it was read ITK's way
    without a word."""
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[2:4, 1:3, 1:3] = 1
    with pytest.raises(BadScanError, match="scl_slope 0 and scl_inter 1: readers disagree") as info:
        volume_from_nifti_bytes(_with_scaling(labels, 0.0, 1.0), "s3://bucket/p1/labels.nii.gz", dtype=np.uint8)
    assert "s3://bucket/p1/labels.nii.gz" in str(info.value)
    assert volume_from_nifti_bytes(_with_scaling(labels, 1.0, 0.0), "x", dtype=np.uint8).array.max() == 1


def test_an_image_with_an_intercept_and_no_slope_is_read_as_simpleitk_reads_it_with_a_warning(tmp_path, caplog):
    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    path = tmp_path / "fat.nii"
    path.write_bytes(_with_scaling(data, 0.0, 5.0))
    volume = read_volume(Store(), str(path))
    assert np.array_equal(volume.array, sitk.GetArrayFromImage(sitk.ReadImage(str(path))).astype(np.float32))
    assert volume.array.min() == 5.0
    assert [r.levelname for r in caplog.records if str(path) in r.getMessage()] == ["WARNING"]


def test_an_sform_with_other_voxel_sizes_than_pixdim_is_one_warning_naming_the_file(tmp_path, caplog, capfd):
    """ITK's own warning (a multi-line block naming a temporary file) was all a user saw."""
    img = nib.Nifti1Image(np.zeros((6, 5, 4), np.int16), np.diag([0.8, 1.2, 5.0, 1.0]))
    img.set_qform(None, code=0)
    img.header.set_zooms((1.0, 1.0, 1.0))
    path = tmp_path / "sform.nii"
    nib.save(img, str(path))
    volume = read_volume(Store(), str(path))
    assert np.allclose(volume.grid.spacing_xyz_mm, sitk.ReadImage(str(path)).GetSpacing())
    capfd.readouterr()
    read_volume(Store(), str(path))
    assert "WARNING" not in capfd.readouterr().err
    warnings = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
    assert len(warnings) == 2 and "0.8 x 1.2 x 5" in warnings[0] and "pixdim 1 x 1 x 1" in warnings[0]


def test_a_grid_mismatch_of_oblique_directions_says_how_far_they_turn():
    """Two directions with the same nearest axes were reported as "direction LPS != LPS"."""
    turn = np.radians(20)
    rotation = np.array([[np.cos(turn), -np.sin(turn), 0], [np.sin(turn), np.cos(turn), 0], [0, 0, 1]])
    straight, oblique = Grid((2, 2, 2), (1, 1, 1)), Grid((2, 2, 2), (1, 1, 1), direction=tuple(rotation.ravel()))
    assert straight.mismatch(oblique) == "direction LPS in both, the axes turned by up to 20.0 deg against each other"
    assert straight.mismatch(Grid((2, 2, 2), (1, 1, 1), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))) == "direction LPS != RAS"


def test_a_header_split_over_small_gzip_members_is_read():
    """Members of 200 bytes: the 348-byte header spans two (it was refused as 'only 200 bytes')."""
    original = _nifti((20, 20, 20))
    got = volume_from_nifti_bytes(_members(original, 200), "x")
    assert np.array_equal(got.array, volume_from_nifti_bytes(original, "x").array)


def test_many_empty_gzip_members_after_the_image_are_read_through():
    """An empty member is 20 bytes; zlib hands back the input left at each member's end, which made
    reading quadratic in the members (160,000 took 6 s, a 34 MB file about 10 minutes). Reading is
    linear now (figures in the closing note of this change); here the result is checked."""
    original = _nifti((8, 8, 8))
    raw = gzip.compress(original) + gzip.compress(b"", mtime=0) * 50_000
    assert np.array_equal(volume_from_nifti_bytes(raw, "x").array, volume_from_nifti_bytes(original, "x").array)


def test_a_tiny_file_whose_header_promises_gigabytes_allocates_no_more_than_its_data_can_hold():
    """73 compressed bytes promising 1000 x 1000 x 995 float32 (3.98 GB, under the 4000 MB limit):
    refused as truncated, without a zero-filled buffer of the promised size (4 GB peak before)."""
    import tracemalloc

    header = nib.Nifti1Header()
    header.set_data_shape((1000, 1000, 995))
    header.set_data_dtype(np.float32)
    header["vox_offset"] = 352
    raw = gzip.compress(header.binaryblock + bytes(4))
    tracemalloc.start()
    try:
        with pytest.raises(BadScanError, match="truncated"):
            volume_from_nifti_bytes(raw, "s3://bucket/p1/in.nii.gz")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50e6, peak


@pytest.mark.parametrize("offset", [-16.0, float("nan")])
def test_a_vox_offset_that_is_no_place_in_the_file_is_refused_naming_it(offset):
    raw = bytearray(_nifti((8, 8, 8)))
    raw[108:112] = np.array([offset], "<f4").tobytes()  # vox_offset
    with pytest.raises(BadScanError, match="vox_offset") as info:
        volume_from_nifti_bytes(bytes(raw), "s3://bucket/p1/in.nii")
    assert "s3://bucket/p1/in.nii" in str(info.value)


def test_a_member_that_inflates_past_one_zlib_call_is_followed_by_the_next():
    """A first member of 55 MB of mostly zeros (more than one 16 MiB output per 1 KiB-1 MiB of input):
    the next member's start was counted twice back (zlib's leftover is in unconsumed_tail and
    unused_data alike) and the valid file refused as truncated. Found in review."""
    data = np.zeros((512, 512, 300), np.uint8)
    data[100:200, 100:200, 100:150] = 7
    original = nib.Nifti1Image(data, np.eye(4)).to_bytes()
    raw = gzip.compress(original[:55_000_000], mtime=0) + gzip.compress(original[55_000_000:], mtime=0)
    got = volume_from_nifti_bytes(raw, "x", dtype=np.uint8)
    assert np.array_equal(got.array, volume_from_nifti_bytes(original, "x", dtype=np.uint8).array)


@pytest.mark.parametrize("offset", [0.0, 100.0, 348.0])
def test_a_vox_offset_inside_the_header_is_refused(offset):
    """nibabel refuses vox_offset 100 or 348 in a single-file NIfTI-1 (SimpleITK reads from 348 on);
    decoded from the buffer, header bytes were read as voxels. Found in review."""
    raw = bytearray(_nifti((8, 8, 8)))
    raw[108:112] = np.array([offset], "<f4").tobytes()
    with pytest.raises(BadScanError, match="vox_offset .*at least 352"):
        volume_from_nifti_bytes(bytes(raw), "in.nii")


def test_a_header_without_a_nifti_magic_string_is_refused():
    """ITK reads such a header as Analyze, without its qform and sform; nibabel refuses it, and so did we
    until the voxels were decoded from the buffer. Found in review."""
    raw = bytearray(_nifti((8, 8, 8)))
    raw[344:348] = b"zzz\0"
    with pytest.raises(BadScanError, match="magic string b'zzz'"):
        volume_from_nifti_bytes(bytes(raw), "in.nii")


def test_scaled_big_endian_float64_voxels_are_scaled_in_float64_as_simpleitk_does(tmp_path):
    """``np.dtype('>f8') == np.float64`` is False: big-endian float64 voxels were rounded through float32
    before scaling (all 120 voxels off SimpleITK's when read as float64). Found in review."""
    data = np.random.default_rng(3).normal(size=(4, 5, 6))
    img = nib.Nifti1Image(data, np.eye(4), header=nib.Nifti1Header(endianness=">"))
    img.header.set_data_dtype(np.float64)
    raw = bytearray(img.to_bytes())
    assert raw[:4] == (348).to_bytes(4, "big")
    raw[112:120] = np.array([1.1, 0.3], ">f4").tobytes()
    path = tmp_path / "big.nii"
    path.write_bytes(bytes(raw))
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    assert np.array_equal(read_volume(Store(), str(path), dtype=np.float64).array, reference)
    assert np.array_equal(read_volume(Store(), str(path)).array, reference.astype(np.float32))

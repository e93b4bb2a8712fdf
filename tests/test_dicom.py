"""UK Biobank DICOM zips (mrseg_cohort.io.dicom): geometry against the phantom's NIfTI stations and against
SimpleITK on real scans (LPS and RAS), repeated and missing stations, corrupt files, limits, streaming."""

from __future__ import annotations

import io
import logging
import zipfile

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import shared_file
from mrseg_cohort.config import ContrastsConfig, StitchingConfig
from mrseg_cohort.errors import BadScanError, ScanTooLargeError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.dicom import read_ukbb_zip, read_zip_series, ukbb_contrast
from mrseg_cohort.io.dicom_writer import (
    SeriesHeader,
    encode_series,
    new_uid,
    write_series_zip,
    zip_bytes,
)
from mrseg_cohort.io.nifti import ReadLimits, read_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.loading import load_scan
from mrseg_cohort.manifest import ScanSource
from mrseg_cohort.phantom.cohort import (
    CONTRASTS,
    PhantomSpec,
    participant_id,
    write_phantom_cohort,
)
from mrseg_cohort.phantom.dicom import ukbb_zip_bytes, ukbb_zip_name

SEED = 1000  # as conftest's phantom_cohort, so participant 0 has the same images there
PID = participant_id(SEED, 0)


def _write_zip_cohort(folder, **faults) -> str:
    """One dicom-zip phantom participant (seed 1000, index 0) under ``folder``; the zip's path."""
    write_phantom_cohort(Store(), str(folder), PhantomSpec(1, seed=SEED, format="dicom-zip", wholebody=True,
                                                           **faults))
    return str(folder / ukbb_zip_name(PID, "0"))


@pytest.fixture(scope="module")
def phantom_zip(tmp_path_factory) -> str:
    return _write_zip_cohort(tmp_path_factory.mktemp("dicom") / "cohort with spaces")


@pytest.fixture(scope="module")
def zip_stations(phantom_zip) -> dict[str, list[Volume]]:
    return read_ukbb_zip(Store(), phantom_zip)


def header(description: str = "series", modality: str = "MR", slope: float = 1.0) -> SeriesHeader:
    return SeriesHeader("1000001", new_uid("study"), new_uid("series", description), new_uid("frame"),
                        description, 1, 36000.0, modality=modality, rescale_slope=slope)


# -- the phantom, through the zip ---------------------------------------------------------------------
def test_zip_is_ukbb_like(phantom_zip):
    import pydicom

    with zipfile.ZipFile(phantom_zip) as archive:
        names = archive.namelist()
        ds = pydicom.dcmread(io.BytesIO(archive.read(names[0])))
    assert "manifest.cvs" in names and len(names) == 1 + 24 * 32  # 6 stations x 4 contrasts x 32 slices
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert (ds.PatientID, ds.Modality, ds.Manufacturer, float(ds.MagneticFieldStrength)) == (PID, "MR", "SIEMENS", 1.5)
    assert ds.SeriesDescription.startswith(("Dixon_noBH_", "Dixon_BH_17s_")) and ds.BitsAllocated == 16
    assert ukbb_contrast("Dixon_BH_17s_W") == "water" and ukbb_contrast("Dixon_noBH_F") == "fat"
    assert ukbb_contrast("Dixon_noBH_opp") == "opp" and ukbb_contrast("localizer") is None


def test_stations_equal_the_nifti_stations(zip_stations, phantom_cohort):
    """Geometry and voxels of every station equal the NIfTI station written from the same phantom."""
    assert sorted(zip_stations) == sorted(CONTRASTS) and all(len(v) == 6 for v in zip_stations.values())
    store = Store()
    for contrast, volumes in zip_stations.items():
        for k, volume in enumerate(volumes, start=1):
            nifti = read_volume(store, str(phantom_cohort / PID / "0" / f"{contrast}_station{k}.nii.gz"))
            assert volume.grid.is_close(nifti.grid, atol_mm=1e-4, atol_direction=1e-9), \
                f"{contrast} station {k}: {volume.grid.mismatch(nifti.grid)}"
            assert volume.array.dtype == np.float32 and np.array_equal(volume.array, nifti.array)


def test_stitched_zip_equals_the_whole_body_images(phantom_zip):
    source = ScanSource(PID, "0", "ukbb-dicom-zip", "MRI", (("dicom-zip", (phantom_zip,)),))
    loaded = load_scan(Store(), source, ContrastsConfig(), StitchingConfig(), ReadLimits())
    assert loaded.n_stations == 6 and sorted(loaded.images) == sorted(CONTRASTS)
    truth_folder = phantom_zip.rsplit("/", 1)[0] + f"/truth/{PID}/0"
    for contrast, image in loaded.images.items():
        truth = read_volume(Store(), f"{truth_folder}/{contrast}.nii.gz")
        assert image.grid.is_close(truth.grid, atol_mm=1e-4), image.grid.mismatch(truth.grid)
        np.testing.assert_allclose(image.array, np.rint(truth.array), atol=1e-3)


# -- real scans: orientation ----------------------------------------------------------------------------
@pytest.mark.parametrize("name,codes,modality", [("mr.nii.gz", "LPS", "MR"), ("ct.nii.gz", "RAS", "CT")])
def test_real_scan_round_trip_matches_simpleitk(name, codes, modality, tmp_path):
    """Each voxel read back from DICOM lies where SimpleITK puts the same voxel of the NIfTI file,
    and SimpleITK's (GDCM's) own reading of our DICOM files agrees with ours."""
    path = shared_file(name)
    store = Store()
    original = read_volume(store, str(path))
    assert original.grid.axis_codes() == codes
    uri = str(tmp_path / "series.zip")
    write_series_zip(store, uri, original, header(modality=modality))
    [series] = read_zip_series(store, uri)
    volume = series.volume
    reference = sitk.ReadImage(str(path))
    ref_array = sitk.GetArrayFromImage(reference)
    zyx = np.stack(np.meshgrid(*(np.arange(n) for n in volume.grid.shape), indexing="ij"), -1).reshape(-1, 3)
    world = volume.grid.zyx_to_world(zyx)
    ijk = np.array([reference.TransformPhysicalPointToContinuousIndex(tuple(p)) for p in world])
    assert np.allclose(ijk, np.rint(ijk), atol=1e-3)  # every voxel centre lands on a voxel centre
    i, j, k = np.rint(ijk).astype(int).T
    assert np.array_equal(volume.array.reshape(-1), ref_array[k, j, i].astype(np.float32))
    if modality == "CT":
        assert volume.array.min() < 0  # stored unsigned with a negative RescaleIntercept, read back in HU
    # SimpleITK reads the same files as the same image
    with zipfile.ZipFile(uri) as archive:
        archive.extractall(tmp_path / "dcm")
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "dcm")))
    gdcm = reader.Execute()
    assert np.allclose(gdcm.GetOrigin(), volume.grid.origin_mm, atol=1e-3)
    assert np.allclose(gdcm.GetSpacing(), volume.grid.spacing_xyz_mm, atol=1e-4)
    assert np.allclose(gdcm.GetDirection(), volume.grid.direction, atol=1e-6)
    assert np.array_equal(sitk.GetArrayFromImage(gdcm).astype(np.float32), volume.array)


def test_oblique_left_handed_grid_and_rescale_slope(tmp_path):
    """A grid whose slice axis is minus the row x column normal comes back flipped, same world voxels."""
    angle = np.deg2rad(20)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    direction[:, 2] *= -1  # left-handed: index z runs against the DICOM normal
    grid = Grid((5, 6, 7), (3.0, 1.5, 1.25), (10.0, -20.0, 30.0), tuple(direction.ravel()))
    array = (np.arange(5 * 6 * 7).reshape(5, 6, 7) * 2.0 - 40).astype(np.float32)
    uri = str(tmp_path / "oblique.zip")
    write_series_zip(Store(), uri, Volume(array, grid), header(slope=2.0))
    [series] = read_zip_series(Store(), uri)
    back = series.volume
    assert np.allclose(back.array, array[::-1]) and back.grid.spacing_mm == pytest.approx(grid.spacing_mm)
    assert np.allclose(back.grid.zyx_to_world([0, 0, 0]), grid.zyx_to_world([4, 0, 0]), atol=1e-4)
    assert np.allclose(back.grid.zyx_to_world([4, 5, 6]), grid.zyx_to_world([0, 5, 6]), atol=1e-4)


# -- repeated and missing series ------------------------------------------------------------------------
def _zip_from(stations: dict[str, list[Volume]], folder, **faults) -> str:
    """The phantom's zip rewritten from already read stations, with faults (no re-rendering)."""
    uri = str(folder / ukbb_zip_name(PID, "0"))
    Store().write_bytes(uri, ukbb_zip_bytes(PID, "0", stations, SEED, **faults))
    return uri


def test_repeated_station_keeps_the_later_acquisition(tmp_path, zip_stations, caplog):
    uri = _zip_from(zip_stations, tmp_path, repeat_stations=(3,))
    with caplog.at_level(logging.WARNING, logger="mrseg_cohort.io.dicom"):
        stations = read_ukbb_zip(Store(), uri)
    for contrast in CONTRASTS:
        assert len(stations[contrast]) == 6
        for got, want in zip(stations[contrast], zip_stations[contrast]):
            assert np.array_equal(got.array, want.array)  # the earlier, halved acquisition is dropped
    assert caplog.text.count("keeping the later acquisition") == 4


def test_missing_series_names_contrast_and_position(tmp_path, zip_stations):
    uri = _write_zip_cohort(tmp_path, drop_series=(("opp", 3),))
    with pytest.raises(BadScanError) as info:
        read_ukbb_zip(Store(), uri)
    z = float(zip_stations["opp"][2].grid.corners_world()[:, 2].mean())
    message = str(info.value)
    assert f"contrast opp has 5 stations, expected 6 like in: station at z={z:.1f} mm missing" in message
    assert "23 usable Dixon series, expected 24" in message and ukbb_zip_name(PID, "0") in message


def test_missing_contrast(tmp_path, zip_stations):
    uri = _zip_from(zip_stations, tmp_path, drop_series=tuple(("water", k) for k in range(1, 7)))
    with pytest.raises(BadScanError, match="contrast water has no series, expected 6"):
        read_ukbb_zip(Store(), uri)


# -- pixel values: our shorter path equals pydicom's pixel_array + apply_modality_lut ---------------------
def _encoded_slices(bits: int, stored_bits: int, signed: bool, syntax: str, rescale, lut: bool,
                    photometric: str, n_slices: int = 3) -> list[tuple[str, bytes]]:
    """DICOM slices (member name, bytes) with random stored values whose unused high bits hold
    garbage (real scanners leave them so), in the given encoding."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import MRImageStorage

    rng = np.random.default_rng(bits + stored_bits + int(signed) + len(syntax))
    rows, cols = 6, 7
    big_endian = syntax == "1.2.840.10008.1.2.2"
    out = []
    for k in range(n_slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = MRImageStorage, new_uid("px", str(k))
        meta.TransferSyntaxUID = syntax
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID, ds.SeriesDescription = new_uid("px-series"), "pixels"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 3.0 * k], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.Rows, ds.Columns = [2.0, 2.0], rows, cols
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored_bits, stored_bits - 1
        ds.PixelRepresentation = int(signed)
        if rescale:
            ds.RescaleSlope, ds.RescaleIntercept = rescale
        if lut:
            item = Dataset()
            item.LUTDescriptor, item.ModalityLUTType = [256, 0, 16], "US"
            item.add_new(0x00283006, "US", list(range(1000, 1256)))  # LUTData
            ds.ModalityLUTSequence = Sequence([item])
        dtype = np.dtype(f"{'>' if big_endian else '<'}{'i' if signed else 'u'}{bits // 8}")
        raw = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, size=(rows, cols), endpoint=True)
        ds.PixelData = raw.astype(dtype).tobytes()
        sink = io.BytesIO()
        ds.save_as(sink, enforce_file_format=True, little_endian=not big_endian,
                   implicit_vr=syntax == "1.2.840.10008.1.2")
        out.append((f"px{k}.dcm", sink.getvalue()))
    return out


def _header_of(data: bytes):
    """The plain header of a slice's bytes as both readers see it (None: not plain); they must agree."""
    from mrseg_cohort.io.dicom import _dataset_items, _part10_elements, _plain_header

    ds = pydicom.dcmread(io.BytesIO(data))
    through_dcmread = _plain_header(_dataset_items(ds), ds.file_meta.TransferSyntaxUID)
    parsed = _part10_elements(data)
    through_elements = _plain_header(parsed.elements.get, parsed.syntax) if parsed is not None else None
    assert repr(through_elements) == repr(through_dcmread)
    return through_dcmread


@pytest.mark.parametrize("bits,stored_bits,signed,syntax,rescale,lut,photometric", [
    (16, 12, False, "1.2.840.10008.1.2.1", None, False, "MONOCHROME2"),  # UK Biobank's Siemens slices
    (16, 12, False, "1.2.840.10008.1.2.1", ("1", "0"), False, "MONOCHROME2"),  # integer rescale: float32 exact
    (16, 16, True, "1.2.840.10008.1.2.1", ("3", "-2048"), False, "MONOCHROME2"),  # still below 2**24: float32
    (32, 32, False, "1.2.840.10008.1.2.1", ("1", "0"), False, "MONOCHROME2"),  # above 2**24: float64
    (16, 16, True, "1.2.840.10008.1.2.1", ("0", "0"), False, "MONOCHROME2"),  # negative x 0: +0.0, as pydicom
    (16, 16, True, "1.2.840.10008.1.2.1", ("-1", "0"), False, "MONOCHROME2"),
    (16, 12, False, "1.2.840.10008.1.2.1", ("2.5", "-100"), False, "MONOCHROME2"),
    (16, 12, True, "1.2.840.10008.1.2.1", ("1", "-1024"), False, "MONOCHROME2"),  # signed: sign extension
    (16, 16, True, "1.2.840.10008.1.2", ("0.1", "3.3"), False, "MONOCHROME1"),  # implicit VR
    (8, 7, False, "1.2.840.10008.1.2.1", None, False, "MONOCHROME2"),
    (32, 20, True, "1.2.840.10008.1.2.1", ("1e-3", "7"), False, "MONOCHROME2"),
    (16, 12, False, "1.2.840.10008.1.2.2", ("2", "1"), False, "MONOCHROME2"),  # big endian: pydicom decodes
    (16, 8, False, "1.2.840.10008.1.2.1", None, True, "MONOCHROME2"),  # Modality LUT: pydicom applies it
])
def test_voxel_values_equal_pydicoms_decoding(bits, stored_bits, signed, syntax, rescale, lut, photometric,
                                              tmp_path):
    from pydicom.pixels import apply_modality_lut

    members = _encoded_slices(bits, stored_bits, signed, syntax, rescale, lut, photometric)
    expected = []
    for _, data in members:
        ds = pydicom.dcmread(io.BytesIO(data))
        shorter_path = _header_of(data) is not None
        assert shorter_path == (syntax != "1.2.840.10008.1.2.2" and not lut)  # the case tested is the one meant
        expected.append(np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32))
    uri = str(tmp_path / "pixels.zip")
    Store().write_bytes(uri, zip_bytes(members))
    [series] = read_zip_series(Store(), uri)
    assert series.volume.array.dtype == np.float32
    assert np.array_equal(series.volume.array.view(np.int32), np.stack(expected).view(np.int32))  # every bit


@pytest.mark.parametrize("keyword,value", [("SamplesPerPixel", 0), ("BitsStored", 0)])
def test_a_zero_samples_or_stored_bits_is_read_as_before(keyword, value):
    """0 samples per pixel reads as 1 and 0 bits stored as BitsAllocated, as the path before the
    header numbers were read from their bytes (pydicom itself refuses such a slice)."""
    [(_, data)] = _encoded_slices(16, 16, False, "1.2.840.10008.1.2.1", None, False, "MONOCHROME2", n_slices=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    setattr(ds, keyword, value)
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    header = _header_of(sink.getvalue())
    assert header is not None and header.stored == 16


_DECIMAL = st.one_of(
    st.floats(-1e4, 1e4, allow_nan=False).map(lambda v: repr(round(v, 6))[:16]),
    st.sampled_from(["0", "-0", "+1.5", " 2.25", "3.125 ", "1e2", "-1.5E-3", ".5", "7.", "", " ", "1.5x",
                     "nan", "1_0", "\x001"]))


@settings(max_examples=150, deadline=None)
@given(position=st.lists(_DECIMAL, min_size=3, max_size=3), spacing=st.lists(_DECIMAL, min_size=2, max_size=2),
       pad=st.sampled_from(["", " ", "\x00"]), implicit=st.booleans())
def test_header_numbers_read_from_bytes_equal_pydicoms(position, spacing, pad, implicit):
    """The decimal strings of a slice's geometry read from their raw bytes give pydicom's values
    (float of each DSfloat), or the slice goes to pydicom (None) when a part is empty or malformed."""
    from pydicom.dataelem import RawDataElement

    from mrseg_cohort.io.dicom import _dataset_items, _plain_header

    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    [(_, data)] = _encoded_slices(16, 12, False, syntax, None, False, "MONOCHROME2", n_slices=1)
    ours, reference = pydicom.dcmread(io.BytesIO(data)), pydicom.dcmread(io.BytesIO(data))
    for tag, parts in ((0x00200032, position), (0x00280030, spacing)):
        encoded = "\\".join(parts).encode("latin-1") + pad.encode("latin-1")
        raw = RawDataElement(pydicom.tag.Tag(tag), None if implicit else "DS", len(encoded), encoded, 0, implicit, True)
        ours._dict[raw.tag] = reference._dict[raw.tag] = raw
    header = _plain_header(_dataset_items(ours), syntax)
    try:
        expected = ([float(v) for v in reference.ImagePositionPatient], [float(v) for v in reference.PixelSpacing])
    except (TypeError, ValueError):
        expected = None  # pydicom's values are not all numbers: only pydicom's path may answer
    if header is None:
        return  # pydicom decides, as before
    assert expected is not None
    assert list(map(repr, header.position.tolist())) == list(map(repr, expected[0]))  # NaN for NaN too
    assert list(map(repr, header.spacing)) == list(map(repr, expected[1]))


_TEXT = st.text(st.sampled_from(list("0123456789.:_ABCxyz -\\\x00\x1bäé日")), max_size=12)
_ABSENT = st.none()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's warnings on the invalid values written
@settings(max_examples=200, deadline=None)
@given(implicit=st.booleans(), uid=st.one_of(_ABSENT, _TEXT), description=st.one_of(_ABSENT, _TEXT),
       charset=st.sampled_from([None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 6\\ISO 2022 IR 87", "ISO_IR 13",
                                "GB18030", ""]),
       photometric=st.sampled_from(["MONOCHROME2", "MONOCHROME1", "MONOCHROME2\\X", "RGB", " MONOCHROME2"]),
       times=st.lists(st.tuples(st.one_of(_ABSENT, _TEXT), st.one_of(_ABSENT, _TEXT)), min_size=3, max_size=3),
       cut=st.one_of(st.none(), st.floats(0, 1)), flip=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.integers(1, 255))))
@example(implicit=False, uid="", description=None, charset=None, photometric="MONOCHROME2",  # VR 'UH' for 'UI':
         times=[(None, None), (None, None), (None, "")], cut=None, flip=(0.62890625, 1))  # BadScanError, not a crash
@example(implicit=False, uid="", description=None, charset=None, photometric="MONOCHROME2",  # VR 'TS' for
         times=[(None, ""), ("", ""), ("", "000")], cut=None, flip=(0.7734375, 1))  # Columns' 'US': the same
def test_a_slice_read_from_its_elements_equals_dcmreads_reading(implicit, uid, description, charset, photometric,
                                                                times, cut, flip):
    """Every member gives the same slice (or the same error) through the reader of plain slices'
    elements as through pydicom's ``dcmread``: random strings in UIDs, descriptions (other character
    sets, backslashes, NULs, escape codes) and acquisition times, other photometric values, and
    files cut short or with a byte changed."""
    from pydicom.dataelem import DataElement

    syntax = "1.2.840.10008.1.2" if implicit else "1.2.840.10008.1.2.1"
    [(_, data)] = _encoded_slices(16, 12, False, syntax, ("1", "0"), False, "MONOCHROME2", n_slices=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.PhotometricInterpretation = photometric
    for keyword, value in [("SpecificCharacterSet", charset), ("SeriesInstanceUID", uid),
                           ("SeriesDescription", description),
                           *zip(("AcquisitionDate", "SeriesDate", "ContentDate"), (t[0] for t in times)),
                           *zip(("AcquisitionTime", "SeriesTime", "ContentTime"), (t[1] for t in times))]:
        if keyword in ds:
            del ds[keyword]
        if value is not None:
            tag = pydicom.datadict.tag_for_keyword(keyword)
            ds[tag] = DataElement(tag, pydicom.datadict.dictionary_VR(tag), value)
    sink = io.BytesIO()
    try:
        ds.save_as(sink, enforce_file_format=True, implicit_vr=implicit)
    except Exception:  # noqa: BLE001 - a value pydicom will not write (a character its set lacks)
        return
    data = bytearray(sink.getvalue())
    if flip is not None:
        at = min(int(flip[0] * len(data)), len(data) - 1)
        data[at] ^= flip[1]
    if cut is not None:
        data = data[: int(cut * len(data))]
    ours, reference = _both_readers(bytes(data))
    assert ours == reference


def _both_readers(data: bytes) -> tuple:
    """What the reader of members (elements first) and dcmread's reader make of one member's bytes."""
    from mrseg_cohort.io.dicom import _pydicom_slice, _read_slice

    archive = zipfile.ZipFile(io.BytesIO(zip_bytes([("s.dcm", data)])))

    def outcome(read):
        try:
            uid_read, one = read()
        except (BadScanError, ScanTooLargeError) as err:
            return "error", type(err).__name__, str(err)
        return ("slice", uid_read, type(uid_read).__name__, one.member, repr(one.spacing), repr(one.rescale),
                repr(one.acquired), one.description, one.position.tobytes(), one.orientation.tobytes(),
                str(one.pixels.dtype), one.pixels.tobytes())

    return (outcome(lambda: _read_slice(archive, archive.infolist()[0], "in.zip", ReadLimits())),
            outcome(lambda: _pydicom_slice(data, "s.dcm", "in.zip", ReadLimits())))


def _plain_member(**values) -> bytes:
    """One plain slice's bytes (explicit VR little endian) with ``values`` (keyword: value) set."""
    [(_, data)] = _encoded_slices(16, 12, False, "1.2.840.10008.1.2.1", ("1", "0"), False, "MONOCHROME2",
                                  n_slices=1)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.SpecificCharacterSet, ds.AcquisitionTime = "ISO_IR 100", "101010.5"
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    return sink.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", ["empty pixel data", "pixel data as UT", "a UID with a leading space",
                                  "a Python codec as character set", "transfer syntax as UL",
                                  "a short file meta group length", "plain"])
def test_members_found_in_review_read_alike_through_both_readers(case):
    """Cases a review found where the element reader answered otherwise than dcmread's (or crashed):
    each member gives the same slice or the same error through both."""
    if case == "empty pixel data":
        data = _plain_member(PixelData=b"")
    elif case == "pixel data as UT":
        data = _plain_member()
        at = data.index(b"\xe0\x7f\x10\x00OW")
        data = data[:at + 4] + b"UT" + data[at + 6:]
    elif case == "a UID with a leading space":  # pydicom's UID strips it (setting one strips it too)
        data = _plain_member(SeriesInstanceUID="9.2.3.4.5").replace(b"9.2.3.4.5", b" 2.3.4.5.")
    elif case == "a Python codec as character set":  # pydicom decodes the description in EBCDIC
        data = _plain_member().replace(b"ISO_IR 100", b"cp037     ")
    elif case == "transfer syntax as UL":
        data = _plain_member().replace(b"\x02\x00\x10\x00UI", b"\x02\x00\x10\x00UL", 1)
    elif case == "a short file meta group length":  # (0002,0000) UL of 2 bytes: dcmread refuses it
        data = _plain_member()
        data = data[:132] + b"\x02\x00\x00\x00UL\x02\x00" + data[140:142] + data[144:]
    else:
        data = _plain_member()
    ours, reference = _both_readers(data)
    assert ours == reference
    if case == "plain":
        assert ours[0] == "slice" and ours[7] == "pixels"


@pytest.mark.parametrize("change", ["no preamble", "command set", "implicit data, explicit syntax",
                                    "element cut short", "big endian", "dataset cut in its first element"])
def test_files_dcmread_reads_another_way_are_left_to_it(change):
    """The element reader answers only for files ``dcmread`` reads as it does; for the others it
    leaves the file to ``dcmread`` (None)."""
    from mrseg_cohort.io.dicom import _part10_elements

    syntax = "1.2.840.10008.1.2.2" if change == "big endian" else "1.2.840.10008.1.2.1"
    [(_, data)] = _encoded_slices(16, 12, False, syntax, None, False, "MONOCHROME2", n_slices=1)
    assert change == "big endian" or _part10_elements(data) is not None
    def meta_end(part10: bytes) -> int:  # after the preamble, (0002,0000) UL gives the file meta group's length
        return 144 + int.from_bytes(part10[140:144], "little")

    if change == "no preamble":
        data = data[128:]
    elif change == "command set":  # (0000,0100) CommandField, implicit VR, as pydicom reads a command set
        data = data[:meta_end(data)] + b"\x00\x00\x00\x01\x02\x00\x00\x00\x01\x00" + data[meta_end(data):]
    elif change == "implicit data, explicit syntax":
        [(_, implicit)] = _encoded_slices(16, 12, False, "1.2.840.10008.1.2", None, False, "MONOCHROME2", n_slices=1)
        data = data[:meta_end(data)] + implicit[meta_end(implicit):]
    elif change == "element cut short":
        data = data[:-1]
    elif change == "dataset cut in its first element":
        data = data[:meta_end(data) + 4]
    assert _part10_elements(data) is None


def test_a_header_element_pydicom_cannot_convert_is_a_bad_scan_naming_the_member(tmp_path):
    """A SeriesInstanceUID whose VR bytes are damaged ('UH', unknown to pydicom) is one clear error
    naming the member, not pydicom's NotImplementedError escaping the reader."""
    members = _one_series_members()
    name, data = members[1]
    at = data.index(b"\x20\x00\x0e\x00UI")  # (0020,000E) SeriesInstanceUID, explicit VR
    members[1] = (name, data[:at + 4] + b"UH" + data[at + 6:])
    uri = str(tmp_path / "damaged.zip")
    Store().write_bytes(uri, zip_bytes(members))
    with pytest.raises(BadScanError, match=rf"zip member {name}: unreadable header \(NotImplementedError"):
        read_zip_series(Store(), uri)


def test_uk_biobank_slices_are_read_from_their_elements(phantom_zip, monkeypatch):
    """The shorter reader takes every member of a UK Biobank-like zip (none goes to ``dcmread``)."""
    import mrseg_cohort.io.dicom as dicom

    def refuse(*args):
        raise AssertionError("a UK Biobank slice went to dcmread")

    monkeypatch.setattr(dicom, "_pydicom_slice", refuse)
    assert len(read_ukbb_zip(Store(), phantom_zip)["water"]) == 6


# -- broken files -------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", ["columns halved", "8 bits on 16-bit data", "two frames of pixel data",
                                  "no rows", "no columns"])
def test_pixel_data_its_header_does_not_describe_is_refused_as_pydicom_refuses_it(case):
    """PixelData of another size than Rows x Columns x BitsAllocated (a changed header, a second frame)
    or a slice of no rows: pydicom's ``pixel_array`` refuses it or gives another shape; our readers
    took the first Rows x Columns values (half-rows as rows, 16-bit values as pairs of 8-bit pixels:
    a scrambled image without a word) or an empty slice. Found in a hostile review."""
    if case == "columns halved":
        data = _plain_member(Columns=3)
    elif case == "8 bits on 16-bit data":
        data = _plain_member(BitsAllocated=8, BitsStored=8, HighBit=7)
    elif case == "two frames of pixel data":
        data = _plain_member(PixelData=pydicom.dcmread(io.BytesIO(_plain_member())).PixelData * 2)
    else:
        data = _plain_member(**{"Rows" if case == "no rows" else "Columns": 0})
    ds = pydicom.dcmread(io.BytesIO(data))
    try:
        assert ds.pixel_array.shape != (ds.Rows, ds.Columns)
    except (ValueError, AttributeError):
        pass  # refused
    ours, through_dcmread = _both_readers(data)
    assert ours[0] == through_dcmread[0] == "error" and "zip member s.dcm" in ours[2], ours[:3]


def _one_series_members(n_slices: int = 4) -> list[tuple[str, bytes]]:
    grid = Grid((n_slices, 8, 9), (3.0, 2.0, 2.0))
    return encode_series(Volume(np.ones(grid.shape, np.float32), grid), header())


def _changed(member: bytes, damage: str, k: int) -> bytes:
    """A member with its PixelSpacing or (the second slice's) ImagePositionPatient changed; these raised
    a ValueError naming neither the zip nor the series (from the grid)."""
    ds = pydicom.dcmread(io.BytesIO(member))
    if damage == "zero pixel spacing":
        ds.PixelSpacing = [0, 0]
    elif damage == "negative pixel spacing":
        ds.PixelSpacing = [-2, 2]
    elif damage == "pixel spacing not a number":  # (on every member: it was called a difference between them)
        ds.PixelSpacing = ["nan", "nan"]
    elif damage == "orientation not a number":
        ds.ImageOrientationPatient = ["nan", 0, 0, 0, 1, 0]
    elif k == 1:
        ds.ImagePositionPatient = ["nan", 0, 3]
    sink = io.BytesIO()
    ds.save_as(sink, enforce_file_format=True)
    return sink.getvalue()


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom's on the invalid values written
@pytest.mark.parametrize("damage,match", [
    ("truncated", "not a readable zip file"),
    ("not a zip", "not a readable zip file"),
    ("corrupt member", r"zip member .*\.dcm is corrupt"),
    ("not dicom", "zip member notes.dcm is not a DICOM file"),
    ("missing slice", r"slice spacing varies .* gap of 6.000 mm between members"),
    ("empty", "holds no .dcm files"),
    ("encrypted member", r"zip member .*\.dcm cannot be read: .*encrypted"),
    ("zero pixel spacing", r"series 'series': member .*\.dcm has PixelSpacing \(0.0, 0.0\), not positive"),
    ("negative pixel spacing", r"series 'series': member .*\.dcm has PixelSpacing \(-2.0, 2.0\), not positive"),
    ("pixel spacing not a number", r"series 'series': member .*\.dcm has PixelSpacing \(nan, nan\), not positive"),
    ("orientation not a number", r"series 'series': member .*\.dcm has ImageOrientationPatient \(nan, "),
    ("position not finite", r"series 'series': member .*\.dcm has ImagePositionPatient \(nan, 0.0, 3.0\)"),
])
def test_broken_zips_are_bad_scans_naming_zip_and_member(damage, match, tmp_path):
    members = _one_series_members()
    data = zip_bytes(members)
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "not a zip":
        data = b"<html>503 Service Unavailable</html>"
    elif damage == "corrupt member":
        raw = bytearray(data)
        start = raw.index(members[1][0].encode()) + len(members[1][0]) + 40  # inside member 2's data
        raw[start:start + 64] = bytes(64)
        data = bytes(raw)
    elif damage == "not dicom":
        data = zip_bytes(members + [("notes.dcm", b"not a dicom file")])
    elif damage == "missing slice":
        data = zip_bytes(members[:1] + members[2:])  # members are in slice order
    elif damage == "empty":
        data = zip_bytes([("manifest.cvs", b"filename\n")])
    elif damage == "encrypted member":  # the flag set in the member's local and central headers
        raw = bytearray(data)
        for signature, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            raw[raw.index(signature) + at] |= 1
        data = bytes(raw)
    elif damage in ("zero pixel spacing", "negative pixel spacing", "position not finite",
                    "pixel spacing not a number", "orientation not a number"):
        data = zip_bytes([(name, _changed(member, damage, k)) for k, (name, member) in enumerate(members)])
    uri = str(tmp_path / "1000001_20201_2_0.zip")
    Store().write_bytes(uri, data)
    with pytest.raises(BadScanError, match=match) as info:
        read_zip_series(Store(), uri)
    assert "1000001_20201_2_0.zip" in str(info.value) and info.value.stage == "read"


@pytest.mark.parametrize("limits,match", [(ReadLimits(max_file_mb=0.001), "max_file_mb"),
                                          (ReadLimits(max_decompressed_mb=0.002), "max_decompressed_mb"),
                                          (ReadLimits(max_dim=7), "max_dim")])
def test_limits_are_checked_before_reading(limits, match, tmp_path):
    uri = str(tmp_path / "a.zip")
    Store().write_bytes(uri, zip_bytes(_one_series_members()))
    with pytest.raises(ScanTooLargeError, match=match):
        read_zip_series(Store(), uri, limits)


# -- streaming from object storage ----------------------------------------------------------------------
def test_zip_streams_from_s3_once(s3_root, phantom_zip, zip_stations, monkeypatch):
    """Read from S3 through a file object: the whole zip crosses the network once, not twice."""
    import s3fs.core

    store, root = s3_root
    uri = f"{root}/Bulk/{ukbb_zip_name(PID, '0')}"
    with open(phantom_zip, "rb") as f:
        store.write_bytes(uri, f.read())
    fetched = []
    real = s3fs.core.S3File._fetch_range
    monkeypatch.setattr(s3fs.core.S3File, "_fetch_range",
                        lambda self, start, end: fetched.append(end - start) or real(self, start, end))
    stations = read_ukbb_zip(store, uri)
    assert sum(fetched) <= 1.05 * store.size(uri)
    assert all(np.array_equal(a.array, b.array) for c in CONTRASTS
               for a, b in zip(stations[c], zip_stations[c]))

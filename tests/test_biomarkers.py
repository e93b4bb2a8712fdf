"""Tests of mrseg_cohort.biomarkers, one section per module: tiny cases with hand-computed answers,
phantoms whose truth is known by construction, and real label maps (skipped when absent), each
checked against an independent computation (numpy counts, scipy.ndimage, SimpleITK)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from mrseg_cohort.biomarkers import (EXPECTED_WHEN, STRUCTURE_COLUMNS, centroid_world_mm, component_sizes,
                                     erode_inplane, fat_fraction_pct, lr_plausibility, measure_scan,
                                     missing_structures, structure_components, structure_fat_fractions,
                                     structure_intensities, structure_volumes, swap_check, touches_border)
from mrseg_cohort.config import MeasuresConfig
from mrseg_cohort.geometry import IDENTITY_DIRECTION, Grid, Volume
from mrseg_cohort.labels import MRSEG, VESSEL_NAMES, LabelMap, Structure
from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant
from mrseg_cohort.phantom.stations import station_layout, station_slices

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = next((p for p in (ROOT / "shared" / "data" / "totalsegmentator-examples",
                             ROOT.parent / "shared" / "data" / "totalsegmentator-examples") if p.is_dir()), None)
needs_examples = pytest.mark.skipif(EXAMPLES is None, reason="shared/data/totalsegmentator-examples absent")
RAS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
STRUCTURE_BY_CONNECTIVITY = {6: 1, 18: 2, 26: 3}  # connectivity -> rank for generate_binary_structure


# -- shared inputs ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def phantom():
    return render_spec_participant(PhantomSpec(participants=1, seed=3), 0)


@pytest.fixture(scope="module")
def phantom_measures(phantom):
    images = {"water": Volume(phantom.water, phantom.grid), "fat": Volume(phantom.fat, phantom.grid),
              "in": Volume(phantom.in_phase, phantom.grid)}
    return measure_scan(Volume(phantom.labels, phantom.grid), MRSEG, images, "fat", "water", MeasuresConfig(), "in")


def _mrseg_name(ts_name: str) -> str:
    """TotalSegmentator name -> MRSegmentator name (``kidney_left`` -> ``left_kidney``, lobes -> lung)."""
    renames = {"autochthon": "autochthonous_muscle", "iliopsoas": "iliopsoas_muscle"}
    for side in ("left", "right"):
        if ts_name.startswith("lung_") and ts_name.endswith(f"_{side}"):
            return f"{side}_lung"
        if ts_name.endswith(f"_{side}"):
            base = ts_name[: -len(side) - 1]
            return f"{side}_{renames.get(base, base)}"
    return ts_name


def _real_labels(kind: str):
    """(labels read through io as a Volume, the SimpleITK image, {value: TotalSegmentator name})."""
    import SimpleITK as sitk

    from mrseg_cohort.io.nifti import read_labels
    from mrseg_cohort.io.storage import Store

    stem = {"mr": "mr_seg_totalsegmentator_mri", "ct": "ct_seg_totalsegmentator"}[kind]
    path = EXAMPLES / f"{stem}.nii.gz"
    names = {int(k): v for k, v in json.loads((EXAMPLES / f"{stem}.labels.json").read_text()).items()}
    return read_labels(Store(), str(path)), sitk.ReadImage(str(path)), names


def _to_mrseg(labels: np.ndarray, names: dict[int, str]) -> np.ndarray:
    """A TotalSegmentator label array relabelled to MRSeg values (unmatched classes -> 0)."""
    lut = np.zeros(256, dtype=np.uint8)
    mrseg_ids = {s.name: s.id for s in MRSEG.values()}
    for value, name in names.items():
        lut[value] = mrseg_ids.get(_mrseg_name(name), 0)
    return lut[labels]


def _mirrored(labels: np.ndarray) -> np.ndarray:
    """Labels with every left/right pair's values exchanged."""
    lut = np.arange(256, dtype=np.uint8)
    for left, right in MRSEG.pairs():
        lut[left], lut[right] = right, left
    return lut[labels]


# -- volumes ---------------------------------------------------------------------------------------
def test_volume_of_a_box():
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[3:6, 3:7, 2:7] = 5  # 3 * 4 * 5 = 60 voxels
    grid = Grid((10, 10, 10), (3.0, 1.5, 1.5))
    out = structure_volumes(labels, grid, [5, 6], border_margin_voxels=1)
    assert out[5] == {"n_voxels": 60, "volume_ml": pytest.approx(60 * 3.0 * 1.5 * 1.5 / 1000),
                      "touches_border": False}
    assert out[6] == {"n_voxels": 0, "volume_ml": 0.0, "touches_border": False}
    # x starts at index 2: two voxels from the edge
    assert not structure_volumes(labels, grid, [5], border_margin_voxels=1)[5]["touches_border"]
    assert structure_volumes(labels, grid, [5], border_margin_voxels=2)[5]["touches_border"]


@pytest.mark.parametrize("index, margin, expected", [(0, 0, True), (1, 0, False), (1, 1, True), (9, 0, True),
                                                     (7, 2, True), (6, 2, False)])
def test_touches_border_margin(index, margin, expected):
    labels = np.zeros((10, 10, 10), np.uint8)
    labels[5, 5, index] = 1
    grid = Grid((10, 10, 10), (1.0, 1.0, 1.0))
    assert structure_volumes(labels, grid, [1], margin)[1]["touches_border"] is expected


def _border_zone(shape: tuple[int, ...], margin: int) -> np.ndarray:
    zone = np.ones(shape, dtype=bool)
    zone[tuple(slice(margin + 1, n - margin - 1) for n in shape)] = False
    return zone


def test_volumes_on_phantom_equal_independent_counts(phantom):
    voxel_ml = np.prod(phantom.grid.spacing_mm) / 1000
    out = structure_volumes(phantom.labels, phantom.grid, list(MRSEG), border_margin_voxels=3)
    zone = _border_zone(phantom.labels.shape, 3)
    for label_id, rec in out.items():
        mask = phantom.labels == label_id
        assert rec["n_voxels"] == np.count_nonzero(mask)
        assert rec["volume_ml"] == pytest.approx(np.count_nonzero(mask) * voxel_ml)
        assert rec["touches_border"] == bool((mask & zone).any())
    assert out[MRSEG.id_of("left_femur")]["touches_border"]  # the femurs run out of the field of view


@needs_examples
@pytest.mark.parametrize("kind", ["mr", "ct"])
def test_volumes_on_real_label_maps_equal_simpleitk_counts(kind):
    import SimpleITK as sitk

    volume, image, names = _real_labels(kind)
    array = sitk.GetArrayFromImage(image)
    voxel_ml = np.prod(image.GetSpacing()) / 1000
    out = structure_volumes(volume.array, volume.grid, list(names), border_margin_voxels=3)
    zone = _border_zone(array.shape, 3)
    assert sum(r["n_voxels"] > 0 for r in out.values()) > 10
    for value, rec in out.items():
        n = np.count_nonzero(array == value)
        assert rec["n_voxels"] == n, names[value]
        assert rec["volume_ml"] == pytest.approx(n * voxel_ml)
        # the io layer keeps (z, y, x) order: the same voxels touch the edge
        assert rec["touches_border"] == bool(((array == value) & zone).any())


def test_touches_border_absent_and_bad_margin():
    assert touches_border(None, (4, 4, 4), 3) is False
    with pytest.raises(ValueError, match="border_margin_voxels"):
        touches_border((slice(0, 1),) * 3, (4, 4, 4), -1)


# -- fat fraction ----------------------------------------------------------------------------------
def test_fat_fraction_map_convention():
    fat = np.array([[[10.0, 0.0, 5.0]]])
    water = np.array([[[30.0, 0.0, -5.0]]])
    mask = np.array([[[True, True, True]]])
    ff = fat_fraction_pct(fat, water, mask)
    assert ff[0, 0, 0] == pytest.approx(25.0)
    assert math.isnan(ff[0, 0, 1]) and math.isnan(ff[0, 0, 2])  # F+W = 0: left out
    assert math.isnan(fat_fraction_pct(fat, water, ~mask)[0, 0, 0])


def test_erosion_is_inplane_only():
    mask = np.zeros((7, 9, 9), bool)
    mask[1:6, 2:7, 2:7] = True  # 5 slices of 5 x 5
    eroded = erode_inplane(mask, 1)
    assert np.count_nonzero(eroded) == 5 * 3 * 3  # every slice kept, each 3 x 3
    assert eroded[1:6, 3:6, 3:6].all()
    assert np.count_nonzero(erode_inplane(mask, 2)) == 5 * 1 * 1
    assert np.array_equal(erode_inplane(mask, 0), mask)


_CROSS_INPLANE = np.zeros((3, 3, 3), dtype=bool)
_CROSS_INPLANE[1] = ndi.generate_binary_structure(2, 1)


@settings(max_examples=300, deadline=None)
@given(shape=st.tuples(st.integers(1, 6), st.integers(1, 9), st.integers(1, 9)), density=st.floats(0.3, 1.0),
       iterations=st.integers(0, 4), seed=st.integers(0, 2**32 - 1))
def test_erosion_equals_scipys_binary_erosion_with_the_inplane_cross(shape, density, iterations, seed):
    mask = np.random.default_rng(seed).random(shape) < density
    expected = ndi.binary_erosion(mask, _CROSS_INPLANE, iterations=iterations, border_value=0) if iterations \
        else mask
    assert np.array_equal(erode_inplane(mask, iterations), expected)


def _reference_ff(labels, fat, water, label_id, erosion):
    """Plain per-slice 2-D erosion on the whole volume, then numpy statistics."""
    mask = labels == label_id
    eroded = np.stack([ndi.binary_erosion(s, iterations=erosion) if erosion else s for s in mask])
    f, w = fat[eroded].astype(float), water[eroded].astype(float)
    keep = f + w > 0
    ff = 100 * f[keep] / (f[keep] + w[keep])
    return ff


@pytest.mark.parametrize("erosion", [0, 1, 2])
def test_fat_fraction_equals_plain_computation(erosion):
    rng = np.random.default_rng(11)
    labels = np.zeros((6, 20, 20), np.uint8)
    labels[1:5, 2:12, 3:15] = 1
    labels[0:6, 10:19, 10:19] = 2  # overlaps 1, touches the field-of-view edge in z
    fat = rng.uniform(0, 100, labels.shape).astype(np.float32)
    water = rng.uniform(0, 300, labels.shape).astype(np.float32)
    water[2, 5, 5] = fat[2, 5, 5] = 0  # an F+W = 0 voxel inside structure 1
    out = structure_fat_fractions(labels, fat, water, [1, 2], erosion)
    for label_id in (1, 2):
        ff = _reference_ff(labels, fat, water, label_id, erosion)
        rec = out[label_id]
        assert rec["ff_n_voxels"] == ff.size
        assert rec["ff_median_pct"] == pytest.approx(np.median(ff))
        assert rec["ff_mean_pct"] == pytest.approx(ff.mean())
        assert rec["ff_p10_pct"] == pytest.approx(np.percentile(ff, 10))
        assert rec["ff_p90_pct"] == pytest.approx(np.percentile(ff, 90))
        assert rec["ff_eroded_empty"] is False


def test_fat_fraction_eroded_empty_and_absent():
    labels = np.zeros((6, 10, 10), np.uint8)
    labels[1:5, 4, 2:8] = 3  # one voxel thick in y: in-plane erosion removes all of it
    fat = np.full(labels.shape, 10.0, np.float32)
    water = np.full(labels.shape, 90.0, np.float32)
    out = structure_fat_fractions(labels, fat, water, [3, 4], erosion_voxels_inplane=1)
    assert out[3]["ff_eroded_empty"] is True and out[3]["ff_n_voxels"] == 0
    assert all(math.isnan(out[3][k]) for k in ("ff_median_pct", "ff_mean_pct", "ff_p10_pct", "ff_p90_pct"))
    assert out[4]["ff_eroded_empty"] is False and math.isnan(out[4]["ff_median_pct"])  # absent
    no_erosion = structure_fat_fractions(labels, fat, water, [3], erosion_voxels_inplane=0)[3]
    assert no_erosion["ff_median_pct"] == pytest.approx(10.0) and no_erosion["ff_n_voxels"] == 24


@pytest.mark.parametrize("seed", [3, 8])
def test_fat_fraction_matches_phantom_truth(seed, phantom):
    # Magnitude noise (sigma 4) rectifies low fat signals: vessels (F about 2 units) read a few
    # tenths of a point high (up to 0.62 points over seeds 3..12, the aorta of one seed).
    r = phantom if seed == 3 else render_spec_participant(PhantomSpec(participants=1, seed=seed), 0)
    out = structure_fat_fractions(r.labels, r.fat, r.water, list(MRSEG), erosion_voxels_inplane=1)
    checked = 0
    for label_id, rec in out.items():
        if rec["ff_n_voxels"] >= 100:  # enough voxels that noise does not dominate the median
            assert rec["ff_median_pct"] == pytest.approx(r.ff_truth[MRSEG[label_id].name], abs=0.5), \
                MRSEG[label_id].name
            checked += 1
    assert checked >= 30


def test_fat_fraction_matches_phantom_truth_body_composition(phantom):
    from mrseg_cohort.labels import BODY_COMPOSITION

    out = structure_fat_fractions(phantom.body_comp, phantom.fat, phantom.water, list(BODY_COMPOSITION))
    checked = [i for i, rec in out.items() if rec["ff_n_voxels"] >= 50]
    assert len(checked) == len(BODY_COMPOSITION)  # thin wall muscles and fat depots survive erosion
    for label_id in checked:
        truth = phantom.ff_truth[BODY_COMPOSITION[label_id].name]
        assert out[label_id]["ff_median_pct"] == pytest.approx(truth, abs=0.5), BODY_COMPOSITION[label_id].name


# -- connectivity ----------------------------------------------------------------------------------
@pytest.mark.parametrize("offset, expected", [((1, 1, 1), {6: 2, 18: 2, 26: 1}),
                                              ((0, 1, 1), {6: 2, 18: 1, 26: 1}),
                                              ((0, 0, 1), {6: 1, 18: 1, 26: 1})])
def test_components_of_two_voxels(offset, expected):
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = mask[(1 + offset[0], 1 + offset[1], 1 + offset[2])] = True
    for connectivity, n in expected.items():
        assert component_sizes(mask, connectivity).size == n


def test_component_record_conventions():
    labels = np.zeros((6, 6, 6), np.uint8)
    labels[0:3, 0:3, 0:3] = 1  # 27 voxels
    labels[5, 5, 5] = 1  # a stray voxel: 27/28 = 0.964 >= 0.95, not fragmented
    labels[0:2, 4:6, 0:2] = 2
    labels[4:6, 0:2, 4:6] = 2  # two equal halves: fragmented
    out = structure_components(labels, [1, 2, 3], vessel_ids=[1, 3])
    assert out[1] == {"n_components": 2, "largest_component_fraction": pytest.approx(27 / 28),
                      "single_component": False, "fragmented": False, "connectivity": 26}
    assert out[2]["n_components"] == 2 and out[2]["fragmented"] is True and out[2]["single_component"] is None
    assert out[3]["n_components"] == 0 and out[3]["single_component"] is None
    assert math.isnan(out[3]["largest_component_fraction"])
    with pytest.raises(ValueError, match="connectivity"):
        structure_components(labels, [1], connectivity=8)


def _scipy_components(labels, label_id, connectivity):
    structure = ndi.generate_binary_structure(3, STRUCTURE_BY_CONNECTIVITY[connectivity])
    return ndi.label(labels == label_id, structure=structure)[1]


@pytest.mark.parametrize("connectivity", [6, 18, 26])
def test_components_equal_scipy_on_phantom(phantom, connectivity):
    ids = list(MRSEG)  # vessels and, for fragmentation, every other structure
    vessel_ids = [MRSEG.id_of(n) for n in VESSEL_NAMES]
    out = structure_components(phantom.labels, ids, vessel_ids, connectivity)
    for label_id in ids:
        assert out[label_id]["n_components"] == _scipy_components(phantom.labels, label_id, connectivity)
        assert out[label_id]["connectivity"] == connectivity
    assert all(out[i]["single_component"] is not None for i in vessel_ids)


@needs_examples
@pytest.mark.parametrize("kind", ["mr", "ct"])
@pytest.mark.parametrize("connectivity", [6, 26])
def test_components_equal_scipy_on_real_label_maps(kind, connectivity):
    volume, _, names = _real_labels(kind)
    vessels = [v for v, n in names.items() if _mrseg_name(n) in VESSEL_NAMES]
    out = structure_components(volume.array, list(names), vessels, connectivity)
    assert sum(out[v]["n_components"] > 0 for v in vessels) >= 3
    for value in names:
        assert out[value]["n_components"] == _scipy_components(volume.array, value, connectivity), names[value]


def test_broken_aorta_has_two_components():
    r = render_spec_participant(PhantomSpec(participants=1, seed=3, broken_vessel="aorta"), 0)
    m = measure_scan(Volume(r.labels, r.grid), MRSEG)
    aorta = m.structures[MRSEG.id_of("aorta") - 1]
    assert aorta["structure"] == "aorta"
    assert aorta["n_components"] == 2 and aorta["single_component"] is False and aorta["fragmented"] is True
    assert aorta["n_components"] == _scipy_components(r.labels, MRSEG.id_of("aorta"), 26)


# -- intensity -------------------------------------------------------------------------------------
def test_intensities_equal_numpy_on_phantom(phantom):
    image = phantom.in_phase
    out = structure_intensities(phantom.labels, image, [1, 5, 13, 99])
    for label_id in (1, 5, 13):
        values = image[phantom.labels == label_id].astype(float)
        assert out[label_id]["n_voxels"] == values.size
        assert out[label_id]["mean_intensity"] == pytest.approx(values.mean())
        assert out[label_id]["median_intensity"] == pytest.approx(np.median(values))
        assert out[label_id]["p5_intensity"] == pytest.approx(np.percentile(values, 5))
        assert out[label_id]["p95_intensity"] == pytest.approx(np.percentile(values, 95))
    assert out[99]["n_voxels"] == 0 and math.isnan(out[99]["mean_intensity"])


# -- qc: fat-water swap ----------------------------------------------------------------------------
def _reference_ids():
    return [i for i in MRSEG if MRSEG[i].name == "liver" or MRSEG[i].group == "muscle"]


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_no_swap_on_normal_phantoms(seed, phantom):
    r = phantom if seed == 3 else render_spec_participant(PhantomSpec(participants=1, seed=seed), 0)
    out = swap_check(r.labels, r.fat, r.water, _reference_ids(), r.grid.spacing_mm[0])
    assert out["swap_suspected"] is False
    assert out["swap_slices_inverted"] == 0 and out["swap_slices_evaluated"] > 50
    assert out["swap_fat_median"] < out["swap_water_median"]


def test_swap_of_whole_scan(phantom):
    out = swap_check(phantom.labels, phantom.water, phantom.fat, _reference_ids(), phantom.grid.spacing_mm[0])
    assert out["swap_suspected"] is True
    assert out["swap_slices_inverted"] == out["swap_slices_evaluated"]


def _swap_stations(fat, water, stations):
    fat, water = fat.copy(), water.copy()
    slices = station_slices(station_layout("ukbb", 2.0))
    for k in stations:
        z = slices[k - 1]
        fat[z], water[z] = water[z].copy(), fat[z].copy()
    return fat, water


@pytest.mark.parametrize("stations", [(2, 3), (3,), (2,)])
def test_swap_of_abdominal_stations(phantom, stations):
    liver_z = np.flatnonzero((phantom.labels == MRSEG.id_of("liver")).any(axis=(1, 2)))
    slices = station_slices(station_layout("ukbb", 2.0))
    assert all(set(range(slices[k - 1].start, slices[k - 1].stop)) & set(liver_z) for k in stations)
    fat, water = _swap_stations(phantom.fat, phantom.water, stations)
    out = swap_check(phantom.labels, fat, water, _reference_ids(), phantom.grid.spacing_mm[0])
    assert out["swap_suspected"] is True
    assert out["swap_longest_inverted_mm"] >= 50.0
    assert out["swap_slices_inverted"] < out["swap_slices_evaluated"]  # the rest is not inverted


def test_swap_check_without_reference_tissue():
    labels = np.zeros((4, 4, 4), np.uint8)
    out = swap_check(labels, labels.astype(float), labels.astype(float), [5], 3.0)
    assert out["swap_suspected"] is None and out["swap_reference_voxels"] == 0


# -- qc: left / right ------------------------------------------------------------------------------
def test_lr_plausible_on_phantom_and_mirrored(phantom):
    pairs = MRSEG.pairs()
    assert len(pairs) == 12
    assert all(lr_plausibility(phantom.labels, phantom.grid, pairs).values())
    mirrored = lr_plausibility(_mirrored(phantom.labels), phantom.grid, pairs)
    assert len(mirrored) == 12 and not any(mirrored.values())


def test_lr_uses_world_coordinates_on_tiny_ras_case():
    labels = np.zeros((3, 3, 8), np.uint8)
    labels[1, 1, 1] = 1  # x index 1
    labels[1, 1, 6] = 2  # x index 6
    lps = Grid((3, 3, 8), (1.0, 1.0, 1.0), direction=IDENTITY_DIRECTION)  # index x grows to the left
    ras = Grid((3, 3, 8), (1.0, 1.0, 1.0), direction=RAS_DIRECTION)  # index x grows to the right
    assert lr_plausibility(labels, lps, [(2, 1)]) == {(2, 1): True}
    assert lr_plausibility(labels, ras, [(1, 2)]) == {(1, 2): True}
    assert lr_plausibility(labels, ras, [(2, 1)]) == {(2, 1): False}
    assert lr_plausibility(labels, ras, [(1, 3)]) == {}  # partner absent: not assessed


@needs_examples
@pytest.mark.parametrize("kind, stored", [("ct", "RAS"), ("mr", "LPS")])
def test_lr_on_real_label_maps(kind, stored):
    volume, image, names = _real_labels(kind)
    assert volume.grid.axis_codes() == stored  # Grid gives LPS world coordinates either way
    labels = _to_mrseg(volume.array, names)
    pairs = MRSEG.pairs()
    result = lr_plausibility(labels, volume.grid, pairs)
    assert len(result) >= 4 and all(result.values())
    assert not any(lr_plausibility(_mirrored(labels), volume.grid, pairs).values())
    # in the RAS-stored CT array index x runs to the participant's right: an index rule would
    # call every pair wrong there
    for left, right in result:
        left_of_right = np.nonzero(labels == left)[2].mean() > np.nonzero(labels == right)[2].mean()
        assert left_of_right is np.bool_(stored == "LPS")
    # centroids agree with SimpleITK's own index -> physical (LPS) mapping
    for left, _ in result:
        zyx = ndi.center_of_mass(labels == left)
        expected = image.TransformContinuousIndexToPhysicalPoint([float(v) for v in zyx[::-1]])
        assert centroid_world_mm(labels, volume.grid, left) == pytest.approx(expected, abs=1e-3)


# -- qc: missing -----------------------------------------------------------------------------------
def test_missing_rule():
    assert EXPECTED_WHEN["liver"]
    present = {"heart", "sacrum", "spleen"}
    out = missing_structures(present, ["liver", "spleen", "left_femur", "heart", "unknown"])
    assert out == {"liver": True, "spleen": False, "left_femur": False, "heart": False, "unknown": False}
    assert missing_structures({"heart"}, ["liver"]) == {"liver": False}  # no pelvic anchor: not covered


def test_missing_on_phantom(phantom, phantom_measures):
    assert phantom_measures.scan["n_missing"] == 0
    liver, gallbladder = MRSEG.id_of("liver"), MRSEG.id_of("gallbladder")
    labels = phantom.labels.copy()
    labels[np.isin(labels, [liver, gallbladder])] = 0
    m = measure_scan(Volume(labels, phantom.grid), MRSEG)
    assert m.scan["n_missing"] == 2 and m.scan["missing_structures"] == "gallbladder,liver"
    assert m.structures[liver - 1]["missing"] is True
    # the field of view cut below the heart and lungs: no thoracic anchor, so the liver is not expected
    thorax = [MRSEG.id_of(n) for n in ("heart", "left_lung", "right_lung")]
    cut = labels[: np.flatnonzero(np.isin(labels, thorax).any(axis=(1, 2))).min()]
    m = measure_scan(Volume(cut, phantom.grid.with_shape(cut.shape)), MRSEG)
    assert m.structures[liver - 1]["missing"] is False


# -- scan ------------------------------------------------------------------------------------------
def test_measure_scan_records(phantom, phantom_measures):
    m = phantom_measures
    assert [list(r) for r in m.structures] == [list(STRUCTURE_COLUMNS)] * 40
    assert [r["structure_id"] for r in m.structures] == list(MRSEG)
    assert len(m.intensities) == 3 * 40
    assert {r["image_contrast"] for r in m.intensities} == {"fat", "water", "in"}
    spleen = m.structures[0]
    values = phantom.in_phase[phantom.labels == 1]
    assert spleen["mean_intensity"] == pytest.approx(values.mean(), rel=1e-6)
    assert m.scan["swap_suspected"] is False and m.scan["n_lr_implausible"] == 0
    assert m.scan["n_lr_pairs_assessed"] == 12 and m.scan["n_present"] == 40
    assert m.scan["n_vessels_present"] == 7
    for r in m.structures:
        assert r["lr_plausible"] is (True if MRSEG[r["structure_id"]].partner else None)
        assert (r["single_component"] is None) == (r["structure"] not in VESSEL_NAMES)


def test_measure_scan_absent_structures_and_unknown_values():
    labels = np.zeros((5, 6, 7), np.uint8)
    labels[1:3, 1:3, 1:3] = 5
    labels[4, 5, 6] = 200  # not in the label map
    label_map = LabelMap("tiny", [Structure(5, "liver", "organ", "none"), Structure(7, "aorta", "vessel", "none")])
    m = measure_scan(Volume(labels, Grid(labels.shape, (2.0, 1.0, 1.0))), label_map)
    liver, aorta = m.structures
    assert liver["n_voxels"] == 8 and liver["volume_ml"] == pytest.approx(8 * 2 / 1000)
    assert math.isnan(liver["ff_median_pct"]) and math.isnan(liver["mean_intensity"])
    assert aorta["n_voxels"] == 0 and aorta["n_components"] == 0 and aorta["single_component"] is None
    assert math.isnan(aorta["largest_component_fraction"])
    assert m.scan["n_voxels_unknown_label"] == 1 and m.scan["unknown_label_values"] == "200"
    assert m.scan["swap_suspected"] is None and m.intensities == []


def test_measure_scan_refuses_images_on_another_grid(phantom):
    labels = Volume(phantom.labels, phantom.grid)
    moved = Grid(phantom.grid.shape, phantom.grid.spacing_mm, (0.0, 0.0, 0.0))
    images = {"fat": Volume(phantom.fat, moved), "water": Volume(phantom.water, phantom.grid)}
    with pytest.raises(ValueError, match="image 'fat' is not on the label map's grid .*origin"):
        measure_scan(labels, MRSEG, images, "fat", "water")
    with pytest.raises(ValueError, match="fat and water must be given together"):
        measure_scan(labels, MRSEG, {"fat": Volume(phantom.fat, phantom.grid)}, "fat", None)
    with pytest.raises(ValueError, match="segmented image 'in' is not among"):
        measure_scan(labels, MRSEG, {}, segmented="in")


def test_measure_scan_leaves_inputs_unchanged(phantom):
    labels, fat, water = phantom.labels.copy(), phantom.fat.copy(), phantom.water.copy()
    images = {"fat": Volume(fat, phantom.grid), "water": Volume(water, phantom.grid)}
    measure_scan(Volume(labels, phantom.grid), MRSEG, images, "fat", "water", MeasuresConfig(erosion_voxels_inplane=2))
    assert np.array_equal(labels, phantom.labels) and np.array_equal(fat, phantom.fat)
    assert np.array_equal(water, phantom.water)


def test_measure_scan_refuses_non_integer_labels(phantom):
    with pytest.raises(ValueError, match="integer dtype"):
        measure_scan(Volume(phantom.labels.astype(np.float32), phantom.grid), MRSEG)


def test_touches_border_at_the_edge_of_the_stations_coverage_not_only_the_arrays():
    """A structure cut by a narrower station's side or by a gap between stations lies far from the
    array's edges: it was not flagged although it is cut like one at the edge."""
    from mrseg_cohort.biomarkers.volumes import structure_volumes

    grid = Grid((30, 40, 40), (3.0, 2.0, 2.0))
    labels = np.zeros(grid.shape, np.uint8)
    labels[5:9, 10:20, 10:20] = 1    # next to a gap (slices 10-14 uncovered)
    labels[20:26, 5:15, 28:31] = 2   # next to the narrower upper station's side (x >= 33 uncovered)
    labels[20:26, 10:20, 10:20] = 3  # well inside
    fov = np.ones(grid.shape, bool)
    fov[10:15] = False
    fov[15:, :, 33:] = False
    full = structure_volumes(labels, grid, [1, 2, 3], 3)
    assert not any(full[i]["touches_border"] for i in (1, 2, 3))
    cut = structure_volumes(labels, grid, [1, 2, 3], 3, field_of_view=fov)
    assert cut[1]["touches_border"] and cut[2]["touches_border"] and not cut[3]["touches_border"]
    assert structure_volumes(labels, grid, [2], 1, field_of_view=fov)[2]["touches_border"] is False  # 2 voxels away
    assert [cut[i]["n_voxels"] for i in (1, 2, 3)] == [full[i]["n_voxels"] for i in (1, 2, 3)]

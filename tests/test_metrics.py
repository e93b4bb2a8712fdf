"""mrseg_cohort.metrics: hand-checkable conventions, then agreement with MONAI (the independent
reference; MRSegmentator's own evaluation uses MONAI's DiceMetric and HausdorffDistanceMetric)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from mrseg_cohort.metrics import (dice, evaluate_labels, hd95_mm, label_values, n_components, surface,
                                  vessel_consistency)

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = next((p for p in (REPO / "shared/data/totalsegmentator-examples",
                             REPO.parent / "shared/data/totalsegmentator-examples") if p.is_dir()), None)


# -- tiny cases with answers by hand ----------------------------------------------------------------
def test_dice_of_two_boxes():
    a = np.zeros((4, 6, 6), bool); a[0:2, 0:3, 0:3] = True  # 18 voxels
    b = np.zeros((4, 6, 6), bool); b[1:3, 0:3, 0:3] = True  # 18 voxels, 9 shared
    assert dice(a, b) == pytest.approx(2 * 9 / 36)


def test_empty_conventions():
    empty, one = np.zeros((3, 3, 3), bool), np.zeros((3, 3, 3), bool)
    one[1, 1, 1] = True
    spacing = (3.0, 1.0, 1.0)
    assert math.isnan(dice(empty, empty)) and math.isnan(hd95_mm(empty, empty, spacing))
    assert math.isnan(dice(one, empty))  # reference empty: NaN whatever the prediction
    assert dice(empty, one) == 0.0  # reference present, prediction empty: 0
    assert hd95_mm(one, empty, spacing) == math.inf and hd95_mm(empty, one, spacing) == math.inf

    pred = np.zeros((3, 3, 3), np.uint8); ref = np.zeros((3, 3, 3), np.uint8)
    pred[0, 0, 0] = 1; ref[2, 2, 2] = 2
    m = {r.label: r for r in evaluate_labels(pred, ref, spacing, [1, 2, 3])}
    assert math.isnan(m[1].dice) and m[1].hd95_mm == math.inf and m[1].hd95_one_empty  # false positive
    assert m[2].dice == 0.0 and m[2].hd95_mm == math.inf and m[2].hd95_one_empty  # missed
    assert math.isnan(m[3].dice) and math.isnan(m[3].hd95_mm) and not m[3].hd95_one_empty  # absent
    assert (m[3].n_voxels_pred, m[3].n_components_ref, m[3].volume_ref_ml) == (0, 0, 0.0)


def test_hd95_of_two_voxels_is_their_distance_in_mm():
    a = np.zeros((4, 4, 4), bool); b = np.zeros((4, 4, 4), bool)
    a[0, 0, 0] = True; b[1, 2, 3] = True
    spacing = (3.0, 1.5, 0.5)  # (z, y, x)
    assert hd95_mm(a, b, spacing) == pytest.approx(math.sqrt(3.0 ** 2 + 3.0 ** 2 + 1.5 ** 2))


def test_hd95_is_symmetric_max_of_directed_percentiles():
    # ref: a 1 x 1 x 20 line; pred: its first voxel only. pred->ref: 0; ref->pred: 0..19 voxels.
    ref = np.zeros((1, 1, 20), bool); ref[0, 0, :] = True
    pred = np.zeros_like(ref); pred[0, 0, 0] = True
    expected = np.percentile(np.arange(20) * 2.0, 95)  # x spacing 2 mm; linear interpolation
    assert hd95_mm(pred, ref, (1.0, 1.0, 2.0)) == pytest.approx(expected)
    assert hd95_mm(ref, pred, (1.0, 1.0, 2.0)) == pytest.approx(expected)


def test_surface_is_mask_minus_six_connected_erosion_with_outside_as_background():
    cube = np.ones((3, 3, 3), bool)
    assert surface(cube).sum() == 26 and not surface(cube)[1, 1, 1]  # touches the array border
    slab = np.ones((1, 3, 3), bool)
    assert surface(slab).sum() == 9
    big = np.zeros((7, 7, 7), bool); big[1:6, 1:6, 1:6] = True
    assert surface(big).sum() == 5 ** 3 - 3 ** 3


@pytest.mark.parametrize("offset, expected", [((0, 0, 1), {6: 1, 18: 1, 26: 1}),
                                              ((0, 1, 1), {6: 2, 18: 1, 26: 1}),
                                              ((1, 1, 1), {6: 2, 18: 2, 26: 1})])
def test_components_by_connectivity(offset, expected):
    mask = np.zeros((3, 3, 3), bool); mask[0, 0, 0] = True; mask[offset] = True
    assert {c: n_components(mask, c) for c in (6, 18, 26)} == expected


def test_vessel_consistency_by_hand():
    # 5 scans: absent, one piece, one piece, broken in two, broken in three -> 2 of 4 present
    assert vessel_consistency([0, 1, 1, 2, 3]) == (0.5, 4)
    vc, n = vessel_consistency([0, 0])
    assert math.isnan(vc) and n == 0


def test_volumes_and_label_values():
    pred = np.zeros((4, 4, 4), np.uint8); pred[:2, :2, :2] = 7; pred[3, 3, 3] = 9
    (m,) = evaluate_labels(pred, pred, (2.0, 1.0, 0.5), [7])
    assert m.volume_pred_ml == pytest.approx(8 * 2.0 * 1.0 * 0.5 / 1000) and m.dice == 1.0 and m.hd95_mm == 0
    assert label_values(pred) == {7, 9}


def test_inputs_are_checked():
    a = np.zeros((3, 3, 3), bool)
    with pytest.raises(ValueError, match="one shape"):
        hd95_mm(a, np.zeros((3, 3, 4), bool), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="spacing_mm"):
        hd95_mm(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="connectivity"):
        n_components(a, 8)


# -- agreement with MONAI ---------------------------------------------------------------------------
def monai_dice_hd95(pred: np.ndarray, ref: np.ndarray, spacing_mm, n_classes: int):
    """MONAI's Dice and HD95 per class 1..n_classes (arrays (z, y, x), spacing in that order)."""
    import torch
    from monai.metrics import DiceMetric, HausdorffDistanceMetric
    from monai.networks.utils import one_hot

    def onehot(a):
        return one_hot(torch.from_numpy(a.astype(np.int64))[None, None], num_classes=n_classes + 1)

    p, r = onehot(pred), onehot(ref)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        d = DiceMetric(include_background=False, reduction="none")(p, r)
        h = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            p, r, spacing=list(spacing_mm))
    return d[0].double().numpy(), h[0].double().numpy()


def assert_agree_with_monai(pred, ref, spacing_mm):
    """Dice everywhere and HD95 wherever both masks hold voxels agree to 1e-4 relative. Where
    exactly one is empty we give inf (DESIGN.md); MONAI gives NaN there, the 95th percentile of
    a set of infinities (inf - inf in its linear interpolation)."""
    classes = sorted(label_values(pred) | label_values(ref))  # MONAI's time grows with channels
    ours = evaluate_labels(pred, ref, spacing_mm, classes)
    compact = np.zeros(256, np.uint8)
    compact[classes] = np.arange(1, len(classes) + 1)
    d_ref, h_ref = monai_dice_hd95(compact[pred], compact[ref], spacing_mm, len(classes))
    np.testing.assert_allclose([m.dice for m in ours], d_ref, rtol=1e-4, atol=0, equal_nan=True)
    one_empty = np.array([m.hd95_one_empty for m in ours])
    hd = np.array([m.hd95_mm for m in ours])
    np.testing.assert_allclose(hd[~one_empty], h_ref[~one_empty], rtol=1e-4, atol=0, equal_nan=True)
    assert np.all(np.isinf(hd[one_empty])) and np.all(np.isnan(h_ref[one_empty]))
    assert np.array_equal(one_empty, [(m.n_voxels_pred > 0) != (m.n_voxels_ref > 0) for m in ours])
    return ours


def random_label_map(rng: np.random.Generator, shape, n_classes: int) -> np.ndarray:
    """Smooth random blobs: each voxel takes the class of the largest of n smoothed noise fields,
    where that field is above a threshold (else background)."""
    fields = np.stack([ndimage.gaussian_filter(rng.normal(size=shape), sigma=rng.uniform(1.5, 3.0))
                       for _ in range(n_classes)])
    labels = fields.argmax(0).astype(np.uint8) + 1
    labels[fields.max(0) < np.quantile(fields.max(0), rng.uniform(0.4, 0.8))] = 0
    return labels


def perturb(rng: np.random.Generator, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """A plausible prediction: shifted, classes eroded or dilated, one class sometimes dropped."""
    out = ndimage.shift(labels, rng.integers(-2, 3, size=3), order=0, mode="constant", cval=0)
    for c in range(1, n_classes + 1):
        op = rng.choice(["keep", "erode", "dilate"])
        if op == "erode":
            out[(out == c) & ~ndimage.binary_erosion(out == c)] = 0
        elif op == "dilate":
            out[ndimage.binary_dilation(out == c) & (out == 0)] = c
    if rng.random() < 0.3:
        out[out == rng.integers(1, n_classes + 1)] = 0
    return out


def test_random_anisotropic_pairs_agree_with_monai():
    rng = np.random.default_rng(20240607)
    n_classes, seen_inf, compared = 5, 0, 0
    for _ in range(24):
        shape = tuple(int(s) for s in rng.integers(12, 30, size=3))
        spacing = (float(rng.uniform(2.0, 6.0)), float(rng.uniform(0.6, 1.6)), float(rng.uniform(0.6, 1.6)))
        ref = random_label_map(rng, shape, n_classes)
        ours = assert_agree_with_monai(perturb(rng, ref, n_classes), ref, spacing)
        seen_inf += sum(m.hd95_one_empty for m in ours)
        compared += sum(math.isfinite(m.hd95_mm) for m in ours)
    assert compared >= 100 and seen_inf > 0  # plenty of finite HD95 values, and some one-empty cases


@pytest.mark.skipif(EXAMPLES is None, reason="shared/data/totalsegmentator-examples is not here")
@pytest.mark.parametrize("image, mapping", [
    ("mr_seg_totalsegmentator_mri.nii.gz", "totalsegmentator_total_mr.json"),
    ("ct_seg_totalsegmentator.nii.gz", "totalsegmentator_total.json")])
def test_real_label_maps_against_perturbed_copies_agree_with_monai(image, mapping):
    from mrseg_cohort.evaluation import options_with_map
    from mrseg_cohort.io.nifti import read_labels
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.labels import MRSEG

    store = Store()
    ref = read_labels(store, str(EXAMPLES / image))
    lut = options_with_map(store, str(REPO / "configs/label_maps" / mapping), MRSEG).ref_lut
    labels = lut[ref.array]
    assert len(label_values(labels)) >= 15  # a real multi-organ map
    shifted = ndimage.shift(labels, (1, -1, 2), order=0, mode="constant", cval=0)
    perturbed = perturb(np.random.default_rng(7), labels, 40)  # eroded, dilated, shifted, dropped
    for pred in (shifted, perturbed):
        assert_agree_with_monai(pred, labels, ref.grid.spacing_mm)

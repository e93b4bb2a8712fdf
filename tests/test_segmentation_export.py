"""The boundary-band export equals full trilinear resampling + argmax (and nnU-Net's resampling)."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from mrseg_cohort.segmentation.export import labels_by_boundary_band, labels_by_chunked_resampling


def _smooth_logits(shape, classes, seed) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    raw = rng.normal(size=(classes, *shape)).astype(np.float32)
    smooth = np.stack([ndimage.gaussian_filter(c, 1.5) for c in raw]) * 20
    return torch.from_numpy(smooth)


@pytest.mark.parametrize("shape,out_shape", [((12, 15, 17), (30, 26, 40)), ((20, 11, 9), (13, 30, 9)),
                                             ((8, 8, 8), (8, 8, 8)), ((9, 13, 10), (5, 6, 4))])
def test_band_equals_full_resampling(shape, out_shape):
    logits = _smooth_logits(shape, 6, seed=sum(shape))
    full = torch.nn.functional.interpolate(logits[None], size=out_shape, mode="trilinear",
                                           align_corners=False)[0].argmax(0).numpy()
    band = labels_by_boundary_band(logits, out_shape)
    chunked = labels_by_chunked_resampling(logits, out_shape, channels_per_chunk=4).numpy()
    assert band.dtype == np.uint8 and band.shape == out_shape
    assert (band != full).sum() == 0
    assert (chunked != full).sum() == 0


def _nnunet_labels(logits: torch.Tensor, out_shape, current, new, order_z: int = 0, force=None) -> np.ndarray:
    """nnU-Net's export of ``logits``: resampled (float64, stored in the logits' dtype), float32
    softmax, argmax (convert_predicted_logits_to_segmentation_with_correct_shape's steps)."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    resampled = resample_data_or_seg_to_shape(logits.numpy(), out_shape, current, new, is_seg=False, order=1,
                                              order_z=order_z, force_separate_z=force)
    return torch.softmax(torch.from_numpy(resampled).float(), 0).argmax(0).numpy()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_band_equals_nnunets_export_of_the_same_logits(dtype):
    """Bit for bit, also where classes tie after nnU-Net stores the resampled logits in their dtype."""
    logits = _smooth_logits((14, 16, 18), 5, seed=3).to(dtype)
    out_shape = (28, 40, 31)
    expected = _nnunet_labels(logits, out_shape, (2.0, 2.0, 2.0), (1.0, 0.8, 1.16))
    assert (labels_by_boundary_band(logits, out_shape) == expected).all()


def test_near_ties_are_broken_as_nnunet_breaks_them():
    """An unsure model: float16 logits a few units in the last place apart (as nnU-Net's fp16
    sliding window gives them), upsampled 5:3 so that many interpolated values land on float16
    midpoints. Each of float32 interpolation, torch's double rounding via float32, and a product
    order other than scipy's moves some of these voxels; the band export moves none."""
    rng = np.random.default_rng(11)
    base = rng.normal(size=(1, 9, 12, 10)) * 0.3
    logits = torch.from_numpy((base + rng.integers(-2, 3, size=(7, 9, 12, 10)) * 2.0 ** -11).astype(np.float16))
    out_shape = (15, 20, 17)
    expected = _nnunet_labels(logits, out_shape, (5.0, 5.0, 5.0), (3.0, 3.0, 3.0))
    naive = labels_by_chunked_resampling(logits, out_shape, compute_dtype=torch.float32).numpy()
    assert (naive != expected).sum() > 0, "the case must be hard enough to tell the two apart"
    assert (labels_by_boundary_band(logits, out_shape) == expected).all()


def test_exact_interpolation_equals_skimage_bit_for_bit():
    """The band's float64 interpolation of (voxel, class) pairs reproduces skimage's
    resize(order=1, mode="edge") exactly, edges included (scipy leaves the edge weights unclamped)."""
    from skimage.transform import resize

    from mrseg_cohort.segmentation.export import _interpolate_table, _voxel_axes
    from mrseg_cohort.segmentation.resampling import linear_sampling

    rng = np.random.default_rng(2)
    grid, out_shape, n_classes = (6, 7, 5), (11, 9, 13), 3
    values = rng.normal(size=(n_classes, *grid)).astype(np.float16)
    n_out = int(np.prod(out_shape))
    axes = _voxel_axes([linear_sampling(n, m) for n, m in zip(grid, out_shape)], np.indices(out_shape))
    axes = [tuple((i.ravel(), w.ravel()) for i, w in axis) for axis in axes]
    classes = np.repeat(np.arange(n_classes), n_out)  # every class at every voxel
    voxel = np.tile(np.arange(n_out), n_classes)
    ours = _interpolate_table(values.reshape(-1), int(np.prod(grid)), grid, classes, voxel, axes).reshape(n_classes,
                                                                                                  *out_shape)
    reference = np.stack([resize(v.astype(np.float64), out_shape, order=1, mode="edge", anti_aliasing=False)
                          for v in values])
    assert np.array_equal(ours, reference)

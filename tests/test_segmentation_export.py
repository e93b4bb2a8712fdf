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


def test_band_matches_nnunet_resampling_of_logits():
    """nnU-Net's export resamples logits with skimage order 1 (edge mode), then argmax."""
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    logits = _smooth_logits((14, 16, 18), 5, seed=3)
    out_shape = (28, 40, 31)
    ref = resample_data_or_seg_to_shape(logits.numpy(), out_shape, (2.0, 2.0, 2.0), (1.0, 0.8, 1.16),
                                        is_seg=False, order=1, order_z=0, force_separate_z=None)
    expected = np.argmax(ref, axis=0)
    band = labels_by_boundary_band(logits, out_shape)
    assert np.mean(band == expected) > 0.9999

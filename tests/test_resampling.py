"""Our resampling operators reproduce nnU-Net's resample_data_or_seg_to_shape (skimage / scipy)."""

import numpy as np
import pytest
import torch

from mrseg_cohort.segmentation.export import labels_by_boundary_band, labels_by_chunked_resampling
from mrseg_cohort.segmentation.resampling import ResamplingPlan, resample_image

# (in shape, out shape, current spacing, new spacing): isotropic-ish, separate z decided by the input
# spacing, separate z decided by the new spacing (axis 2), down- and up-sampling mixed
CASES = [((20, 30, 25), (9, 14, 40), (3.0, 1.4, 1.4), (6.0, 3.0, 0.9)),
         ((10, 31, 27), (25, 20, 20), (5.0, 1.0, 1.0), (2.0, 1.5, 1.5)),
         ((12, 16, 18), (12, 33, 9), (1.0, 1.0, 1.0), (1.0, 0.5, 2.0))]


def _nnunet(x: np.ndarray, out_shape, current, new, order: int, force=None, order_z: int = 0) -> np.ndarray:
    from nnunetv2.preprocessing.resampling.default_resampling import resample_data_or_seg_to_shape

    return resample_data_or_seg_to_shape(x, out_shape, current, new, is_seg=False, order=order, order_z=order_z,
                                         force_separate_z=force)


@pytest.mark.parametrize("shape,out_shape,current,new", CASES)
@pytest.mark.parametrize("order", [3, 1])
def test_image_resampling_equals_nnunet(shape, out_shape, current, new, order):
    rng = np.random.default_rng(sum(shape) + order)
    x = (rng.normal(size=shape) * 100 + 300).astype(np.float32)
    x[:, :3] = 0  # a flat region: the cubic spline overshoots next to it and skimage clips
    ref = _nnunet(x[None], out_shape, current, new, order)[0]
    ours = resample_image(torch.from_numpy(x).double(), out_shape, current, new, ResamplingPlan(order)).float().numpy()
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.mean(ours == ref) > 0.99  # float64 as nnU-Net, then one rounding to float32


def test_forced_separate_z_and_the_plans_reader():
    plans = {"resampling_fn_data": "resample_data_or_seg_to_shape",
             "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": True}}
    plan = ResamplingPlan.from_plans(plans, "data")
    assert plan == ResamplingPlan(3, 0, True)
    assert ResamplingPlan.from_plans({"resampling_fn_data": "my_resampling"}, "data") is None
    x = np.random.default_rng(1).normal(size=(8, 20, 22)).astype(np.float32)
    current, new = (2.0, 1.0, 1.0), (1.0, 1.5, 1.5)  # not anisotropic: separate only because forced
    ref = _nnunet(x[None], (16, 13, 15), current, new, 3, force=True)[0]
    ours = resample_image(torch.from_numpy(x).double(), (16, 13, 15), current, new, plan).float().numpy()
    assert np.abs(ours - ref).max() <= 1e-5 * np.abs(ref).max()
    assert np.mean(ours == ref) > 0.99  # float64 as nnU-Net, then one rounding to float32


@pytest.mark.parametrize("shape,out_shape,current,new", CASES)
@pytest.mark.parametrize("order_z", [0, 1])
def test_label_export_equals_nnunet_export_with_separate_z(shape, out_shape, current, new, order_z):
    """nnU-Net's export: logits resampled (order 1, order_z along a separate z) in float64, stored in
    their dtype (float16), float32 softmax, argmax. Both our paths give its labels."""
    rng = np.random.default_rng(7)
    from scipy import ndimage

    logits = np.stack([ndimage.gaussian_filter(c, 1.5) for c in rng.normal(size=(5, *shape))]) * 20
    logits = torch.from_numpy(logits.astype(np.float16))
    resampled = _nnunet(logits.numpy(), out_shape, current, new, 1, order_z=order_z)
    expected = torch.softmax(torch.from_numpy(resampled).float(), 0).argmax(0).numpy()
    plan = ResamplingPlan(1, order_z)
    band = labels_by_boundary_band(logits, out_shape, plan.samplings(shape, out_shape, current, new))
    matrices = plan.matrices(shape, out_shape, current, new)
    chunked = labels_by_chunked_resampling(logits, out_shape, matrices, 2, torch.float64).numpy()
    assert (band == expected).all()
    assert np.mean(chunked == expected) > 0.9999

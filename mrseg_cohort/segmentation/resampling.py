"""nnU-Net's resampling as separable linear operators: the same numbers, on any torch device.

nnU-Net (``resample_data_or_seg_to_shape``) resizes each channel with skimage's ``resize``
(spline of the plans' ``order``, ``mode="edge"``, no anti-aliasing, output clipped to the input's
range), or, for anisotropic spacing ("separate z"), each slice in-plane that way and then the low-
resolution axis with ``map_coordinates(order=order_z, mode="nearest")``. Without the clip both are
separable: the result is ``M_z (x) M_y (x) M_x`` applied to the image, where each ``M`` is the
operator along one axis. Here each ``M`` is obtained by running the *same* library call on the
identity matrix (so it is skimage's/scipy's operator, spline prefilter and edge handling included),
and applied with three matrix products; the clip is applied after, as skimage does.

Results equal nnU-Net's to float32 rounding (tested against ``resample_data_or_seg_to_shape``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

DEFAULT_FN = "resample_data_or_seg_to_shape"


@dataclass(frozen=True)
class ResamplingPlan:
    """How one of nnU-Net's resampling functions is configured in the plans.

    ``order``: spline order in-plane (data: 3, probabilities: 1); ``order_z``: order along the
    low-resolution axis when resampling separately; ``force_separate_z``: None lets the spacing decide.
    """

    order: int
    order_z: int = 0
    force_separate_z: bool | None = None
    separate_z_anisotropy_threshold: float = 3.0  # nnunetv2.configuration.ANISO_THRESHOLD

    @classmethod
    def from_plans(cls, configuration: dict, which: str) -> "ResamplingPlan | None":
        """The plan of ``resampling_fn_<which>`` (``data`` or ``probabilities``); None when the plans
        name another function than nnU-Net's default (callers then use nnU-Net's on the CPU)."""
        if configuration.get(f"resampling_fn_{which}", DEFAULT_FN) != DEFAULT_FN:
            return None
        kwargs = dict(configuration.get(f"resampling_fn_{which}_kwargs", {}))
        kwargs.pop("is_seg", None)
        return cls(**kwargs)

    def low_res_axis(self, current_spacing, new_spacing) -> int | None:
        """The axis resampled separately with ``order_z``, or None (nnU-Net's own rule)."""
        from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis

        separate, axis = determine_do_sep_z_and_axis(self.force_separate_z, current_spacing, new_spacing,
                                                     self.separate_z_anisotropy_threshold)
        return int(axis) if separate and axis is not None else None

    def matrices(self, in_shape, out_shape, current_spacing, new_spacing) -> list[np.ndarray]:
        """One (n_out, n_in) float64 operator per axis."""
        z_axis = self.low_res_axis(current_spacing, new_spacing)
        return [nearest_matrix(n, m, self.order_z) if a == z_axis else spline_matrix(n, m, self.order)
                for a, (n, m) in enumerate(zip(in_shape, out_shape))]

    @property
    def is_interpolating(self) -> bool:
        """Linear or nearest on every axis: each output value is a convex combination of at most two
        neighbours per axis (what the boundary-band export needs)."""
        return self.order <= 1 and self.order_z <= 1

    def samplings(self, in_shape, out_shape, current_spacing, new_spacing) -> list[AxisSampling]:
        """Per axis, the two neighbours and weights of every output index, with scipy's arithmetic
        (only for :attr:`is_interpolating` plans)."""
        if not self.is_interpolating:
            raise ValueError(f"spline order {self.order} (z: {self.order_z}) is not an interpolation of neighbours")
        z_axis = self.low_res_axis(current_spacing, new_spacing)
        out = []
        for a, (n, m) in enumerate(zip(in_shape, out_shape)):
            order = self.order_z if a == z_axis else self.order
            out.append(linear_sampling(n, m) if order == 1 else nearest_sampling(n, m))
        return out


@lru_cache(maxsize=64)
def spline_matrix(n_in: int, n_out: int, order: int) -> np.ndarray:
    """skimage ``resize`` (edge mode, no anti-aliasing, no clip) along one axis, as a matrix."""
    from skimage.transform import resize

    if n_in == n_out:
        return np.eye(n_in)
    return resize(np.eye(n_in), (n_out, n_in), order=order, mode="edge", anti_aliasing=False, clip=False)


@lru_cache(maxsize=64)
def nearest_matrix(n_in: int, n_out: int, order: int = 0) -> np.ndarray:
    """nnU-Net's separate-z step (``map_coordinates``, ``mode="nearest"``) along one axis."""
    from scipy.ndimage import map_coordinates

    if n_in == n_out:
        return np.eye(n_in)
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    rows, cols = np.meshgrid(src, np.arange(n_in), indexing="ij")
    return map_coordinates(np.eye(n_in), [rows, cols], order=order, mode="nearest")


def apply_matrices(x: torch.Tensor, matrices: list[np.ndarray]) -> torch.Tensor:
    """Apply one operator per spatial axis to ``x`` ((..., z, y, x)); shrinking axes first (fewer
    operations). Computes in ``x``'s dtype (float32 or wider) on ``x``'s device."""
    n = len(matrices)
    order = sorted(range(n), key=lambda a: matrices[a].shape[0] / matrices[a].shape[1])
    for a in order:
        m = matrices[a]
        if m.shape[0] == m.shape[1] and np.array_equal(m, np.eye(m.shape[0])):
            continue
        axis = x.ndim - n + a
        op = torch.as_tensor(m, dtype=x.dtype, device=x.device)
        x = torch.movedim(torch.tensordot(op, x, dims=([1], [axis])), 0, axis)
    return x


def resample_image(x: torch.Tensor, out_shape, current_spacing, new_spacing,
                   plan: ResamplingPlan) -> torch.Tensor:
    """One image (z, y, x) resampled as nnU-Net's preprocessing does, clip included."""
    if tuple(x.shape) == tuple(out_shape):
        return x
    mats = plan.matrices(tuple(x.shape), tuple(out_shape), current_spacing, new_spacing)
    clip_axis = plan.low_res_axis(current_spacing, new_spacing)  # separate z: skimage clips per slice
    if clip_axis is None:
        lo, hi = x.min(), x.max()
        return apply_matrices(x, mats).clamp_(lo, hi)
    # separate z: in-plane resize per slice (clipped to that slice's range), then the z step
    other = [a for a in range(3) if a != clip_axis]
    inplane = [np.eye(x.shape[a]) if a == clip_axis else mats[a] for a in range(3)]
    y = apply_matrices(x, inplane)
    lo = x.amin(dim=other, keepdim=True)
    hi = x.amax(dim=other, keepdim=True)
    y = torch.maximum(torch.minimum(y, hi), lo)
    z_only = [mats[a] if a == clip_axis else np.eye(y.shape[a]) for a in range(3)]
    return apply_matrices(y, z_only)


AxisSampling = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(lo, hi, w_lo, w_hi) per output index along one axis: value = w_lo * in[lo] + w_hi * in[hi]."""


def linear_sampling(n_in: int, n_out: int) -> AxisSampling:
    """Order-1 sampling along one axis exactly as scipy computes it for skimage's
    ``resize(order=1, mode="edge")`` (``ndimage.zoom(order=1, mode="nearest", grid_mode=True)``):
    source coordinate ``(d + 0.5) * (n_in / n_out) - 0.5``, weights ``1 - x`` and ``1 - (1 - x)``
    of its fraction x, neighbours clamped to the edges with the weights left unclamped (so an edge
    voxel is ``v * w_lo + v * w_hi``, which rounds differently from ``v``)."""
    cc = (np.arange(n_out, dtype=np.float64) + 0.5) * (np.float64(n_in) / np.float64(n_out)) - 0.5
    start = np.floor(cc)
    w_lo = 1.0 - (cc - start)
    w_hi = 1.0 - w_lo
    lo = np.clip(start, 0, n_in - 1).astype(np.int64)
    hi = np.clip(start + 1, 0, n_in - 1).astype(np.int64)
    return lo, hi, w_lo, w_hi


def nearest_sampling(n_in: int, n_out: int) -> AxisSampling:
    """nnU-Net's separate-z step with ``order_z=0`` (``map_coordinates(order=0, mode="nearest")``)."""
    cc = (np.arange(n_out, dtype=np.float64) + 0.5) * (float(n_in) / n_out) - 0.5
    index = np.clip(np.floor(cc + 0.5), 0, n_in - 1).astype(np.int64)
    return index, index, np.ones(n_out), np.zeros(n_out)

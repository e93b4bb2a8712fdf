"""Which sliding-window tiles touch what could be body: the others need not run (``model.skip_empty_tiles``).

MRI air is noise, so nnU-Net's non-zero crop removes nothing of it. What could be body is found in
the network's own input (the normalised image on the model grid), on a coarse copy, erring towards
body: voxels above Otsu's threshold (skimage) of the whole image, and, in every slice whose own
histogram splits clearly in two (Otsu's effectiveness, between-class over total variance, at least
:data:`BIMODAL_EFFECTIVENESS`: a station far darker than the others, a contrast where much of the body
is dark), above that slice's own threshold; holes within a slice filled (a fat image's dark organs
inside its bright fat); then *every* 26-connected component (cc3d) of at least
:data:`MIN_COMPONENT_VOXELS` coarse voxels, so that stations past a gap, a missing station, or arms
apart from the trunk keep their tiles. A tile runs when its box, grown by ``margin_voxels`` on every
side, meets that mask. With a margin of at least half a patch, every voxel within the margin of the
mask gets exactly the tiles the full sliding window gives it (a tile covering such a voxel lies
within the margin of the mask); only voxels farther out may get fewer tiles, or none, and a voxel no
tile covers is background (where the full sliding window may label noise).

Pure: arrays in, a mask and tile flags out. A body filling the field of view runs every tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import numpy as np


@dataclass(frozen=True)
class BodyMask:
    """The body on a coarse copy of the model grid: ``mask[i, j, k]`` covers model voxels
    ``[i * step, (i + 1) * step)`` along each axis (inclusive integral image in ``cumulative``)."""

    mask: np.ndarray
    step: int
    cumulative: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray, step: int) -> "BodyMask":
        padded = np.zeros(tuple(n + 1 for n in mask.shape), dtype=np.int64)
        padded[1:, 1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1).cumsum(2)
        return cls(mask, step, padded)

    def any_in(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> bool:
        """Whether the mask holds a voxel in model-grid box ``[lo, hi)`` (clipped to the grid)."""
        if any(h <= l for l, h in zip(lo, hi)):
            return False
        a = [max(0, math.floor(v / self.step)) for v in lo]
        b = [min(n, math.ceil(v / self.step)) for v, n in zip(hi, self.mask.shape)]
        if any(x >= y for x, y in zip(a, b)):
            return False
        c = self.cumulative
        (z0, y0, x0), (z1, y1, x1) = a, b
        total = (c[z1, y1, x1] - c[z0, y1, x1] - c[z1, y0, x1] - c[z1, y1, x0]
                 + c[z0, y0, x1] + c[z0, y1, x0] + c[z1, y0, x0] - c[z0, y0, x0])
        return bool(total > 0)


BIMODAL_EFFECTIVENESS = 0.75
"""A slice whose Otsu split explains at least this share of its variance holds two classes (body and
air: 0.78-0.88 on phantom slices, also at a tenth of the brightness); pure MRI air noise (Rayleigh)
gives about 0.66."""
MIN_COMPONENT_VOXELS = 8
"""Components of the coarse mask smaller than this are taken for specks of noise (8 voxels of 6 mm:
1.7 mL)."""


def body_mask(coarse: np.ndarray, step: int) -> BodyMask | None:
    """What could be body in ``coarse`` (every ``step``-th voxel of the normalised model-grid input,
    (z, y, x)); None when it holds a single value (nothing to tell apart: every tile runs)."""
    from scipy.ndimage import binary_fill_holes

    coarse = np.ascontiguousarray(coarse, dtype=np.float32)
    if coarse.size == 0 or float(coarse.min()) == float(coarse.max()):
        return None
    above = coarse > _otsu(coarse)[0]
    for z, plane in enumerate(coarse):
        threshold, effectiveness = _otsu(plane)
        if effectiveness >= BIMODAL_EFFECTIVENESS:
            above[z] |= plane > threshold
        above[z] = binary_fill_holes(above[z])
    labels, n = cc3d.connected_components(above, connectivity=26, return_N=True)
    if n == 0:
        return BodyMask.of(above, step)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    keep = sizes >= MIN_COMPONENT_VOXELS
    keep[0] = False
    return BodyMask.of(keep[labels], step)


def _otsu(values: np.ndarray) -> tuple[float, float]:
    """Otsu's threshold of ``values`` and its effectiveness (between-class over total variance;
    0 for a constant array)."""
    from skimage.filters import threshold_otsu

    if float(values.min()) == float(values.max()):
        return float(values.min()), 0.0
    threshold = float(threshold_otsu(values.ravel()))  # a 2-D plane of 3 or 4 columns is no RGB image
    high = values > threshold
    w1 = float(high.mean())
    if w1 in (0.0, 1.0):
        return threshold, 0.0
    between = w1 * (1 - w1) * (float(values[high].mean()) - float(values[~high].mean())) ** 2
    return threshold, between / float(values.var())


def coarse_step(spacing_mm: tuple[float, ...], target_mm: float = 6.0) -> int:
    """Subsampling of the model grid for the mask: voxels of about ``target_mm`` (at least 1)."""
    return max(1, int(target_mm // max(min(spacing_mm), 1e-6)))


def tiles_to_run(body: BodyMask | None, corners: list[tuple[int, int, int]], patch: tuple[int, int, int],
                 offset: tuple[int, int, int], margin_voxels: tuple[int, int, int]) -> list[bool]:
    """Per tile (``corners`` in padded-array coordinates; ``offset``: where the model grid starts in
    the padded array), whether it meets the body grown by ``margin_voxels``; all True without a mask."""
    if body is None:
        return [True] * len(corners)
    out = []
    for corner in corners:
        lo = tuple(c - o - m for c, o, m in zip(corner, offset, margin_voxels))
        hi = tuple(c - o + p + m for c, o, p, m in zip(corner, offset, patch, margin_voxels))
        out.append(body.any_in(lo, hi))
    return out

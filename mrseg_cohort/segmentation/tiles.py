"""Which sliding-window tiles touch the body: the others need not run.

A whole-body field of view is largely air, and MRI air is noise, so nnU-Net's non-zero crop removes
nothing. The body is found in the network's own input (the normalised image on the model grid):
Otsu's threshold (skimage) on a coarse copy, then the largest 26-connected component (cc3d). A tile
runs when its box, grown by ``margin_voxels`` on every side, meets that mask. With a margin of at
least half a patch, every voxel within the margin of the body gets exactly the tiles the full
sliding window gives it (a tile covering such a voxel lies within the margin of the body); only
voxels farther out may get fewer tiles, or none, and a voxel no tile covers is background.

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


def body_mask(coarse: np.ndarray, step: int) -> BodyMask | None:
    """The body in ``coarse`` (every ``step``-th voxel of the normalised model-grid input, (z, y, x));
    None when it holds a single value (nothing to tell apart: every tile runs)."""
    from skimage.filters import threshold_otsu

    coarse = np.ascontiguousarray(coarse, dtype=np.float32)
    if coarse.size == 0 or float(coarse.min()) == float(coarse.max()):
        return None
    above = coarse > threshold_otsu(coarse)
    largest = cc3d.largest_k(above, k=1, connectivity=26) > 0
    return BodyMask.of(largest, step)


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

"""Logits on the model grid -> uint8 labels on the scan grid, without 41-channel float arrays at
scan resolution.

nnU-Net resamples every logit channel to the scan grid (linear interpolation; nearest along the
low-resolution axis of anisotropic data) and then takes the argmax. Two equivalent ways are used here:

- :func:`labels_by_chunked_resampling` (GPU): the same interpolation, a few channels at a time, with
  a running max/argmax; only one (Z, Y, X) float and one uint8 array live at scan resolution.
- :func:`labels_by_boundary_band` (CPU): exact and much cheaper. Linear interpolation gives each scan
  voxel a convex combination of the 8 model-grid voxels around it. If those 8 share one argmax c,
  then for every class k, sum w_i l_i[c] >= sum w_i l_i[k], so the interpolated argmax is c too. Only
  voxels whose 8 neighbours disagree (a thin band along label boundaries) need their logits
  interpolated; all others take the neighbours' common label.

Both use nnU-Net's own operators per axis (:mod:`mrseg_cohort.segmentation.resampling`: skimage's
``resize(order=1, mode="edge")``, i.e. source coordinate ``(d + 0.5) * n_in / n_out - 0.5`` clamped
to the edges, and scipy's nearest step for a separate z).
"""

from __future__ import annotations

import numpy as np
import torch

from mrseg_cohort.segmentation.resampling import apply_matrices, sampling_of, spline_matrix


def linear_matrices(in_shape, out_shape) -> list[np.ndarray]:
    """nnU-Net's export operators when no axis is resampled separately: order-1 resize per axis."""
    return [spline_matrix(int(n), int(m), 1) for n, m in zip(in_shape, out_shape)]


def labels_by_chunked_resampling(logits: torch.Tensor, out_shape: tuple[int, int, int],
                                 matrices: list[np.ndarray] | None = None,
                                 channels_per_chunk: int = 8) -> torch.Tensor:
    """Argmax of resampled ``logits`` ((C, z, y, x), any device) -> uint8 (Z, Y, X).

    ``matrices``: one operator per axis (:mod:`resampling`; default: linear on every axis)."""
    if tuple(logits.shape[1:]) == tuple(out_shape):
        return logits.argmax(0).to(torch.uint8)
    matrices = matrices or linear_matrices(logits.shape[1:], out_shape)
    best_val = best_idx = None
    for start in range(0, logits.shape[0], channels_per_chunk):
        up = apply_matrices(logits[start:start + channels_per_chunk].float(), matrices)
        val, idx = up.max(0)
        idx = (idx + start).to(torch.uint8)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
        del up, val, idx
    return best_idx


def labels_by_boundary_band(logits: torch.Tensor, out_shape: tuple[int, int, int],
                            matrices: list[np.ndarray] | None = None, chunk_voxels: int = 1 << 18) -> np.ndarray:
    """Exactly the argmax of resampled ``logits`` (CPU tensor (C, z, y, x)), computed by interpolating
    only where the 8 surrounding model-grid voxels disagree. Returns uint8 (Z, Y, X).

    ``matrices``: linear or nearest operator per axis (default: linear on every axis). Nearest is a
    convex combination too (weights 1 and 0), so the argument of the module docstring holds."""
    n_classes, grid = logits.shape[0], tuple(logits.shape[1:])
    # one float32 row of class logits per model-grid voxel: the band's corners are gathered as rows
    table = torch.empty((*grid, n_classes), dtype=torch.float32).copy_(logits.permute(1, 2, 3, 0))
    table = table.view(-1, n_classes)
    coarse = table.argmax(1).to(torch.uint8).numpy().reshape(grid)
    if grid == tuple(out_shape):
        return coarse
    # uniform[z, y, x]: the 2x2x2 cell whose lower corner is (z, y, x) has one label (edges replicated)
    padded = np.pad(coarse, ((0, 1), (0, 1), (0, 1)), mode="edge")
    uniform = np.ones(coarse.shape, dtype=bool)
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                if dz or dy or dx:
                    uniform &= padded[dz:dz + coarse.shape[0], dy:dy + coarse.shape[1],
                                      dx:dx + coarse.shape[2]] == coarse
    matrices = matrices or linear_matrices(coarse.shape, out_shape)
    (lz, hz, wz), (ly, hy, wy), (lx, hx, wx) = (sampling_of(m) for m in matrices)
    labels = coarse[np.ix_(lz, ly, lx)]
    agree = uniform[np.ix_(lz, ly, lx)]
    # a cell replicated at the upper edge (hi == lo) is still exact: weights on the replica are 0
    band = np.flatnonzero(~agree.ravel())
    if band.size:
        zi, yi, xi = np.unravel_index(band, out_shape)
        flat = labels.reshape(-1)
        for start in range(0, band.size, chunk_voxels):
            sl = slice(start, start + chunk_voxels)
            flat[band[sl]] = _interpolated_argmax(
                table, grid, (lz[zi[sl]], hz[zi[sl]], wz[zi[sl]]), (ly[yi[sl]], hy[yi[sl]], wy[yi[sl]]),
                (lx[xi[sl]], hx[xi[sl]], wx[xi[sl]]))
    return labels


def _interpolated_argmax(table: torch.Tensor, grid: tuple[int, int, int], z, y, x) -> np.ndarray:
    """Argmax over classes of the interpolation at the given (lo, hi, w) per axis; ``table`` holds
    one row of class logits per voxel of ``grid`` (C-order)."""
    acc = None
    for zi, wz in ((z[0], 1 - z[2]), (z[1], z[2])):
        for yi, wy in ((y[0], 1 - y[2]), (y[1], y[2])):
            for xi, wx in ((x[0], 1 - x[2]), (x[1], x[2])):
                w = torch.from_numpy(wz * wy * wx)[:, None]
                rows = table.index_select(0, torch.from_numpy((zi * grid[1] + yi) * grid[2] + xi))
                term = rows.mul_(w)
                acc = term if acc is None else acc.add_(term)
    return acc.argmax(1).to(torch.uint8).numpy()

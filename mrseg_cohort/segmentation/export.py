"""Logits on the model grid -> uint8 labels on the scan grid, without 41-channel float arrays at
scan resolution, rounding as nnU-Net's export does.

nnU-Net's export (``convert_predicted_logits_to_segmentation_with_correct_shape``) resamples every
logit channel to the scan grid in float64 (skimage order 1, nearest along a separate low-resolution
axis), stores the result in the logits' own dtype (float16 after its fp16 sliding window), applies a
float32 softmax and takes the argmax (first index on ties). Storing in float16 matters: where the
model is unsure, two classes' interpolated logits round to the same float16 value and the lower
class index wins. Both paths here reproduce that rounding:

- :func:`labels_by_chunked_resampling` (GPU): the same interpolation, a few channels at a time
  (float32 on the device), rounded to the logits' dtype, with a running first-index max/argmax.
- :func:`labels_by_boundary_band` (CPU): exact and much cheaper. Linear interpolation gives each
  scan voxel a convex combination of the 8 model-grid voxels around it. If those 8 share one argmax
  c, and at each of them c leads every lower-indexed class by more than the rounding step of the
  output dtype (and of the float32 softmax), then c is the rounded, interpolated argmax too: for
  every class k, sum w_i (l_i[c] - l_i[k]) >= min_i (l_i[c] - l_i[k]). Only the other voxels (a thin
  band along label boundaries, wider where the model is unsure) are interpolated in float64,
  rounded, passed through the softmax and argmaxed; all others take the corners' common label.

Both use nnU-Net's own operators per axis (:mod:`mrseg_cohort.segmentation.resampling`).
"""

from __future__ import annotations

import numpy as np
import torch

from mrseg_cohort.segmentation.resampling import AxisSampling, apply_matrices, linear_sampling, spline_matrix

SOFTMAX_TIE_MARGIN = 1e-6
"""Smallest logit lead (any dtype) that the float32 softmax cannot turn into a tie (exp(lead) must
exceed 1 by more than a few float32 ulps)."""


def linear_matrices(in_shape, out_shape) -> list[np.ndarray]:
    """nnU-Net's export operators when no axis is resampled separately: order-1 resize per axis."""
    return [spline_matrix(int(n), int(m), 1) for n, m in zip(in_shape, out_shape)]


def labels_by_chunked_resampling(logits: torch.Tensor, out_shape: tuple[int, int, int],
                                 matrices: list[np.ndarray] | None = None, channels_per_chunk: int = 8,
                                 compute_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Argmax of resampled ``logits`` ((C, z, y, x), any device) -> uint8 (Z, Y, X) on that device.

    Each chunk is interpolated in ``compute_dtype`` and rounded to ``logits.dtype`` before the
    argmax, as nnU-Net stores its resampled logits (ties go to the lower class, as in nnU-Net).
    ``matrices``: one operator per axis (:mod:`resampling`; default: linear on every axis)."""
    if tuple(logits.shape[1:]) == tuple(out_shape):
        return logits.argmax(0).to(torch.uint8)
    matrices = matrices or linear_matrices(logits.shape[1:], out_shape)
    best_val = best_idx = None
    for start in range(0, logits.shape[0], channels_per_chunk):
        up = apply_matrices(logits[start:start + channels_per_chunk].to(compute_dtype), matrices)
        val, idx = up.to(logits.dtype).max(0)
        idx = (idx + start).to(torch.uint8)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val  # strict: on a tie the earlier (lower) class is kept
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
        del up, val, idx
    return best_idx


def labels_by_boundary_band(logits: torch.Tensor, out_shape: tuple[int, int, int],
                            samplings: list[AxisSampling] | None = None, chunk_voxels: int = 1 << 18) -> np.ndarray:
    """Exactly the argmax of resampled, rounded ``logits`` (CPU tensor (C, z, y, x); see module
    docstring). Returns uint8 (Z, Y, X).

    ``samplings``: linear or nearest sampling per axis (:meth:`ResamplingPlan.samplings`; default:
    linear on every axis). Nearest is a convex combination too (weights 1 and 0), so the argument of
    the module docstring holds."""
    n_classes, grid = logits.shape[0], tuple(logits.shape[1:])
    # one row of class logits per model-grid voxel, in the logits' own dtype (float16: half the memory)
    table = torch.empty((*grid, n_classes), dtype=logits.dtype).copy_(logits.permute(1, 2, 3, 0))
    table = table.view(-1, n_classes)
    coarse, lead, step = (a.reshape(grid) for a in _argmax_lead_and_step(table, chunk_voxels))
    if grid == tuple(out_shape):  # nothing resampled or rounded; only the softmax can still tie
        close = np.flatnonzero(lead.ravel() <= SOFTMAX_TIE_MARGIN)
        rows = table.index_select(0, torch.from_numpy(close)).float()
        coarse.reshape(-1)[close] = torch.softmax(rows, 1).argmax(1).to(torch.uint8).numpy()
        return coarse
    # uniform[z, y, x]: the 2x2x2 cell whose lower corner is (z, y, x) has one label, and its smallest
    # lead exceeds its largest rounding step (edges replicated)
    pad = ((0, 1), (0, 1), (0, 1))
    padded = [np.pad(a, pad, mode="edge") for a in (coarse, lead, step)]
    same = np.ones(grid, dtype=bool)
    min_lead, max_step = lead.copy(), step.copy()
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                if dz or dy or dx:
                    corner = (slice(dz, dz + grid[0]), slice(dy, dy + grid[1]), slice(dx, dx + grid[2]))
                    same &= padded[0][corner] == coarse
                    np.minimum(min_lead, padded[1][corner], out=min_lead)
                    np.maximum(max_step, padded[2][corner], out=max_step)
    uniform = same & (min_lead > max_step)
    samplings = samplings or [linear_sampling(n, m) for n, m in zip(grid, out_shape)]
    (lz, hz, *wz), (ly, hy, *wy), (lx, hx, *wx) = samplings
    labels = coarse[np.ix_(lz, ly, lx)]
    agree = uniform[np.ix_(lz, ly, lx)]
    # a cell replicated at an edge (hi == lo) is still exact: its voxels are the one corner's values
    band = np.flatnonzero(~agree.ravel())
    if band.size:
        zi, yi, xi = np.unravel_index(band, out_shape)
        flat = labels.reshape(-1)
        for start in range(0, band.size, chunk_voxels):
            sl = slice(start, start + chunk_voxels)
            flat[band[sl]] = _interpolated_argmax(
                table, grid, *(((lo[i], w_lo[i]), (hi[i], w_hi[i])) for lo, hi, (w_lo, w_hi), i in
                               ((lz, hz, wz, zi[sl]), (ly, hy, wy, yi[sl]), (lx, hx, wx, xi[sl]))))
    return labels


def _argmax_lead_and_step(table: torch.Tensor, chunk_voxels: int) -> tuple[np.ndarray, ...]:
    """Per row of ``table`` (voxels x classes): the first-index argmax c (uint8); c's lead over the
    best lower-indexed class (float32, inf for c = 0); and the largest rounding step of
    ``table.dtype`` among the row's values, plus :data:`SOFTMAX_TIE_MARGIN` (float32)."""
    n = table.shape[0]
    labels = np.empty(n, dtype=np.uint8)
    lead = np.empty(n, dtype=np.float32)
    step = np.empty(n, dtype=np.float32)
    relative_step = float(torch.finfo(table.dtype).eps)  # an ulp is at most |x| * eps
    for start in range(0, n, chunk_voxels):
        rows = table[start:start + chunk_voxels].float()
        best = rows.argmax(1)
        below = torch.cummax(rows, 1).values  # below[:, k] = max of classes 0..k
        lower = torch.where(best > 0, below.gather(1, (best - 1).clamp(min=0)[:, None])[:, 0],
                            torch.full_like(rows[:, 0], -torch.inf))
        sl = slice(start, start + rows.shape[0])
        labels[sl] = best.to(torch.uint8).numpy()
        lead[sl] = (rows.gather(1, best[:, None])[:, 0] - lower).numpy()
        step[sl] = (rows.abs().amax(1) * relative_step + SOFTMAX_TIE_MARGIN).numpy()
    return labels, lead, step


def _interpolated_argmax(table: torch.Tensor, grid: tuple[int, int, int], z, y, x) -> np.ndarray:
    """nnU-Net's label where each axis samples ``((lo, w_lo), (hi, w_hi))`` (see
    :func:`_interpolate_rows`): the interpolation rounded to the table's dtype, float32 softmax,
    first-index argmax."""
    acc = _interpolate_rows(table, grid, z, y, x)
    # numpy rounds float64 to float16 once, as nnU-Net's array assignment does (torch goes through
    # float32: double rounding)
    rounded = torch.from_numpy(acc.numpy().astype(_numpy_dtype(table.dtype))).float()
    return torch.softmax(rounded, 1).argmax(1).to(torch.uint8).numpy()


def _interpolate_rows(table: torch.Tensor, grid: tuple[int, int, int], z, y, x) -> torch.Tensor:
    """float64 (N, C): the rows of ``table`` (class values per voxel of ``grid``, C-order)
    interpolated where each axis samples ``((lo, w_lo), (hi, w_hi))`` (index and weight arrays, one
    entry per voxel), exactly as scipy's ``zoom`` does (corners in C order, x fastest; each term
    ``((value * w_z) * w_y) * w_x``, summed from 0)."""
    acc = None
    for zi, wz in z:
        for yi, wy in y:
            for xi, wx in x:
                rows = table.index_select(0, torch.from_numpy((zi * grid[1] + yi) * grid[2] + xi)).double()
                term = rows.mul_(torch.from_numpy(wz)[:, None]).mul_(torch.from_numpy(wy)[:, None])
                term.mul_(torch.from_numpy(wx)[:, None])
                acc = term if acc is None else acc.add_(term)
    return acc


def _numpy_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty(0, dtype=dtype).numpy().dtype

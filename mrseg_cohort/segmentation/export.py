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
- :func:`labels_by_boundary_band` (CPU): exact and much cheaper, in three tiers.

  1. Uniform cells. Linear interpolation gives each scan voxel a convex combination of the 8
     model-grid voxels around it (the "cell"). If those 8 share one argmax c, and at each of them c
     leads every lower-indexed class by more than the rounding step of the output dtype (and of the
     float32 softmax), then c is the rounded, interpolated argmax too: for every class k,
     sum w_i (l_i[c] - l_i[k]) >= min_i (l_i[c] - l_i[k]). Most voxels are decided so, with no
     arithmetic at all.
  2. The band (every other voxel): only the classes that can win are interpolated. Per cell, with
     U_k the largest and m_k the smallest of class k's 8 corner values, L = max_k m_k: the float64
     interpolation of class k, rounded to float16, lies in [m_k, U_k] (every corner term
     ``((v * w_z) * w_y) * w_x`` and every sum is monotone in v, the weights are >= 0, and a constant
     v interpolates to v within float64 error, far below a float16 half-step), so the winner's
     rounded value is at least L, and a class with U_k < L - :data:`SOFTMAX_TIE_MARGIN` (a
     "non-candidate") trails it by more than the margin. Only the candidates (about 4 of 41 on an
     unsure model) are interpolated, in float64 with scipy's arithmetic, and rounded once to float16.
     If the best candidate leads every other candidate by more than the margin, it is nnU-Net's
     label: the float32 softmax cannot tie or reorder values that far apart.
  3. Near-ties (another candidate within the margin of the best, e.g. two classes that round to
     one float16 value): every class is interpolated and rounded, and the float32 softmax and
     first-index argmax decide, as in nnU-Net.

  No array of scan size holds more than one byte per voxel; float64 values exist only for the
  (voxel, candidate class) pairs of one chunk of the band.

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
                            samplings: list[AxisSampling] | None = None, chunk_voxels: int = 1 << 16) -> np.ndarray:
    """Exactly the argmax of resampled, rounded ``logits`` (CPU tensor (C, z, y, x); see module
    docstring). Returns uint8 (Z, Y, X).

    ``samplings``: linear or nearest sampling per axis (:meth:`ResamplingPlan.samplings`; default:
    linear on every axis). Nearest is a convex combination too (weights 1 and 0), so the argument of
    the module docstring holds. ``chunk_voxels`` bounds the temporary memory (model-grid voxels or
    band voxels per step)."""
    n_classes, grid = logits.shape[0], tuple(int(n) for n in logits.shape[1:])
    values = logits.reshape(n_classes, -1).contiguous().numpy()  # (C, N): one row of voxels per class
    coarse, lead, step = (a.reshape(grid) for a in _argmax_lead_and_step(values, chunk_voxels))
    if grid == tuple(out_shape):  # nothing resampled or rounded; only the softmax can still tie
        close = np.flatnonzero(lead.ravel() <= SOFTMAX_TIE_MARGIN)
        coarse.reshape(-1)[close] = _softmax_argmax(values[:, close], values.dtype)
        return coarse
    uniform = _uniform_cells(coarse, lead, step)
    samplings = samplings or [linear_sampling(n, m) for n, m in zip(grid, out_shape)]
    lz, ly, lx = (s[0] for s in samplings)
    labels = _on_scan_grid(coarse, lz, ly, lx)  # each voxel's cell label (the cell's lower corner)
    band = np.flatnonzero(~_on_scan_grid(uniform, lz, ly, lx).ravel())
    # a cell replicated at an edge (hi == lo) is still exact: its voxels are the one corner's values
    if band.size:
        labels.reshape(-1)[band] = _band_labels(values, grid, samplings, band, tuple(out_shape),
                                                np.flatnonzero(~uniform.ravel()), chunk_voxels)
    return labels


def _on_scan_grid(cells: np.ndarray, lz: np.ndarray, ly: np.ndarray, lx: np.ndarray) -> np.ndarray:
    """``cells[lz][:, ly][:, :, lx]`` as a new C-contiguous array (one take per axis)."""
    return cells.take(lz, 0).take(ly, 1).take(lx, 2)


def _argmax_lead_and_step(values: np.ndarray, chunk_voxels: int) -> tuple[np.ndarray, ...]:
    """Per voxel (column of ``values``, classes x voxels): the first-index argmax c (uint8); c's
    lead over the best lower-indexed class (float32, inf for c = 0); and the largest rounding step
    of ``values.dtype`` among the voxel's values, plus :data:`SOFTMAX_TIE_MARGIN` (float32)."""
    n_classes, n = values.shape
    labels = np.empty(n, dtype=np.uint8)
    lead = np.empty(n, dtype=np.float32)
    step = np.empty(n, dtype=np.float32)
    relative_step = np.float32(np.finfo(values.dtype).eps)  # an ulp is at most |x| * eps
    for start in range(0, n, chunk_voxels):
        rows = values[:, start:start + chunk_voxels].astype(np.float32)  # exact
        best_val, best = rows[0].copy(), np.zeros(rows.shape[1], dtype=np.uint8)
        below = np.full(rows.shape[1], -np.inf, dtype=np.float32)  # best of the classes below the leader
        for k in range(1, n_classes):
            better = rows[k] > best_val  # strict: a tie keeps the lower class (first-index argmax)
            np.copyto(below, best_val, where=better)
            np.copyto(best_val, rows[k], where=better)
            np.putmask(best, better, k)
        sl = slice(start, start + rows.shape[1])
        labels[sl], lead[sl] = best, best_val - below
        step[sl] = np.abs(rows).max(0) * relative_step + np.float32(SOFTMAX_TIE_MARGIN)
    return labels, lead, step


def _uniform_cells(coarse: np.ndarray, lead: np.ndarray, step: np.ndarray) -> np.ndarray:
    """uniform[z, y, x]: the 2x2x2 cell whose lower corner is (z, y, x) has one label, and its
    smallest lead exceeds its largest rounding step (edges replicated)."""
    grid = coarse.shape
    pad = ((0, 1), (0, 1), (0, 1))
    padded = [np.pad(a, pad, mode="edge") for a in (coarse, lead, step)]
    same = np.ones(grid, dtype=bool)
    min_lead, max_step = lead.copy(), step.copy()
    for dz, dy, dx in _CORNERS[1:]:
        corner = (slice(dz, dz + grid[0]), slice(dy, dy + grid[1]), slice(dx, dx + grid[2]))
        same &= padded[0][corner] == coarse
        np.minimum(min_lead, padded[1][corner], out=min_lead)
        np.maximum(max_step, padded[2][corner], out=max_step)
    return same & (min_lead > max_step)


_CORNERS = [(dz, dy, dx) for dz in (0, 1) for dy in (0, 1) for dx in (0, 1)]  # C order, x fastest


def _band_labels(values: np.ndarray, grid: tuple[int, int, int], samplings: list[AxisSampling],
                 band: np.ndarray, out_shape: tuple[int, int, int], cells: np.ndarray,
                 chunk_voxels: int) -> np.ndarray:
    """nnU-Net's label of each ``band`` voxel (flat scan-grid indices; their cells, flat model-grid
    indices, are among the sorted ``cells``): tiers 2 and 3 of the module docstring."""
    cell_counts, cell_classes, cell_corners = _candidates(values, grid, cells, max(chunk_voxels // 4, 1))
    cell_first = np.cumsum(cell_counts) - cell_counts
    out = np.empty(band.size, dtype=np.uint8)
    for start in range(0, band.size, chunk_voxels):
        axes = _voxel_axes(samplings, np.unravel_index(band[start:start + chunk_voxels], out_shape))
        (z0, z1), (y0, y1), (x0, x1) = ((lo, hi) for (lo, _), (hi, _) in axes)
        slot = np.searchsorted(cells, (z0 * grid[1] + y0) * grid[2] + x0)
        counts = cell_counts[slot]
        first = np.cumsum(counts) - counts
        voxel = np.repeat(np.arange(slot.size), counts)  # per (voxel, candidate) pair: its voxel
        pair = np.arange(voxel.size) - first[voxel] + cell_first[slot][voxel]  # its (cell, candidate)
        classes = cell_classes[pair]
        # a voxel's "hi" neighbour is its cell's upper corner, or its lower one where clamped or nearest
        steps = [(hi != lo).astype(np.int64) for lo, hi in ((z0, z1), (y0, y1), (x0, x1))]
        corner_rows = pair * 8

        def corner_values(sz: int, sy: int, sx: int) -> np.ndarray:
            corner = (sz * steps[0]) * 4 + (sy * steps[1]) * 2 + sx * steps[2]
            return cell_corners[corner_rows + corner[voxel]].astype(np.float64)

        # one rounding to the logits' dtype (numpy; torch's float64 -> float16 goes through float32 and
        # rounds twice), as nnU-Net stores its resampled logits; held exactly in float64
        interpolated = _interpolate(corner_values, [(w_lo, w_hi) for (_, w_lo), (_, w_hi) in axes], voxel)
        rounded = interpolated.astype(values.dtype).astype(np.float64)
        best = np.maximum.reduceat(rounded, first)
        near = (rounded >= best[voxel] - SOFTMAX_TIE_MARGIN).astype(np.int16)
        leader = np.where(rounded == best[voxel], classes, 255).astype(np.uint8)
        labels = np.minimum.reduceat(leader, first)  # first index among equal bests
        tied = np.flatnonzero(np.add.reduceat(near, first) > 1)
        if tied.size:  # tier 3: all classes, the float32 softmax, first-index argmax
            n_classes = values.shape[0]
            tied_axes = [tuple((i[tied], w[tied]) for i, w in axis) for axis in axes]
            all_classes = np.tile(np.arange(n_classes), tied.size)
            pairs = _interpolate_table(values.reshape(-1), values.shape[1], grid, all_classes,
                                       np.repeat(np.arange(tied.size), n_classes), tied_axes)
            labels[tied] = _softmax_argmax(pairs.reshape(tied.size, n_classes).T, values.dtype)
        out[start:start + slot.size] = labels
    return out


def _candidates(values: np.ndarray, grid: tuple[int, int, int], cells: np.ndarray,
                chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell of ``cells`` (flat lower-corner indices), the classes that can win a voxel in it
    (module docstring, tier 2): their number per cell; the classes, cell by cell, ascending; and
    each such (cell, class)'s values at the cell's 8 corners (float32, exact; corners in C order,
    edges replicated), raveled: pair j's corner c at ``8 * j + c``."""
    counts, classes, corners = [], [], []
    for start in range(0, cells.size, chunk):
        z, y, x = np.unravel_index(cells[start:start + chunk], grid)
        at_corners = np.empty((len(_CORNERS), values.shape[0], z.size), dtype=np.float32)  # (8, C, cells)
        for c, (dz, dy, dx) in enumerate(_CORNERS):
            rows = (np.minimum(z + dz, grid[0] - 1) * grid[1] + np.minimum(y + dy, grid[1] - 1)) * grid[2] \
                + np.minimum(x + dx, grid[2] - 1)
            at_corners[c] = values[:, rows]
        upper, lowest = at_corners.max(0).astype(np.float64), at_corners.min(0)
        can_win = (upper >= lowest.max(0) - SOFTMAX_TIE_MARGIN).T  # (cells, C)
        cell, cls = np.nonzero(can_win)
        counts.append(can_win.sum(1))
        classes.append(cls)
        corners.append(at_corners[:, cls, cell].T.ravel())
    return np.concatenate(counts), np.concatenate(classes).astype(np.int64), np.concatenate(corners)


def _voxel_axes(samplings: list[AxisSampling], index: tuple[np.ndarray, ...]) -> list:
    """Per axis, ``((lo, w_lo), (hi, w_hi))`` of the voxels with these (z, y, x) indices."""
    return [((lo[i], w_lo[i]), (hi[i], w_hi[i])) for (lo, hi, w_lo, w_hi), i in zip(samplings, index)]


def _interpolate(corner_values, weights: list, voxel: np.ndarray) -> np.ndarray:
    """float64 interpolation for each (voxel, class) pair, exactly as scipy's ``zoom`` computes it:
    corners in C order (x fastest), each term ``((value * w_z) * w_y) * w_x``, summed from 0.

    ``corner_values(side_z, side_y, side_x)``: float64 values of each pair at that corner (side 0:
    the lower neighbour, 1: the upper); ``weights``: per axis, ``(w_lo, w_hi)`` arrays with one entry
    per voxel; ``voxel``: each pair's voxel."""
    (wz0, wz1), (wy0, wy1), (wx0, wx1) = weights
    acc = None
    for sz, wz in enumerate((wz0, wz1)):
        wz_pairs = wz[voxel]
        for sy, wy in enumerate((wy0, wy1)):
            wy_pairs = wy[voxel]
            for sx, wx in enumerate((wx0, wx1)):
                term = corner_values(sz, sy, sx)
                term *= wz_pairs
                term *= wy_pairs
                term *= wx[voxel]
                acc = term if acc is None else np.add(acc, term, out=acc)
    return acc


def _interpolate_table(flat: np.ndarray, n_voxels: int, grid: tuple[int, int, int], classes: np.ndarray,
                       voxel: np.ndarray, axes: list) -> np.ndarray:
    """:func:`_interpolate` of class ``classes[j]`` at voxel ``voxel[j]`` from the (C, N) values
    raveled (class k of model-grid voxel r at ``k * n_voxels + r``); ``axes``: per axis,
    ``((lo, w_lo), (hi, w_hi))`` index and weight arrays with one entry per voxel."""
    offset = classes * n_voxels

    def corner_values(sz: int, sy: int, sx: int) -> np.ndarray:
        rows = (axes[0][sz][0] * grid[1] + axes[1][sy][0]) * grid[2] + axes[2][sx][0]
        return flat[offset + rows[voxel]].astype(np.float64)

    return _interpolate(corner_values, [(lo[1], hi[1]) for lo, hi in axes], voxel)


def _softmax_argmax(resampled: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """nnU-Net's label from resampled logits ((C, n), float64 or already ``dtype``): rounded once to
    the logits' ``dtype`` (numpy; torch's float64 -> float16 goes through float32 and rounds twice),
    float32 softmax over the classes, first-index argmax. uint8 (n,)."""
    rounded = torch.from_numpy(np.ascontiguousarray(resampled.astype(dtype))).float()
    return torch.softmax(rounded, 0).argmax(0).to(torch.uint8).numpy()

"""Overlay previews: a coronal and an axial slice of a scan with its labels drawn in colour.

Pure: (z, y, x) arrays with their :class:`Grid` in, RGB PNG bytes out. Orientation is fixed, so
every preview reads the same way whatever the storage orientation of the scan:

- coronal: the participant's head up, the participant's right on the image left (radiological
  convention, as seen from the front);
- axial: anterior up, the participant's right on the image left (radiological, seen from the feet).

Grids are first brought to LPS order by permuting and flipping axes (oblique grids are shown in
their nearest axis-aligned orientation), then each slice is resampled onto square pixels of
``pixel_mm`` (image: linear, labels: nearest). Pixel centres map to world LPS millimetres by
:attr:`PreviewPlane.col_world` / :attr:`PreviewPlane.row_world`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates

from mrseg_cohort.geometry import Grid

View = Literal["coronal", "axial"]
LABEL_ALPHA = 0.5
"""Opacity of the label colours over the grey image."""


@dataclass(frozen=True)
class CanonicalVolume:
    """An array reoriented so its axes run along LPS z (S), y (P), x (L), with world positions.

    ``first_mm`` is the world coordinate of index 0 along each axis (z, y, x), ``spacing_mm`` the
    spacing; world = first + index * spacing along that axis.
    """

    array: np.ndarray
    first_mm: tuple[float, float, float]
    spacing_mm: tuple[float, float, float]


@dataclass(frozen=True)
class PreviewPlane:
    """One rendered slice.

    Attributes:
        png: RGB PNG bytes.
        view: ``coronal`` or ``axial``.
        slice_mm: world LPS coordinate of the slice (y for coronal, z for axial).
        pixel_mm: edge of one (square) pixel in mm.
        col_axis, row_axis: the LPS axis along columns and rows (``x``; ``z`` or ``y``).
        col0_mm, row0_mm: world coordinate of the centre of column 0 and row 0.
        col_step_mm, row_step_mm: world change per column and per row (+pixel_mm or -pixel_mm).
        labels_shown: label values visible in the slice.
    """

    png: bytes
    view: View
    slice_mm: float
    pixel_mm: float
    col_axis: str
    row_axis: str
    col0_mm: float
    row0_mm: float
    col_step_mm: float
    row_step_mm: float
    labels_shown: tuple[int, ...]

    def col_world(self, col: float) -> float:
        return self.col0_mm + col * self.col_step_mm

    def row_world(self, row: float) -> float:
        return self.row0_mm + row * self.row_step_mm


def canonical(array: np.ndarray, grid: Grid) -> CanonicalVolume:
    """``array`` ((z, y, x) on ``grid``) permuted and flipped so its axes increase along LPS z, y, x."""
    direction = grid.direction_matrix  # column j: world direction of index axis j (x, y, z order)
    world_of_index = [int(np.argmax(np.abs(direction[:, j]))) for j in range(3)]
    if sorted(world_of_index) != [0, 1, 2]:
        raise ValueError(f"grid direction {grid.direction} has no clear axis-aligned orientation")
    # array axis a (z, y, x) is index axis 2 - a; wanted array axis w holds world axis 2 - w.
    source_axis = [2 - world_of_index.index(2 - w) for w in range(3)]
    out = np.transpose(array, source_axis)
    spacing = tuple(grid.spacing_mm[a] for a in source_axis)
    flips = []
    for w, a in enumerate(source_axis):
        sign = direction[2 - w, 2 - a]
        flips.append(sign < 0)
        if sign < 0:
            out = np.flip(out, axis=w)
    first_index = np.array([grid.shape[a] - 1 if flip else 0 for a, flip in zip(source_axis, flips)], float)
    zyx0 = np.zeros(3)
    zyx0[source_axis] = first_index
    corner = grid.zyx_to_world(zyx0)  # world (x, y, z) of the canonical voxel (0, 0, 0)
    first = (float(corner[2]), float(corner[1]), float(corner[0]))
    return CanonicalVolume(out, first, spacing)  # type: ignore[arg-type]


def choose_slices(labels: CanonicalVolume) -> tuple[int, int]:
    """(y index, z index) of the canonical labels: the coronal and the axial slice showing the most
    structures (ties: the most labelled voxels, then the lower index). Centre when there are no labels."""
    array = labels.array
    if not array.any():
        return array.shape[1] // 2, array.shape[0] // 2
    return _busiest(array, axis=1), _busiest(array, axis=0)


def _busiest(array: np.ndarray, axis: int) -> int:
    best, best_key = 0, (-1, -1)
    for i in range(array.shape[axis]):
        counts = np.bincount(np.take(array, i, axis=axis).ravel(), minlength=256)
        key = (int(np.count_nonzero(counts[1:])), int(counts[1:].sum()))
        if key > best_key:
            best, best_key = i, key
    return best


def intensity_window(image: np.ndarray, low_pct: float = 1.0, high_pct: float = 99.5) -> tuple[float, float]:
    """Grey-level window from percentiles of the non-zero voxels (a subsample of large images)."""
    sample = image[:: max(1, image.shape[0] // 64)]
    values = sample[sample != 0]
    if values.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(values, [low_pct, high_pct])
    return float(lo), float(hi if hi > lo else lo + 1.0)


def render_plane(image: CanonicalVolume, labels: CanonicalVolume, view: View, index: int,
                 lut: np.ndarray, window: tuple[float, float], pixel_mm: float,
                 alpha: float = LABEL_ALPHA) -> PreviewPlane:
    """One slice as an RGB PNG: grey image, label colours from ``lut`` ((256, 3) uint8) blended
    with opacity ``alpha``. ``index`` is the canonical y (coronal) or z (axial) index."""
    if image.array.shape != labels.array.shape:
        raise ValueError(f"image shape {image.array.shape} != labels shape {labels.array.shape}")
    if view == "coronal":
        img2d, lab2d = image.array[:, index, :], labels.array[:, index, :]
        row_axis, slice_axis = 0, 1          # rows: z, shown superior (largest z) first
    elif view == "axial":
        img2d, lab2d = image.array[index], labels.array[index]
        row_axis, slice_axis = 1, 0          # rows: y, anterior (smallest y) first
    else:
        raise ValueError(f"view must be 'coronal' or 'axial', not {view!r}")
    rows_down = view == "coronal"
    row_coords, row0, row_step = _sample_axis(labels, row_axis, pixel_mm, descending=rows_down)
    col_coords, col0, col_step = _sample_axis(labels, 2, pixel_mm, descending=False)
    rr, cc = np.meshgrid(row_coords, col_coords, indexing="ij")
    grey = map_coordinates(img2d.astype(np.float32), [rr, cc], order=1, mode="nearest")
    lab = lab2d[np.clip(np.rint(rr).astype(int), 0, lab2d.shape[0] - 1),
                np.clip(np.rint(cc).astype(int), 0, lab2d.shape[1] - 1)]
    lo, hi = window
    grey_u8 = np.clip((grey - lo) / (hi - lo) * 255.0, 0, 255)
    rgb = np.repeat(grey_u8[..., None], 3, axis=2)
    labelled = lab > 0
    rgb[labelled] = (1 - alpha) * rgb[labelled] + alpha * lut[lab[labelled]].astype(np.float32)
    png = png_bytes(np.rint(rgb).astype(np.uint8))
    slice_mm = labels.first_mm[slice_axis] + index * labels.spacing_mm[slice_axis]
    names = ("z", "y", "x")
    return PreviewPlane(png, view, float(slice_mm), pixel_mm, "x", names[row_axis], col0, row0, col_step,
                        row_step, tuple(int(v) for v in np.unique(lab) if v))


def default_pixel_mm(labels: CanonicalVolume, longest_px: int = 480) -> float:
    """Pixel size that makes the longest field-of-view edge ``longest_px`` pixels, never finer
    than half the finest voxel spacing."""
    extent = max(n * s for n, s in zip(labels.array.shape, labels.spacing_mm))
    return max(extent / longest_px, min(labels.spacing_mm) / 2)


def png_bytes(rgb: np.ndarray) -> bytes:
    """PNG encoding of an (rows, cols, 3) uint8 array."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (rows, cols, 3) uint8 array, not {rgb.shape} {rgb.dtype}")
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _sample_axis(volume: CanonicalVolume, axis: int, pixel_mm: float,
                 descending: bool) -> tuple[np.ndarray, float, float]:
    """Fractional indices along ``axis`` of pixel centres covering the field of view; the world
    coordinate of the first pixel centre and the world step per pixel."""
    n, spacing, first = volume.array.shape[axis], volume.spacing_mm[axis], volume.first_mm[axis]
    lo, hi = first - spacing / 2, first + (n - 0.5) * spacing
    count = max(1, math.ceil((hi - lo) / pixel_mm - 1e-6))
    step = -pixel_mm if descending else pixel_mm
    start = (hi if descending else lo) + step / 2
    world = start + step * np.arange(count)
    return (world - first) / spacing, start, step

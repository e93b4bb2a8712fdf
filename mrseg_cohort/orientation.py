"""Reorientation to LPS, as MRSegmentator does before predicting (``sitk.DICOMOrient(img, "LPS")``).

MRSegmentator (its SimpleITK reader since 1.3.2) permutes and flips every image's axes so that
index axes (x, y, z) point as closely as possible to world +L, +P, +S, predicts on that array, and
writes the labels back in the input's own orientation. Its weights were trained without mirroring,
so the network must see arrays in this orientation: the same anatomy stored RAS, LPS or with
swapped axes gives one array here.

:func:`lps_reorientation` finds the permutation and flips the way ITK does (the largest absolute
direction cosine is assigned first, then the largest of what remains, ...); :class:`Reorientation`
applies them to (z, y, x) arrays (views, no copy) and undoes them. Only axes are permuted and
flipped: voxel values and world positions are unchanged, oblique directions stay oblique.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrseg_cohort.geometry import Grid, Volume


@dataclass(frozen=True)
class Reorientation:
    """Axis permutation and flips taking arrays on ``source`` to arrays on ``target`` (LPS-aligned).

    Attributes:
        source: the input grid.
        target: the same voxels' grid after reorientation (direction closest to the identity).
        axes: array axes (z, y, x order) of ``source`` that become target axes 0, 1, 2.
        flips: per target array axis, whether it runs backwards through the source.
    """

    source: Grid
    target: Grid
    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` ((z, y, x) on ``source``) as it lies on ``target`` (a view)."""
        out = np.transpose(array, self.axes)
        return out[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]

    def undo(self, array: np.ndarray) -> np.ndarray:
        """``array`` ((z, y, x) on ``target``) back on ``source`` (a view)."""
        unflipped = array[tuple(slice(None, None, -1) if f else slice(None) for f in self.flips)]
        return np.transpose(unflipped, np.argsort(self.axes))

    def volume(self, volume: Volume) -> Volume:
        """``volume`` (on ``source``) reoriented, as a C-contiguous array on ``target``."""
        return Volume(np.ascontiguousarray(self.apply(volume.array)), self.target)


def closest_axes(direction: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """World axis (0 = L, 1 = P, 2 = S) and sign each index axis (x, y, z) is closest to.

    ``direction``: 3x3, column j = world direction of index axis j. Greedy as ITK's
    ``DirectionCosinesToOrientation``: the largest absolute cosine picks first, its row and column
    are removed, and so on, so every index axis gets a different world axis.
    """
    magnitude = np.abs(np.asarray(direction, dtype=np.float64)).copy()
    world, sign = [0, 0, 0], [1, 1, 1]
    for _ in range(3):
        row, col = np.unravel_index(int(np.argmax(magnitude)), magnitude.shape)
        world[col] = int(row)
        sign[col] = 1 if direction[row, col] >= 0 else -1
        magnitude[row, :] = -1.0
        magnitude[:, col] = -1.0
    return tuple(world), tuple(sign)  # type: ignore[return-value]


def lps_reorientation(grid: Grid) -> Reorientation:
    """How to reorient arrays on ``grid`` to LPS (see module docstring)."""
    world, sign = closest_axes(grid.direction_matrix)
    index_for_world = [world.index(w) for w in range(3)]  # index axis (x, y, z) that becomes axis w
    # array axes are (z, y, x): target array axis n holds world axis 2 - n
    axes = tuple(2 - index_for_world[2 - n] for n in range(3))
    flips = tuple(sign[index_for_world[2 - n]] < 0 for n in range(3))
    shape = tuple(grid.shape[a] for a in axes)
    spacing = tuple(grid.spacing_mm[a] for a in axes)
    start = [0, 0, 0]  # source (z, y, x) index of the target's first voxel
    for a, f in zip(axes, flips):
        start[a] = grid.shape[a] - 1 if f else 0
    origin = tuple(grid.zyx_to_world(np.asarray(start, dtype=float)))
    columns = grid.direction_matrix
    new_columns = np.stack([sign[index_for_world[w]] * columns[:, index_for_world[w]] for w in range(3)], axis=1)
    target = Grid(shape, spacing, origin, tuple(new_columns.ravel()))  # type: ignore[arg-type]
    return Reorientation(grid, target, axes, flips)  # type: ignore[arg-type]

"""Smooth solid shapes evaluated on a grid: ellipsoids and tubes (swept spheres along polylines).

Pure functions: each returns a boolean mask on the voxels of an axis-aligned :class:`Grid`
(identity direction), evaluated at voxel centres in LPS millimetres, touching only the sub-block of
voxels inside the shape's bounding box (so 50 shapes on a whole-body grid stay cheap).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrseg_cohort.geometry import IDENTITY_DIRECTION, Grid


@dataclass(frozen=True)
class Ellipsoid:
    """Solid ellipsoid: centre and semi-axes in mm (x, y, z LPS), rotated by ``rotation`` (3x3)."""

    center: tuple[float, float, float]
    radii: tuple[float, float, float]
    rotation: tuple[float, ...] = IDENTITY_DIRECTION

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        rot = np.asarray(self.rotation).reshape(3, 3)
        half = np.sqrt(((rot * np.asarray(self.radii)) ** 2).sum(axis=1))
        c = np.asarray(self.center)
        return c - half, c + half

    def contains(self, points: np.ndarray) -> np.ndarray:
        rot = np.asarray(self.rotation).reshape(3, 3)
        local = (points - np.asarray(self.center)) @ rot  # coordinates along the rotated axes
        return ((local / np.asarray(self.radii)) ** 2).sum(axis=-1) <= 1.0


@dataclass(frozen=True)
class Tube:
    """Union of capsules along a polyline; radius varies linearly between the points' radii (mm)."""

    points: tuple[tuple[float, float, float], ...]
    radii: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.points) < 2 or len(self.points) != len(self.radii):
            raise ValueError("a tube needs >= 2 points and one radius per point")

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        p = np.asarray(self.points)
        r = max(self.radii)
        return p.min(axis=0) - r, p.max(axis=0) + r

    def segments(self) -> list[tuple[np.ndarray, np.ndarray, float, float]]:
        p = np.asarray(self.points, dtype=float)
        return [(p[i], p[i + 1], self.radii[i], self.radii[i + 1]) for i in range(len(p) - 1)]


def rotation_xyz(angles_deg: tuple[float, float, float]) -> tuple[float, ...]:
    """Rotation matrix (row-major 9-tuple) for rotations about x, then y, then z (degrees)."""
    ax, ay, az = np.radians(angles_deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return tuple((rz @ ry @ rx).ravel())


def _check_axis_aligned(grid: Grid) -> None:
    if not np.allclose(grid.direction, IDENTITY_DIRECTION):
        raise ValueError("phantom shapes render on identity-direction (LPS) grids only")


def _block(grid: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[tuple[slice, ...], np.ndarray] | None:
    """Array slices (z, y, x) covering world box [lo, hi] and the (..., 3) xyz centres inside it."""
    origin = np.asarray(grid.origin_mm)
    spacing_xyz = np.asarray(grid.spacing_xyz_mm)
    shape_xyz = np.asarray(grid.shape[::-1])
    start = np.clip(np.floor((lo - origin) / spacing_xyz).astype(int), 0, shape_xyz)
    stop = np.clip(np.ceil((hi - origin) / spacing_xyz).astype(int) + 1, 0, shape_xyz)
    if np.any(stop <= start):
        return None
    axes = [origin[a] + spacing_xyz[a] * np.arange(start[a], stop[a]) for a in range(3)]
    zz, yy, xx = np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    points = np.stack([xx, yy, zz], axis=-1)
    slices = tuple(slice(int(start[a]), int(stop[a])) for a in (2, 1, 0))
    return slices, points


def render(shape: Ellipsoid | Tube, grid: Grid) -> np.ndarray:
    """Boolean (z, y, x) mask of the voxels of ``grid`` whose centres lie inside ``shape``."""
    _check_axis_aligned(grid)
    mask = np.zeros(grid.shape, dtype=bool)
    if isinstance(shape, Ellipsoid):
        found = _block(grid, *shape.bounds())
        if found is not None:
            slices, points = found
            mask[slices] |= shape.contains(points)
        return mask
    for a, b, ra, rb in shape.segments():
        r = max(ra, rb)
        found = _block(grid, np.minimum(a, b) - r, np.maximum(a, b) + r)
        if found is None:
            continue
        slices, points = found
        ab = b - a
        t = np.clip(((points - a) @ ab) / max(float(ab @ ab), 1e-12), 0.0, 1.0)
        nearest = a + t[..., None] * ab
        dist = np.linalg.norm(points - nearest, axis=-1)
        mask[slices] |= dist <= ra + t * (rb - ra)
    return mask

"""Stitch the stations of one scan into one whole-body image on one grid (DESIGN.md section 4).

Pure: station Volumes in, a Volume and seam QC out.

- Stations are ordered by their physical position along the target grid's slice axis.
- Target grid: direction of the most superior station; along each of its axes the finest spacing of
  the stations along that axis (non-square pixels keep their two in-plane spacings), or the spacing
  given; extent the union of the stations' physical extents. Stations that all share one grid keep
  it; a contrast to segment that is a single volume gives the scan its grid (:func:`scan_grid`):
  nothing of it is resampled. :func:`target_grid` over *all* contrasts of a participant gives the
  one grid they all share, so labels of one contrast apply voxel for voxel to the others.
- Each station is resampled linearly onto its part of the target grid (a plain copy when its voxels
  already lie on the target grid), together with its field-of-view mask (1 where the station has
  data: within half a voxel of its outermost voxel centres, as ITK's resampler decides "inside").
- Blending is per voxel: a station's weight is a linear ramp along z ("feathering": rising from its
  z edges) times its field-of-view mask, and each voxel is the weighted mean of the stations that
  cover it. Where one station covers a voxel (stations of unequal in-plane extent, as UK Biobank's
  224 x 156..174) that voxel is the station's own value, bit for bit; where two do, their blend;
  where none does, 0.
- Per seam: overlap (mm), gap (mm, nothing is filled in a gap) and a fusion cost, the mean absolute
  difference of the two stations inside the overlap divided by their mean intensity there.
- Overlapping stations whose orientation differs raise :class:`StitchError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from mrseg_cohort.errors import StitchError
from mrseg_cohort.geometry import Grid, Volume

DIRECTION_TOLERANCE = 1e-3
GAP_TOLERANCE_MM = 1e-3
"""Stations closer than this along z abut (floating-point error is no gap)."""


@dataclass(frozen=True)
class Seam:
    """Junction between two consecutive stations (ordered inferior to superior)."""

    lower: int
    upper: int
    overlap_mm: float
    gap_mm: float
    fusion_cost: float  # NaN when the stations do not overlap


@dataclass(frozen=True)
class Stitched:
    volume: Volume
    seams: tuple[Seam, ...]
    order: tuple[int, ...]
    """Indices of the input stations, inferior to superior."""
    field_of_view: np.ndarray | None = None
    """bool (Z, Y, X): voxels some station covers; None when every voxel is covered. Its edges (a
    narrower station's sides, a gap between stations) cut structures as the array's edges do."""

    @property
    def max_gap_mm(self) -> float:
        return max((s.gap_mm for s in self.seams), default=0.0)

    @property
    def max_fusion_cost(self) -> float:
        costs = [s.fusion_cost for s in self.seams if np.isfinite(s.fusion_cost)]
        return max(costs, default=float("nan"))


def _slice_axis_world(grid: Grid) -> np.ndarray:
    """Unit world vector of the array's first (z) axis."""
    return grid.direction_matrix[:, 2]


def _z_extent(grid: Grid, axis: np.ndarray) -> tuple[float, float]:
    """Min and max position of the grid's voxel centres projected on ``axis`` (mm)."""
    proj = grid.corners_world() @ axis
    return float(proj.min()), float(proj.max())


def target_grid(stations: list[Grid], inplane_spacing_mm: float | None = None,
                z_spacing_mm: float | None = None) -> Grid:
    """The grid that covers all ``stations`` (see module docstring).

    Stations that all lie on one grid (a single volume, or one volume per contrast on one grid) are
    not stitched: their own grid is returned as it is, whatever spacings are configured, so that a
    single volume reaches the network exactly as MRSegmentator would read it. Otherwise each axis of
    the most superior station keeps a spacing of its own: the finest spacing of the stations along
    that axis (``inplane_spacing_mm`` sets both in-plane axes, ``z_spacing_mm`` the slice axis).

    Raises:
        StitchError: no stations.
    """
    if not stations:
        raise StitchError("no stations to stitch")
    if all(g.is_close(stations[0], atol_mm=1e-4, atol_direction=1e-6) for g in stations[1:]):
        return stations[0]
    reference = max(stations, key=lambda g: _z_extent(g, np.array([0.0, 0.0, 1.0]))[1])
    rotation = reference.direction_matrix  # columns: world direction of x, y, z index axes
    spacing_xyz = np.array([_finest_spacing_along(stations, rotation[:, k]) for k in range(3)])
    if inplane_spacing_mm:
        spacing_xyz[:2] = inplane_spacing_mm
    if z_spacing_mm:
        spacing_xyz[2] = z_spacing_mm
    # extent of all station voxel centres in the reference frame (coordinates along its axes)
    local = np.concatenate([g.corners_world() @ rotation for g in stations])
    lo, hi = local.min(axis=0), local.max(axis=0)
    shape_xyz = np.floor((hi - lo) / spacing_xyz + 1e-6).astype(int) + 1
    origin = rotation @ lo
    return Grid(tuple(int(v) for v in shape_xyz[::-1]), tuple(float(v) for v in spacing_xyz[::-1]),
                tuple(origin), tuple(rotation.ravel()))


def _finest_spacing_along(stations: list[Grid], world_axis: np.ndarray) -> float:
    """The finest spacing (mm) of the stations along ``world_axis``: each station's spacing of the
    index axis pointing most nearly that way (stations may store their axes in other orders)."""
    out = []
    for g in stations:
        axis = int(np.argmax(np.abs(g.direction_matrix.T @ world_axis)))
        out.append(g.spacing_xyz_mm[axis])
    return float(min(out))


def scan_grid(stations: dict[str, list[Grid]], segmented: str, inplane_spacing_mm: float | None = None,
              z_spacing_mm: float | None = None) -> Grid:
    """The one grid of a scan's contrasts (``stations``: contrast -> its stations' grids).

    When the contrast to segment is a single volume, its own grid: it reaches the network as it is,
    and the other contrasts are resampled onto it. Otherwise :func:`target_grid` over every station
    of every contrast, once each contrast's stations are known to follow each other along their
    slice axis.

    Raises:
        StitchError: stations of one contrast follow each other along an in-plane axis of their
            arrays (coronal or sagittal stations), which this module does not blend.
    """
    own = stations[segmented]
    if len(own) == 1:
        return own[0]
    for grids in stations.values():
        if len(grids) > 1:
            _check_stacked_along_slices(grids)
    return target_grid([g for grids in stations.values() for g in grids], inplane_spacing_mm, z_spacing_mm)


def _check_stacked_along_slices(stations: list[Grid]) -> None:
    """Refuse the stations of one contrast that follow each other along an in-plane axis of the
    most superior one (see :func:`scan_grid`)."""
    reference = max(stations, key=lambda g: _z_extent(g, np.array([0.0, 0.0, 1.0]))[1])
    rotation = reference.direction_matrix
    centres = np.array([g.corners_world().mean(axis=0) @ rotation for g in stations])
    spread = centres.max(axis=0) - centres.min(axis=0)  # along the reference's x, y, z index axes
    if spread[2] >= max(spread[0], spread[1]):
        return
    axis = "xy"[int(np.argmax(spread[:2]))]
    raise StitchError(f"the stations follow each other along their arrays' {axis} axis (coronal or sagittal "
                      "stations), not along the slice axis; such stations cannot be stitched here: convert "
                      "them to axial stations, or give one stitched volume per contrast", stage="stitch")


def _aligned_offset(station: Grid, target: Grid) -> tuple[int, int, int] | None:
    """Integer (z, y, x) offset of ``station`` inside ``target`` when its voxels lie on the target grid."""
    if not (np.allclose(station.spacing_mm, target.spacing_mm, atol=1e-4)
            and np.allclose(station.direction, target.direction, atol=1e-5)):
        return None
    idx = target.world_to_zyx(np.asarray(station.origin_mm))
    rounded = np.rint(idx)
    if not np.allclose(idx, rounded, atol=1e-3):
        return None
    return tuple(int(v) for v in rounded)  # type: ignore[return-value]


def _to_sitk(volume: Volume) -> sitk.Image:
    img = sitk.GetImageFromArray(volume.array.astype(np.float32, copy=False))
    img.CopyInformation(_to_sitk_geometry(volume.grid))
    return img


def _to_sitk_geometry(grid: Grid) -> sitk.Image:
    """A 1-byte-per-voxel image carrying ``grid``'s geometry (for CopyInformation)."""
    img = sitk.Image(grid.shape[2], grid.shape[1], grid.shape[0], sitk.sitkUInt8)
    img.SetSpacing(grid.spacing_xyz_mm)
    img.SetOrigin(grid.origin_mm)
    img.SetDirection(grid.direction)
    return img


def _station_on_target(station: Volume, target: Grid, z_range: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The station sampled on target slices ``z_range`` (linear, float32 (Z, Y, X), 0 outside the
    station) and its field-of-view mask there (bool (Z, Y, X))."""
    z0, z1 = z_range
    sub = target.crop((z0, 0, 0), (z1, target.shape[1], target.shape[2]))
    offset = _aligned_offset(station.grid, sub)
    if offset is not None:
        values = np.zeros(sub.shape, dtype=np.float32)
        inside = np.zeros(sub.shape, dtype=bool)
        src = station.array
        dst = tuple(slice(max(o, 0), min(o + n, m)) for o, n, m in zip(offset, src.shape, sub.shape))
        srcs = tuple(slice(d.start - o, d.stop - o) for d, o in zip(dst, offset))
        values[dst] = src[srcs]
        inside[dst] = True
        return values, inside
    reference = _to_sitk_geometry(sub)
    values = sitk.Resample(_to_sitk(station), reference, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    # the mask goes through the same resampler, so "inside" is exactly where values were sampled
    ones = sitk.GetImageFromArray(np.ones(station.grid.shape, dtype=np.uint8))
    ones.CopyInformation(_to_sitk_geometry(station.grid))
    inside = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(values), sitk.GetArrayFromImage(inside).astype(bool)


def stitch(stations: list[Volume], grid: Grid) -> Stitched:
    """Resample and blend ``stations`` onto ``grid`` (from :func:`target_grid`).

    Each voxel is the feathered mean of the stations that cover it (weights: distance in mm to the
    station's nearer z edge plus half a slice), a voxel one station covers is that station's value,
    and one no station covers is 0. Only the target slices that two or more stations reach are
    blended; the others are copied from their one station (the same values, without whole-volume
    passes)."""
    axis = _slice_axis_world(grid)
    origin_along = float(np.asarray(grid.origin_mm) @ axis)
    extents = [_z_extent(s.grid, axis) for s in stations]
    order = sorted(range(len(stations)), key=lambda i: extents[i][0])
    half = grid.spacing_mm[0] / 2
    z_pos = origin_along + grid.spacing_mm[0] * np.arange(grid.shape[0])
    per_station: dict[int, tuple[tuple[int, int], np.ndarray, np.ndarray]] = {}
    ramps: dict[int, np.ndarray] = {}
    reach = np.zeros(grid.shape[0], dtype=np.int32)  # stations reaching each target slice
    for i in order:
        lo, hi = extents[i]
        slices = np.flatnonzero((z_pos >= lo - half - 1e-6) & (z_pos <= hi + half + 1e-6))
        if slices.size == 0:
            continue
        z_range = (int(slices[0]), int(slices[-1]) + 1)
        values, inside = _station_on_target(stations[i], grid, z_range)
        # feathering weight: distance (mm) to the station's nearer z edge, plus half a slice
        zz = z_pos[z_range[0]:z_range[1]]
        ramps[i] = np.clip(np.minimum(zz - lo, hi - zz) + half, 1e-6, None).astype(np.float32)[:, None, None]
        per_station[i] = (z_range, values, inside)
        reach[z_range[0]:z_range[1]] += 1
    out = np.zeros(grid.shape, dtype=np.float32)
    field_of_view = np.zeros(grid.shape, dtype=bool)
    for i, ((z0, z1), values, inside) in per_station.items():
        field_of_view[z0:z1] |= inside
        for a, b in _runs(reach[z0:z1] == 1):  # slices this station alone reaches
            mine, ramp = values[a:b], ramps[i][a:b]
            alone = mine * ramp  # where it does not cover a voxel: what blending gives there (0 + value x weight)
            alone += np.float32(0)
            np.copyto(alone, mine, where=inside[a:b])
            out[z0 + a:z0 + b] = alone
    for a, b in _runs(reach >= 2):
        out[a:b] = _blend(order, per_station, ramps, (b - a, *grid.shape[1:]), a)
    seams = tuple(_seam(stations, order[k], order[k + 1], extents, per_station)
                  for k in range(len(order) - 1))
    return Stitched(Volume(out, grid), seams, tuple(order), None if field_of_view.all() else field_of_view)


def _blend(order: list[int], per_station: dict, ramps: dict[int, np.ndarray], shape: tuple[int, int, int],
           a: int) -> np.ndarray:
    """The ``shape[0]`` target slices from ``a`` on, blended from every station reaching them, in
    ``order``: the weighted mean where several cover a voxel, the one station's value where one does."""
    b = a + shape[0]
    acc = np.zeros(shape, dtype=np.float32)
    wsum = np.zeros(shape, dtype=np.float32)
    covered = np.zeros(shape, dtype=np.uint8)
    single = np.zeros(shape, dtype=np.float32)
    for i in order:
        if i not in per_station:
            continue
        (z0, z1), values, inside = per_station[i]
        lo, hi = max(a, z0), min(b, z1)
        if hi <= lo:
            continue
        mine, there, ramp = values[lo - z0:hi - z0], inside[lo - z0:hi - z0], ramps[i][lo - z0:hi - z0]
        acc[lo - a:hi - a] += mine * ramp
        wsum[lo - a:hi - a] += there * ramp
        covered[lo - a:hi - a] += there
        np.copyto(single[lo - a:hi - a], mine, where=there)
    np.divide(acc, wsum, out=acc, where=wsum > 0)
    alone = covered == 1  # the weighted mean of one value can differ from it in the last bit
    acc[alone] = single[alone]
    return acc


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in 1-D ``mask``."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _seam(stations: list[Volume], lower: int, upper: int, extents, per_station) -> Seam:
    if not np.allclose(stations[lower].grid.direction, stations[upper].grid.direction, atol=DIRECTION_TOLERANCE):
        overlapping = extents[upper][0] <= extents[lower][1]
        if overlapping:
            raise StitchError(f"stations {lower + 1} and {upper + 1} overlap but their orientations differ "
                              f"({stations[lower].grid.axis_codes()} vs {stations[upper].grid.axis_codes()}); "
                              "they cannot be blended", stage="stitch")
    # physical extents reach half a slice beyond the outermost voxel centres
    half_slices = (stations[lower].grid.spacing_mm[0] + stations[upper].grid.spacing_mm[0]) / 2
    overlap = extents[lower][1] - extents[upper][0] + half_slices
    gap = -overlap if overlap < -GAP_TOLERANCE_MM else 0.0  # stations that abut are not apart
    cost = float("nan")
    if overlap > 0 and lower in per_station and upper in per_station:
        (a0, a1), va, ma = per_station[lower]
        (b0, b1), vb, mb = per_station[upper]
        z0, z1 = max(a0, b0), min(a1, b1)
        if z1 > z0:
            sa, sb = va[z0 - a0:z1 - a0], vb[z0 - b0:z1 - b0]
            both = ma[z0 - a0:z1 - a0] & mb[z0 - b0:z1 - b0]
            if both.any():
                mean = (np.abs(sa[both]).mean() + np.abs(sb[both]).mean()) / 2
                cost = float(np.abs(sa[both] - sb[both]).mean() / mean) if mean > 0 else float("nan")
    return Seam(lower, upper, max(overlap, 0.0), gap, cost)

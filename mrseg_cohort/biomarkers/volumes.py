"""Structure volumes on the label map's own grid, and whether a structure is cut by the field of view.

``volume_ml = n_voxels * prod(spacing_mm) / 1000``. A structure ``touches_border`` when any of its
voxels lies within ``border_margin_voxels`` voxels of the field-of-view edge along any axis: a voxel
at array index ``i`` on an axis of ``n`` voxels is ``min(i, n - 1 - i)`` voxels from the edge (0 on
the outermost layer), and the flag is raised when that distance is ``<= border_margin_voxels``
(so 0 flags only masks on the outermost layer). It means the structure is probably cut off.

Where the stations of a stitched scan do not cover the whole array (a narrower station, a gap
between stations: ``field_of_view``), the edge of the field of view is wherever covered voxels end:
a voxel is within the margin when a voxel no station covers, or the array's edge, lies in the cube
of ``2 * border_margin_voxels + 1`` voxels around it.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from mrseg_cohort.biomarkers._regions import Box, Regions, check_on_grid, find_regions
from mrseg_cohort.geometry import Grid


def touches_border(box: Box | None, shape: tuple[int, ...], border_margin_voxels: int) -> bool:
    """True when the bounding box ``box`` (z, y, x slices) reaches within ``border_margin_voxels``
    voxels of the edge of an array of ``shape``; False for None (absent structure)."""
    if border_margin_voxels < 0:
        raise ValueError(f"border_margin_voxels must be >= 0, not {border_margin_voxels}")
    if box is None:
        return False
    return any(s.start <= border_margin_voxels or s.stop - 1 >= n - 1 - border_margin_voxels
               for s, n in zip(box, shape))


def near_field_of_view_edge(field_of_view: np.ndarray, border_margin_voxels: int) -> np.ndarray:
    """bool (Z, Y, X): voxels whose cube of ``2 * border_margin_voxels + 1`` voxels reaches outside
    ``field_of_view`` or the array (see module docstring)."""
    from scipy.ndimage import minimum_filter1d

    inside = field_of_view.astype(np.uint8)
    for axis in range(inside.ndim):
        inside = minimum_filter1d(inside, 2 * border_margin_voxels + 1, axis=axis, mode="constant", cval=0)
    return inside == 0


def structure_volumes(labels: np.ndarray, grid: Grid, ids: Iterable[int], border_margin_voxels: int = 3,
                      regions: Regions | None = None, field_of_view: np.ndarray | None = None) -> dict[int, dict]:
    """Voxel count, volume and border contact of each structure id.

    Args:
        labels: (Z, Y, X) integer label map on ``grid``.
        grid: the label map's grid (its spacing gives the voxel volume).
        ids: label values to report; absent ones get 0 voxels, 0.0 mL and no border contact.
        border_margin_voxels: see the module docstring.
        regions: counts and boxes of ``labels`` when already computed (:func:`find_regions`).
        field_of_view: bool (Z, Y, X), voxels the stations cover (None: every voxel).

    Returns:
        ``{id: {"n_voxels": int, "volume_ml": float, "touches_border": bool}}``.

    Example:
        >>> labels = np.zeros((8, 8, 8), np.uint8); labels[1:4, 2:6, 2:7] = 5
        >>> structure_volumes(labels, Grid((8, 8, 8), (3.0, 1.5, 1.5)), [5])[5]["n_voxels"]
        60
    """
    check_on_grid(labels, grid, "labels")
    regions = find_regions(labels) if regions is None else regions
    near_edge = None if field_of_view is None else near_field_of_view_edge(field_of_view, border_margin_voxels)
    voxel_ml = grid.voxel_volume_ml
    out = {}
    for label_id in ids:
        n = regions.n_voxels(label_id)
        cut = touches_border(regions.box(label_id), grid.shape, border_margin_voxels)
        if not cut and near_edge is not None and n:
            box, mask = regions.mask(labels, label_id)
            cut = bool(near_edge[box][mask].any())
        out[label_id] = {"n_voxels": n, "volume_ml": n * voxel_ml, "touches_border": cut}
    return out

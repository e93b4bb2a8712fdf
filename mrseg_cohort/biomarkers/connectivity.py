"""Connected components of structures: vessel connectivity and organ fragmentation.

Components are found with cc3d (``connected_components``) on each structure's bounding box, with
6-, 18- or 26-connectivity (26 by default; the value used is recorded in every record).

- ``n_components``: number of connected components of the structure's mask (0 when absent).
- ``largest_component_fraction``: voxels of the largest component / voxels of the structure
  (NaN when absent).
- ``single_component`` (vessels only, i.e. ids passed as ``vessel_ids``): ``n_components == 1``;
  None for other structures and for absent vessels, so that the cohort vessel consistency
  (mean of ``single_component`` over scans where the vessel is present) is a plain mean over
  non-null values.
- ``fragmented`` (every structure): the largest component holds less than
  ``fragmented_below_fraction`` (default 0.95) of the structure's voxels. A few stray voxels do not
  raise it; a structure split into comparable pieces does. False when absent. It is a QC hint, not
  an error: some structures (colon, small bowel cut by the field of view) can be legitimately split.
"""

from __future__ import annotations

import math
from typing import Iterable

import cc3d
import numpy as np

from mrseg_cohort.biomarkers._regions import Regions, find_regions

CONNECTIVITIES = (6, 18, 26)


def check_connectivity(connectivity: int) -> None:
    """Raise ValueError unless ``connectivity`` is 6, 18 or 26."""
    if connectivity not in CONNECTIVITIES:
        raise ValueError(f"connectivity must be one of {CONNECTIVITIES}, not {connectivity}")


def component_sizes(mask: np.ndarray, connectivity: int = 26) -> np.ndarray:
    """Voxel counts of the connected components of a (Z, Y, X) bool mask, largest first
    (empty array for an empty mask). The one component counter of the project (biomarkers and
    evaluation metrics both count with it)."""
    check_connectivity(connectivity)
    if not mask.any():
        return np.zeros(0, dtype=np.int64)
    components, n = cc3d.connected_components(np.asarray(mask, dtype=np.uint8), connectivity=connectivity,
                                              return_N=True)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.bincount(components.ravel(), minlength=n + 1)[1:].astype(np.int64))[::-1]


def components_record(sizes: np.ndarray, is_vessel: bool, fragmented_below_fraction: float) -> dict:
    """The component columns of one structure from its component sizes (see module docstring)."""
    total = int(sizes.sum())
    if total == 0:
        return {"n_components": 0, "largest_component_fraction": math.nan, "single_component": None,
                "fragmented": False}
    largest = float(sizes[0]) / total
    return {"n_components": int(sizes.size), "largest_component_fraction": largest,
            "single_component": bool(sizes.size == 1) if is_vessel else None,
            "fragmented": bool(largest < fragmented_below_fraction)}


def structure_components(labels: np.ndarray, ids: Iterable[int], vessel_ids: Iterable[int] = (),
                         connectivity: int = 26, fragmented_below_fraction: float = 0.95,
                         regions: Regions | None = None) -> dict[int, dict]:
    """Component counts, largest-component fraction, ``single_component`` (vessels) and
    ``fragmented`` of each structure id, plus the ``connectivity`` used.

    Args:
        labels: (Z, Y, X) integer label map.
        ids: label values to report.
        vessel_ids: the ids that are vessels (get ``single_component``).
        connectivity: 6, 18 or 26 (faces; faces and edges; faces, edges and corners).
        fragmented_below_fraction: threshold of ``fragmented`` in (0, 1].
        regions: counts and boxes of ``labels`` when already computed.

    Example:
        >>> labels = np.zeros((5, 5, 5), np.uint8); labels[0, 0, 0] = labels[2, 2, 2] = 13
        >>> structure_components(labels, [13], [13])[13]["n_components"]
        2
    """
    check_connectivity(connectivity)
    if not 0 < fragmented_below_fraction <= 1:
        raise ValueError(f"fragmented_below_fraction must be in (0, 1], not {fragmented_below_fraction}")
    regions = find_regions(labels) if regions is None else regions
    vessels = set(vessel_ids)
    out = {}
    for label_id in ids:
        found = regions.mask(labels, label_id)
        sizes = np.zeros(0, dtype=np.int64) if found is None else component_sizes(found[1], connectivity)
        out[label_id] = {**components_record(sizes, label_id in vessels, fragmented_below_fraction),
                         "connectivity": connectivity}
    return out

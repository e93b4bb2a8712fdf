"""Signal fat fraction (percent) of structures from Dixon fat and water images; not PDFF.

Per voxel ``ff = 100 * F / (F + W)`` where ``F + W > 0`` (other voxels are left out). It is the
*signal* fat fraction of magnitude Dixon images: no T1, T2* or noise-floor correction, so it is not
the proton-density fat fraction (PDFF). Values are not clipped to 0..100 (phase-sensitive
reconstructions can give negative F or W).

Voxels are taken inside the structure's mask eroded by ``erosion_voxels_inplane`` voxels in-plane
only: a 2-D erosion within each axial slice (array axis 0) with the 4-connected cross, repeated
``erosion_voxels_inplane`` times (voxels within that city-block distance of the mask's in-plane
edge, or of the field-of-view edge, are dropped); 0 means no erosion. This keeps partial-volume
voxels at the organ boundary out without losing thin slices along z.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from mrseg_cohort.biomarkers._regions import Regions, find_regions

EMPTY_FF = {"ff_median_pct": math.nan, "ff_mean_pct": math.nan, "ff_p10_pct": math.nan,
            "ff_p90_pct": math.nan, "ff_n_voxels": 0, "ff_eroded_empty": False}
"""Fat-fraction record of an absent structure (or of a scan without fat and water images)."""


def fat_fraction_pct(fat: np.ndarray, water: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Signal fat fraction 100*F/(F+W) in percent, not PDFF.

    Args:
        fat, water: (Z, Y, X) arrays on one grid.
        mask: (Z, Y, X) bool.

    Returns:
        (Z, Y, X) float64, NaN outside ``mask`` and where F+W <= 0.
    """
    fat = np.asarray(fat, dtype=np.float64)
    total = fat + np.asarray(water, dtype=np.float64)
    out = np.full(total.shape, np.nan)
    return np.divide(100.0 * fat, total, out=out, where=mask & (total > 0))


def erode_inplane(mask: np.ndarray, erosion_voxels_inplane: int) -> np.ndarray:
    """``mask`` ((Z, Y, X) bool) eroded within each axial slice by the 4-connected cross,
    ``erosion_voxels_inplane`` times; outside the array counts as background."""
    if erosion_voxels_inplane < 0:
        raise ValueError(f"erosion_voxels_inplane must be >= 0, not {erosion_voxels_inplane}")
    if erosion_voxels_inplane == 0 or not mask.any():
        return mask.copy()
    eroded = np.asarray(mask, dtype=bool)
    for _ in range(erosion_voxels_inplane):  # scipy's binary_erosion with the in-plane cross, border 0,
        eroded = _erode_cross_once(eroded)   # as four shifted ANDs (tests/test_biomarkers.py compares them)
    return eroded


def _erode_cross_once(mask: np.ndarray) -> np.ndarray:
    """One in-plane erosion of a (Z, Y, X) bool array by the 4-connected cross (axes 1 and 2),
    outside the array background: a voxel stays when it and its four in-plane neighbours are set."""
    out = mask.copy()
    out[:, 1:, :] &= mask[:, :-1, :]
    out[:, :-1, :] &= mask[:, 1:, :]
    out[:, :, 1:] &= mask[:, :, :-1]
    out[:, :, :-1] &= mask[:, :, 1:]
    out[:, [0, -1], :] = False  # the neighbour outside the array is background
    out[:, :, [0, -1]] = False
    return out


def ff_summary(fat_values: np.ndarray, water_values: np.ndarray) -> dict:
    """Median, mean, p10, p90 (percent; numpy's linear percentiles) and the number of voxels used,
    of the signal fat fraction of paired 1-D fat and water samples; voxels with F+W <= 0 left out.
    No usable voxel gives NaN statistics and ``ff_n_voxels`` 0."""
    fat_values = np.asarray(fat_values, dtype=np.float64)
    total = fat_values + np.asarray(water_values, dtype=np.float64)
    use = total > 0
    n = int(np.count_nonzero(use))
    if n == 0:
        return {k: v for k, v in EMPTY_FF.items() if k != "ff_eroded_empty"}
    ff = 100.0 * fat_values[use] / total[use]
    p10, p50, p90 = np.percentile(ff, [10, 50, 90])
    return {"ff_median_pct": float(p50), "ff_mean_pct": float(ff.mean()), "ff_p10_pct": float(p10),
            "ff_p90_pct": float(p90), "ff_n_voxels": n}


def structure_fat_fractions(labels: np.ndarray, fat: np.ndarray, water: np.ndarray, ids: Iterable[int],
                            erosion_voxels_inplane: int = 1, regions: Regions | None = None) -> dict[int, dict]:
    """Signal fat fraction statistics of each structure id (see the module docstring).

    Args:
        labels: (Z, Y, X) integer label map; fat, water: (Z, Y, X) images on the same grid.
        ids: label values to report.
        erosion_voxels_inplane: in-plane erosion of each mask before sampling (0 = none).
        regions: counts and boxes of ``labels`` when already computed.

    Returns:
        ``{id: {"ff_median_pct", "ff_mean_pct", "ff_p10_pct", "ff_p90_pct": float,
        "ff_n_voxels": int, "ff_eroded_empty": bool}}``. Absent structures: NaN, 0 voxels, flag
        False. Present structures that erosion empties: NaN, 0 voxels, ``ff_eroded_empty`` True.
    """
    if not (labels.shape == fat.shape == water.shape):
        raise ValueError(f"labels {labels.shape}, fat {fat.shape} and water {water.shape} "
                         "must have one shape (one grid)")
    regions = find_regions(labels) if regions is None else regions
    out = {}
    for label_id in ids:
        found = regions.mask(labels, label_id)
        if found is None:
            out[label_id] = dict(EMPTY_FF)
            continue
        box, mask = found
        eroded = erode_inplane(mask, erosion_voxels_inplane)
        if not eroded.any():
            out[label_id] = {**EMPTY_FF, "ff_eroded_empty": True}
            continue
        out[label_id] = {**ff_summary(fat[box][eroded], water[box][eroded]), "ff_eroded_empty": False}
    return out

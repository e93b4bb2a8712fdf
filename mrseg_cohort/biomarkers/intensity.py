"""Image intensity inside each structure (uneroded mask), for any contrast on the labels' grid.

Values are in the image's own units (arbitrary signal units for MRI, HU for CT); percentiles use
numpy's linear interpolation. Absent structures get NaN and ``n_voxels`` 0.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np

from mrseg_cohort.biomarkers._regions import Regions, find_regions

EMPTY_INTENSITY = {"n_voxels": 0, "mean_intensity": math.nan, "median_intensity": math.nan,
                   "p5_intensity": math.nan, "p95_intensity": math.nan}


def intensity_summary(values: np.ndarray) -> dict:
    """Count, mean, median, 5th and 95th percentile of 1-D ``values`` (NaN when empty)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return dict(EMPTY_INTENSITY)
    p5, p50, p95 = np.percentile(values, [5, 50, 95])
    return {"n_voxels": int(values.size), "mean_intensity": float(values.mean()),
            "median_intensity": float(p50), "p5_intensity": float(p5), "p95_intensity": float(p95)}


def structure_intensities(labels: np.ndarray, image: np.ndarray, ids: Iterable[int],
                          regions: Regions | None = None) -> dict[int, dict]:
    """``{id: intensity_summary(image inside the structure)}`` for each id.

    Args:
        labels: (Z, Y, X) integer label map; image: (Z, Y, X) on the same grid.
        ids: label values to report.
        regions: counts and boxes of ``labels`` when already computed.
    """
    if labels.shape != image.shape:
        raise ValueError(f"image shape {image.shape} must equal the labels' shape {labels.shape}")
    regions = find_regions(labels) if regions is None else regions
    out = {}
    for label_id in ids:
        found = regions.mask(labels, label_id)
        out[label_id] = dict(EMPTY_INTENSITY) if found is None else intensity_summary(image[found[0]][found[1]])
    return out

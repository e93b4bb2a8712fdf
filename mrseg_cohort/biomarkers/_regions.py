"""Where each label lies: voxel counts and bounding boxes of all labels, from one pass over a map.

Every measure works on a structure's bounding box, never on the whole volume per structure; the
boxes come from one :func:`scipy.ndimage.find_objects` pass and the counts from one
:func:`numpy.bincount` pass, shared by all measures through :class:`Regions`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from mrseg_cohort.geometry import Grid

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Regions:
    """Voxel count and bounding box of every label value 0..255 of one label map.

    Attributes:
        counts: (256,) int64, voxels per label value (value 0 = background).
        boxes: bounding box (z, y, x slices) per label value 1..255 at index ``value - 1``,
            None where the value does not occur.
    """

    counts: np.ndarray
    boxes: tuple[Box | None, ...]

    def n_voxels(self, label_id: int) -> int:
        return int(self.counts[label_id])

    def box(self, label_id: int) -> Box | None:
        return self.boxes[label_id - 1] if 0 < label_id <= len(self.boxes) else None

    def mask(self, labels: np.ndarray, label_id: int) -> tuple[Box, np.ndarray] | None:
        """(box, boolean mask of ``label_id`` inside the box), or None when the label is absent."""
        box = self.box(label_id)
        return None if box is None else (box, labels[box] == label_id)


def as_label_array(labels: np.ndarray) -> np.ndarray:
    """``labels`` as a 3-D uint8 array (no copy when it already is one).

    Raises:
        ValueError: not 3-D, not integer, or values outside 0..255.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be a 3-D (z, y, x) array, not {labels.ndim}-D {labels.shape}")
    if labels.dtype == np.uint8:
        return labels
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype (uint8 label values), not {labels.dtype}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values must lie in 0..255, not {labels.min()}..{labels.max()}")
    return labels.astype(np.uint8)


def find_regions(labels: np.ndarray) -> Regions:
    """Counts and bounding boxes of every value of a uint8 label map (one pass each)."""
    labels = as_label_array(labels)
    counts = np.bincount(labels.ravel(), minlength=256).astype(np.int64)
    boxes = tuple(ndi.find_objects(labels, max_label=255))
    return Regions(counts, boxes)


def check_on_grid(array: np.ndarray, grid: Grid, what: str) -> None:
    """Raise ValueError when ``array``'s shape is not ``grid.shape``."""
    if tuple(array.shape) != grid.shape:
        raise ValueError(f"{what} has shape {tuple(array.shape)}, not the grid's {grid.shape}")

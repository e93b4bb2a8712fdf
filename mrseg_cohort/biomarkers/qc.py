"""Per-scan quality checks: fat-water swap, left/right plausibility, structures missing from the
field of view. (Fragmentation is in :mod:`mrseg_cohort.biomarkers.connectivity`.)

Fat-water swap (``swap_suspected``). Dixon reconstructions sometimes exchange the fat and water
images, for the whole scan or for single stations. In liver and skeletal muscle of nearly everyone
water is brighter than fat (signal fat fraction well below 50 %). The check pools the reference
tissue (the liver and every structure of group ``muscle``, each eroded in-plane as for the fat
fraction) per axial slice (array axis 0); a slice with at least ``min_voxels_per_slice`` reference
voxels (with F + W > 0) is *evaluated*, and *inverted* when its median F exceeds its median W.
``swap_suspected`` is raised when

- the longest run of consecutive evaluated slices that are all inverted spans at least
  ``min_extent_mm`` along z (run length x slice spacing), which catches one swapped station, or
- more than half of the evaluated slices are inverted (a swap of the whole scan).

It is None when no slice could be evaluated (no liver or muscle, or no fat/water images). The
evidence is returned too: pooled median F and W of all reference voxels, slice counts, longest run.

Left/right plausibility (``lr_plausible``). For each left/right pair present in the scan the
centroid of each mask is taken in LPS world millimetres (:meth:`Grid.zyx_to_world`, so any storage
orientation, e.g. RAS, works); the pair is plausible when the left structure's centroid has the
larger LPS x (lies on the participant's left).

Missing structures (``missing``). A structure is *expected* when the labelled field of view
surely covers its region: each structure has anchor groups (:data:`EXPECTED_WHEN`) and is
expected when every group has at least one present member, e.g. an abdominal organ is expected when
a thoracic anchor (heart or a lung) and a pelvic anchor (bladder, sacrum, hip or femur) are both
present, as the field of view is contiguous along z. ``missing`` = expected but absent. Structures
without a rule (the heart, and every structure of maps other than MRSegmentator's) are never
missing. A missing structure can be a segmentation failure or real anatomy (cholecystectomy,
nephrectomy): it is a flag to look at, not an error.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

import numpy as np

from mrseg_cohort.biomarkers._regions import Regions, find_regions
from mrseg_cohort.biomarkers.fat_fraction import erode_inplane
from mrseg_cohort.geometry import Grid

# -- missing structures --------------------------------------------------------------------------
_THORAX = ("heart", "left_lung", "right_lung")
_PELVIS = ("urinary_bladder", "sacrum", "left_hip", "right_hip", "left_femur", "right_femur")
_UPPER_ABDOMEN = ("liver", "spleen", "left_kidney", "right_kidney")
_FEMURS = ("left_femur", "right_femur")
_ABDOMINAL = ("spleen", "right_kidney", "left_kidney", "gallbladder", "liver", "stomach", "pancreas",
              "right_adrenal_gland", "left_adrenal_gland", "portal_vein_and_splenic_vein", "small_bowel",
              "duodenum", "colon", "spine", "left_autochthonous_muscle", "right_autochthonous_muscle")
_PELVIC = ("left_iliac_artery", "right_iliac_artery", "left_iliac_vena", "right_iliac_vena",
           "urinary_bladder", "sacrum", "left_hip", "right_hip", "left_iliopsoas_muscle",
           "right_iliopsoas_muscle", "left_gluteus_maximus", "right_gluteus_maximus",
           "left_gluteus_medius", "right_gluteus_medius", "left_gluteus_minimus", "right_gluteus_minimus")

EXPECTED_WHEN: dict[str, tuple[tuple[str, ...], ...]] = {
    **{name: (_THORAX, _PELVIS) for name in _ABDOMINAL},
    **{name: (_UPPER_ABDOMEN, _FEMURS) for name in _PELVIC},
    "left_lung": (("heart", "right_lung"),),
    "right_lung": (("heart", "left_lung"),),
    "esophagus": (("heart",), ("stomach",)),
    "aorta": (("heart", "left_kidney", "right_kidney"),),
    "inferior_vena_cava": (("liver", "left_kidney", "right_kidney"),),
    "left_femur": (("right_femur",),),
    "right_femur": (("left_femur",),),
}
"""MRSegmentator structure name -> anchor groups; expected when each group has a present member.
Aorta: runs from the heart to L4, past the kidneys; IVC: through the liver down past the kidneys;
a femur: when the other one is present (the field of view is symmetric)."""


def missing_structures(present: Iterable[str], names: Iterable[str],
                       rules: Mapping[str, tuple[tuple[str, ...], ...]] = EXPECTED_WHEN) -> dict[str, bool]:
    """``{name: expected by its anchors and absent}`` for each of ``names``.

    Args:
        present: names of the structures present (at least one voxel) in the scan.
        names: the structures to judge.
        rules: name -> anchor groups (default :data:`EXPECTED_WHEN`); names without a rule get False.
    """
    present = set(present)
    out = {}
    for name in names:
        groups = rules.get(name)
        expected = bool(groups) and all(any(a in present for a in group) for group in groups)
        out[name] = expected and name not in present
    return out


# -- left / right ----------------------------------------------------------------------------------
def centroid_world_mm(labels: np.ndarray, grid: Grid, label_id: int,
                      regions: Regions | None = None) -> np.ndarray | None:
    """LPS world position (mm, (3,) x, y, z) of the centre of mass of ``label_id``; None if absent."""
    regions = find_regions(labels) if regions is None else regions
    found = regions.mask(labels, label_id)
    if found is None:
        return None
    box, mask = found
    n = np.count_nonzero(mask)
    zyx = [float(mask.sum(axis=tuple(a for a in range(3) if a != axis)) @ np.arange(mask.shape[axis])) / n
           + box[axis].start for axis in range(3)]
    return grid.zyx_to_world(np.asarray(zyx))


def lr_plausibility(labels: np.ndarray, grid: Grid, pairs: Iterable[tuple[int, int]],
                    regions: Regions | None = None) -> dict[tuple[int, int], bool]:
    """``{(left id, right id): left centroid has the larger LPS x}`` for pairs with both present.

    Args:
        labels: (Z, Y, X) integer label map on ``grid`` (any orientation).
        pairs: (left id, right id) tuples, e.g. :meth:`LabelMap.pairs`.
    """
    regions = find_regions(labels) if regions is None else regions
    out = {}
    for left, right in pairs:
        c_left = centroid_world_mm(labels, grid, left, regions)
        c_right = centroid_world_mm(labels, grid, right, regions)
        if c_left is not None and c_right is not None:
            out[(left, right)] = bool(c_left[0] > c_right[0])
    return out


# -- fat-water swap --------------------------------------------------------------------------------
EMPTY_SWAP = {"swap_suspected": None, "swap_fat_median": math.nan, "swap_water_median": math.nan,
              "swap_reference_voxels": 0, "swap_slices_evaluated": 0, "swap_slices_inverted": 0,
              "swap_longest_inverted_mm": 0.0}
"""Swap-check record of a scan with no evaluable reference tissue or no fat/water images."""


def swap_check(labels: np.ndarray, fat: np.ndarray, water: np.ndarray, reference_ids: Iterable[int],
               spacing_z_mm: float, erosion_voxels_inplane: int = 1, min_voxels_per_slice: int = 20,
               min_extent_mm: float = 50.0, regions: Regions | None = None) -> dict:
    """Fat-water swap check of one scan (rule in the module docstring).

    Args:
        labels: (Z, Y, X) integer label map; fat, water: (Z, Y, X) images on its grid.
        reference_ids: label values of the reference tissue (liver and muscles).
        spacing_z_mm: slice spacing (array axis 0), to turn runs of slices into millimetres.

    Returns:
        ``swap_suspected`` (bool or None), ``swap_fat_median`` and ``swap_water_median`` (pooled
        reference medians, image units), ``swap_reference_voxels``, ``swap_slices_evaluated``,
        ``swap_slices_inverted``, ``swap_longest_inverted_mm``.
    """
    if not (labels.shape == fat.shape == water.shape):
        raise ValueError(f"labels {labels.shape}, fat {fat.shape} and water {water.shape} "
                         "must have one shape (one grid)")
    regions = find_regions(labels) if regions is None else regions
    zs, fs, ws = [], [], []
    for label_id in reference_ids:
        found = regions.mask(labels, label_id)
        if found is None:
            continue
        box, mask = found
        eroded = erode_inplane(mask, erosion_voxels_inplane)
        f = fat[box][eroded].astype(np.float64)
        w = water[box][eroded].astype(np.float64)
        use = f + w > 0
        zs.append(np.nonzero(eroded)[0][use] + box[0].start)
        fs.append(f[use])
        ws.append(w[use])
    z = np.concatenate(zs) if zs else np.zeros(0, dtype=np.intp)
    if z.size == 0:
        return dict(EMPTY_SWAP)
    f, w = np.concatenate(fs), np.concatenate(ws)
    order = np.argsort(z, kind="stable")
    z, f_sorted, w_sorted = z[order], f[order], w[order]
    _, starts, counts = np.unique(z, return_index=True, return_counts=True)
    inverted = [bool(np.median(f_sorted[a:a + n]) > np.median(w_sorted[a:a + n]))
                for a, n in zip(starts, counts) if n >= min_voxels_per_slice]
    longest = run = 0
    for flag in inverted:
        run = run + 1 if flag else 0
        longest = max(longest, run)
    longest_mm = longest * float(spacing_z_mm)
    n_eval, n_inv = len(inverted), int(sum(inverted))
    suspected = None if n_eval == 0 else bool(longest_mm >= min_extent_mm or n_inv > n_eval / 2)
    return {"swap_suspected": suspected, "swap_fat_median": float(np.median(f)),
            "swap_water_median": float(np.median(w)), "swap_reference_voxels": int(z.size),
            "swap_slices_evaluated": n_eval, "swap_slices_inverted": n_inv,
            "swap_longest_inverted_mm": longest_mm}

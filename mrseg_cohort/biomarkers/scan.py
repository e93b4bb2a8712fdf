"""All measurements of one scan: :func:`measure_scan`, the entry point the pipeline calls per scan.

Pure: a label map and images (each a :class:`Volume` on the labels' grid) in, plain records out.
Column meanings, units and conventions: docs/measures.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from mrseg_cohort.biomarkers._regions import as_label_array, find_regions
from mrseg_cohort.biomarkers.columns import INTENSITY_COLUMNS, SCAN_COLUMNS, STRUCTURE_COLUMNS  # noqa: F401 (re-exported)
from mrseg_cohort.biomarkers.connectivity import structure_components
from mrseg_cohort.biomarkers.fat_fraction import EMPTY_FF, structure_fat_fractions
from mrseg_cohort.biomarkers.intensity import structure_intensities
from mrseg_cohort.biomarkers.qc import EMPTY_SWAP, lr_plausibility, missing_structures, swap_check
from mrseg_cohort.biomarkers.volumes import structure_volumes
from mrseg_cohort.config import MeasuresConfig
from mrseg_cohort.geometry import Volume
from mrseg_cohort.labels import LabelMap

@dataclass(frozen=True)
class ScanMeasures:
    """What :func:`measure_scan` returns.

    Attributes:
        structures: one record per structure of the label map, in label order (STRUCTURE_COLUMNS).
        intensities: one record per structure x image (INTENSITY_COLUMNS); empty without images.
        scan: scan-level QC and counts (SCAN_COLUMNS).
    """

    structures: list[dict] = field(default_factory=list)
    intensities: list[dict] = field(default_factory=list)
    scan: dict = field(default_factory=dict)


def measure_scan(labels: Volume, label_map: LabelMap, images: Mapping[str, Volume] | None = None,
                 fat: str | None = None, water: str | None = None,
                 settings: MeasuresConfig = MeasuresConfig(), segmented: str | None = None,
                 field_of_view: np.ndarray | None = None) -> ScanMeasures:
    """Volumes, fat fractions, components, intensities and QC of one scan.

    Args:
        labels: integer label map (values 0..255) with its grid.
        label_map: what the values mean; every structure gets a record, absent ones with
            ``n_voxels`` 0, 0.0 mL and NaN measures.
        images: image contrasts by name, each on the labels' grid (None or {} for none).
        fat, water: names in ``images`` of the Dixon fat and water images (both or neither);
            without them the fat-fraction columns are NaN and ``swap_suspected`` None.
        settings: erosion, connectivity, border margin, fragmentation and swap-check settings.
        segmented: name in ``images`` of the contrast the labels were segmented on; fills
            ``mean_intensity`` of the structure records (NaN when None).
        field_of_view: bool (Z, Y, X), the voxels the stitched stations cover (None: all); its edges
            count for ``touches_border`` as the array's do.

    Raises:
        ValueError: an image on another grid than the labels (names what differs), a name of
            ``fat``/``water``/``segmented`` not in ``images``, only one of fat and water, or labels
            that are not integers in 0..255.
    """
    images = dict(images or {})
    _check_inputs(labels, images, fat, water, segmented)
    array = as_label_array(labels.array)
    grid = labels.grid
    regions = find_regions(array)
    ids = list(label_map)
    vessel_ids = label_map.vessel_ids()

    volumes = structure_volumes(array, grid, ids, settings.border_margin_voxels, regions, field_of_view)
    components = structure_components(array, ids, vessel_ids, settings.connectivity,
                                      settings.fragmented_below_fraction, regions)
    if fat is not None and water is not None:
        ff = structure_fat_fractions(array, images[fat].array, images[water].array, ids,
                                     settings.erosion_voxels_inplane, regions)
        reference = [i for i in ids if label_map[i].name == "liver" or label_map[i].group == "muscle"]
        swap = swap_check(array, images[fat].array, images[water].array, reference, grid.spacing_mm[0],
                          settings.erosion_voxels_inplane, settings.swap_min_voxels_per_slice,
                          settings.swap_min_extent_mm, regions)
    else:
        ff = {i: dict(EMPTY_FF) for i in ids}
        swap = dict(EMPTY_SWAP)
    intensity = {name: structure_intensities(array, image.array, ids, regions)
                 for name, image in images.items()}
    lr = lr_plausibility(array, grid, label_map.pairs(), regions)
    lr_by_id = {i: ok for pair, ok in lr.items() for i in pair}
    present = {label_map[i].name for i in ids if volumes[i]["n_voxels"] > 0}
    missing = missing_structures(present, [label_map[i].name for i in ids])

    nan_means = {i: {"mean_intensity": float("nan")} for i in ids}
    segmented_stats = intensity[segmented] if segmented is not None else nan_means
    structures = []
    for i in ids:
        s = label_map[i]
        record = {"structure_id": i, "structure": s.name, "group": s.group, "side": s.side,
                  **volumes[i], **ff[i], **components[i], "lr_plausible": lr_by_id.get(i),
                  "missing": missing[s.name], "mean_intensity": segmented_stats[i]["mean_intensity"]}
        structures.append({c: record[c] for c in STRUCTURE_COLUMNS})
    intensities = [{"structure_id": i, "structure": label_map[i].name, "image_contrast": name, **stats[i]}
                   for name, stats in intensity.items() for i in ids]
    scan = _scan_record(array, regions, ids, structures, swap, lr, settings)
    return ScanMeasures(structures, intensities, scan)


def _check_inputs(labels: Volume, images: dict[str, Volume], fat: str | None, water: str | None,
                  segmented: str | None) -> None:
    if (fat is None) != (water is None):
        raise ValueError(f"fat and water must be given together, not fat={fat!r}, water={water!r}")
    for role, name in (("fat", fat), ("water", water), ("segmented", segmented)):
        if name is not None and name not in images:
            raise ValueError(f"{role} image {name!r} is not among the images {sorted(images)}")
    for name, image in images.items():
        mismatch = labels.grid.mismatch(image.grid)
        if mismatch:
            raise ValueError(f"image {name!r} is not on the label map's grid ({mismatch}); "
                             "resample it onto the labels' grid first")


def _scan_record(array: np.ndarray, regions, ids: list[int], structures: list[dict], swap: dict,
                 lr: dict, settings: MeasuresConfig) -> dict:
    known = np.zeros(256, dtype=bool)
    known[ids] = True
    known[0] = True
    unknown = np.flatnonzero((regions.counts > 0) & ~known)
    vessels = [r for r in structures if r["single_component"] is not None]
    record = {
        "n_structures": len(structures), "n_present": sum(r["n_voxels"] > 0 for r in structures),
        "n_voxels_labelled": int(array.size - regions.counts[0]),
        "n_voxels_unknown_label": int(regions.counts[unknown].sum()),
        "unknown_label_values": ",".join(str(v) for v in unknown),
        "n_touching_border": sum(r["touches_border"] for r in structures),
        **swap,
        "n_lr_pairs_assessed": len(lr), "n_lr_implausible": sum(not ok for ok in lr.values()),
        "n_missing": sum(r["missing"] for r in structures),
        "missing_structures": ",".join(r["structure"] for r in structures if r["missing"]),
        "n_fragmented": sum(r["fragmented"] for r in structures),
        "n_vessels_present": len(vessels),
        "n_vessels_single_component": sum(bool(r["single_component"]) for r in vessels),
        "connectivity": settings.connectivity, "erosion_voxels_inplane": settings.erosion_voxels_inplane,
        "fragmented_below_fraction": settings.fragmented_below_fraction,
    }
    return {c: record[c] for c in SCAN_COLUMNS}

"""The columns of the measurement records, with the Arrow type each is stored as.

Kept apart from the measures themselves so that the table schemas (:mod:`mrseg_cohort.tables`) and
the read-side commands do not import scipy and the measuring code. Meanings and units:
docs/measures.md.
"""

from __future__ import annotations

STRUCTURE_COLUMNS: dict[str, str] = {
    "structure_id": "int16", "structure": "string", "group": "string", "side": "string",
    "n_voxels": "int64", "volume_ml": "float64", "touches_border": "bool",
    "ff_median_pct": "float64", "ff_mean_pct": "float64", "ff_p10_pct": "float64", "ff_p90_pct": "float64",
    "ff_n_voxels": "int64", "ff_eroded_empty": "bool",
    "n_components": "int32", "largest_component_fraction": "float64", "single_component": "bool",
    "fragmented": "bool", "lr_plausible": "bool", "missing": "bool", "mean_intensity": "float64",
    "connectivity": "int8",
}
"""Structure record columns in order, with the Arrow type to store them as (bool columns holding
None are nullable: single_component, lr_plausible)."""

INTENSITY_COLUMNS: dict[str, str] = {
    "structure_id": "int16", "structure": "string", "image_contrast": "string", "n_voxels": "int64",
    "mean_intensity": "float64", "median_intensity": "float64", "p5_intensity": "float64",
    "p95_intensity": "float64",
}
"""Intensity record columns (one record per structure x image contrast)."""

SCAN_COLUMNS: dict[str, str] = {
    "n_structures": "int16", "n_present": "int16", "n_voxels_labelled": "int64",
    "n_voxels_unknown_label": "int64", "unknown_label_values": "string", "n_touching_border": "int16",
    "swap_suspected": "bool", "swap_fat_median": "float64", "swap_water_median": "float64",
    "swap_reference_voxels": "int64", "swap_slices_evaluated": "int32", "swap_slices_inverted": "int32",
    "swap_longest_inverted_mm": "float64", "n_lr_pairs_assessed": "int16", "n_lr_implausible": "int16",
    "n_missing": "int16", "missing_structures": "string", "n_fragmented": "int16",
    "n_vessels_present": "int16", "n_vessels_single_component": "int16", "connectivity": "int8",
    "erosion_voxels_inplane": "int16", "fragmented_below_fraction": "float64",
}
"""Scan-level columns (the pipeline adds keys, URIs and timings)."""

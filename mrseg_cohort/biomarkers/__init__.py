"""Per-scan measurements: pure functions over (z, y, x) arrays and a Grid, returning records.

One module per measure (volumes, fat_fraction, connectivity, intensity, qc); :func:`measure_scan`
runs them all on one scan. Conventions and columns: docs/measures.md.

The names below are imported on first use (PEP 562), so that reading the record columns
(:mod:`mrseg_cohort.biomarkers.columns`) does not import scipy and the measures.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "component_sizes": "connectivity", "structure_components": "connectivity",
    "erode_inplane": "fat_fraction", "fat_fraction_pct": "fat_fraction", "ff_summary": "fat_fraction",
    "structure_fat_fractions": "fat_fraction",
    "intensity_summary": "intensity", "structure_intensities": "intensity",
    "EXPECTED_WHEN": "qc", "centroid_world_mm": "qc", "lr_plausibility": "qc", "missing_structures": "qc",
    "swap_check": "qc",
    "INTENSITY_COLUMNS": "columns", "SCAN_COLUMNS": "columns", "STRUCTURE_COLUMNS": "columns",
    "ScanMeasures": "scan", "measure_scan": "scan",
    "structure_volumes": "volumes", "touches_border": "volumes",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

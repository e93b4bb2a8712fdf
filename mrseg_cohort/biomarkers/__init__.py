"""Per-scan measurements: pure functions over (z, y, x) arrays and a Grid, returning records.

One module per measure (volumes, fat_fraction, connectivity, intensity, qc); :func:`measure_scan`
runs them all on one scan. Conventions and columns: docs/measures.md.
"""

from mrseg_cohort.biomarkers.connectivity import component_sizes, structure_components
from mrseg_cohort.biomarkers.fat_fraction import (erode_inplane, fat_fraction_pct, ff_summary,
                                                  structure_fat_fractions)
from mrseg_cohort.biomarkers.intensity import intensity_summary, structure_intensities
from mrseg_cohort.biomarkers.qc import (EXPECTED_WHEN, centroid_world_mm, lr_plausibility,
                                        missing_structures, swap_check)
from mrseg_cohort.biomarkers.scan import (INTENSITY_COLUMNS, SCAN_COLUMNS, STRUCTURE_COLUMNS, ScanMeasures,
                                          measure_scan)
from mrseg_cohort.biomarkers.volumes import structure_volumes, touches_border

__all__ = [
    "EXPECTED_WHEN", "INTENSITY_COLUMNS", "SCAN_COLUMNS", "STRUCTURE_COLUMNS", "ScanMeasures",
    "centroid_world_mm", "component_sizes", "erode_inplane", "fat_fraction_pct", "ff_summary",
    "intensity_summary", "lr_plausibility", "measure_scan", "missing_structures", "structure_components",
    "structure_fat_fractions", "structure_intensities", "structure_volumes", "swap_check", "touches_border",
]

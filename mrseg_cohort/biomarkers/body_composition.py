"""Fat depots of MRSegmentator's body-composition model, summarised per scan.

Pure: the model's structure records (from :func:`mrseg_cohort.biomarkers.scan.measure_scan`) in,
one record out. Conventions (docs/measures.md):

- ``vat_ml``: visceral_fat volume; ``asat_ml``: abdominal_subcutaneous_fat volume;
  ``sat_ml``: all subcutaneous depots (subcutaneous_fat + abdominal_subcutaneous_fat +
  gluteofemoral_fat), in mL;
- ``vat_asat_ratio`` = vat_ml / asat_ml (the usual abdominal VAT/SAT ratio),
  ``vat_sat_ratio`` = vat_ml / sat_ml; NaN when the denominator is 0.
"""

from __future__ import annotations

import math

SAT_DEPOTS = ("subcutaneous_fat", "abdominal_subcutaneous_fat", "gluteofemoral_fat")
BODY_COMPOSITION_COLUMNS = {"vat_ml": "float64", "asat_ml": "float64", "sat_ml": "float64",
                            "vat_asat_ratio": "float64", "vat_sat_ratio": "float64"}


def is_body_composition(structure_names: set[str]) -> bool:
    """True for label maps that hold the fat depots (MRSegmentator's body-composition model)."""
    return "visceral_fat" in structure_names and bool(set(SAT_DEPOTS) & structure_names)


def depot_summary(structures: list[dict]) -> dict[str, float]:
    """VAT, SAT and their ratios from structure records with ``structure`` and ``volume_ml``."""
    volume = {r["structure"]: float(r["volume_ml"]) for r in structures}
    vat = volume.get("visceral_fat", 0.0)
    asat = volume.get("abdominal_subcutaneous_fat", 0.0)
    sat = sum(volume.get(name, 0.0) for name in SAT_DEPOTS)
    return {"vat_ml": vat, "asat_ml": asat, "sat_ml": sat,
            "vat_asat_ratio": vat / asat if asat > 0 else math.nan,
            "vat_sat_ratio": vat / sat if sat > 0 else math.nan}

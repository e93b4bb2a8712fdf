"""The phenotypes of the phenotype table: name (with unit), rule, constituent structures, QC reasons.

One entry per column; docs/tables.md ("phenotypes") describes every rule in words. Structures are
MRSegmentator names (``source`` "base") or names of the body-composition model's label map
(``source`` "body_comp"; MRSegmentator 2.0's body-composition labels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from mrseg_cohort.biomarkers.body_composition import SAT_DEPOTS

Kind = Literal["volume", "ff_median", "ff_mean", "vat_asat_ratio"]
Source = Literal["base", "body_comp"]

QC_REASONS = ("not_measured", "missing", "absent", "touches_border", "fragmented", "stitch_gap", "eroded_empty",
              "swap_suspected")
"""Reasons a ``<phenotype>_qc`` cell can list (comma-separated, in this order; empty = no reason):

- ``not_measured``: no row of a constituent structure (its model was not run on the scan), or a fat
  fraction without Dixon fat and water images; the value is NaN.
- ``missing``: a constituent is absent although the field of view covers its region (docs/measures.md).
- ``absent``: a constituent has no voxel and is not judged missing (e.g. outside the field of view);
  the value is NaN.
- ``touches_border``: a constituent lies within the border margin of the field of view (likely cut off).
- ``fragmented``: a constituent's largest component holds less than 95 % of its voxels.
- ``stitch_gap``: the scan's stations leave a gap that nothing fills (``stitch_max_gap_mm`` > 0 in
  ``scans``); a constituent there is cut (and ``touches_border``), or lost.
- ``eroded_empty`` (fat fractions): the in-plane erosion removed every voxel of a constituent.
- ``swap_suspected`` (fat fractions): the scan's fat-water swap check fired.
"""


@dataclass(frozen=True)
class Phenotype:
    """One phenotype column.

    Attributes:
        name: column name, unit last (``_ml``, ``_pct``; ratios have none).
        kind: ``volume`` (sum of the constituents' volume_ml), ``ff_median`` (the one constituent's
            ff_median_pct), ``ff_mean`` (signal fat fraction averaged over the voxels of the
            constituents' eroded masks: their ff_mean_pct weighted by ff_n_voxels) or
            ``vat_asat_ratio`` (visceral over abdominal subcutaneous fat volume).
        structures: constituent structures.
        source: the label map the structures belong to.
    """

    name: str
    kind: Kind
    structures: tuple[str, ...]
    source: Source = "base"

    @property
    def is_volume(self) -> bool:
        return self.kind == "volume"

    @property
    def is_fat_fraction(self) -> bool:
        return self.kind in ("ff_median", "ff_mean")


MUSCLE_GROUPS: dict[str, tuple[str, ...]] = {
    "iliopsoas": ("iliopsoas_muscle",),
    "gluteal": ("gluteus_maximus", "gluteus_medius", "gluteus_minimus"),
    "autochthonous": ("autochthonous_muscle",),
}
"""Muscle group -> MRSegmentator muscles of one side (without the ``left_``/``right_`` prefix)."""


def _catalogue() -> tuple[Phenotype, ...]:
    out = [Phenotype(f"{organ}_volume_ml", "volume", (organ,))
           for organ in ("liver", "spleen", "pancreas", "left_kidney", "right_kidney")]
    out.append(Phenotype("kidneys_volume_ml", "volume", ("left_kidney", "right_kidney")))
    out += [Phenotype(f"{organ}_ff_median_pct", "ff_median", (organ,)) for organ in ("liver", "pancreas", "spleen")]
    out += [Phenotype("vat_volume_ml", "volume", ("visceral_fat",), "body_comp"),
            Phenotype("asat_volume_ml", "volume", ("abdominal_subcutaneous_fat",), "body_comp"),
            Phenotype("gluteofemoral_fat_volume_ml", "volume", ("gluteofemoral_fat",), "body_comp"),
            Phenotype("sat_volume_ml", "volume", SAT_DEPOTS, "body_comp"),
            Phenotype("vat_asat_ratio", "vat_asat_ratio", ("visceral_fat", "abdominal_subcutaneous_fat"),
                      "body_comp")]
    for group, muscles in MUSCLE_GROUPS.items():
        sides = {side: tuple(f"{side}_{m}" for m in muscles) for side in ("left", "right")}
        both = sides["left"] + sides["right"]
        for kind, unit in (("volume", "volume_ml"), ("ff_mean", "ff_mean_pct")):
            out += [Phenotype(f"left_{group}_{unit}", kind, sides["left"]),
                    Phenotype(f"right_{group}_{unit}", kind, sides["right"]),
                    Phenotype(f"{group}_{unit}", kind, both)]
    return tuple(out)


PHENOTYPES: tuple[Phenotype, ...] = _catalogue()
"""Every phenotype, in column order."""
BY_NAME = {p.name: p for p in PHENOTYPES}

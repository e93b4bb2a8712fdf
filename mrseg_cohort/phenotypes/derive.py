"""The phenotype table: one row per participant x visit, derived from the published tables.

Pure: the ``structures`` and ``scans`` frames in, a frame out. It is built on the wide view
(:func:`mrseg_cohort.tables.wide_view`): the structure measures of one label contrast per participant
x visit, spread to columns, from which every phenotype of :data:`~.catalogue.PHENOTYPES` is computed
by its rule, with a ``<phenotype>_qc`` column listing the QC reasons (:data:`~.catalogue.QC_REASONS`)
that apply to it, and ``n_qc_flags``, the number of phenotypes of the row with a reason.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mrseg_cohort.biomarkers.body_composition import depot_summary, is_body_composition
from mrseg_cohort.phenotypes.catalogue import PHENOTYPES, QC_REASONS, Phenotype
from mrseg_cohort.tables import one_contrast, wide_name, wide_view

KEYS = ["participant_id", "visit"]
MEASURES = ("n_voxels", "volume_ml", "ff_median_pct", "ff_mean_pct", "ff_n_voxels", "ff_eroded_empty",
            "touches_border", "fragmented", "missing")
"""Structure measures the phenotypes are computed from."""


def qc_column(name: str) -> str:
    return f"{name}_qc"


def body_composition_model(structures: pd.DataFrame, base_model: str = "base") -> str | None:
    """Name of the model whose label map holds the fat depots (first in sort order), or None."""
    for model, names in sorted(structures.groupby("model")["structure"]):
        if model != base_model and is_body_composition(set(names)):
            return str(model)
    return None


def phenotype_table(structures: pd.DataFrame, scans: pd.DataFrame, base_model: str = "base",
                    contrast: str | None = None) -> pd.DataFrame:
    """Phenotypes of every participant x visit with rows of ``base_model`` (rules: docs/tables.md).

    Args:
        structures: the ``structures`` table (every model; the body-composition model is found by its
            structure names, :func:`body_composition_model`).
        scans: the ``scans`` table (``swap_suspected`` of the same label contrast; rows with status ok).
        base_model: the model with MRSegmentator's 40 classes.
        contrast: label contrast to use where several were segmented (default: the first per scan).

    Returns:
        participant_id, visit, then per phenotype its value and ``<name>_qc``, then ``n_qc_flags``;
        sorted by participant_id and visit.

    Raises:
        ValueError: ``structures`` has no row of ``base_model``.
    """
    if not (structures["model"] == base_model).any():
        found = sorted(structures["model"].dropna().unique())
        raise ValueError(f"no structures rows of model {base_model!r} (models found: {found or 'none'})")
    models = {"base": base_model, "body_comp": body_composition_model(structures, base_model)}
    used = structures[structures["model"].isin([m for m in models.values() if m])]
    wide = wide_view(used, MEASURES, contrast).set_index(KEYS).sort_index()
    ok = one_contrast(scans[scans["status"] == "ok"], contrast)
    swap = _scan_flag(ok, ok["swap_suspected"].eq(True), wide.index)
    gap_mm = pd.to_numeric(ok["stitch_max_gap_mm"], errors="coerce") if "stitch_max_gap_mm" in ok else \
        pd.Series(0.0, index=ok.index)
    gap = _scan_flag(ok, gap_mm.gt(0), wide.index)
    out = {}
    for phenotype in PHENOTYPES:
        value, reasons = _phenotype(wide, phenotype, models[phenotype.source], swap, gap)
        out[phenotype.name] = value
        out[qc_column(phenotype.name)] = reasons
    table = pd.DataFrame(out, index=wide.index)
    table["n_qc_flags"] = sum((table[qc_column(p.name)] != "").astype(int) for p in PHENOTYPES)
    return table.reset_index()


def _scan_flag(scans: pd.DataFrame, flag: pd.Series, index: pd.Index) -> np.ndarray:
    """Per row of ``index`` (participant x visit): whether ``flag`` holds for any of its scan rows."""
    flagged = scans[KEYS].assign(flag=flag.to_numpy(dtype=bool)).groupby(KEYS)["flag"].any()
    return flagged.reindex(index, fill_value=False).to_numpy(dtype=bool)


def _phenotype(wide: pd.DataFrame, p: Phenotype, model: str | None, swap: np.ndarray,
               gap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(values, QC reason strings) of phenotype ``p`` for every row of ``wide``."""
    rows = len(wide)

    def column(structure: str, measure: str) -> np.ndarray:
        name = wide_name(model, structure, measure) if model else None
        if name is None or name not in wide:
            return np.full(rows, np.nan)
        return pd.to_numeric(wide[name], errors="coerce").to_numpy(dtype=float)

    def flag(structure: str, measure: str) -> np.ndarray:
        name = wide_name(model, structure, measure) if model else None
        return wide[name].eq(True).to_numpy() if name in wide else np.zeros(rows, dtype=bool)

    n = np.stack([column(s, "n_voxels") for s in p.structures])
    measured = np.isfinite(n).all(axis=0)
    present = measured & (n > 0).all(axis=0)
    missing = np.stack([flag(s, "missing") for s in p.structures])
    reasons = {
        "missing": missing.any(axis=0),
        "absent": (measured & ((n == 0) & ~missing).any(axis=0)),
        "touches_border": np.stack([flag(s, "touches_border") for s in p.structures]).any(axis=0),
        "fragmented": np.stack([flag(s, "fragmented") for s in p.structures]).any(axis=0),
        "stitch_gap": gap & measured,
    }
    if p.kind == "volume":
        value = np.stack([column(s, "volume_ml") for s in p.structures]).sum(axis=0)
    elif p.kind == "ff_median":
        value = column(p.structures[0], "ff_median_pct")
    elif p.kind == "ff_mean":
        means = np.stack([column(s, "ff_mean_pct") for s in p.structures])
        counts = np.nan_to_num(np.stack([column(s, "ff_n_voxels") for s in p.structures]))
        total = counts.sum(axis=0)
        weighted = np.where(counts > 0, means * counts, 0.0).sum(axis=0)
        value = np.divide(weighted, total, out=np.full(rows, np.nan), where=total > 0)
    else:  # vat_asat_ratio, by the body-composition summary's own rule
        vat, asat = (column(s, "volume_ml") for s in p.structures)
        value = np.array([depot_summary([{"structure": "visceral_fat", "volume_ml": v},
                                         {"structure": "abdominal_subcutaneous_fat", "volume_ml": a}])
                          ["vat_asat_ratio"] for v, a in zip(vat, asat)], dtype=float).reshape(rows)
    value = np.where(present, value, np.nan)
    not_measured = ~measured
    if p.is_fat_fraction:
        eroded = np.stack([flag(s, "ff_eroded_empty") for s in p.structures]).any(axis=0)
        reasons["eroded_empty"] = eroded
        reasons["swap_suspected"] = swap & measured
        not_measured |= present & ~np.isfinite(value) & ~eroded
    reasons["not_measured"] = not_measured
    return value, _join(reasons, rows)


def _join(reasons: dict[str, np.ndarray], rows: int) -> np.ndarray:
    """Comma-separated reason names per row, in :data:`QC_REASONS` order ("" for none)."""
    text = np.full(rows, "", dtype=object)
    for name in QC_REASONS:
        hit = reasons.get(name)
        if hit is not None:
            text = np.where(hit, text + (name + ","), text)
    return np.array([t[:-1] for t in text], dtype=object)

"""Cohort summaries for the QC report: outliers, QC flag counts, vessel consistency, failures, metadata.

Pure: pandas frames of the published tables in, frames and records out.

Outliers use the robust z-score of :mod:`mrseg_cohort.stats`, per structure and measure over the
scans where the structure is present:

    z = (x - median) / (1.4826 * MAD),   MAD = median(|x - median|)

(the modified z-score of Iglewicz and Hoaglin, 1993), and a value is an outlier when ``|z| > 3.5``.
The median and MAD are robust: a few failed segmentations do not hide themselves by inflating the
spread, as they would with mean and standard deviation. Structures present in fewer than
``min_scans`` scans are not assessed.
"""

from __future__ import annotations

import random
from typing import Iterable

import numpy as np
import pandas as pd

from mrseg_cohort.labels import VESSEL_NAMES
from mrseg_cohort.redact import redact  # noqa: F401  (re-exported: the report's config section uses it)
from mrseg_cohort.stats import robust_z

Z_THRESHOLD = 3.5
OUTLIER_MEASURES = {"volume_ml": "volume (mL)", "ff_median_pct": "fat fraction, median (%)"}
"""Measures assessed for outliers, with their display names."""

KEYS = ["participant_id", "visit"]


def find_outliers(structures: pd.DataFrame, threshold: float = Z_THRESHOLD, min_scans: int = 10,
                  measures: Iterable[str] = tuple(OUTLIER_MEASURES)) -> pd.DataFrame:
    """Values with ``|robust z| > threshold`` per structure and measure, largest |z| first.

    Returns:
        columns participant_id, visit, structure, measure, value, median, z.
    """
    return outliers_with_rows(structures, threshold, min_scans, measures).drop(columns="row")


def outliers_with_rows(structures: pd.DataFrame, threshold: float = Z_THRESHOLD, min_scans: int = 10,
                       measures: Iterable[str] = tuple(OUTLIER_MEASURES)) -> pd.DataFrame:
    """:func:`find_outliers` with a column ``row``: the index label of the value's row in ``structures``."""
    present = structures[structures["n_voxels"].fillna(0) > 0]
    found = []
    for measure in measures:
        values = present[KEYS + ["structure", measure]].dropna(subset=[measure])
        values = values[np.isfinite(values[measure].astype(float))]
        groups = values.groupby("structure", observed=True)  # in name order (categories may be in any order):
        for structure, group in sorted(groups, key=lambda item: str(item[0])):
            if len(group) < min_scans:
                continue
            x = group[measure].to_numpy(dtype=np.float64)
            z = robust_z(x)
            hit = np.abs(z) > threshold
            if hit.any():
                rows = group[hit]
                found.append(pd.DataFrame({"participant_id": rows["participant_id"].to_numpy(),
                                           "visit": rows["visit"].to_numpy(), "structure": structure,
                                           "measure": measure, "value": x[hit], "median": float(np.median(x)),
                                           "z": z[hit], "row": rows.index.to_numpy()}))
    columns = ["participant_id", "visit", "structure", "measure", "value", "median", "z", "row"]
    if not found:
        return pd.DataFrame(columns=columns)
    out = pd.concat(found, ignore_index=True)
    return out.iloc[np.argsort(-np.abs(out["z"].to_numpy()), kind="stable")].reset_index(drop=True)[columns]


def outliers_per_structure(outliers: pd.DataFrame) -> pd.DataFrame:
    """Per structure and measure with outliers: their number and the largest |z|, most outliers first
    (ties: structure, measure). ``outliers``: :func:`find_outliers`'s frame."""
    columns = ["structure", "measure", "outliers", "max_abs_z"]
    if outliers.empty:
        return pd.DataFrame(columns=columns)
    grouped = outliers.assign(abs_z=outliers["z"].abs()).groupby(["structure", "measure"], sort=True)
    out = grouped.agg(outliers=("z", "size"), max_abs_z=("abs_z", "max")).reset_index()
    return out.sort_values(["outliers", "structure", "measure"], ascending=[False, True, True],
                           kind="stable").reset_index(drop=True)[columns]


def round_robin(outliers: pd.DataFrame, n: int, by: Iterable[str] = ("structure", "measure")) -> pd.DataFrame:
    """The first ``n`` rows of ``outliers`` (largest |z| first) taken in turns across the groups
    ``by``: every group's most extreme value, then every group's second, ...; so a structure with
    thousands of outliers does not crowd out the others. Returned largest |z| first."""
    if len(outliers) <= n:
        return outliers
    turn = outliers.groupby(list(by), sort=False).cumcount().to_numpy()  # 0 for each group's most extreme
    order = np.lexsort((-np.abs(outliers["z"].to_numpy(dtype=float)), turn))
    chosen = np.sort(order[:n])  # back in |z| order
    return outliers.iloc[chosen]


def scans_in_turns(outliers: pd.DataFrame, n: int) -> list[tuple[str, str]]:
    """Up to ``n`` distinct scans (participant_id, visit) of ``outliers`` in :func:`round_robin`'s
    turns: the scan of each structure and measure's most extreme value first."""
    if not len(outliers) or n <= 0:
        return []
    turn = outliers.groupby(["structure", "measure"], sort=False).cumcount().to_numpy()
    order = np.lexsort((-np.abs(outliers["z"].to_numpy(dtype=float)), turn))
    keys: dict[tuple[str, str], None] = {}
    pids, visits = outliers["participant_id"].to_numpy(), outliers["visit"].to_numpy()
    for i in order:
        keys.setdefault((str(pids[i]), str(visits[i])), None)
        if len(keys) == n:
            break
    return list(keys)


SCAN_FLAGS = [
    ("swap_suspected", "fat-water swap suspected", lambda s: s["swap_suspected"].fillna(False).astype(bool)),
    ("lr_implausible", "a left/right pair implausible",
     lambda s: s["n_lr_implausible"].fillna(0).astype(int) > 0),
    ("touches_border", "a structure touches the field-of-view border (cut off?)",
     lambda s: s["n_touching_border"].fillna(0).astype(int) > 0),
    ("fragmented", "a structure fragmented", lambda s: s["n_fragmented"].fillna(0).astype(int) > 0),
    ("vessel_fragmented", "a vessel in several pieces",
     lambda s: s["n_vessels_single_component"].fillna(0).astype(int)
     < s["n_vessels_present"].fillna(0).astype(int)),
    ("missing", "an expected structure missing", lambda s: s["n_missing"].fillna(0).astype(int) > 0),
    ("unknown_labels", "label values not in the label map",
     lambda s: s["n_voxels_unknown_label"].fillna(0).astype(int) > 0),
]
"""Scan-level QC flags: (name, description, rule on the scans frame)."""


def scan_flags(scans: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per :data:`SCAN_FLAGS` entry, plus the keys."""
    out = scans[KEYS].copy()
    for name, _, rule in SCAN_FLAGS:
        out[name] = rule(scans).to_numpy(dtype=bool) if len(scans) else pd.Series(dtype=bool)
    return out


def scan_flag_counts(scans: pd.DataFrame) -> pd.DataFrame:
    """Scans raising each flag: columns flag, description, scans, percent."""
    flags = scan_flags(scans)
    n = max(len(scans), 1)
    return pd.DataFrame([{"flag": name, "description": text, "scans": int(flags[name].sum()),
                          "percent": 100.0 * flags[name].sum() / n} for name, text, _ in SCAN_FLAGS])


def structure_flag_counts(structures: pd.DataFrame) -> pd.DataFrame:
    """Per structure (label order): scans assessed and present, and counts of touches_border,
    fragmented, missing and lr_plausible == False."""
    s = structures.assign(present=structures["n_voxels"].fillna(0) > 0,
                          lr_implausible=structures["lr_plausible"].eq(False))  # null (unpaired) is not False
    grouped = s.groupby(["structure_id", "structure"], sort=True, observed=True)
    out = grouped.agg(scans=("present", "size"), present=("present", "sum"),
                      touches_border=("touches_border", lambda v: int(v.fillna(False).astype(bool).sum())),
                      fragmented=("fragmented", lambda v: int(v.fillna(False).astype(bool).sum())),
                      missing=("missing", lambda v: int(v.fillna(False).astype(bool).sum())),
                      lr_implausible=("lr_implausible", "sum")).reset_index()
    return out.astype({"present": int, "lr_implausible": int, "structure": str})


def vessel_consistency(structures: pd.DataFrame, vessels: Iterable[str] = VESSEL_NAMES) -> pd.DataFrame:
    """Per vessel: scans where present, of them in one piece, and VC = the mean of single_component
    over the scans where the vessel is present (NaN when never present)."""
    rows = []
    for vessel in vessels:
        v = structures[(structures["structure"] == vessel) & (structures["n_voxels"].fillna(0) > 0)]
        single = v["single_component"].dropna().astype(bool)
        rows.append({"vessel": vessel, "present": len(v), "single_component": int(single.sum()),
                     "vc": float(single.mean()) if len(single) else float("nan")})
    return pd.DataFrame(rows, columns=["vessel", "present", "single_component", "vc"])


def scan_keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(participant_id, visit) of each row of ``frame`` (converted column-wise: quick on millions)."""
    return list(zip(frame["participant_id"].to_numpy(dtype=object), frame["visit"].to_numpy(dtype=object)))


def rows_of_scans(frame: pd.DataFrame, keys: Iterable[tuple[str, str]]) -> pd.DataFrame:
    """The rows of ``frame`` whose (participant_id, visit) is one of ``keys``."""
    keys = set(keys)
    near = frame[frame["participant_id"].isin({k[0] for k in keys})]
    return near[np.array([k in keys for k in scan_keys(near)], dtype=bool)]


def failures_with_status(failures: pd.DataFrame, scans: pd.DataFrame) -> pd.DataFrame:
    """Failure rows, newest first, with ``resolved`` = the scan has been committed since."""
    done = set(scan_keys(scans))
    out = failures.copy()
    out["resolved"] = [k in done for k in zip(out["participant_id"], out["visit"])]
    if "time" in out and len(out):
        out = out.sort_values("time", ascending=False, kind="stable")
    return out.reset_index(drop=True)


def model_versions(scans: pd.DataFrame) -> pd.DataFrame:
    """Distinct model, weights checksum, software versions and device, with scan counts."""
    columns = ["model", "weights_sha256", "folds", "software_version", "nnunetv2_version", "torch_version",
               "device"]
    if scans.empty:
        return pd.DataFrame(columns=columns + ["scans"])
    return (scans[columns].fillna("").groupby(columns, sort=True).size().rename("scans").reset_index())


def sample_keys(keys: Iterable[tuple[str, str]], n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` scan keys drawn without replacement, reproducibly (same keys and seed, same draw)."""
    unique = sorted(set(keys))
    if n >= len(unique):
        return unique
    return sorted(random.Random(seed).sample(unique, n))


def structure_distributions(structures: pd.DataFrame,
                            measures: Iterable[str] = ("volume_ml", "ff_median_pct")) -> pd.DataFrame:
    """Per structure (label order) and measure, over the scans where the structure is present:
    n, mean, sd, p5, p25, median, p75, p95 (NaN values, e.g. fat fraction without Dixon images, left out)."""
    present = structures[structures["n_voxels"].fillna(0) > 0]
    rows = []
    for (sid, name), group in present.groupby(["structure_id", "structure"], sort=True, observed=True):
        for measure in measures:
            values = group[measure].dropna().to_numpy(dtype=float)
            q = np.percentile(values, [5, 25, 50, 75, 95]) if values.size else [np.nan] * 5
            rows.append({"structure_id": sid, "structure": name, "measure": measure, "n": int(values.size),
                         "mean": float(values.mean()) if values.size else np.nan,
                         "sd": float(values.std(ddof=1)) if values.size > 1 else np.nan,
                         "p5": q[0], "p25": q[1], "median": q[2], "p75": q[3], "p95": q[4]})
    return pd.DataFrame(rows, columns=["structure_id", "structure", "measure", "n", "mean", "sd", "p5", "p25",
                                       "median", "p75", "p95"])

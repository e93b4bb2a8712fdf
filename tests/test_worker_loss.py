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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_gpus_that_arrive_after_the_start_are_used_and_a_node_leaving_loses_nothing(tmp_path):
    """A head with 0 CPUs and 0 GPUs (an autoscaling cluster at submit): the driver asks for a GPU
    actor and waits; GPU nodes that join are used, one that leaves mid-run loses nothing."""
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

    cohort = tmp_path / "in"
    write_phantom_cohort(Store(), str(cohort), PhantomSpec(participants=4, seed=57))
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out),
                            resources={"threads_per_segmenter": 1, "memory_gb_per_scan": 0.3})
    tmpdir = f"/tmp/rc{uuid.uuid4().hex[:6]}"
    try:
        proc = subprocess.run([sys.executable, "tests/cluster_driver.py", str(config)], cwd=REPO,
                              env={**os.environ, "RAY_TMPDIR": tmpdir}, capture_output=True, text=True, timeout=900)
    finally:
        kill_matching(tmpdir)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["device"] == "cuda" and result["done"] == 4 and result["failed"] == 0, result
    assert result["events"][:1] == ["gpu node 1 joined while the job waited"], result
    assert "gpu node 2 removed" in result["events"], result
    assert sum(result["actors_created"]) >= 2, result  # the pool grew when the second GPU joined
    assert_each_scan_once(out, 4)

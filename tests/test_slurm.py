"""infra/slurm/ on a real one-node SLURM (tests/slurm_cluster.py): job arrays over shards of one output, a
task scancelled and the array resubmitted, a Ray cluster started inside an allocation; and the scripts'
signal forwarding. All slow (each starts SLURM and runs the demo model on the CPU); skipped where SLURM
cannot start here."""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, write_job_yaml
from exactly_once import assert_each_scan_once
from procs import kill_matching
from slurm_cluster import SlurmCluster
from mrseg_cohort.io.storage import Store
from mrseg_cohort.sharding import shard_of

pytestmark = pytest.mark.slow
ARRAY = REPO / "infra" / "slurm" / "array.sbatch"
RAY_CLUSTER = REPO / "infra" / "slurm" / "ray-cluster.sbatch"
N_SCANS, N_SHARDS = 6, 3


@pytest.fixture(scope="module")
def cohort6(tmp_path_factory) -> Path:
    """Six phantom participants (the demo's layout, small)."""
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

    out = tmp_path_factory.mktemp("slurm-cohort") / "phantoms"
    write_phantom_cohort(Store(), str(out), PhantomSpec(participants=N_SCANS, seed=25))
    return out


@pytest.fixture
def ray_tmp():
    """A Ray temporary folder of this test's own; every process left under it is ended afterwards."""
    path = f"/tmp/rs{uuid.uuid4().hex[:6]}"
    yield path
    kill_matching(path)


def job_env(slurm: SlurmCluster, ray_tmp: str, **extra: str) -> dict[str, str]:
    """What a job sees: this virtual environment's commands first, Ray's temporary files under ``ray_tmp``."""
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    return slurm.env(**{"PATH": path, "RAY_TMPDIR": ray_tmp, "MRSEG_RAY_TMPDIR": ray_tmp, **extra})


def small_job(tmp_path: Path, cohort: Path, out: Path, **sections) -> Path:
    """The demo model on the CPU, one thread: two tasks share this machine's two cores."""
    return write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out),
                          resources={"cpu_segmenters": 1, "threads_per_segmenter": 1, "cpu_workers": 1,
                                     "memory_gb_per_scan": 0.5}, **sections)


def task_logs(folder: Path, job_id: str) -> dict[int, str]:
    return {int(p.stem.rsplit("_", 1)[1]): p.read_text(errors="replace") for p in folder.glob(f"task-{job_id}_*.log")}


def participants(cohort: Path) -> list[str]:
    from mrseg_cohort.config import load_config
    from mrseg_cohort.manifest import discover

    job = load_config(write_job_yaml(cohort.parent / "probe.yaml", str(cohort), str(cohort.parent / "probe")))
    return [s.participant_id for s in discover(job, Store())]


# -- the scripts' signal forwarding (a stand-in for mrseg-cohort that counts its SIGTERMs) ------------------
FAKE_RUN = """#!{python}
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s) or print(f"SIGTERM #{{len(got)}}", flush=True))
print("running", sys.argv[1:], flush=True)
start = time.time()
while time.time() - start < 15 and not got:
    time.sleep(0.1)
time.sleep(2)
print(f"exits after {{len(got)}} SIGTERM(s)", flush=True)
sys.exit(143 if got else 0)
"""


@pytest.mark.parametrize("how", [("scancel",), ("scancel", "--batch", "--signal=TERM")],
                         ids=["job-wide", "batch-shell-only"])
def test_array_script_gives_the_run_exactly_one_sigterm_and_exits_with_its_status(how, slurm, tmp_path, ray_tmp):
    """A plain scancel signals every process of the job (SIGCONT, SIGTERM): the run gets its own and the
    script does not add a second (which would make the run give up at once). ``scancel --batch`` (like
    --signal=B:TERM@120 before the time limit) signals the script alone: it forwards one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mrseg-cohort"
    fake.write_text(FAKE_RUN.format(python=sys.executable))
    fake.chmod(0o755)
    env = job_env(slurm, ray_tmp, PATH=f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}")
    job = slurm.sbatch("--array=0-1", "-o", str(tmp_path / "task-%A_%a.log"), str(ARRAY), "my job.yaml", env=env,
                       cwd=tmp_path)
    slurm.wait(job, 60, until=lambda jobs: "running" in task_logs(tmp_path, job).get(1, ""))
    slurm.command(*how, f"{job}_1")
    jobs = slurm.wait(job, 90)
    log = task_logs(tmp_path, job)[1]
    assert "running ['run', 'my job.yaml', '--no-progress']" in log  # the config path with its space, intact
    assert "SIGTERM #1" in log and "SIGTERM #2" not in log and "exits after 1 SIGTERM(s)" in log, log
    assert "ended with exit status 143" in log and jobs["1"]["ExitCode"] == "143:0", (jobs["1"], log)
    assert jobs["0"]["JobState"] == "COMPLETED" and "exits after 0 SIGTERM(s)" in task_logs(tmp_path, job)[0]


# -- a job array over shards of one output ------------------------------------------------------------------
def test_array_of_three_shards_fills_one_output_exactly_once(slurm, cohort6, demo_model, tmp_path, ray_tmp):
    out = tmp_path / "out"
    config = small_job(tmp_path, cohort6, out)
    job = slurm.sbatch(f"--array=0-{N_SHARDS - 1}", "--cpus-per-task=1", "-o", str(tmp_path / "task-%A_%a.log"),
                       str(ARRAY), str(config), env=job_env(slurm, ray_tmp), cwd=tmp_path)
    jobs = slurm.wait(job, 1500)
    logs = task_logs(tmp_path, job)
    for task in range(N_SHARDS):
        assert jobs[str(task)]["JobState"] == "COMPLETED", (jobs[str(task)], logs[task][-3000:])
        assert f"shard {task}/{N_SHARDS} taken from the SLURM array" in logs[task], logs[task][-3000:]
        assert f"(shard {task}/{N_SHARDS}, " in logs[task]  # the run's summary line names it too
    assert_each_scan_once(out, N_SCANS)


def test_a_scancelled_task_then_the_array_resubmitted_gives_each_scan_once(slurm, cohort6, demo_model, tmp_path,
                                                                          ray_tmp):
    """One task cancelled while it segments (a scan of its shard finished, others not): the resubmitted
    array completes the cohort, every scan once, and what was committed before is not redone."""
    out = tmp_path / "out"
    config = small_job(tmp_path, cohort6, out, output={"uri": str(out), "commit_every": 1})
    sizes = [sum(shard_of(p, "0", N_SHARDS) == i for p in participants(cohort6)) for i in range(N_SHARDS)]
    victim = max(range(N_SHARDS), key=sizes.__getitem__)
    assert sizes[victim] >= 2, sizes  # (seed 25) a shard with a scan done and a scan to do when cancelled
    env = job_env(slurm, ray_tmp)
    first = slurm.sbatch(f"--array=0-{N_SHARDS - 1}", "--cpus-per-task=1", "-o", str(tmp_path / "task-%A_%a.log"),
                         str(ARRAY), str(config), env=env, cwd=tmp_path)

    def victim_finished_a_scan(jobs) -> bool:
        staged = [p.stem for p in (out / "_work" / "staged" / "scans").glob("*.parquet")] \
            if (out / "_work" / "staged" / "scans").exists() else []
        done = pd.read_parquet(out / "tables" / "scans") if (out / "tables" / "scans").exists() else None
        pids = list(done["participant_id"]) if done is not None else []
        ours = [p for p in participants(cohort6) if shard_of(p, "0", N_SHARDS) == victim
                and (p in pids or any(s.split("__")[0] == p for s in staged))]
        return bool(ours) or jobs.get(str(victim), {}).get("JobState") in ("COMPLETED", "FAILED")

    jobs = slurm.wait(first, 900, until=victim_finished_a_scan)
    assert jobs[str(victim)]["JobState"] == "RUNNING", (jobs[str(victim)], task_logs(tmp_path, first)[victim][-3000:])
    slurm.command("scancel", f"{first}_{victim}")
    jobs = slurm.wait(first, 900)
    assert jobs[str(victim)]["JobState"] == "CANCELLED", jobs[str(victim)]
    before = pd.read_parquet(out / "tables" / "scans")[["participant_id", "visit", "run_id"]]
    assert len(before) < N_SCANS, "the cancelled task left work to do"
    again = slurm.sbatch(f"--array=0-{N_SHARDS - 1}", "--cpus-per-task=1", "-o", str(tmp_path / "task-%A_%a.log"),
                         str(ARRAY), str(config), env=env, cwd=tmp_path)
    jobs = slurm.wait(again, 1200)
    logs = task_logs(tmp_path, again)
    assert all(j["JobState"] == "COMPLETED" for j in jobs.values()), (jobs, {k: v[-2000:] for k, v in logs.items()})
    assert_each_scan_once(out, N_SCANS)
    after = pd.read_parquet(out / "tables" / "scans")[["participant_id", "visit", "run_id"]]
    kept = before.merge(after, on=["participant_id", "visit"], suffixes=("_before", "_after"))
    assert len(kept) == len(before) and (kept.run_id_before == kept.run_id_after).all()  # nothing redone


# -- a Ray cluster inside one allocation --------------------------------------------------------------------
def test_ray_cluster_script_runs_the_demo_cohort_through_a_head_it_started(slurm, phantom_cohort, demo_model,
                                                                          tmp_path, ray_tmp):
    """The job is stopped as the time limit would stop it (SIGTERM to the batch shell alone, forwarded to
    the run) once a scan is published; the same job submitted again completes the cohort, each scan once."""
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(out), limits={"first_n": 3},
                            output={"uri": str(out), "commit_every": 1},
                            resources={"cpu_segmenters": 1, "threads_per_segmenter": 1, "memory_gb_per_scan": 0.5})
    env = job_env(slurm, ray_tmp, MRSEG_RAY_JOIN_TIMEOUT_S="120")

    def submit(log: Path) -> str:
        return slurm.sbatch("--nodes=1", f"--cpus-per-task={slurm.cpus}", "-o", str(log), str(RAY_CLUSTER),
                            str(config), env=env, cwd=tmp_path)

    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    first = submit(first_log)
    slurm.wait(first, 900, until=lambda jobs: (out / "tables" / "scans").exists()
               or jobs.get(first, {}).get("JobState") not in (None, "PENDING", "RUNNING"))
    slurm.command("scancel", "--batch", "--signal=TERM", first)  # what --signal=B:TERM@120 sends
    jobs = slurm.wait(first, 300)
    text = first_log.read_text(errors="replace")
    address = re.search(r"Ray head at (\S+:\d+)", text)
    assert address and f"all 1 node(s) joined the Ray cluster at {address[1]}" in text, text[-4000:]
    assert f"joined Ray cluster at {address[1]}" in text  # the run used that head, not a Ray of its own
    assert f"Ray head with {slurm.cpus} CPUs and 0 GPUs, temporary folder {ray_tmp}/ray-{first}" in text
    assert "forwarded to the run" in text and "interrupted (SIGTERM)" in text, text[-4000:]
    assert jobs[first]["ExitCode"] == "143:0" and "ended with exit status 143" in text, (jobs[first], text[-4000:])
    published = len(pd.read_parquet(out / "tables" / "scans"))
    assert 1 <= published < 3, text[-4000:]
    second = submit(second_log)
    jobs = slurm.wait(second, 900)
    text = second_log.read_text(errors="replace")
    assert jobs[second]["JobState"] == "COMPLETED", (jobs[second], text[-4000:])
    assert f"{3 - published} done, 0 failed, {published} already done earlier" in text, text[-4000:]
    assert "ended with exit status 0" in text
    assert_each_scan_once(out, 3)

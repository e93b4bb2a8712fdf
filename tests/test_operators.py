"""What operators do to a running cohort job (issue 15): a second run on one output, a changed config,
--restart, signals, actors that cannot work, ids and folders that are not ours."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import DEMO_BODY_COMP_MODEL, REPO, shared_file, write_job_yaml
from exactly_once import assert_each_scan_once
from procs import kill_matching, matching
from mrseg_cohort.cli import app
from mrseg_cohort.config import load_config
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.storage import Store
from mrseg_cohort.ledger.lease import OutputLease
from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort
from mrseg_cohort.pipeline.run import run_job

N_SCANS = 2


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("operators") / "in"
    write_phantom_cohort(Store(), str(out), PhantomSpec(participants=N_SCANS, seed=91))
    return out


def _cli(args: list[str], tmpdir: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "RAY_TMPDIR": tmpdir}
    return subprocess.Popen([sys.executable, "-m", "mrseg_cohort.cli", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


# -- one run per output -------------------------------------------------------------------------------
# the local case in the slow tier (47 s on 2 cores): tests/test_lease.py races the lease on disk itself
@pytest.mark.parametrize("where", [pytest.param("file", marks=pytest.mark.slow), "s3"])
def test_two_runs_started_together_one_is_refused_and_every_scan_is_once(where, cohort, tmp_path, request):
    if where == "s3":
        s3 = request.getfixturevalue("s3")
        out_uri = f"s3://{s3['bucket']}/two-runs-{uuid.uuid4().hex[:6]}"
        output = {"uri": out_uri, "storage": {"endpoint_url": s3["endpoint_url"], "key": s3["key"],
                                              "secret": s3["secret"]}}
    else:
        out_uri = str(tmp_path / "out")
        output = {"uri": out_uri}
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), out_uri, output=output)
    tmpdirs = [f"/tmp/r2{uuid.uuid4().hex[:6]}" for _ in range(2)]
    try:
        runs = [_cli(["run", str(config), "--no-progress"], t) for t in tmpdirs]
        results = [(p.wait(timeout=600), *p.communicate()) for p in runs]
    finally:
        for t in tmpdirs:
            kill_matching(t)
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], [r[2][-2000:] for r in results]
    refused = next(err for code, _, err in results if code == 2)
    assert "is in use by run" in refused or "was just taken by" in refused
    assert "host" in refused and "since" in refused
    if where == "s3":
        local = tmp_path / "copy"
        Store(load_config(config).output.storage.fsspec_options()).fs_and_path(out_uri)[0].get(
            out_uri.removeprefix("s3://") + "/", str(local) + "/", recursive=True)
        assert_each_scan_once(local, N_SCANS)
    else:
        assert_each_scan_once(Path(out_uri), N_SCANS)


def test_a_run_whose_lease_is_taken_over_stops_with_one_line_and_publishes_nothing(cohort, tmp_path, monkeypatch,
                                                                                  ray_local):
    """A run that lost its lease ended with a 40-line traceback and exit 1. Here another run takes the
    output over (as after a suspension past the timeout) just before this one publishes."""
    from mrseg_cohort.pipeline.publisher import BatchPublisher

    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out), limits={"first_n": 1})
    flush = BatchPublisher.flush
    taken = []

    def taken_over_first(self, *args, **kwargs):
        if not taken:
            taken.append(OutputLease(Store(), str(out), "run-after-the-pause", age_of=lambda uri: 1e6))
            taken[0].acquire()
        return flush(self, *args, **kwargs)

    monkeypatch.setattr(BatchPublisher, "flush", taken_over_first)
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "lost the output" in lines[0] and "run-after-the-pause" in lines[0], result.output
    assert "Traceback" not in result.output
    assert not (out / "tables" / "scans").exists()  # nothing published
    assert list((out / "_work" / "staged" / "scans").glob("*.parquet"))  # what it finished is kept for the holder


def test_restart_is_refused_while_a_run_holds_the_output(cohort, tmp_path):
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "keep.txt").write_text("a result of the running job")
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out))
    holder = OutputLease(Store(), str(out), "run-holding")
    holder.acquire()  # a live run on this host (this process)
    try:
        result = CliRunner().invoke(app, ["run", str(config), "--restart", "--no-progress"])
    finally:
        holder.release()
    assert result.exit_code == 2 and "in use by run run-holding" in result.output
    assert (out / "labels" / "keep.txt").exists()


# -- one configuration per output ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def committed(cohort, tmp_path_factory, ray_local):
    """An output with the base model committed for every scan, and its config file."""
    folder = tmp_path_factory.mktemp("fingerprint")
    config = write_job_yaml(folder / "job.yaml", str(cohort), str(folder / "out"))
    summary = run_job(load_config(config))
    assert (summary.done, summary.failed) == (N_SCANS, 0)
    return config, folder / "out"


@pytest.mark.parametrize("section,values,changed", [
    ("measures", {"erosion_voxels_inplane": 2}, "measures.erosion_voxels_inplane: 1 -> 2"),
    ("model", {"tile_step_size": 0.75}, "models.base.tile_step_size: 0.5 -> 0.75"),
    ("contrasts", {"segment": ["opp"]}, 'contrasts.segment: ["in"] -> ["opp"]'),
    ("cohort", {"modality": "CT"}, "cohort.modality: MRI -> CT"),  # it decides which models run
])
def test_a_resume_with_another_configuration_is_refused_naming_the_key(committed, section, values, changed,
                                                                        tmp_path, demo_model):
    config, out = committed
    job = load_config(config)
    base = {"model": {"weights": str(demo_model), "device": "auto"}}
    changed_config = write_job_yaml(tmp_path / "changed.yaml", job.input.uri, str(out),
                                    **{section: {**base.get(section, {}), **values}})
    with pytest.raises(ConfigError, match="holds results of another configuration") as err:
        run_job(load_config(changed_config))
    assert changed in str(err.value) and "--restart" in str(err.value)


def test_other_library_versions_are_a_change_of_configuration(committed, tmp_path, monkeypatch):
    """A scipy or nnU-Net minor release changes resampling matrices and filters: outputs mixing them
    were not refused (the fingerprint held majors of mrseg-cohort, nnU-Net and torch only)."""
    from mrseg_cohort.pipeline import run as run_module
    from mrseg_cohort.versions import software_versions

    config, out = committed
    for key, version, changed in (("scipy", "1.99.0", "software.scipy: "), ("nnunetv2", "2.99.1", "software.nnunetv2: ")):
        monkeypatch.setattr(run_module, "software_versions", lambda: {**software_versions(), key: version})
        with pytest.raises(ConfigError, match="holds results of another configuration") as err:
            run_job(load_config(config))
        assert changed in str(err.value) and version[:4] in str(err.value)


def test_rows_record_the_versions_of_the_processes_that_computed_them(committed):
    """The scans table recorded the driver's library versions, not those of the worker and actor."""
    import scipy
    import SimpleITK
    import skimage
    import torch

    _, out = committed
    scans = pd.read_parquet(out / "tables" / "scans")
    assert (scans["scipy_version"] == scipy.__version__).all() and (scans["skimage_version"] == skimage.__version__).all()
    assert (scans["simpleitk_version"] == SimpleITK.Version_VersionString()).all()
    assert (scans["torch_version"] == torch.__version__).all()


def test_a_fingerprint_of_the_first_format_is_upgraded_keeping_its_first_model_as_the_base():
    """Outputs written before the base model was recorded gave the unsuffixed label files to their
    first model: that stays the base model whatever the order now; keys format 1 lacked are adopted."""
    from mrseg_cohort.ledger.fingerprint import upgrade

    old = {"format": 1, "models": {"body_comp": {"x": 1}, "base": {"x": 2}}, "contrasts": {"segment": ["in"]},
           "software": {"mrseg_cohort": "0.1", "nnunetv2": "2", "torch": "2"}}
    current = {"format": 2, "models": {"base": {"x": 2}, "body_comp": {"x": 1}}, "base_model": "base",
               "cohort": {"modality": "MRI"}, "contrasts": {"segment": ["in"]},
               "software": {"mrseg_cohort": "0.1", "nnunetv2": "2.6", "torch": "2", "scipy": "1.17"}}
    upgraded = upgrade(old, current)
    assert upgraded["base_model"] == "body_comp" and upgraded["cohort"] == {"modality": "MRI"}
    assert upgraded["software"] == current["software"] and upgraded["format"] == 2
    moved = upgrade(old, {**current, "software": {**current["software"], "nnunetv2": "3.0"}})
    assert moved["software"]["nnunetv2"] == "2"  # another major: kept, so the resume is refused
    newer = upgrade(old, {**current, "software": {**current["software"], "mrseg_cohort": "0.2"}})
    assert newer["software"]["mrseg_cohort"] == "0.1"  # 0.2 changed stitching and tile skipping: refused


def test_other_weights_are_a_change_of_configuration(committed, tmp_path, demo_model):
    config, out = committed
    weights = tmp_path / "weights"
    shutil.copytree(demo_model, weights)
    dataset = json.loads((weights / "dataset.json").read_text())
    (weights / "dataset.json").write_text(json.dumps({**dataset, "description": "retrained"}))
    job = load_config(config)
    changed = write_job_yaml(tmp_path / "w.yaml", job.input.uri, str(out), model={"weights": str(weights)})
    with pytest.raises(ConfigError, match=r"models\.base\.weights_sha256: \w{12}\.\.\. -> \w{12}\.\.\."):
        run_job(load_config(changed))


def test_an_added_model_runs_only_itself_over_the_committed_scans(committed, tmp_path, demo_model):
    config, out = committed
    job = load_config(config)
    before = pd.read_parquet(out / "tables" / "scans")
    both = write_job_yaml(tmp_path / "both.yaml", job.input.uri, str(out), model=None, models=[
        {"name": "base", "weights": str(demo_model)},
        {"name": "body_comp", "weights": str(DEMO_BODY_COMP_MODEL), "labels": "body_comp", "modalities": ["MRI"]}])
    summary = run_job(load_config(both))
    assert (summary.scheduled, summary.done, summary.failed) == (N_SCANS, N_SCANS, 0)
    scans = pd.read_parquet(out / "tables" / "scans")
    base = scans[scans.model == "base"].sort_values("participant_id")
    assert len(base) == N_SCANS and set(base.run_id) == set(before.run_id)  # nothing of base redone
    added = scans[scans.model == "body_comp"]
    assert len(added) == N_SCANS and set(added.run_id) == {summary.run_id}
    assert not scans[["participant_id", "visit", "model"]].duplicated().any()
    again = run_job(load_config(both))
    assert (again.scheduled, again.already_done) == (0, N_SCANS)


# -- nothing outside what is ours ---------------------------------------------------------------------
def test_a_dotdot_participant_id_is_a_failure_row_and_nothing_is_written_outside(tmp_path, demo_model, ray_local):
    from mrseg_cohort.io.nifti import read_volume, write_volume

    source = read_volume(Store(), str(shared_file("mr.nii.gz")))
    (tmp_path / "in").mkdir()
    write_volume(Store(), str(tmp_path / "in" / "sub-.._ses-1_in.nii.gz"), source, np.float32)
    write_volume(Store(), str(tmp_path / "in" / "sub-ok_ses-1_in.nii.gz"), source, np.float32)
    out = tmp_path / "deep" / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(tmp_path / "in"), str(out),
                            cohort={"name": "ids", "layout": "nifti-folder",
                                    "participant_regex": r"^sub-(?P<participant_id>[^_]+)_ses-(?P<visit>[^_]+)_"},
                            contrasts={"available": ["in"], "segment": ["in"], "fat": None, "water": None})
    before = {p for p in tmp_path.rglob("*")}
    summary = run_job(load_config(config))
    assert (summary.done, summary.failed) == (1, 1)
    failures = pd.read_parquet(out / "tables" / "failures")
    row = failures.iloc[0]
    assert row.participant_id == ".." and row.stage == "read" and "not a usable id" in row.message
    assert row.uri.endswith("sub-.._ses-1_in.nii.gz")
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(out in p.parents or p == out or p in out.parents for p in new), sorted(map(str, new))


def test_restart_leaves_a_users_own_files_alone(committed, tmp_path):
    config, out = committed
    mine = [out / "labels" / "my_notes.txt", out / "tables" / "my_analysis.csv",
            out / "tables" / "structures" / "README.txt"]
    for path in mine:
        path.write_text("the user's own file")
    result = CliRunner().invoke(app, ["run", str(config), "--restart", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert all(p.read_text() == "the user's own file" for p in mine)
    assert_each_scan_once_except(out, mine)


def assert_each_scan_once_except(out: Path, extra: list[Path]) -> None:
    """assert_each_scan_once on a copy without the user's files (pandas would read them as parts)."""
    copy = out.parent / (out.name + "-check")
    shutil.copytree(out, copy, dirs_exist_ok=False)
    for path in extra:
        (copy / path.relative_to(out)).unlink()
    assert_each_scan_once(copy, N_SCANS)
    shutil.rmtree(copy)


def test_a_first_run_into_a_users_folder_is_refused(cohort, tmp_path):
    out = tmp_path / "my folder"
    out.mkdir()
    (out / "thesis.docx").write_text("not ours")
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out))
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2 and "is not empty and is not an mrseg-cohort output" in result.output
    assert "thesis.docx" in result.output and sorted(p.name for p in out.iterdir()) == ["thesis.docx"]


def test_an_output_inside_the_input_is_not_read_back(tmp_path):
    """nifti-folder lists every image below the input: our own label files (labels/a/0/in.nii.gz)
    would become participant "in" on the next run."""
    from mrseg_cohort.manifest import discover

    root = tmp_path / "scans"
    (root / "results" / "labels" / "a" / "0").mkdir(parents=True)
    for path in (root / "a.nii.gz", root / "results" / "labels" / "a" / "0" / "in.nii.gz"):
        path.write_bytes(b"not read by discover")
    sections = {"cohort": {"name": "t", "layout": "nifti-folder"},
                "contrasts": {"available": ["in"], "segment": ["in"], "fat": None, "water": None}}
    inside = write_job_yaml(tmp_path / "inside.yaml", str(root), str(root / "results"), **sections)
    elsewhere = write_job_yaml(tmp_path / "elsewhere.yaml", str(root), str(tmp_path / "out"), **sections)
    assert [s.participant_id for s in discover(load_config(inside), Store())] == ["a"]
    assert [s.participant_id for s in discover(load_config(elsewhere), Store())] == ["a", "in"]


# -- stops --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def larger_cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("signals") / "in"
    write_phantom_cohort(Store(), str(out), PhantomSpec(participants=4, seed=92))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("sig,code,to_group", [(signal.SIGTERM, 143, True), (signal.SIGINT, 130, False)])
def test_a_signal_mid_run_stops_cleanly_and_the_rerun_is_exactly_once(sig, code, to_group, larger_cohort, tmp_path):
    """SIGTERM to the whole process group (a cluster stopping a driver pod), SIGINT to the driver
    (Ctrl-C): within 30 s, the status of the signal, finished scans published, no Ray process left."""
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(larger_cohort), str(out))
    tmpdir = f"/tmp/rs{uuid.uuid4().hex[:6]}"
    try:
        run = _cli(["run", str(config), "--no-progress"], tmpdir, start_new_session=True)
        deadline = time.monotonic() + 400
        while not list((out / "_work" / "staged" / "scans").glob("*.parquet")):  # a scan finished
            assert run.poll() is None and time.monotonic() < deadline, run.communicate()[1][-3000:]
            time.sleep(0.2)
        sent = time.monotonic()
        os.killpg(run.pid, sig) if to_group else run.send_signal(sig)
        _, stderr = run.communicate(timeout=60)
        stopped_in = time.monotonic() - sent
        time.sleep(2)
        left = matching(tmpdir)
    finally:
        kill_matching(tmpdir)
    assert run.returncode == code, stderr[-3000:]
    assert stopped_in < 30 and not left, (stopped_in, left)
    assert f"interrupted ({signal.Signals(sig).name})" in stderr and "run the same command again to resume" in stderr
    published = pd.read_parquet(out / "tables" / "scans")
    assert 1 <= len(published) < 4  # what had finished is published; the rest is left for the next run
    rerun = subprocess.run([sys.executable, "-m", "mrseg_cohort.cli", "run", str(config), "--no-progress"], cwd=REPO,
                           env={**os.environ, "RAY_TMPDIR": tmpdir}, capture_output=True, text=True, timeout=600)
    kill_matching(tmpdir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert_each_scan_once(out, 4)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_ray_job_stop_publishes_what_finished_and_the_rerun_is_exactly_once(larger_cohort, tmp_path):
    """A job submitted to a Ray cluster (``ray start --head``, ``ray job submit``) and stopped with
    ``ray job stop``: the driver gets SIGTERM, publishes what finished and exits within Ray's wait
    (RAY_JOB_STOP_WAIT_TIME_S, as infra/ sets it); the job is stopped, no half-written table is
    visible, and the same job submitted again completes the cohort exactly once."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    tmpdir, port = f"/tmp/rj{uuid.uuid4().hex[:6]}", _free_port()
    # ports of their own: the test session's own local Ray (ray_local) may hold Ray's defaults
    ports = [f"--{name}={_free_port()}" for name in (
        "port", "ray-client-server-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
        "metrics-export-port", "runtime-env-agent-port")]
    # a throwaway local cluster: without Ray's token authentication (on by default with the dashboard)
    env = {**os.environ, "RAY_TMPDIR": tmpdir, "RAY_JOB_STOP_WAIT_TIME_S": "60", "RAY_AUTH_MODE": "disabled"}
    address = f"http://127.0.0.1:{port}"
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(larger_cohort), str(out))
    entry = ["--", sys.executable, str(REPO / "jobs" / "run_cohort.py"), "--config", str(config)]

    def ray(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([ray_cli, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)

    try:
        head = ray("start", "--head", "--num-cpus=2", "--include-dashboard=true", f"--dashboard-port={port}",
                   "--dashboard-host=127.0.0.1", f"--temp-dir={tmpdir}", "--disable-usage-stats", *ports)
        if head.returncode != 0 and "dashboard" in head.stderr.lower():
            pytest.skip(f"Ray's dashboard (ray[default]) cannot start here: {head.stderr[-300:]}")
        assert head.returncode == 0, head.stderr[-2000:]
        submitted = ray("job", "submit", "--address", address, "--no-wait", "--submission-id", "stop-me", *entry)
        assert submitted.returncode == 0, submitted.stderr[-2000:]
        deadline = time.monotonic() + 400
        while not list((out / "_work" / "staged" / "scans").glob("*.parquet")):  # a scan finished
            assert time.monotonic() < deadline, ray("job", "logs", "--address", address, "stop-me").stdout[-3000:]
            time.sleep(0.5)
        sent = time.monotonic()
        stopped = ray("job", "stop", "--address", address, "stop-me")  # waits for the job to end
        stopped_in = time.monotonic() - sent
        status = ray("job", "status", "--address", address, "stop-me").stdout
        logs = ray("job", "logs", "--address", address, "stop-me").stdout
        assert stopped.returncode == 0 and "was stopped" in status, (stopped.stderr[-2000:], status, logs[-3000:])
        assert stopped_in < 60, (stopped_in, logs[-3000:])
        assert "interrupted (SIGTERM)" in logs and "submit the same job again to resume" in logs, logs[-3000:]
        published = pd.read_parquet(out / "tables" / "scans")
        assert 1 <= len(published) < 4, logs[-3000:]  # what had finished is published, nothing else
        again = ray("job", "submit", "--address", address, "--submission-id", "again", *entry, timeout=600)
        assert again.returncode == 0, (again.stdout[-3000:], again.stderr[-2000:])
    finally:  # this cluster's processes only (`ray stop` would also end the test session's own Ray)
        kill_matching(tmpdir)
    assert_each_scan_once(out, 4)


# -- actors that cannot work ----------------------------------------------------------------------------
def _model_copy(demo_model: Path, folder: Path, change) -> Path:
    shutil.copytree(demo_model, folder)
    change(folder)
    return folder


def _plans_with_unknown_normalisation(folder: Path) -> None:
    plans = json.loads((folder / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["MyNormalization"]
    (folder / "plans.json").write_text(json.dumps(plans))


def test_an_actor_that_raises_at_construction_stops_the_job_before_any_scan(cohort, demo_model, tmp_path,
                                                                            ray_local):
    weights = _model_copy(demo_model, tmp_path / "weights", _plans_with_unknown_normalisation)
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out), model={"weights": str(weights)})
    t0 = time.monotonic()
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "a segmentation actor could not start" in lines[0]
    assert "normalization_schemes 'MyNormalization' is not supported" in lines[0]
    assert not (out / "labels" / "P0000").exists() and not (out / "tables").exists()  # no scan was read
    assert time.monotonic() - t0 < 120


def test_an_actor_whose_weights_are_missing_on_its_node_stops_the_job(cohort, demo_model, tmp_path, ray_local,
                                                                     monkeypatch):
    """The driver's node has the weights (preflight passes); the actor's node does not."""
    from dataclasses import replace

    from mrseg_cohort.pipeline import run as run_module

    checked = run_module.preflight

    def preflight_on_another_node(job):
        return [replace(spec, path=str(tmp_path / "not-on-this-node")) for spec in checked(job)]

    monkeypatch.setattr(run_module, "preflight", preflight_on_another_node)
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out))
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "a segmentation actor could not start" in result.output and "not-on-this-node" in result.output
    assert not (out / "tables").exists()


def _pool_of(actor_class, ray_local, segmenters: int = 1, start_timeout_s: float = 120):
    """An ActorPool on the test session's local Ray whose actors are ``actor_class``."""
    from mrseg_cohort.config import ResourcesConfig
    from mrseg_cohort.pipeline.actor_pool import ActorPool
    from mrseg_cohort.pipeline.session import RaySession

    pool = ActorPool(RaySession(on_cluster=False, started_here=False), "cpu", [],
                     ResourcesConfig(cpu_segmenters=segmenters, actor_start_timeout_s=start_timeout_s))
    pool._actor_cls = ray_local.remote(actor_class).options(max_restarts=0, num_cpus=0)
    return pool


def test_an_actor_whose_process_dies_while_it_starts_is_replaced(tmp_path, ray_local):
    """The soak found it: an actor SIGKILLed while loading its models left start() waiting (and
    spinning) until actor_start_timeout_s; the pool now replaces it, a bounded number of times."""
    died = tmp_path / "died-once"

    class DiesTheFirstTime:
        def __init__(self, models, device, threads, versions=None, max_model_voxels=None):
            if not died.exists():
                died.touch()
                os._exit(1)

        def ready(self):
            return {"node": "n", "pid": os.getpid(), "device": "cpu"}

    pool = _pool_of(DiesTheFirstTime, ray_local)
    t0 = time.monotonic()
    pool.start()
    assert died.exists() and pool.n_ready == 1 and len(pool.members) == 2 and time.monotonic() - t0 < 60

    class AlwaysDies(DiesTheFirstTime):
        def __init__(self, models, device, threads, versions=None, max_model_voxels=None):
            os._exit(1)

    from mrseg_cohort.pipeline.actor_pool import START_REPLACEMENTS, ActorStartError

    pool = _pool_of(AlwaysDies, ray_local)
    t0 = time.monotonic()
    with pytest.raises(ActorStartError, match="keep dying while they start"):
        pool.start()
    assert len(pool.members) == 1 + START_REPLACEMENTS and time.monotonic() - t0 < 60


def test_an_actor_failing_scan_after_scan_stops_the_job_keeping_what_is_done(cohort, demo_model, tmp_path,
                                                                             ray_local):
    """Corrupt weights (NaN) load fine and fail every scan: the job stops after
    resources.max_consecutive_failures instead of failing the cohort scan by scan."""
    import torch

    def poison(folder: Path) -> None:
        path = folder / "fold_0" / "checkpoint_final.pth"
        checkpoint = torch.load(path, weights_only=False)
        next(iter(checkpoint["network_weights"].values())).fill_(float("nan"))
        torch.save(checkpoint, path)

    weights = _model_copy(demo_model, tmp_path / "weights", poison)
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out), model={"weights": str(weights)},
                            resources={"cpu_segmenters": 1, "threads_per_segmenter": 2, "memory_gb_per_scan": 0.5,
                                       "max_consecutive_failures": 1, "in_flight_per_worker": 1})
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "1 scans in a row failed in the segmentation actors" in result.output
    failures = pd.read_parquet(out / "tables" / "failures")  # the failure is published, not lost
    assert len(failures) >= 1 and failures.iloc[0].stage == "segment"
    assert "NaN or infinite logits" in failures.iloc[0].message


def test_errors_in_the_actor_are_told_apart_by_type_not_by_words(monkeypatch):
    """Only a CUDA error (torch.AcceleratorError) ends the actor; an out-of-memory (here raised in
    preprocessing, outside the sliding window's retry) fails the scan and the actor goes on; a bug
    whose message speaks of cuda (a device mismatch) is an internal error, raised."""
    import torch

    from mrseg_cohort.pipeline import actor_pool

    exits = []
    monkeypatch.setattr(actor_pool, "_exit_soon", lambda: exits.append(True))
    actor = actor_pool.SegmentActor.__new__(actor_pool.SegmentActor)
    actor.device = "cuda"

    def raising(err):
        def segment(*args):
            raise err
        return segment

    actor.segmenter = raising(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    status, segs = actor.segment({"in": None}, "MRI")
    assert exits and segs is None and not status["ok"] and "CUDA error, actor restarted" in status["message"]
    assert not status["scan_fault"]
    exits.clear()

    actor.segmenter = raising(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 5.00 GiB"))
    status, segs = actor.segment({"in": None}, "MRI")
    assert not exits and not status["ok"] and "out of memory" in status["message"]

    for bug in (RuntimeError("Expected all tensors to be on the same device, but found at least two devices, "
                             "cuda:0 and cpu!"), RuntimeError("shape mismatch")):
        actor.segmenter = raising(bug)
        with pytest.raises(RuntimeError):
            actor.segment({"in": None}, "MRI")
        assert not exits


def test_consecutive_failures_are_counted_over_the_job_not_per_actor(ray_local):
    """An actor replaced after a CUDA error started again at 0 failures: a systematic fault never
    reached max_consecutive_failures and every scan of the cohort became a failures row. A scan's own
    bad input does not count; a success resets the count."""
    from mrseg_cohort.pipeline.actor_pool import ActorFailingError

    class Ready:
        def __init__(self, models, device, threads, versions=None, max_model_voxels=None):
            pass

        def ready(self):
            return {"node": "n", "pid": os.getpid(), "device": "cpu"}

    pool = _pool_of(Ready, ray_local, segmenters=2)
    pool.resources = pool.resources.model_copy(update={"max_consecutive_failures": 3})
    pool.start()
    pool.release(0, segment_failed=True)
    pool.mark_dead(0)  # the CUDA error ended it; its replacement must not start from 0
    pool.release(1, segment_failed=False)  # a success resets
    pool.release(1, segment_failed=True)
    pool.release(1, segment_failed=True)
    with pytest.raises(ActorFailingError, match="3 scans in a row failed"):
        pool.release(0, segment_failed=True)


def test_an_actor_on_a_node_with_other_library_versions_refuses_to_start():
    """A worker node with another scipy or nnU-Net would compute other numbers into the same output."""
    from mrseg_cohort.pipeline.actor_pool import SegmentActor
    from mrseg_cohort.versions import software_versions

    driver = {**software_versions(), "scipy": "0.1.0"}
    with pytest.raises(ConfigError, match=r"scipy .* here, 0\.1\.0 where the run started"):
        SegmentActor([], "cpu", 1, driver)


@pytest.mark.slow
def test_a_local_run_whose_raylet_dies_while_its_actor_starts_stops_with_one_line(tmp_path):
    """The soak found it: the pool replaced the actor that died with its node, and the replacement
    waited for a node that would never come, until actor_start_timeout_s (600 s by default), and
    then blamed the cluster's GPUs. Now it stops once the GCS marks the driver's node dead."""
    tmpdir = f"/tmp/rl{uuid.uuid4().hex[:6]}"
    try:
        proc = subprocess.run([sys.executable, "tests/raylet_loss_driver.py"], cwd=REPO,
                              env={**os.environ, "RAY_TMPDIR": tmpdir},
                              capture_output=True, text=True, timeout=300)
    finally:
        kill_matching(tmpdir)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, proc.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["error"] == "NodeLostError", result
    assert "Ray node is gone" in result["message"] and "run the same command again" in result["message"]
    assert result["seconds"] < 90, result  # the GCS's dead-node detection, not the 120 s start timeout


def test_the_pool_stops_the_run_once_its_node_is_gone(ray_local):
    """While scans run, poll() is where the pool would replace dead actors: with the driver's node
    gone it stops the run instead of asking for actors nothing can place."""
    from mrseg_cohort.pipeline.actor_pool import NodeLostError

    class Ready:
        def __init__(self, models, device, threads, versions=None, max_model_voxels=None):
            pass

        def ready(self):
            return {"node": "n", "pid": os.getpid(), "device": "cpu"}

    pool = _pool_of(Ready, ray_local)
    pool.start()
    pool.poll(every_s=0)  # the node is alive: nothing happens
    pool.session.own_node_alive = lambda: False
    with pytest.raises(NodeLostError, match="Ray node is gone"):
        pool.poll(every_s=0)


def test_a_cpu_actor_that_does_not_start_in_time_is_named_without_blaming_gpus(ray_local):
    """The timeout line of a CPU run spoke of the cluster's GPUs and of resources.gpu_wait_s."""

    class StartsSlowly:
        def __init__(self, models, device, threads, versions=None, max_model_voxels=None):
            time.sleep(60)

        def ready(self):
            return {}

    pool = _pool_of(StartsSlowly, ray_local, start_timeout_s=2)
    try:
        with pytest.raises(ConfigError) as caught:
            pool.start()
    finally:
        for member in pool.members:
            ray_local.kill(member.handle)
    message = str(caught.value)
    assert "0 of 1 segmentation actor(s) started within 2 s" in message, message
    assert "actor_start_timeout_s" in message and "GPU" not in message and "gpu_wait_s" not in message


@pytest.mark.slow
@pytest.mark.parametrize("after_s,progress", [(1.0, False), (3.0, True), (5.0, False), (5.0, True), (7.0, True)])
def test_sigterm_at_any_moment_of_the_start_gives_143_the_final_line_and_no_ray_left(after_s, progress, cohort,
                                                                                      tmp_path):
    """SIGTERM 4-6 s after start (while Ray starts) ended the run with exit 15, no final line, and
    Ray's agents left behind for a minute; with the progress bar's thread (and the lease's heartbeat
    thread) a signal could still reach Ray's own handler while Ray started (found in review)."""
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(out))
    tmpdir = f"/tmp/st{uuid.uuid4().hex[:6]}"
    try:
        run = _cli(["run", str(config), "--progress" if progress else "--no-progress"], tmpdir,
                   start_new_session=True)
        time.sleep(after_s)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
        _, stderr = run.communicate(timeout=120)
        time.sleep(3)
        left = matching(tmpdir)
    finally:
        kill_matching(tmpdir)
    assert run.returncode == 143, (after_s, run.returncode, stderr[-3000:])
    assert "interrupted (SIGTERM)" in stderr and "run the same command again to resume" in stderr, stderr[-2000:]
    assert not left, left


def test_a_ray_that_cannot_start_is_one_line_and_exit_2(cohort, tmp_path, monkeypatch):
    """Seen in the soak: a run suspended while Ray started raised Ray's bare Exception ('The current
    node timed out during startup') as a traceback with exit 1."""
    import ray

    def timed_out(*args, **kwargs):
        raise Exception("The current node timed out during startup. This could happen because some of the "
                        "raylet failed to startup or the GCS has become overloaded.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", timed_out)
    config = write_job_yaml(tmp_path / "job.yaml", str(cohort), str(tmp_path / "out"))
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "could not start or join a local Ray" in lines[0] and "timed out" in lines[0]


_SIGTERM_IN_RAY_INIT = """
import signal, sys, threading
import ray._private.worker as worker
from mrseg_cohort.config import ResourcesConfig
from mrseg_cohort.pipeline.session import RayStartStopped, ray_session
from mrseg_cohort.pipeline.signals import StopRequest, stop_on_signals

started, done = threading.Event(), threading.Event()
def bystander():  # a thread started before Ray (the lease's heartbeat, a progress bar): SIGTERM not held back
    started.set()
    done.wait(120)
thread = threading.Thread(target=bystander, daemon=True)
thread.start()
started.wait()
connect = worker.connect
def connect_then_signal(*args, **kwargs):
    out = connect(*args, **kwargs)
    signal.pthread_kill(thread.ident, signal.SIGTERM)  # the signal reaches that thread, inside ray.init
    done.set()
    return out
worker.connect = connect_then_signal
stop = StopRequest()
with stop_on_signals(stop):
    try:
        with ray_session(ResourcesConfig(cpu_segmenters=1)):
            pass
    except RayStartStopped:
        pass
print("stopped by", stop.reason)
"""


def _python_with_its_own_ray(code: str, prefix: str) -> subprocess.CompletedProcess:
    """``python -c code`` in the repository with a Ray temp dir of its own; every process left under
    that dir is killed afterwards."""
    tmpdir = f"/tmp/{prefix}{uuid.uuid4().hex[:6]}"
    try:
        return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "RAY_TMPDIR": tmpdir})
    finally:
        kill_matching(tmpdir)


def test_sigterm_reaching_another_thread_inside_ray_init_stops_the_run_not_aborts_it(tmp_path):
    """Seen in CI: SIGTERM 7 s after the start, while ray.init connected, reached the heartbeat's
    thread and Ray's C++ failure handler aborted the driver (exit -6, no final line)."""
    done = _python_with_its_own_ray(_SIGTERM_IN_RAY_INIT, "si")
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "stopped by SIGTERM" in done.stdout, done.stdout + done.stderr[-2000:]



_SHUTDOWN_OF_A_LOCAL_RAY = """
import os, signal, subprocess
import ray
from mrseg_cohort.config import ResourcesConfig
from mrseg_cohort.pipeline.session import ray_session
from mrseg_cohort.pipeline.signals import StopRequest, stop_on_signals

def blocked(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("SigBlk:"):
            return "SIGTERM" if int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1 else "-"

terminated = []
terminate = subprocess.Popen.terminate
def recorded(self):
    terminated.append(self.pid)
    terminate(self)
subprocess.Popen.terminate = recorded

stop = StopRequest()
with stop_on_signals(stop), ray_session(ResourcesConfig(cpu_segmenters=1)):
    node = ray._private.worker._global_node
    daemons = {kind: infos[0].process.pid for kind, infos in node.all_processes.items()}
    print("held", *sorted(f"{kind}:{blocked(pid)}" for kind, pid in daemons.items()))
print("terminated", len(terminated))
print("alive", *[pid for pid in daemons.values() if os.path.exists(f"/proc/{pid}") and
                 open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"])
"""


def test_a_local_ray_is_stopped_at_once_as_its_daemons_hold_sigterm(tmp_path):
    """Ray's daemons of a run hold SIGTERM back (the mask held while Ray started, inherited: a
    SIGTERM to the process group is the driver's to handle), so Ray's graceful stop could only end
    in SIGKILL a second per daemon later: five seconds at the end of every run. The session stops
    them at once, and none is left."""
    done = _python_with_its_own_ray(_SHUTDOWN_OF_A_LOCAL_RAY, "sd")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split(" ", 1)[0]: line.split()[1:] for line in done.stdout.strip().splitlines()}
    assert {"raylet:SIGTERM", "gcs_server:SIGTERM"} <= set(lines["held"]), done.stdout
    assert lines["terminated"] == ["0"] and lines["alive"] == [], done.stdout

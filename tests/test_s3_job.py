"""The cohort job with input and output on the local S3 server: UK Biobank zips in, tables and labels out;
and the same while the input server goes down (reads retried, nothing partial ever published)."""

from __future__ import annotations

import gzip
import io
import json
import logging
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL, write_job_yaml
from s3_server import S3Server, start_s3_server
from mrseg_cohort.io.dicom import read_ukbb_zip
from mrseg_cohort.io.nifti import read_labels
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import MRSEG
from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

QUICK_MODEL = Path("/tmp/models/quick")
VISIT = "2"


def model_folder() -> Path:
    """The bundled demo model once it is trained, else the throwaway quick model."""
    if (DEMO_MODEL / "fold_0" / "checkpoint_final.pth").exists():
        return DEMO_MODEL
    if (QUICK_MODEL / "fold_0" / "checkpoint_final.pth").exists():
        return QUICK_MODEL
    pytest.fail(f"no model: neither {DEMO_MODEL} nor {QUICK_MODEL} has fold_0/checkpoint_final.pth")


@pytest.fixture(scope="module")
def zip_cohort(tmp_path_factory) -> Path:
    """Two phantom participants as UK Biobank zips (instance 2), with truth, on local disk."""
    out = tmp_path_factory.mktemp("ukbb") / "Bulk"
    write_phantom_cohort(Store(), str(out), PhantomSpec(2, seed=1000, visit=VISIT, format="dicom-zip"))
    return out


def upload_zips(cohort: Path, store: Store, uri: str, n: int | None = None) -> list[str]:
    """Copy the cohort's (first ``n``) zips to ``uri``; their participant ids."""
    zips = sorted(cohort.glob("*.zip"))[:n]
    for path in zips:
        store.write_bytes(f"{uri}/{path.name}", path.read_bytes())
    return [p.name.split("_")[0] for p in zips]


def job_yaml(tmp_path: Path, input_uri: str, in_server: S3Server, output_uri: str, out_server: S3Server) -> Path:
    return write_job_yaml(tmp_path / "ukbb s3.yaml", input_uri, output_uri,
                          cohort={"layout": "ukbb-dicom-zip"},
                          input={"storage": in_server.options()}, output={"storage": out_server.options()},
                          model={"weights": str(model_folder())})


def run_cli(config: Path):
    from mrseg_cohort.cli import app

    return CliRunner().invoke(app, ["run", str(config), "--no-progress"])


def all_keys(server: S3Server, prefix: str) -> dict[str, str]:
    """Every object under ``s3://<bucket>/<prefix>``, hidden ones included: key -> ETag."""
    pages = server.client().get_paginator("list_objects_v2").paginate(Bucket=server.bucket, Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def check_whole(server: S3Server, key: str) -> None:
    """Fails unless the object parses completely as what its name says."""
    data = server.client().get_object(Bucket=server.bucket, Key=key)["Body"].read()
    if key.endswith(".parquet"):
        pq.read_table(io.BytesIO(data))
    elif key.endswith(".nii.gz"):
        gzip.decompress(data)  # a truncated stream raises
    elif key.endswith(".json"):
        json.loads(data)
    assert not any(part.startswith(".") for part in key.split("/")), f"temporary object visible: {key}"


@pytest.mark.slow
def test_ukbb_zip_job_on_s3(s3_server, zip_cohort, ray_local, tmp_path):
    prefix = f"job-{uuid.uuid4().hex[:6]}"
    store = Store(s3_server.options())
    pids = upload_zips(zip_cohort, store, f"s3://{s3_server.bucket}/{prefix}/Bulk")
    out = f"s3://{s3_server.bucket}/{prefix}/results"
    config = job_yaml(tmp_path, f"s3://{s3_server.bucket}/{prefix}/Bulk", s3_server, out, s3_server)
    result = run_cli(config)
    assert result.exit_code == 0, result.output
    structures = pd.read_parquet(f"{out}/tables/structures", storage_options=s3_server.options())
    scans = pd.read_parquet(f"{out}/tables/scans", storage_options=s3_server.options())
    assert sorted(scans["participant_id"]) == pids and (scans["status"] == "ok").all()
    assert len(structures) == len(pids) * len(MRSEG) and set(structures["visit"]) == {VISIT}
    assert structures.groupby(["participant_id", "structure_id"]).size().max() == 1
    labels = store.list_files(f"{out}/labels", suffix=".nii.gz")
    assert labels == [f"{out}/labels/{pid}/{VISIT}/in.nii.gz" for pid in pids]
    truth = read_labels(Store(), str(zip_cohort / "truth" / pids[0] / VISIT / "labels.nii.gz"))
    assert read_labels(store, labels[0]).grid.is_close(truth.grid, atol_mm=1e-3)
    for key in all_keys(s3_server, f"{prefix}/results/_work/runs"):  # run metadata: no credentials
        text = store.read_bytes(f"s3://{s3_server.bucket}/{key}").decode()
        assert s3_server.secret not in text and s3_server.key not in text


class Outage:
    """Takes an S3 server down; while down, its port accepts connections and resets them (counted),
    and after ``restart_after`` of them, or once ``restart_when()`` holds after a reset, the server is
    started again (same port and data)."""

    def __init__(self, server: S3Server, restart_after: int = 0, restart_when: Callable[[], bool] | None = None):
        self.server, self.restart_after, self.restart_when = server, restart_after, restart_when
        self.dropped, self.restarted_at = 0, 0.0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def begin(self) -> None:
        self.server.stop()
        port = int(self.server.endpoint_url.rsplit(":", 1)[1])
        self.listener = socket.create_server(("127.0.0.1", port))
        self.thread.start()

    def _serve(self) -> None:
        with self.listener:
            while True:
                conn, _ = self.listener.accept()
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
                conn.close()
                self.dropped += 1
                if self.dropped == self.restart_after or (self.restart_when and self.restart_when()):
                    break
        self.server.start()
        self.restarted_at = time.monotonic()


class Watcher:
    """Lists the output prefix every 0.3 s during the run and parses every new object whole."""

    def __init__(self, server: S3Server, prefix: str):
        self.server, self.prefix, self.seen, self.errors = server, prefix, {}, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(0.3):
            try:
                for key, etag in all_keys(self.server, self.prefix).items():
                    if self.seen.get(key) != etag:
                        self.seen[key] = etag
                        check_whole(self.server, key)
            except Exception as err:  # noqa: BLE001 - reported by the test
                if "NoSuchKey" not in str(err):  # deleted between list and get: fine
                    self.errors.append(f"{type(err).__name__}: {err}")

    def stop(self) -> None:
        self.done.set()
        self.thread.join()


@pytest.mark.slow
def test_input_server_down_after_the_manifest(s3_server, zip_cohort, ray_local, tmp_path, monkeypatch):
    """Reads hit a dead server, are retried, and finish once it is back; no partial output, ever."""
    import mrseg_cohort.pipeline.run as pipeline_run

    flaky = start_s3_server(tmp_path / "input-s3", bucket="mrseg-input")
    try:
        inp = f"s3://{flaky.bucket}/Bulk"
        pids = upload_zips(zip_cohort, Store(flaky.options()), inp, n=1)  # one scan: half the CPU time
        prefix = f"fault-{uuid.uuid4().hex[:6]}/results"
        out = f"s3://{s3_server.bucket}/{prefix}"
        outage = Outage(flaky, restart_after=7)  # botocore tries a request 5 times: ours must retry too
        real_discover = pipeline_run.discover

        def discover_then_fail(job, store):
            sources = real_discover(job, store)
            outage.begin()
            return sources

        monkeypatch.setattr(pipeline_run, "discover", discover_then_fail)
        watcher = Watcher(s3_server, prefix)
        try:
            result = run_cli(job_yaml(tmp_path, inp, flaky, out, s3_server))
        finally:
            watcher.stop()
        assert outage.dropped == 7 and outage.restarted_at > 0  # the reads did meet the outage
        assert result.exit_code == 0, result.output
        assert watcher.errors == [] and watcher.seen
        keys = all_keys(s3_server, prefix)
        for key in keys:
            check_whole(s3_server, key)
        scans = pd.read_parquet(f"{out}/tables/scans", storage_options=s3_server.options())
        assert sorted(scans["participant_id"]) == pids
    finally:
        flaky.stop()


def test_zip_read_survives_a_server_restart_mid_stream(zip_cohort, tmp_path, monkeypatch, caplog):
    """The server dies between two ranged reads of one zip; the reader reopens and reads on."""
    import s3fs.core

    server = start_s3_server(tmp_path / "s3", bucket="mrseg-restart")
    try:
        # botocore tries each request twice here (default 5): shorter outages reach our own retry
        store = Store({**server.options(), "config_kwargs": {"retries": {"max_attempts": 2}}})
        name = min(p.name for p in zip_cohort.glob("*.zip"))
        uri = f"s3://{server.bucket}/Bulk/{name}"
        store.write_bytes(uri, (zip_cohort / name).read_bytes())
        outage = Outage(server, restart_when=lambda: "retry" in caplog.text)  # down until we retry
        real = s3fs.core.S3File._fetch_range
        fetched = []

        def fetch(self, start, end):
            if start == 0 and not outage.thread.is_alive() and not outage.dropped:
                outage.begin()  # after the central directory, before the members' bytes
            data = real(self, start, end)
            fetched.append((start, end))
            return data

        monkeypatch.setattr(s3fs.core.S3File, "_fetch_range", fetch)
        caplog.set_level(logging.WARNING, logger="mrseg_cohort.io.storage")
        stations = read_ukbb_zip(store, uri)
        outage.thread.join()
        assert outage.dropped >= 1 and outage.restarted_at and "retry 1/4" in caplog.text
        assert sum(e - s for s, e in fetched) < 1.05 * store.size(uri)  # read on, not anew
        expected = read_ukbb_zip(Store(), str(zip_cohort / name))
        assert all(np.array_equal(a.array, b.array) for c in expected for a, b in zip(stations[c], expected[c]))
    finally:
        server.stop()

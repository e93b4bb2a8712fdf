"""Wrong S3 credentials, no credentials at all, and an endpoint nobody listens on, in every command that
reads the input or the output: one ``error:`` line, exit status 2, no secret shown (issue 23: ~95-line
tracebacks and exit 1 where botocore's errors are no OSError, e.g. NoCredentialsError).

Against the tests' local S3 server (tests/s3_server.py). ``request_attempts: 1``, a short
``timeout_s`` and mrseg-cohort's own retries (io.storage) without their backoff waits keep the dead
endpoint quick; those retries may log a warning per retry before the line, which is all else the
output may hold.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from mrseg_cohort.cli import app
from mrseg_cohort.io.storage import Store
from s3_server import free_ports

WRONG_SECRET = "Wr0ng-s3cret-not-shown"
RETRY_WARNING = re.compile(r"WARNING mrseg_cohort\.io\.storage: .* failed \(.*\); retry \d+/\d+ in ")


@pytest.fixture(scope="module")
def stores(s3_server, tmp_path_factory) -> dict:
    """Storage sections by name, an input prefix holding one zip, and a local input with the same."""
    bucket = s3_server.bucket
    Store(s3_server.options()).write_bytes(f"s3://{bucket}/call-errors/in/1000001_20201_2_0.zip", b"PK")
    local = tmp_path_factory.mktemp("call-errors") / "in"
    local.mkdir()
    (local / "1000001_20201_2_0.zip").write_bytes(b"PK")
    quick = {"request_attempts": 1, "timeout_s": 3}
    good = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret, **quick}
    return {"bucket": bucket, "local_input": str(local), "server_secret": s3_server.secret, "auth": s3_server.auth,
            "wrong secret": {**good, "secret": WRONG_SECRET},
            "wrong key": {**good, "key": "AKIDNOSUCHKEY000"},
            "no credentials": {"endpoint_url": s3_server.endpoint_url, **quick},
            "dead endpoint": {**good, "endpoint_url": f"http://127.0.0.1:{free_ports(1)[0]}"}}


@pytest.fixture
def no_backoff(monkeypatch):
    """Stores made from a config retry as many times as a run's, without the waits between (3 s over
    the 5 attempts: the dead endpoint's cases took 6-11 s each)."""
    monkeypatch.setattr(Store, "from_config", classmethod(lambda cls, storage: cls(storage.fsspec_options(),
                                                                                   backoff_s=0.0)))


@pytest.fixture
def no_aws_environment(tmp_path, monkeypatch):
    """No credentials from the environment, ~/.aws or the instance metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


INPUT_CASES = [("wrong secret", ("plan", "status", "run")), ("wrong key", ("plan",)),
               ("no credentials", ("plan", "status", "run")), ("dead endpoint", ("plan", "run"))]
OUTPUT_CASES = [("wrong secret", ("plan", "run", "report", "tables wide")),
                ("no credentials", ("status", "run", "report")),
                ("dead endpoint", ("plan", "run", "report", "tables wide"))]
CALLS = [("input", case, command) for case, commands in INPUT_CASES for command in commands] + \
        [("output", case, command) for case, commands in OUTPUT_CASES for command in commands]


def _job(tmp_path: Path, stores: dict, side: str, case: str) -> Path:
    bucket = stores["bucket"]
    if side == "input":
        section_in = {"uri": f"s3://{bucket}/call-errors/in", "storage": stores[case]}
        section_out = {"uri": str(tmp_path / "out")}
    else:
        section_in = {"uri": stores["local_input"]}
        section_out = {"uri": f"s3://{bucket}/call-errors/out", "storage": stores[case]}
    job = {"cohort": {"name": "s3-errors", "layout": "ukbb-dicom-zip"}, "input": section_in,
           "model": {"weights": str(DEMO_MODEL)}, "output": section_out}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.parametrize("side,case,command", CALLS, ids=[f"{s}-{c.replace(' ', '-')}-{m.replace(' ', '-')}"
                                                          for s, c, m in CALLS])
def test_a_store_that_refuses_or_does_not_answer_is_one_line(side, case, command, stores, tmp_path,
                                                             no_aws_environment, no_backoff):
    if not stores["auth"] and case != "dead endpoint":
        pytest.skip("moto's S3 server accepts any credentials")
    config = _job(tmp_path, stores, side, case)
    extra = {"run": ["--no-progress"], "report": ["--out", str(tmp_path / "r.html")],
             "tables wide": ["--out", str(tmp_path / "w.parquet")]}.get(command, [])
    result = CliRunner().invoke(app, [*command.split(), str(config), *extra])
    output = result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        f"uncaught {result.exception!r}:\n{output}"
    assert result.exit_code == 2, f"exit {result.exit_code}:\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, output
    assert all(line in errors or RETRY_WARNING.search(line) for line in lines), output
    line = errors[0]
    assert f"s3://{stores['bucket']}/call-errors" in line, line
    if side == "input" or command == "run":  # the checks before any work name the key and what to do
        assert line.startswith(f"error: {side}.uri: "), line
    if case in ("wrong secret", "wrong key", "no credentials") and (side == "input" or command == "run"):
        assert "check the storage credentials" in line, line
    if case == "dead endpoint":
        assert "Could not connect to the endpoint URL" in line, line
    for secret in (WRONG_SECRET, stores["server_secret"]):
        assert secret not in output
    assert not (tmp_path / "out" / "_work").exists() and not (tmp_path / "r.html").exists()

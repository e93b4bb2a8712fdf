"""io/download.py against a local HTTP server: sha256, Range resume, servers that ignore Range,
credentials kept out of messages."""

import hashlib
import os
import socket

import pytest

from http_server import file_server  # noqa: F401  (fixture)
from mrseg_cohort.io.download import DownloadError, UnreachableError, download, mask_url

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def _get(server, part, **kw):
    seen = []
    download(server.url("/w.zip"), part, SHA, progress=lambda done, total: seen.append((done, total)),
             backoff_s=0, **kw)
    return seen


def test_download_checks_sha256_and_reports_progress(file_server, tmp_path):
    file_server.files["/w.zip"] = DATA
    part = tmp_path / "w.zip.part"
    seen = _get(file_server, part)
    assert part.read_bytes() == DATA
    assert seen[-1] == (len(DATA), len(DATA)) and [r["range"] for r in file_server.requests] == [None]


def test_interrupted_download_resumes_with_range(file_server, tmp_path):
    file_server.files["/w.zip"] = DATA
    file_server.cuts = [100_000]  # the first connection is cut after 100 kB
    part = tmp_path / "w.zip.part"
    _get(file_server, part)
    assert part.read_bytes() == DATA
    assert [r["range"] for r in file_server.requests] == [None, "bytes=100000-"]
    assert file_server.sent == len(DATA)  # nothing sent twice


def test_partial_file_is_kept_and_resumed_by_the_next_call(file_server, tmp_path):
    file_server.files["/w.zip"] = DATA
    file_server.cuts = [50_000, 0]
    part = tmp_path / "w.zip.part"
    with pytest.raises(DownloadError, match="interrupted 2 times.*run the same command again"):
        _get(file_server, part, attempts=2)
    assert part.stat().st_size == 50_000
    _get(file_server, part)
    assert part.read_bytes() == DATA and file_server.requests[-1]["range"] == "bytes=50000-"


def test_server_that_ignores_range_is_read_from_the_start(file_server, tmp_path):
    file_server.files["/w.zip"] = DATA
    file_server.honour_range = False
    part = tmp_path / "w.zip.part"
    part.write_bytes(b"x" * 1000)  # stale partial data that a 200 answer must replace
    _get(file_server, part)
    assert part.read_bytes() == DATA


def test_wrong_sha256_removes_the_download(file_server, tmp_path):
    file_server.files["/w.zip"] = DATA[:-1]  # a complete answer of a truncated file
    part = tmp_path / "w.zip.part"
    with pytest.raises(DownloadError, match=f"expected {SHA}.*deleted"):
        _get(file_server, part)
    assert not part.exists()


def test_unreachable_host_and_http_errors(file_server, tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(UnreachableError, match="cannot reach"):
        download(f"http://127.0.0.1:{port}/w.zip", tmp_path / "a.part", SHA, backoff_s=0)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(file_server.url("/missing.zip"), tmp_path / "b.part", SHA, backoff_s=0)
    assert not list(tmp_path.iterdir())


def test_credentials_are_sent_but_never_shown(file_server, tmp_path):
    url = f"http://alice:s3cret@127.0.0.1:{file_server.port}/missing.zip?token=abc&download=1"
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "c.part", SHA, backoff_s=0)
    assert "s3cret" not in str(err.value) and "abc" not in str(err.value) and "***@127.0.0.1" in str(err.value)
    assert file_server.requests[0]["authorization"] == "Basic YWxpY2U6czNjcmV0"  # alice:s3cret
    assert mask_url("https://u:p@h/x?download=1&X-Amz-Signature=zz") == "https://***@h/x?download=1&X-Amz-Signature=***"

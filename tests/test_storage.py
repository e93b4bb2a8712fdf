"""The storage contract (mrseg_cohort.io.storage), run on a local folder and on the local S3 server;
then the S3-only failures (missing bucket, refused credentials, unreadable prefix) and retries."""

from __future__ import annotations

import io
import logging
import threading

import pytest

from conftest import DEMO_MODEL
from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import ConfigError, StorageError
from mrseg_cohort.io import storage
from mrseg_cohort.io.storage import RetryingReader, Store, is_transient, join_uri

QUICK_MODEL = "/tmp/models/quick"


@pytest.fixture
def root(store_root) -> tuple[Store, str]:
    """(store, root URI) on local disk and on the S3 server (conftest's ``store_root``)."""
    return store_root


# -- the contract -----------------------------------------------------------------------------------
def test_write_read_size_exists(root):
    store, uri = root
    target = join_uri(uri, "p 1", "in.nii.gz")
    assert not store.exists(target)
    store.write_bytes(target, b"abc" * 1000)
    assert store.read_bytes(target) == b"abc" * 1000
    assert store.size(target) == 3000 and store.exists(target)
    with pytest.raises(FileNotFoundError, match="missing.nii.gz"):
        store.read_bytes(join_uri(uri, "missing.nii.gz"))


def test_overwrite_is_atomic(root):
    """Readers racing an overwrite see the old or the new object whole, never a part or a temp file."""
    store, uri = root
    target = join_uri(uri, "table.parquet")
    old, new = b"o" * 2_000_000, b"n" * 2_500_000
    store.write_bytes(target, old)
    writer = threading.Thread(target=lambda: [store.write_bytes(target, d) for d in (new, old, new)])
    writer.start()
    seen = set()
    while writer.is_alive():
        data = store.read_bytes(target)
        assert data in (old, new), f"partial object of {len(data)} bytes"
        seen.add(len(data))
    writer.join()
    assert store.read_bytes(target) == new
    assert store.list_files(uri) == [target]  # no temporary file left behind


def test_list_files_skips_hidden_and_filters(root):
    store, uri = root
    for rel in ("a/1_20201_2_0.zip", "a/b/x.nii.gz", "c.txt", "a/.hidden.zip", ".staging/y.zip"):
        store.write_bytes(join_uri(uri, rel), b"x")
    assert store.list_files(uri) == [join_uri(uri, r) for r in ("a/1_20201_2_0.zip", "a/b/x.nii.gz", "c.txt")]
    assert store.list_files(uri, suffix=".zip") == [join_uri(uri, "a/1_20201_2_0.zip")]
    assert store.list_files(join_uri(uri, "a"), recursive=False) == [join_uri(uri, "a/1_20201_2_0.zip")]
    assert store.list_dirs(uri) == ["a"]
    assert store.list_files(join_uri(uri, "nothing here")) == []


def test_remove(root):
    store, uri = root
    for rel in ("f.bin", "d/1.bin", "d/e/2.bin"):
        store.write_bytes(join_uri(uri, rel), b"x")
    store.remove(join_uri(uri, "f.bin"))
    store.remove(join_uri(uri, "d"), recursive=True)
    store.remove(join_uri(uri, "never-there.bin"))  # missing is not an error
    assert store.list_files(uri) == []
    assert not store.exists(join_uri(uri, "f.bin"))


def test_open_read_seeks_and_reads_ranges(root):
    store, uri = root
    target = join_uri(uri, "scan.zip")
    payload = bytes(range(256)) * 400
    store.write_bytes(target, payload)
    with store.open_read(target) as f:
        assert f.seekable() and f.read(10) == payload[:10] and f.tell() == 10
        f.seek(-5, io.SEEK_END)
        assert f.read() == payload[-5:]
        f.seek(1000)
        buf = bytearray(20)
        assert f.readinto(buf) == 20 and bytes(buf) == payload[1000:1020]
        f.seek(0)
        assert f.read() == payload


def test_check_writable_and_readable(root):
    store, uri = root
    store.check_writable(uri)
    assert store.list_files(uri) == []  # the probe is gone
    with pytest.raises(FileNotFoundError, match="does not exist"):
        store.check_readable(uri)  # nothing there yet
    store.write_bytes(join_uri(uri, "x/1_20201_2_0.zip"), b"x")
    store.check_readable(uri)
    store.check_readable(join_uri(uri, "x/1_20201_2_0.zip"))



def test_objects_another_process_wrote_after_a_listing_are_seen(root, tmp_path):
    """s3fs caches folder listings: a process that had listed a folder did not list, and could not
    read (FileNotFoundError), what another process wrote there afterwards. This hid the winner of a
    lease race and made the soak's checker report published parts as missing."""
    import subprocess
    import sys

    store, uri = root
    folder = join_uri(uri, "shared")
    store.write_bytes(join_uri(folder, "a.bin"), b"a")
    assert store.list_files(folder, recursive=False) == [join_uri(folder, "a.bin")]
    assert store.list_files(folder) == [join_uri(folder, "a.bin")]
    writer = ("import pickle, sys; store = pickle.loads(bytes.fromhex(sys.argv[1])); "
              "store.write_bytes(sys.argv[2], b'b')")
    import pickle

    subprocess.run([sys.executable, "-c", writer, pickle.dumps(store).hex(), join_uri(folder, "b.bin")],
                   check=True, timeout=120)
    both = [join_uri(folder, "a.bin"), join_uri(folder, "b.bin")]
    assert store.list_files(folder, recursive=False) == both
    assert store.read_bytes(join_uri(folder, "b.bin")) == b"b"
    assert store.exists(join_uri(folder, "b.bin")) and store.size(join_uri(folder, "b.bin")) == 1
    assert store.list_files(folder) == both

# -- object-store failures: one clear line, before any work -------------------------------------------
def test_missing_bucket(s3_server):
    store = Store(s3_server.options())
    with pytest.raises(FileNotFoundError) as info:
        store.check_readable("s3://no-such-bucket/ukbb")
    assert "no-such-bucket" in str(info.value) and "does not exist" in str(info.value)
    with pytest.raises(FileNotFoundError, match="no-such-bucket"):
        store.check_writable("s3://no-such-bucket/results")


def test_wrong_credentials_named_never_shown(s3_server, caplog):
    if not s3_server.auth:
        pytest.skip("moto's server accepts any credentials")
    secret = "Wr0ng-" + s3_server.secret[::-1]
    store = Store(s3_server.options(secret=secret))
    caplog.set_level(logging.DEBUG)
    errors = []
    for check in (store.check_readable, store.check_writable):
        with pytest.raises(PermissionError) as info:
            check(f"s3://{s3_server.bucket}/ukbb")
        errors.append(info.value)
    text = " ".join(f"{e} {e!r} {e.__cause__}" for e in errors)
    assert "credentials" in str(errors[0]) and len(str(errors[0]).splitlines()) == 1
    for value in (secret, s3_server.secret):
        assert value not in text and value not in caplog.text
    assert secret not in repr(store)


def test_unreadable_prefix(s3_server):
    if not s3_server.auth:
        pytest.skip("moto's server has no per-prefix permissions")
    admin = Store(s3_server.options())
    for prefix in ("readable", "private"):
        admin.write_bytes(f"s3://{s3_server.bucket}/{prefix}/1000001_20201_2_0.zip", b"x")
    limited = Store(s3_server.options(s3_server.limited_key, s3_server.limited_secret))
    limited.check_readable(f"s3://{s3_server.bucket}/readable")
    with pytest.raises(PermissionError, match="private"):
        limited.check_readable(f"s3://{s3_server.bucket}/private")


def _job(input_uri: str, input_storage: dict, output_uri: str, output_storage: dict) -> JobConfig:
    model = DEMO_MODEL if (DEMO_MODEL / "fold_0" / "checkpoint_final.pth").exists() else QUICK_MODEL
    return JobConfig.model_validate({
        "cohort": {"name": "t", "layout": "ukbb-dicom-zip"},
        "input": {"uri": input_uri, "storage": input_storage},
        "model": {"weights": str(model), "labels": "any"},
        "output": {"uri": output_uri, "storage": output_storage}})


@pytest.mark.parametrize("case", ["input bucket", "input credentials", "input prefix", "output bucket",
                                  "output credentials"])
def test_job_stops_before_any_work(case, s3_server, tmp_path):
    """preflight() refuses with one ConfigError line naming the key; no output is written."""
    from mrseg_cohort.pipeline.run import preflight

    if not s3_server.auth and ("credentials" in case or "prefix" in case):
        pytest.skip("moto's server does not check credentials")
    good = {"endpoint_url": s3_server.endpoint_url, "key": s3_server.key, "secret": s3_server.secret}
    bad_secret = "Wr0ng-" + s3_server.secret[::-1]
    limited = {**good, "key": s3_server.limited_key, "secret": s3_server.limited_secret}
    bucket = s3_server.bucket
    Store(s3_server.options()).write_bytes(f"s3://{bucket}/private/1000001_20201_2_0.zip", b"x")
    inp, inp_storage = f"s3://{bucket}/private", good
    out, out_storage = str(tmp_path / "out"), {}
    if case == "input bucket":
        inp = "s3://no-such-bucket/ukbb"
    elif case == "input credentials":
        inp_storage = {**good, "secret": bad_secret}
    elif case == "input prefix":
        inp_storage = limited
    elif case == "output bucket":
        out, out_storage = "s3://no-such-bucket/results", good
    else:
        out, out_storage = f"s3://{bucket}/results", {**good, "secret": bad_secret}
    with pytest.raises(ConfigError) as info:
        preflight(_job(inp, inp_storage, out, out_storage))
    message = str(info.value)
    assert message.startswith("input.uri" if case.startswith("input") else "output.uri"), message
    assert len(message.splitlines()) == 1 and bad_secret not in message and s3_server.secret not in message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# -- transient errors --------------------------------------------------------------------------------
class _FlakyFS:
    """Wraps a file system: the first ``failures`` calls of cat_file, and reads of opened files
    once ``fail_read_at`` bytes have been read, raise ConnectionError."""

    def __init__(self, fs, failures: int = 0, fail_read_at: int | None = None):
        self.fs, self.failures, self.fail_read_at, self.opened = fs, failures, fail_read_at, 0

    def cat_file(self, path):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("Connection reset by peer")
        return self.fs.cat_file(path)

    def open(self, path, mode="rb"):
        self.opened += 1
        return _FlakyFile(self.fs.open(path, mode), self if self.opened == 1 else None)


class _FlakyFile:
    def __init__(self, f, owner):
        self.f, self.owner, self.read_bytes = f, owner, 0

    def seek(self, pos, whence=0):
        return self.f.seek(pos, whence)

    def read(self, size=-1):
        if self.owner and self.owner.fail_read_at is not None and self.read_bytes >= self.owner.fail_read_at:
            raise ConnectionError("Connection broken: IncompleteRead")
        data = self.f.read(size)
        self.read_bytes += len(data)
        return data

    def close(self):
        self.f.close()


@pytest.fixture
def sleeps(monkeypatch) -> list[float]:
    slept: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", slept.append)
    return slept


def _flaky_store(monkeypatch, flaky: _FlakyFS) -> Store:
    store = Store(retries=4, backoff_s=0.1)
    real = Store.fs_and_path
    monkeypatch.setattr(Store, "fs_and_path", lambda self, uri: (flaky, real(self, uri)[1]))
    return store


def test_transient_errors_are_retried_with_backoff(tmp_path, monkeypatch, sleeps, caplog):
    (tmp_path / "a.bin").write_bytes(b"payload")
    flaky = _FlakyFS(Store().fs_and_path(str(tmp_path))[0], failures=2)
    store = _flaky_store(monkeypatch, flaky)
    assert store.read_bytes(str(tmp_path / "a.bin")) == b"payload"
    assert len(sleeps) == 2 and 0.1 <= sleeps[0] < sleeps[1] <= 0.25  # doubled, with jitter
    assert "retry 1/3" in caplog.text and "retry 2/3" in caplog.text


def test_retries_give_up_with_storage_error(tmp_path, monkeypatch, sleeps):
    (tmp_path / "a.bin").write_bytes(b"payload")
    store = _flaky_store(monkeypatch, _FlakyFS(Store().fs_and_path(str(tmp_path))[0], failures=10))
    with pytest.raises(StorageError, match="after 4 attempts") as info:
        store.read_bytes(str(tmp_path / "a.bin"))
    assert str(tmp_path / "a.bin") in str(info.value) and len(sleeps) == 3


def test_permanent_errors_are_not_retried(tmp_path, sleeps):
    with pytest.raises(FileNotFoundError):
        Store().read_bytes(str(tmp_path / "missing.bin"))
    assert sleeps == []
    assert not is_transient(PermissionError("Forbidden")) and is_transient(TimeoutError())


def test_open_read_reopens_and_resumes_after_a_dropped_connection(tmp_path, monkeypatch, sleeps):
    payload = bytes(range(256)) * 100
    (tmp_path / "a.zip").write_bytes(payload)
    flaky = _FlakyFS(Store().fs_and_path(str(tmp_path))[0], fail_read_at=1000)
    store = _flaky_store(monkeypatch, flaky)
    with store.open_read(str(tmp_path / "a.zip")) as f:
        assert isinstance(f, RetryingReader)
        parts = [f.read(700) for _ in range(3)] + [f.read()]
    assert b"".join(parts) == payload
    assert flaky.opened == 2 and len(sleeps) == 1  # one reopen, reading on from byte 1400


# -- what counts as transient: status codes and exception types, never message text -----------------
def _client_error(code: str, status: int):
    from botocore.exceptions import ClientError

    return ClientError({"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
                       "GetObject")


def _translated(err: BaseException) -> BaseException:
    """What s3fs raises: a builtin made from botocore's error, which stays its __cause__."""
    from s3fs.errors import translate_boto_error

    return translate_boto_error(err)


@pytest.mark.parametrize("make,transient", [
    (lambda: _translated(_client_error("SlowDown", 503)), True),
    (lambda: _translated(_client_error("InternalError", 500)), True),
    (lambda: _translated(_client_error("RequestTimeout", 400)), True),
    (lambda: _translated(_client_error("Teapot", 502)), True),  # an unknown code: the status decides
    (lambda: _translated(_client_error("NoSuchKey", 404)), False),
    (lambda: _translated(_client_error("AccessDenied", 403)), False),
    (lambda: _translated(_client_error("InvalidArgument", 400)), False),
    (lambda: __import__("botocore.exceptions").exceptions.EndpointConnectionError(endpoint_url="http://h"), True),
    (lambda: __import__("botocore.exceptions").exceptions.ReadTimeoutError(endpoint_url="http://h"), True),
    (lambda: __import__("aiohttp").ServerDisconnectedError(), True),
    (lambda: __import__("aiohttp").ClientPayloadError("body cut short"), True),
    (lambda: ConnectionResetError(104, "Connection reset by peer"), True),
    (lambda: TimeoutError(), True),
    (lambda: OSError("cannot read 1500123_20201_2_0.zip: 500 bytes, 503 expected"), False),
    (lambda: OSError(40, "Too many levels of symbolic links", "/in/1500123_20201_2_0.zip"), False),
    (lambda: type("ConnectionTimeoutEndpointError", (ValueError,), {})("a name is not a type"), False),
    (lambda: ValueError("Service Unavailable, connection reset, timed out"), False),
])
def test_transient_by_status_code_and_type_not_by_message(make, transient):
    assert is_transient(make()) is transient


def test_an_eid_in_an_error_is_not_retried(tmp_path, sleeps):
    loop = tmp_path / "1500123_20201_2_0.zip"
    loop.symlink_to(loop)
    with pytest.raises(StorageError) as info:
        Store().read_bytes(str(loop))
    assert sleeps == [] and "Too many levels of symbolic links" in str(info.value) and str(loop) in str(info.value)


def test_full_disk_names_the_file_and_is_not_retried(tmp_path, monkeypatch, sleeps):
    def full(path, data):
        raise OSError(28, "No space left on device", path + ".tmp-1")

    monkeypatch.setattr(storage, "_replace_local", full)
    target = str(tmp_path / "labels" / "1000001" / "2" / "in.nii.gz")
    with pytest.raises(StorageError) as info:
        Store().write_bytes(target, b"x")
    assert str(info.value) == f"write failed: No space left on device ({target})" and sleeps == []


def test_full_disk_while_publishing_says_so_and_keeps_the_staged_scans(tmp_path, monkeypatch):
    from mrseg_cohort.ledger.lease import OutputLease
    from mrseg_cohort.ledger.outputs import Outputs
    from mrseg_cohort.tables import empty_table

    outputs = Outputs(Store(), str(tmp_path / "out"))
    lease = OutputLease(outputs.store, outputs.root, "run1")
    lease.acquire()
    key = ("1000001", "2", "base")
    outputs.stage(key, {t: empty_table(t) for t in ("structures", "intensities", "scans")})
    real = storage._replace_local
    monkeypatch.setattr(storage, "_replace_local", lambda path, data: real(path, data) if "_work/parts" not in path
                        else (_ for _ in ()).throw(OSError(28, "No space left on device")))
    with pytest.raises(StorageError) as info:
        outputs.publish("run1-00001", {key: outputs.read_staged(key)}, [], lease.fence, set())
    message = str(info.value)
    assert message.startswith("publishing batch run1-00001") and "No space left on device" in message
    assert message.endswith(f"({tmp_path / 'out' / '_work' / 'parts' / 'run1-00001' / 'structures.parquet'})")
    assert outputs.staged_keys() == {key}  # nothing lost: the next run publishes it
    assert not (tmp_path / "out" / "tables").exists()  # nothing of the batch visible


def test_local_permission_error_names_the_folder_not_credentials(tmp_path, monkeypatch):
    def refused(path, data):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(storage, "_replace_local", refused)
    with pytest.raises(PermissionError) as info:
        Store().check_writable(str(tmp_path / "out"))
    assert "permission denied (Permission denied)" in str(info.value) and "credentials" not in str(info.value)


def test_url_credentials_are_masked_in_reasons():
    from botocore.exceptions import EndpointConnectionError

    store = Store({"key": "AKIDEXAMPLE", "secret": "Wr0ngSecret"})
    err = EndpointConnectionError(endpoint_url="http://user:s3cr3tpw@127.0.0.1:1/b?list-type=2")
    reason = store._reason(err)
    assert "s3cr3tpw" not in reason and "http://***@127.0.0.1:1/b" in reason
    assert "Wr0ngSecret" not in store._reason(OSError("bad secret Wr0ngSecret"))


def _linked_tree(tmp_path) -> tuple[str, str]:
    """A local input folder with plain files, a hidden one, nested folders, a link to a file, a link
    to a folder outside it, a link cycle and a broken link; and a sibling 'out' folder."""
    import os

    data, out = tmp_path / "in", tmp_path / "out"
    (data / "a" / "b").mkdir(parents=True)
    (data / ".hidden").mkdir()
    out.mkdir()
    for path in (data / "x.zip", data / "a" / "y.zip", data / "a" / "b" / "z.nii.gz", data / ".hidden" / "h.zip",
                 data / ".dot.zip", out / "label.nii.gz"):
        path.write_bytes(b"1")
    os.symlink(out / "label.nii.gz", data / "link_to_output.nii.gz")
    os.symlink(out, data / "outdir")
    os.symlink(data / "a", data / "a" / "b" / "cycle")
    os.symlink(tmp_path / "missing", data / "broken.zip")
    return str(data), str(out)


def test_local_listing_lists_what_fsspecs_find_lists(tmp_path):
    """The local listing (one scandir per folder) against fsspec's own find over a tree with links
    to files and folders, a link cycle and a broken link: the same entries (links to folders are not
    entered: a cycle ends), hidden ones left out by both."""
    from fsspec.implementations.local import LocalFileSystem

    data, _ = _linked_tree(tmp_path)
    store = Store()

    def reference(recursive: bool) -> list[str]:
        found = LocalFileSystem().find(data) if recursive else \
            [e["name"] for e in LocalFileSystem().ls(data, detail=True) if e["type"] != "directory"]
        return sorted(f"{data}/{p[len(data) + 1:]}" for p in found
                      if not any(part.startswith(".") for part in p[len(data) + 1:].split("/")))

    assert store.list_files(data) == reference(True)
    assert {u[len(data) + 1:] for u in store.list_files(data)} == {
        "x.zip", "a/y.zip", "a/b/z.nii.gz", "a/b/cycle", "link_to_output.nii.gz", "outdir", "broken.zip"}
    assert store.list_files(data, suffix=".zip") == [f"{data}/a/y.zip", f"{data}/broken.zip", f"{data}/x.zip"]
    assert store.list_files(str(tmp_path / "nothing")) == [] and store.list_files(f"{data}/x.zip") == []


def test_an_unreadable_sub_folder_is_skipped_with_a_line_naming_it(tmp_path, monkeypatch, caplog):
    import os

    data, _ = _linked_tree(tmp_path)
    real_scandir = os.scandir

    def scandir(folder):
        if str(folder).endswith("/a/b"):
            raise PermissionError(13, "Permission denied", folder)
        return real_scandir(folder)

    monkeypatch.setattr(storage.os, "scandir", scandir)
    with caplog.at_level(logging.WARNING):
        listed = Store().list_files(data)
    assert f"{data}/a/y.zip" in listed and not any("/a/b/" in u for u in listed)
    assert f"cannot list {data}/a/b (permission denied)" in caplog.text


def test_within_follows_a_linked_folder_before_its_dotdot(tmp_path):
    """`out/labels/atlas -> elsewhere`: `out/labels/atlas/../victim` is elsewhere/../victim, not
    out/labels/victim (a hostile review found --restart deleting it)."""
    import os

    out, shared = tmp_path / "out", tmp_path / "shared"
    (out / "labels").mkdir(parents=True)
    (shared / "atlas").mkdir(parents=True)
    (shared / "victim.nii.gz").write_bytes(b"1")
    os.symlink(shared / "atlas", out / "labels" / "atlas")
    inside = Store().within(str(out))
    assert not inside(f"{out}/labels/atlas/../victim.nii.gz")
    assert not inside(f"{out}/labels/atlas/") and not inside(f"{out}/labels/atlas")  # the link itself leads out
    assert not Store().contains(str(out), f"{out}/labels/atlas/../victim.nii.gz")
    assert inside(f"{out}/labels/../labels/x.nii.gz")


def test_within_judges_links_by_where_they_lead(tmp_path):
    data, out = _linked_tree(tmp_path)
    inside = Store().within(out)
    judged = {u[len(data) + 1:]: inside(u) for u in Store().list_files(data)}
    assert judged == {"x.zip": False, "a/y.zip": False, "a/b/z.nii.gz": False, "a/b/cycle": False,
                      "link_to_output.nii.gz": True, "outdir": True, "broken.zip": False}
    assert inside(out) and inside(f"file://{out}/label.nii.gz") and not inside(f"{out}-other/x")
    assert not inside("s3://bucket/out/label.nii.gz")


@pytest.mark.parametrize("where", ["sibling", "output_inside_input", "input_inside_output", "input_through_a_link",
                                   "file_uris"])
def test_listing_outside_the_output_equals_judging_each_file(tmp_path, where):
    """list_files_outside (plain files judged by their listed folder, links one by one) against
    within() asked of every listed file, with the output beside the input, inside it, around it, the
    input named through a linked folder, and file:// URIs."""
    import os

    data, out = _linked_tree(tmp_path)
    if where == "output_inside_input":
        out = f"{data}/a"  # a/y.zip, a/b/z.nii.gz and the cycle link lie in it
    elif where == "input_inside_output":
        out = str(tmp_path)
    elif where == "input_through_a_link":
        os.symlink(data, tmp_path / "alias")
        data, out = str(tmp_path / "alias"), f"{data}/a"
    elif where == "file_uris":
        data, out = f"file://{data}", f"file://{data}/a"
    store = Store()
    listed = store.list_files(data)
    inside = store.within(out)
    expected = [u for u in listed if not inside(u)]
    kept, left_out = store.list_files_outside(data, out)
    assert kept == expected and left_out == len(listed) - len(expected)
    if where != "sibling":
        assert left_out > 0
    assert store.list_files_outside(str(tmp_path / "nothing"), out) == ([], 0)


@pytest.mark.parametrize("root, parts, joined", [
    ("/data/in", ("a", "b.zip"), "/data/in/a/b.zip"),
    ("/data/in/", ("/a/", "b.zip"), "/data/in/a/b.zip"),
    ("/", ("a",), "/a"),
    ("file:///", ("a", "b"), "file:///a/b"),
    ("file:///data", ("a",), "file:///data/a"),
    ("s3://bucket/", ("x/", "y"), "s3://bucket/x/y"),
    ("s3://bucket/p", (), "s3://bucket/p"),
    ("s3://bucket/x:/", ("y",), "s3://bucket/x:/y"),
    ("s3://bucket/x:/", (), "s3://bucket/x:"),
])
def test_join_uri_keeps_a_file_systems_root(root, parts, joined):
    assert join_uri(root, *parts) == joined


@pytest.mark.parametrize("uri", ["file://~/in", "~/in", "file:///tmp/x y", "/tmp/x y", "file:///"])
def test_local_paths_are_fsspecs(uri):
    """The own-output checks resolve local URIs as fsspec does (``~`` expanded, also after file://)."""
    assert storage._local_path(uri).rstrip("/") == Store().fs_and_path(uri)[1].rstrip("/")

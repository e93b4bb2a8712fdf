"""``weights fetch`` from a local HTTP server: a verified, loadable model folder, or a refusal that
leaves nothing behind; ``weights list`` and ``weights checksum``."""

import hashlib
import shutil
import socket
import stat
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from http_server import file_server  # noqa: F401  (fixture)
from mrseg_cohort.cli import app
from mrseg_cohort.config import ModelConfig
from mrseg_cohort.errors import ConfigError, ModelError
from mrseg_cohort.io.download import DownloadError, UnreachableError
from mrseg_cohort.segmentation.model_folder import load_fold_weights, open_model_folder, weights_checksum
from mrseg_cohort.segmentation.segmenter import check_model
from mrseg_cohort.weights.fetch import fetch_weights
from mrseg_cohort.weights.record import RECORD_NAME, read_record
from mrseg_cohort.weights.resolve import default_destination, resolve

DEMO_FILES = {p.relative_to(DEMO_MODEL).as_posix(): p.read_bytes() for p in sorted(DEMO_MODEL.rglob("*"))
              if p.is_file()}


def _zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> tuple[Path, str]:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def demo_zip(tmp_path_factory):
    return _zip(tmp_path_factory.mktemp("zips") / "weights.zip", DEMO_FILES)


def _serve(server, zip_path: Path) -> str:
    server.files["/weights.zip"] = zip_path.read_bytes()
    return server.url("/weights.zip")


def _fetch(dest, url, sha, **kw):
    return fetch_weights("base", dest, url, sha, attempts=kw.pop("attempts", 3), backoff_s=0, **kw)


def _files_under(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


def test_fetch_gives_a_verified_loadable_model_folder(file_server, demo_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    dest = default_destination("base", {})
    result = _fetch(dest, _serve(file_server, demo_zip[0]), demo_zip[1])
    assert result.path == dest == tmp_path / ".mrsegmentator" / "base" and not result.already_present
    assert _files_under(tmp_path / ".mrsegmentator") == {"base", *(f"base/{n}" for n in _files_under(dest))}
    assert {n: (dest / n).read_bytes() for n in DEMO_FILES} == DEMO_FILES
    record = read_record(dest)
    assert record["zip_sha256"] == demo_zip[1] and record["checksum"]["sha256"] == weights_checksum(
        dest, (0,), "checkpoint_final.pth") and set(record["files"]) == set(DEMO_FILES)
    folder = open_model_folder(dest, (0,))
    assert len(load_fold_weights(folder)) == 1
    spec = check_model(ModelConfig(weights="mrsegmentator", folds=(0,)))  # resolved: ~/.mrsegmentator/base
    assert spec.path == str(dest) and spec.digest.trusted  # the record vouches for the files
    assert resolve("base", {}).source == "cache"
    again = _fetch(dest, _serve(file_server, demo_zip[0]), demo_zip[1])
    assert again.already_present and len(file_server.requests) == 1


def test_interrupted_download_resumes(file_server, demo_zip, tmp_path):
    file_server.cuts = [1_000_000]
    dest = tmp_path / "w" / "base"
    _fetch(dest, _serve(file_server, demo_zip[0]), demo_zip[1])
    assert [r["range"] for r in file_server.requests] == [None, "bytes=1000000-"]
    assert file_server.sent == demo_zip[0].stat().st_size and open_model_folder(dest, (0,))
    assert _files_under(tmp_path / "w") == {"base", *(f"base/{n}" for n in _files_under(dest))}  # no .part


def test_truncated_download_is_refused_and_kept_only_to_resume(file_server, demo_zip, tmp_path):
    file_server.cuts = [2_000_000, 0]
    dest = tmp_path / "w" / "base"
    url = _serve(file_server, demo_zip[0])
    with pytest.raises(DownloadError, match="interrupted 2 times"):
        _fetch(dest, url, demo_zip[1], attempts=2)
    assert _files_under(tmp_path / "w") == {f".base-{demo_zip[1][:12]}.zip.part"}  # no folder, no extraction
    _fetch(dest, url, demo_zip[1])  # the next run resumes it
    assert file_server.requests[-1]["range"] == "bytes=2000000-" and open_model_folder(dest, (0,))


@pytest.mark.parametrize("case", ["wrong sha256", "truncated file"])
def test_bad_download_leaves_nothing_behind(file_server, demo_zip, tmp_path, case):
    data = demo_zip[0].read_bytes()
    file_server.files["/weights.zip"] = data if case == "wrong sha256" else data[: len(data) // 2]
    sha = hashlib.sha256(b"other").hexdigest() if case == "wrong sha256" else demo_zip[1]
    with pytest.raises(DownloadError, match="sha256 of the download is .* nothing was extracted"):
        _fetch(tmp_path / "w" / "base", file_server.url("/weights.zip"), sha)
    assert _files_under(tmp_path) == set()


def _refused(file_server, tmp_path, zip_file, match):
    before = _files_under(tmp_path)
    with pytest.raises(ModelError, match=match):
        _fetch(tmp_path / "w" / "base", _serve(file_server, zip_file[0]), zip_file[1])
    assert _files_under(tmp_path) == before


def test_zip_members_outside_the_destination_are_refused(file_server, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    outside = tmp_path / "outside"
    cases = [({**DEMO_FILES, "../evil": b"x"}, None, r"'\.\./evil' points outside"),
             ({**DEMO_FILES, "fold_0/../../evil": b"x"}, None, "points outside"),
             ({**DEMO_FILES, str(outside): b"x"}, None, "is an absolute path"),
             (DEMO_FILES, {"fold_0/link": str(outside)}, "is a symbolic link")]
    for i, (members, links, match) in enumerate(cases):
        _refused(file_server, tmp_path, _zip(zips / f"{i}.zip", members, links), match)
    assert not outside.exists() and not (tmp_path / "w").exists() and not (tmp_path / "evil").exists()


def test_a_zip_that_is_not_a_model_folder_is_refused(file_server, tmp_path):
    zips = tmp_path / "zips"
    zips.mkdir()
    no_plans = {n: d for n, d in DEMO_FILES.items() if n != "plans.json"}
    _refused(file_server, tmp_path, _zip(zips / "a.zip", no_plans), r"not an nnU-Net trained-model folder \(no plans")
    no_folds = {n: d for n, d in DEMO_FILES.items() if not n.startswith("fold_")}
    _refused(file_server, tmp_path, _zip(zips / "b.zip", no_folds), "no fold_")
    not_zip = zips / "c.zip"
    not_zip.write_bytes(b"not a zip")
    _refused(file_server, tmp_path, (not_zip, hashlib.sha256(b"not a zip").hexdigest()), "not a readable zip")


def test_a_zip_with_one_top_level_folder_is_accepted(file_server, tmp_path):
    nested = _zip(tmp_path / "n.zip", {f"weights/{n}": d for n, d in DEMO_FILES.items()})
    dest = tmp_path / "w" / "base"
    _fetch(dest, _serve(file_server, nested[0]), nested[1])
    assert (dest / "plans.json").is_file() and (dest / RECORD_NAME).is_file()


def test_offline_local_zip_and_argument_errors(demo_zip, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/weights.zip"  # nobody listens: like no network
    dest = tmp_path / "w" / "base"
    with pytest.raises(UnreachableError) as err:
        _fetch(dest, url, demo_zip[1])
    message = str(err.value)
    assert "\n" not in message and url in message and demo_zip[1] in message and str(dest) in message
    assert "--url /path/to/the.zip" in message and not (tmp_path / "w").exists()
    _fetch(dest, str(demo_zip[0]), demo_zip[1])  # the copied zip, as that message says
    assert open_model_folder(dest, (0,)) and demo_zip[0].exists()
    with pytest.raises(ConfigError, match="--url needs --sha256"):
        fetch_weights("base", tmp_path / "x", url="http://127.0.0.1/x.zip")
    with pytest.raises(ConfigError, match="already exists"):
        _fetch(tmp_path, str(demo_zip[0]), demo_zip[1])
    unrecorded = tmp_path / "mrsegmentators_own"  # e.g. MRSegmentator's download: used, not verified
    shutil.copytree(DEMO_MODEL, unrecorded)
    assert not _fetch(unrecorded, str(demo_zip[0]), demo_zip[1]).verified


def test_cli_fetch_list_checksum(file_server, demo_zip, tmp_path):
    runner = CliRunner()
    root = tmp_path / "root"
    env = {"MRSEG_WEIGHTS_PATH": str(root), "HOME": str(tmp_path)}
    fetched = runner.invoke(app, ["weights", "fetch", "base", "--url", _serve(file_server, demo_zip[0]),
                                  "--sha256", demo_zip[1]], env=env)
    assert fetched.exit_code == 0, fetched.output
    assert f"installed at {root / 'base'}" in fetched.output
    summed = runner.invoke(app, ["weights", "checksum", str(root / "base"), "--folds", "0"])
    expected = weights_checksum(root / "base", (0,), "checkpoint_final.pth")
    assert summed.exit_code == 0 and summed.stdout.splitlines()[0] == expected
    listed = runner.invoke(app, ["weights", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    assert f"mrsegmentator: {root / 'base'} (source: env)" in listed.output and "verified" in listed.output
    assert f"model.checksum for folds [0]: {expected}" in listed.output
    assert "mrsegmentator:body_comp: not found" in listed.output
    (root / "base" / "plans.json").write_text("{}")
    modified = runner.invoke(app, ["weights", "list"], env=env)
    assert modified.exit_code == 1 and "modified: plans.json differs" in modified.output


def _bomb(path: Path, unpacked_mib: int) -> tuple[Path, str]:
    """A model-folder zip whose checkpoint is ``unpacked_mib`` MiB of zeros (deflated to a few kB)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in DEMO_FILES.items():
            if not name.endswith(".pth"):
                z.writestr(name, data)
        z.writestr("fold_0/checkpoint_final.pth", bytes(unpacked_mib * 2**20))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_zip_bomb_is_refused_before_anything_is_unpacked(file_server, tmp_path, monkeypatch):
    """Issue 23: a zip unpacking to 3 GiB from 18 MB was unpacked. Here 64 MiB from about 70 kB, against
    the default bound with its floor lowered, and against a bound given outright."""
    import mrseg_cohort.weights.archive as archive

    bomb = _bomb(tmp_path / "bomb.zip", 64)
    zip_mib = bomb[0].stat().st_size / 2**20
    assert zip_mib < 0.5
    with monkeypatch.context() as patch:
        patch.setattr(archive, "MIN_UNPACKED_BOUND", 2**20)
        _refused(file_server, tmp_path, bomb, rf"would unpack to 64 MiB from {zip_mib:.1f} MiB, above the bound of 1 MiB")
        result = CliRunner().invoke(app, ["weights", "fetch", "--url", str(bomb[0]), "--sha256", bomb[1],
                                          "--dest", str(tmp_path / "w" / "base")])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "would unpack to 64 MiB" in lines[0], result.output
    assert not (tmp_path / "w").exists() and {p.name for p in tmp_path.iterdir()} == {"bomb.zip"}
    before = _files_under(tmp_path)
    with pytest.raises(ModelError, match="above the bound of 32 MiB"):
        _fetch(tmp_path / "w" / "base", str(bomb[0]), bomb[1], max_unpacked_bytes=32 * 2**20)
    assert _files_under(tmp_path) == before
    dest = tmp_path / "w2" / "base"  # the same zip within the default bound: unpacked
    _fetch(dest, str(bomb[0]), bomb[1])
    assert (dest / "fold_0" / "checkpoint_final.pth").stat().st_size == 64 * 2**20


def test_the_default_bound_leaves_room_for_weights_that_do_not_compress():
    from mrseg_cohort.weights.archive import MAX_EXPANSION, MIN_UNPACKED_BOUND, unpacked_bound

    assert unpacked_bound(10) == MIN_UNPACKED_BOUND
    assert unpacked_bound(2 * 10**9) == MAX_EXPANSION * 2 * 10**9  # a 2 GB release zip: 40 GB
    assert unpacked_bound(18 * 10**6) < 3 * 2**30  # the zip bomb of issue 23: 3 GiB from 18 MB

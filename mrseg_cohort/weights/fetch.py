"""``weights fetch``: MRSegmentator's release zip -> a verified model folder at the destination.

Steps, each refusing with one line and leaving nothing behind (a ``.part`` file of an interrupted
download is kept to be resumed): download beside the destination
(:func:`mrseg_cohort.io.download.download`, sha256 checked before anything is opened), extract
into a temporary folder beside the destination (:mod:`.archive`), check that it is an nnU-Net
model folder, write the record (:mod:`.record`), rename it to the destination, delete the zip.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from mrseg_cohort.digest import sha256_file
from mrseg_cohort.errors import ConfigError, ModelError
from mrseg_cohort.io.download import DownloadError, ProgressFn, UnreachableError, download, mask_url
from mrseg_cohort.segmentation.model_folder import missing_model_files
from mrseg_cohort.weights.archive import extract_zip
from mrseg_cohort.weights.record import verify_folder, write_record
from mrseg_cohort.weights.registry import SOURCE, release

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FetchResult:
    """``already_present``: ``dest`` held the model before; ``verified``: its files match a record
    of this zip (False only for a folder not fetched by mrseg-cohort, e.g. MRSegmentator's own)."""

    model: str
    path: Path
    zip_sha256: str
    already_present: bool
    verified: bool = True


def fetch_weights(model: str, dest: Path, url: str | None = None, sha256: str | None = None,
                  progress: ProgressFn | None = None, attempts: int = 4, timeout_s: float = 60.0,
                  backoff_s: float = 1.0, max_unpacked_bytes: int | None = None) -> FetchResult:
    """Download, verify and install MRSegmentator's ``model`` weights into ``dest``.

    Args:
        model: ``base`` or ``body_comp`` (names the record; the default URL and sha256).
        dest: the model folder to create (must not exist, or be empty).
        url: another zip (``http(s)://``, ``file://`` or a local path); needs ``sha256``.
        sha256: expected sha256 of the zip; default the release's.
        progress, attempts, timeout_s, backoff_s: see :func:`mrseg_cohort.io.download.download`.
        max_unpacked_bytes: most bytes the zip may unpack to; default
            :func:`~mrseg_cohort.weights.archive.unpacked_bound` of its size (a zip bomb is refused).

    Raises:
        ConfigError: bad arguments, or ``dest`` holds something else.
        DownloadError: network failure or sha256 mismatch; :class:`ModelError`: not a safe
            nnU-Net model zip.
    """
    published = release(model)
    if url and url != published.url and not sha256:
        raise ConfigError("--url needs --sha256 (the zip's sha256, checked before anything is extracted)")
    url = url or published.url
    sha256 = (sha256 or published.sha256).lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ConfigError(f"--sha256 must be 64 hex digits, not {sha256!r}")
    source = SOURCE if (url, sha256) == (published.url, published.sha256) else "--sha256"
    dest = Path(dest).expanduser().absolute()
    present = _already_installed(dest, sha256)
    if present is not None:
        return FetchResult(model, dest, sha256, True, present)
    created = _make_folder(dest.parent)
    try:
        return _fetch_into(model, dest, url, sha256, source, progress, attempts, timeout_s, backoff_s,
                           max_unpacked_bytes)
    except BaseException:
        for folder in created:  # folders made for this fetch, unless a partial download is kept there
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _fetch_into(model: str, dest: Path, url: str, sha256: str, source: str, progress: ProgressFn | None,
                attempts: int, timeout_s: float, backoff_s: float, max_unpacked_bytes: int | None) -> FetchResult:
    local = _local_path(url)
    if local is not None:
        zip_path = local
        if not local.is_file():
            raise ConfigError(f"--url: no file {local}")
        found = sha256_file(local)
        if found != sha256:
            raise DownloadError(f"sha256 of {local} is {found}, expected {sha256}; nothing was extracted")
    else:
        zip_path = dest.parent / f".{dest.name}-{sha256[:12]}.zip.part"
        try:
            download(url, zip_path, sha256, progress, attempts, timeout_s, backoff_s)
        except UnreachableError as err:
            raise UnreachableError(
                f"{err.message} for {err.uri}; without network access, download it (sha256 {sha256}) elsewhere, "
                f"copy it here and run `mrseg-cohort weights fetch {model} --url /path/to/the.zip` "
                f"(verified, then unpacked into {dest})") from None
    try:
        _install(zip_path, dest, model, mask_url(url), sha256, source, max_unpacked_bytes)
    finally:
        if local is None:
            zip_path.unlink(missing_ok=True)
    log.info("MRSegmentator %s weights installed at %s", model, dest)
    return FetchResult(model, dest, sha256, False)


def _make_folder(folder: Path) -> list[Path]:
    """Create ``folder`` and missing parents; returns those created, deepest first."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    return missing


def _already_installed(dest: Path, sha256: str) -> bool | None:
    """None: ``dest`` is free; True: it holds a verified fetch of this zip; False: a model folder
    without a record (MRSegmentator's own download). ConfigError when it holds anything else."""
    if not dest.exists() or (dest.is_dir() and not any(dest.iterdir())):
        return None
    if not dest.is_dir():
        raise ConfigError(f"{dest} exists and is not a folder; give another --dest")
    check = verify_folder(dest)
    if check.status == "verified" and check.record.get("zip_sha256") == sha256:
        return True
    if check.status == "unrecorded" and not missing_model_files(dest):
        return False
    raise ConfigError(f"{dest} already exists ({check.detail}); move it away to fetch again, or give another --dest")


def _install(zip_path: Path, dest: Path, model: str, shown_url: str, sha256: str, source: str,
             max_unpacked_bytes: int | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    try:
        root = extract_zip(zip_path, tmp, shown_url, max_unpacked_bytes)
        missing = missing_model_files(root)
        if missing:
            raise ModelError(f"{shown_url}: the zip is not an nnU-Net trained-model folder (no "
                             f"{', '.join(missing)}); nothing was installed")
        write_record(root, model, shown_url, sha256, source)
        if dest.is_dir():
            dest.rmdir()  # empty (checked before the download)
        os.rename(root, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _local_path(url: str) -> Path | None:
    """The file a ``file://`` URL or plain path names; None for other URLs."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "file":
        return Path(urllib.parse.unquote(parts.path))
    return Path(url).expanduser() if parts.scheme == "" else None

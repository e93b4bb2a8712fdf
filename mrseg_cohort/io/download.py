"""HTTP(S) downloads into a ``.part`` file: resumed with ``Range``, sha256 verified before use.

Standard library only (``urllib``). An interrupted transfer (connection cut, timeout, fewer bytes
than ``Content-Length``) is resumed from the bytes already on disk, within one call (``attempts``)
and across calls (the ``.part`` file is kept); a server that ignores ``Range`` (200 instead of 206)
is read again from the start. The sha256 is computed while writing (the bytes of an earlier
partial download are hashed first), so a finished file is verified without a second read.
Credentials in URLs (``user:password@``, token-like query values) never appear in messages.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import logging
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Callable

from mrseg_cohort.digest import CHUNK_BYTES, update_from_file
from mrseg_cohort.errors import StorageError

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, "int | None"], None]
"""Called with (bytes on disk, total bytes or None) as the download advances."""

_SECRET_QUERY = re.compile(r"token|signature|credential|secret|password|key", re.IGNORECASE)
_PERMANENT_HTTP = {400, 401, 403, 404, 405, 410}


class DownloadError(StorageError):
    """A download failed or its sha256 did not match (names the URL, masked)."""


class UnreachableError(DownloadError):
    """The host could not be reached at all (no network, DNS failure, refused connection)."""


class _Interrupted(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)


def mask_url(url: str) -> str:
    """``url`` with ``user:password@`` and token-like query values replaced by ``***``."""
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = urllib.parse.urlencode([(k, "***" if _SECRET_QUERY.search(k) else v)
                                    for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)],
                                   safe="*")
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def download(url: str, part: Path, sha256: str, progress: ProgressFn | None = None, attempts: int = 4,
             timeout_s: float = 60.0, backoff_s: float = 1.0) -> None:
    """Download ``url`` into ``part`` (resuming what it holds) and check its sha256.

    Args:
        url: ``http(s)://`` URL, optionally with ``user:password@``.
        part: the partial file; on success it holds the whole, verified file.
        sha256: expected hex digest of the whole file.
        progress: see :data:`ProgressFn`.
        attempts: transfers tried before giving up (each resumes the previous one).
        timeout_s: socket timeout of the connection and of each read.
        backoff_s: wait before the second attempt, doubled for each further one.

    Raises:
        UnreachableError: the host cannot be reached (``part`` kept as it was).
        DownloadError: the server refused the request, the transfer kept being interrupted
            (``part`` kept, to be resumed), or the sha256 differs (``part`` removed).
    """
    shown = mask_url(url)
    state = _Partial(part)
    reason = ""
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
            log.info("resuming %s at byte %d (attempt %d of %d): %s", shown, state.done, attempt + 1, attempts,
                     reason)
        try:
            _transfer(url, state, progress, timeout_s)
            break
        except _Interrupted as err:
            reason = str(err)
    else:
        raise DownloadError(f"download interrupted {attempts} times ({reason}); {state.done} bytes kept in {part}: "
                            "run the same command again to resume", shown)
    found = state.digest.hexdigest()
    if found != sha256.lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"sha256 of the download is {found}, expected {sha256.lower()}: wrong --url/--sha256 "
                            "or a damaged file; it was deleted and nothing was extracted", shown)


class _Partial:
    """The ``.part`` file: its length and the sha256 of its bytes, kept up to date as it grows."""

    def __init__(self, path: Path):
        self.path, self.digest = path, hashlib.sha256()
        self.done = update_from_file(path, self.digest) if path.exists() else 0

    def restart(self) -> None:
        self.path.unlink(missing_ok=True)
        self.done, self.digest = 0, hashlib.sha256()


def _transfer(url: str, state: _Partial, progress: ProgressFn | None, timeout_s: float) -> None:
    """One request from byte ``state.done``; returns when the file is complete."""
    shown = mask_url(url)
    try:
        response = urllib.request.urlopen(_request(url, state.done), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and state.done:  # the partial file does not fit the server's: start again
            state.restart()
            raise _Interrupted("HTTP 416 for a resume") from None
        if err.code in _PERMANENT_HTTP:
            raise DownloadError(f"HTTP {err.code} {err.reason}", shown) from None
        raise _Interrupted(f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (socket.gaierror, ConnectionRefusedError)) or "unreachable" in str(reason).lower():
            raise UnreachableError(f"cannot reach the server ({_reason(reason)})", shown) from None
        raise _Interrupted(_reason(reason)) from None
    except (OSError, http.client.HTTPException) as err:
        raise _Interrupted(_reason(err)) from None
    with response:
        resumed = state.done > 0 and response.status == 206 and _range_start(response) == state.done
        if not resumed:  # a fresh start (or a server that ignored Range)
            state.restart()
        length = response.headers.get("Content-Length")
        total = state.done + int(length) if length and length.isdigit() else None
        with open(state.path, "ab") as out:
            try:
                for chunk in iter(lambda: response.read(CHUNK_BYTES), b""):
                    out.write(chunk)
                    state.digest.update(chunk)
                    state.done += len(chunk)
                    if progress:
                        progress(state.done, total)
            except (OSError, http.client.HTTPException) as err:
                raise _Interrupted(_reason(err)) from None
    if total is not None and state.done < total:
        raise _Interrupted(f"connection closed after {state.done} of {total} bytes")


def _request(url: str, start: int) -> urllib.request.Request:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise DownloadError("only http(s) URLs can be downloaded", mask_url(url))
    headers = {"User-Agent": "mrseg-cohort"}
    if start:
        headers["Range"] = f"bytes={start}-"
    netloc = parts.netloc.rsplit("@", 1)[-1]
    request = urllib.request.Request(urllib.parse.urlunsplit(parts._replace(netloc=netloc)), headers=headers)
    if parts.username is not None:  # not forwarded to another host on a redirect
        token = base64.b64encode(f"{urllib.parse.unquote(parts.username)}:"
                                 f"{urllib.parse.unquote(parts.password or '')}".encode()).decode()
        request.add_unredirected_header("Authorization", f"Basic {token}")
    return request


def _range_start(response: Any) -> int | None:
    found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
    return int(found.group(1)) if found else None


def _reason(err: Any) -> str:
    return f"{type(err).__name__}: {err}" if isinstance(err, BaseException) else str(err)

"""Extracting a weights zip without writing outside the target folder.

Every member is checked before anything is written: absolute paths, drive letters, backslashes,
``..`` and symbolic links are refused (the whole zip, with a :class:`ModelError` naming the
member), and so is a zip whose members unpack to more than a bound (:func:`unpacked_bound`: a zip
bomb). MRSegmentator's zips hold the model folder's files at the top; a zip whose members all sit
under one top-level folder is accepted too (that folder is the model folder).
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath

from mrseg_cohort.errors import ModelError

_SKIPPED = ("__MACOSX/",)
MAX_EXPANSION = 20
"""Largest accepted ratio of unpacked to zipped bytes. Network weights hardly compress (the bundled
demo checkpoint deflates by a factor of 1.09); a zip bomb expands hundreds of times (3 GiB from 18 MB
is 170)."""
MIN_UNPACKED_BOUND = 256 * 2**20
"""Bytes a small zip may always unpack to (plans, dataset.json and small checkpoints compress more)."""


def unpacked_bound(zip_bytes: int) -> int:
    """Most bytes a weights zip of ``zip_bytes`` bytes may unpack to: :data:`MAX_EXPANSION` times its
    size, and at least :data:`MIN_UNPACKED_BOUND`."""
    return max(MIN_UNPACKED_BOUND, MAX_EXPANSION * zip_bytes)


def checked_members(archive: zipfile.ZipFile, label: str) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The members to extract with their relative paths; :class:`ModelError` for an unsafe member."""
    out = []
    for info in archive.infolist():
        name = info.filename
        if name.startswith(_SKIPPED) or PurePosixPath(name).name == ".DS_Store":
            continue
        why = None
        if stat.S_ISLNK(info.external_attr >> 16):
            why = "is a symbolic link"
        elif name.startswith("/") or re.match(r"^[A-Za-z]:", name):
            why = "is an absolute path"
        elif "\\" in name or "\x00" in name:
            why = "has a backslash or NUL in its name"
        elif ".." in PurePosixPath(name).parts:
            why = "points outside the folder (..)"
        if why:
            raise ModelError(f"{label}: zip member {name!r} {why}; refusing the whole zip, nothing was installed")
        relative = PurePosixPath(*(p for p in PurePosixPath(name).parts if p not in ("", ".")))
        if relative.parts:
            out.append((info, relative))
    return out


def check_unpacked_size(members: list[tuple[zipfile.ZipInfo, PurePosixPath]], zip_bytes: int, bound: int,
                        label: str) -> None:
    """Raise :class:`ModelError` when ``members`` unpack to more than ``bound`` bytes. The sizes are
    those the zip declares; :mod:`zipfile` never yields more than a member declares (and fails its
    CRC check when it holds more), so the sum bounds what extraction writes."""
    total = sum(info.file_size for info, _ in members)
    if total > bound:
        raise ModelError(f"{label}: the zip would unpack to {total / 2**20:.0f} MiB from {zip_bytes / 2**20:.1f} MiB, "
                         f"above the bound of {bound / 2**20:.0f} MiB for a weights zip (network weights hardly compress); "
                         "refusing it, nothing was installed")


def extract_zip(zip_path: Path, target: Path, label: str, max_unpacked_bytes: int | None = None) -> Path:
    """Extract ``zip_path`` into the empty folder ``target``; returns the model folder inside it
    (``target``, or its single top-level folder).

    Args:
        zip_path: the verified zip.
        target: an empty folder (a temporary one beside the destination).
        label: how to name the zip in messages (its URL, masked).
        max_unpacked_bytes: most bytes its members may unpack to; default :func:`unpacked_bound` of
            the zip's size.

    Raises:
        ModelError: not a zip, an unsafe member, more than ``max_unpacked_bytes`` unpacked, a damaged
            member (CRC), or duplicate names.
    """
    zip_bytes = zip_path.stat().st_size
    bound = unpacked_bound(zip_bytes) if max_unpacked_bytes is None else max_unpacked_bytes
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = checked_members(archive, label)
            check_unpacked_size(members, zip_bytes, bound, label)
            root = target.resolve()
            for info, relative in members:
                destination = target.joinpath(*relative.parts)
                if not destination.resolve().is_relative_to(root):
                    raise ModelError(f"{label}: zip member {info.filename!r} points outside the folder")
                if info.is_dir():
                    destination.mkdir(parents=True, exist_ok=True)
                    continue
                destination.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(destination, "xb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except zipfile.BadZipFile as err:
        raise ModelError(f"{label}: not a readable zip file ({err}); nothing was installed") from None
    except FileExistsError as err:
        raise ModelError(f"{label}: zip holds {err.filename} twice; nothing was installed") from None
    entries = [p for p in target.iterdir()]
    if not (target / "plans.json").exists() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return target

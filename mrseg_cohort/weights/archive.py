"""Extracting a weights zip without writing outside the target folder.

Every member is checked before anything is written: absolute paths, drive letters, backslashes,
``..`` and symbolic links are refused (the whole zip, with a :class:`ModelError` naming the
member). MRSegmentator's zips hold the model folder's files at the top; a zip whose members all sit
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


def extract_zip(zip_path: Path, target: Path, label: str) -> Path:
    """Extract ``zip_path`` into the empty folder ``target``; returns the model folder inside it
    (``target``, or its single top-level folder).

    Args:
        zip_path: the verified zip.
        target: an empty folder (a temporary one beside the destination).
        label: how to name the zip in messages (its URL, masked).

    Raises:
        ModelError: not a zip, an unsafe member, a damaged member (CRC), or duplicate names.
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = checked_members(archive, label)
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

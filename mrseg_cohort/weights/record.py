"""``mrseg_cohort_weights.json``: what ``weights fetch`` verified, written beside the extracted files.

The release sha256 is the zip's; once extracted, the files are checked against this record: the
zip's sha256 and URL, each file's sha256, and the folder checksum ``model.checksum`` expects for
all folds present. MRSegmentator ignores the extra file.

A record vouches for files only as far as the folder is trusted (whoever can write the files can
write the record); ``model.checksum`` in the job config is the stronger check.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal

from mrseg_cohort.digest import sha256_file
from mrseg_cohort.segmentation.model_folder import WeightsDigest, weights_digest

RECORD_NAME = "mrseg_cohort_weights.json"
CHECKPOINT = "checkpoint_final.pth"


def folds_present(folder: Path, checkpoint: str = CHECKPOINT) -> tuple[int | str, ...]:
    """The folds of ``folder`` holding ``checkpoint``: numbers in order, then ``all``."""
    folds = [p.parent.name.removeprefix("fold_") for p in folder.glob(f"fold_*/{checkpoint}")]
    numbers = sorted(int(f) for f in folds if re.fullmatch(r"\d+", f))
    return (*numbers, *sorted(f for f in folds if not re.fullmatch(r"\d+", f)))


def write_record(folder: Path, model: str, url: str, zip_sha256: str, source: str) -> dict:
    """Hash every file of ``folder`` and write the record (atomically); returns it.

    Args:
        folder: the extracted model folder.
        model: ``base`` or ``body_comp``.
        url: where the zip came from, credentials already masked.
        zip_sha256: the verified sha256 of the zip.
        source: where the expected sha256 came from (MRSegmentator's registry, or ``--sha256``).
    """
    folds = folds_present(folder)
    digest = weights_digest(folder, folds, CHECKPOINT) if folds else None
    files = dict(digest.files) if digest else {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != RECORD_NAME):
        relative = path.relative_to(folder).as_posix()
        if relative not in files:
            files[relative] = sha256_file(path)
    record = {"model": model, "url": url, "zip_sha256": zip_sha256, "sha256_source": source,
              "fetched_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
              "checksum": {"sha256": digest.sha256 if digest else None, "folds": list(folds),
                           "checkpoint": CHECKPOINT},
              "files": dict(sorted(files.items()))}
    tmp = folder / f".{RECORD_NAME}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, folder / RECORD_NAME)
    return record


def read_record(folder: Path) -> dict | None:
    """The record of ``folder``; None when there is none or it is not a record."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("files"), dict) else None


@dataclass(frozen=True)
class Verification:
    """``verified``: every recorded file present with its sha256; ``modified``: some differ or are
    missing (``detail`` names them); ``unrecorded``: no record (not fetched by mrseg-cohort)."""

    status: Literal["verified", "modified", "unrecorded"]
    detail: str
    record: dict | None


def verify_folder(folder: Path) -> Verification:
    """Hash the files of ``folder`` against its record."""
    record = read_record(folder)
    if record is None:
        return Verification("unrecorded", f"no {RECORD_NAME} (not fetched by mrseg-cohort)", None)
    bad = []
    for relative, expected in record["files"].items():
        path = folder / relative
        if not path.is_file():
            bad.append(f"{relative} missing")
        elif sha256_file(path) != expected:
            bad.append(f"{relative} differs")
    if bad:
        return Verification("modified", "; ".join(bad), record)
    return Verification("verified", f"{len(record['files'])} files match the zip sha256 "
                                    f"{str(record.get('zip_sha256'))[:16]}...", record)


def record_vouches(folder: Path, digest: WeightsDigest) -> bool:
    """Whether the record of ``folder`` lists every file of ``digest`` with the same sha256."""
    record = read_record(folder)
    return bool(record and digest.files) and all(record["files"].get(rel) == sha for rel, sha in digest.files)

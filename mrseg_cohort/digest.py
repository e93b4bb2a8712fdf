"""sha256 of files and bytes, streamed in chunks: one helper for weights checksums, downloads and
the weights record."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

CHUNK_BYTES = 1 << 20


def update_from_file(path: str | Path, *hashers: Any) -> int:
    """Feed the bytes of ``path`` to every hasher (``hashlib`` objects); returns the byte count."""
    n = 0
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK_BYTES), b""):
            for h in hashers:
                h.update(chunk)
            n += len(chunk)
    return n


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of the file at ``path``."""
    h = hashlib.sha256()
    update_from_file(path, h)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()

"""File names of keys: ``(participant_id, visit[, models])`` -> one file name, and back.

Each part is percent-encoded (UTF-8) with every character but letters, digits, ``-``, ``.`` and
``~`` escaped, ``_`` included (and a leading ``.``: a name never starts with one, so that no staged
file is hidden from listings), and the parts are joined by ``__``; as no encoded part can hold
``__``, every key round-trips, whatever its ids hold (``A__B``, ``sub_01_`` with visit ``_2``,
``.hidden``).
Names written by earlier versions (``_`` left as it is) are still read (:func:`legacy_key_name`).
"""

from __future__ import annotations

import urllib.parse

SEPARATOR = "__"


def _encode(part: str) -> str:
    encoded = urllib.parse.quote(part, safe="").replace("_", "%5F")
    return "%2E" + encoded[1:] if encoded.startswith(".") else encoded  # never a hidden file


def key_name(key: tuple[str, ...]) -> str:
    """The file-name-safe, reversible name of ``key``."""
    return SEPARATOR.join(_encode(part) for part in key)


def legacy_key_name(key: tuple[str, ...]) -> str:
    """The name earlier versions gave ``key`` (``_`` not escaped; ambiguous for ids holding ``__``)."""
    return SEPARATOR.join(urllib.parse.quote(part, safe="") for part in key)


def key_from_name(name: str) -> tuple[str, ...]:
    """The key of a name made by :func:`key_name` (or, for ids without ``__``, :func:`legacy_key_name`)."""
    return tuple(urllib.parse.unquote(part) for part in name.split(SEPARATOR))

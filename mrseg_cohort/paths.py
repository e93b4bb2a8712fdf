"""Where a relative local path points: the one rule for paths on the command line and in a config.

- a path given on the command line (``-o out``, ``--out report.html``, ``phantom DIR``) is relative to
  the working directory, as every shell tool's;
- a path written in a config file (``input.uri``, ``output.uri``, ``input.participants_file``,
  ``model.weights``) is relative to the folder holding that file, so a config works from anywhere;
- URIs (``s3://...``, ``file://...``), ``bundled:<name>`` and ``mrsegmentator[:<model>]`` (weights
  by name) stay as they are; ``~`` is expanded; an empty value stays empty (the config refuses it).

docs: README.md, "Paths".
"""

from __future__ import annotations

import os
from pathlib import Path


def is_uri(value: str) -> bool:
    """True for ``scheme://...`` (any fsspec protocol), False for a local path."""
    return "://" in value


def resolve_local(value: str, base: Path) -> str:
    """``value`` made absolute against folder ``base`` when it is a relative local path."""
    if not value.strip() or is_uri(value) or value.startswith(("bundled:", "mrsegmentator:")) \
            or value == "mrsegmentator":
        return value
    path = Path(os.path.expanduser(value))
    return str(path if path.is_absolute() else (base / path).resolve())


def from_command_line(value: str) -> str:
    """A path or URI given on the command line: relative paths against the working directory."""
    return resolve_local(value, Path.cwd())


def from_config_file(value: str, config_path: str | Path) -> str:
    """A path or URI written in the config file ``config_path``: relative paths against its folder."""
    return resolve_local(value, Path(config_path).resolve().parent)

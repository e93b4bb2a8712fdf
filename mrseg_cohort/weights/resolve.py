"""``weights: mrsegmentator`` -> a model folder, found where MRSegmentator itself keeps it.

Order (MRSegmentator 2.0.0's ``mrsegmentator.config.get_model_dir``):

1. ``MRSEG_WEIGHTS_PATH``, when set, is the only place looked at: a folder with ``plans.json`` is
   the base model itself (MRSegmentator's "legacy mode"), otherwise a root holding ``base/`` and
   ``body_comp/``;
2. MRSegmentator 2.x's cache ``~/.mrsegmentator/<model>/`` (so both tools share one copy);
3. base only: MRSegmentator 1.x's ``weights/`` folder inside its installed package (found with
   ``importlib.util.find_spec``, which does not import it: importing ``mrsegmentator`` sets
   nnU-Net's environment variables).

The environment is read by the caller (when a job starts, :func:`mrseg_cohort.config.resolve_weights`)
and passed in; the resolved folder is what the job records and ships to its workers.
"""

from __future__ import annotations

import importlib.util
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from mrseg_cohort.errors import ConfigError
from mrseg_cohort.segmentation.model_folder import missing_model_files
from mrseg_cohort.weights.registry import MODEL_NAMES, release

ENV_VAR = "MRSEG_WEIGHTS_PATH"
PREFIX = "mrsegmentator"
Source = Literal["env", "cache", "package"]


@dataclass(frozen=True)
class Resolved:
    """Where a name resolved to, and from which source."""

    model: str
    path: Path
    source: Source


def weights_model_name(value: str) -> str | None:
    """``"mrsegmentator"`` -> ``"base"``, ``"mrsegmentator:<model>"`` -> ``<model>`` (checked);
    any other value (a folder, a URI, ``bundled:...``) -> None."""
    if value == PREFIX:
        return "base"
    if value.startswith(PREFIX + ":"):
        model = value.split(":", 1)[1]
        release(model)  # ConfigError naming the known models
        return model
    return None


def cache_root(home: Path | None = None) -> Path:
    """MRSegmentator 2.x's default weights root, ``~/.mrsegmentator``."""
    return (home or Path.home()) / ".mrsegmentator"


def package_weights_dir() -> Path | None:
    """``<mrsegmentator package>/weights`` (MRSegmentator 1.x's location), without importing it."""
    try:
        spec = importlib.util.find_spec(PREFIX)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    return Path(locations[0]) / "weights" if locations else None


def default_destination(model: str, environ: Mapping[str, str], home: Path | None = None) -> Path:
    """Where ``weights fetch`` installs ``model`` so that resolution (and MRSegmentator) finds it."""
    release(model)
    if environ.get(ENV_VAR):
        root = Path(environ[ENV_VAR]).expanduser()
        if (root / "plans.json").is_file():
            raise ConfigError(f"{ENV_VAR}={root} is a model folder itself (MRSegmentator's legacy mode); "
                              "give --dest, or point it at a root folder for base/ and body_comp/")
        return root / model
    return cache_root(home) / model


def resolve(model: str, environ: Mapping[str, str], home: Path | None = None) -> Resolved:
    """The model folder of MRSegmentator's ``model`` (``base`` or ``body_comp``).

    Raises:
        ConfigError: not found; one line listing every place looked at and the fetch command.
    """
    release(model)
    looked: list[str] = []
    if environ.get(ENV_VAR):
        root = Path(environ[ENV_VAR]).expanduser()
        if (root / "plans.json").is_file():
            if model == "base":
                return Resolved(model, root, "env")
            raise ConfigError(f"{ENV_VAR}={root} is a model folder (MRSegmentator's legacy mode: base only); "
                              f"for {model}, point {ENV_VAR} at a root holding base/ and {model}/")
        found = _usable(root / model, looked, f"{ENV_VAR}: ")
        if found:
            return Resolved(model, found, "env")
        raise _not_found(model, looked, default_destination(model, environ, home))
    looked.append(f"{ENV_VAR} (not set)")
    found = _usable(cache_root(home) / model, looked)
    if found:
        return Resolved(model, found, "cache")
    if model == "base":
        package = package_weights_dir()
        if package is None:
            looked.append("the mrsegmentator package (not installed)")
        elif found := _usable(package, looked, "mrsegmentator package: "):
            return Resolved(model, found, "package")
    raise _not_found(model, looked, cache_root(home) / model)


def _usable(path: Path, looked: list[str], label: str = "") -> Path | None:
    if not path.is_dir():
        looked.append(f"{label}{path} (missing)")
        return None
    missing = missing_model_files(path)
    if missing:
        looked.append(f"{label}{path} (no {', '.join(missing)})")
        return None
    return path


def _not_found(model: str, looked: list[str], destination: Path) -> ConfigError:
    name = PREFIX if model == "base" else f"{PREFIX}:{model}"
    return ConfigError(f"weights {name!r}: MRSegmentator's {model} model not found on {socket.gethostname()}; "
                       f"looked in {'; '.join(looked)}; on a machine with internet access (on a cluster: a login "
                       f"node) run `mrseg-cohort weights fetch {model}` (installs it into {destination}; add "
                       f"--dest FOLDER for a folder every compute node sees, and point model.weights or {ENV_VAR} "
                       "there)")


def fetch_hint(folder: Path) -> str:
    """What to run where a configured weights folder is missing: ``weights fetch`` into that very folder,
    on a machine with internet access (compute nodes are often offline)."""
    model = folder.name if folder.name in MODEL_NAMES else "base"
    return (f"for MRSegmentator's weights, run `mrseg-cohort weights fetch {model} --dest "
            f"{shlex.quote(str(folder))}` on a machine with internet access (on a cluster: a login node; the "
            "folder must be one every node of the job sees)")

"""The software that computes an output's numbers: the versions of this process, and the part of
each version that defines the results (what the job fingerprint holds and every worker checks).

Granularity: ``major`` keeps ``2.8.1`` -> ``2`` (``0.y`` counts as major for 0.x releases, as semver
has it); ``minor`` keeps ``1.17.1`` -> ``1.17``. The libraries whose minor releases change numbers
(nnU-Net's resampling and sliding window, scipy's and scikit-image's interpolation and filters,
SimpleITK's resampling in stitching) are held to their minor version.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version
from typing import Literal

Granularity = Literal["major", "minor"]

DEFINING_SOFTWARE: dict[str, tuple[str, Granularity]] = {
    "mrseg_cohort": ("mrseg-cohort", "major"),
    "nnunetv2": ("nnunetv2", "minor"),
    "torch": ("torch", "major"),
    "scipy": ("scipy", "minor"),
    "skimage": ("scikit-image", "minor"),
    "SimpleITK": ("SimpleITK", "minor"),
}
"""Key -> (distribution name, the part of its version that defines results)."""

RECORDED_SOFTWARE = {**{key: dist for key, (dist, _) in DEFINING_SOFTWARE.items()}, "ray": "ray"}
"""Key -> distribution name of every version a run records."""


@functools.cache
def software_versions() -> dict[str, str]:
    """Installed versions in this process (``unknown`` where a distribution is not installed)."""
    out = {}
    for key, dist in RECORDED_SOFTWARE.items():
        try:
            out[key] = version(dist)
        except PackageNotFoundError:
            out[key] = "unknown"
    return out


def major_version(text: str) -> str:
    """``2.8.1`` -> ``2``; ``0.1.0`` -> ``0.1`` (for 0.x the minor version is the breaking one)."""
    parts = text.split(".")
    return ".".join(parts[:2]) if parts[0] == "0" and len(parts) > 1 else parts[0]


def minor_version(text: str) -> str:
    """``1.17.1`` -> ``1.17``; ``2.13.0+cpu`` -> ``2.13`` (local build tags dropped)."""
    return ".".join(text.split("+", 1)[0].split(".")[:2])


def defining_versions(versions: dict[str, str]) -> dict[str, str]:
    """The result-defining part of each version in ``versions`` (see module docstring)."""
    out = {}
    for key, (_, granularity) in DEFINING_SOFTWARE.items():
        text = versions.get(key, "unknown")
        out[key] = text if text == "unknown" else (major_version(text) if granularity == "major"
                                                  else minor_version(text))
    return out


def version_mismatch(expected: dict[str, str], here: dict[str, str] | None = None) -> str:
    """Empty when this process's software defines results as ``expected`` (the driver's versions)
    does, else which libraries differ (``scipy 1.18.0 here, 1.17.1 where the run started``)."""
    here = here if here is not None else software_versions()
    a, b = defining_versions(expected), defining_versions(here)
    return "; ".join(f"{key} {here.get(key, 'unknown')} here, {expected.get(key, 'unknown')} where the run started"
                     for key in DEFINING_SOFTWARE if a[key] != b[key])

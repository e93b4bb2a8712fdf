"""MRSegmentator's release zips, as MRSegmentator 2.0.0 (PyPI) lists them in its
``mrsegmentator.config.MODEL_REGISTRY``."""

from __future__ import annotations

from dataclasses import dataclass

from mrseg_cohort.errors import ConfigError

SOURCE = "MRSegmentator 2.0.0 (PyPI), mrsegmentator.config.MODEL_REGISTRY"


@dataclass(frozen=True)
class Release:
    """One model's published weights zip."""

    model: str
    url: str
    sha256: str
    weights_version: str
    """MRSegmentator's ``version`` for the weights (its version.json ``weights_version``)."""


RELEASES: dict[str, Release] = {
    "base": Release("base", "https://github.com/hhaentze/MRSegmentator/releases/download/v1.2.0/weights.zip",
                    "dd26c1b511908a1f2a752b7fe8f5ca9c5603fc3e69fa52f57bf3ccdd52ceb286", "1.2"),
    "body_comp": Release("body_comp", "https://zenodo.org/records/21211879/files/body_comp_weights.zip?download=1",
                         "3ec490f641dd1aebdd4d2f497e69f8c9f2e4060a45c7d0d69c3ea0e74daf1550", "1.0"),
}
MODEL_NAMES = tuple(RELEASES)


def release(model: str) -> Release:
    """The release of ``model`` (``base`` or ``body_comp``); :class:`ConfigError` for other names."""
    try:
        return RELEASES[model]
    except KeyError:
        raise ConfigError(f"unknown MRSegmentator model {model!r}; known: {', '.join(MODEL_NAMES)}") from None

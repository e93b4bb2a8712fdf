"""One configuration per output: a fingerprint of what defines the results, and what changed.

An output's tables are only comparable across scans if every scan was segmented and measured the
same way. The fingerprint holds exactly what defines a scan's results: per model its weights
(sha256 of the files used), folds, checkpoint, tile step, mirroring, tile skipping, label map,
modalities and contrasts; which model is the base model (its label files carry no model suffix;
decided at the first run, never by position in ``models:``); the modality the cohort's scans are
taken to be (it decides which models run); the contrasts, stitching and measurement settings; and
the versions of the software that computes them, to the part that defines results
(:mod:`mrseg_cohort.versions`). Operational settings (paths, resources, commit sizes, limits) are
not in it.

A resume whose fingerprint differs is refused, naming each changed key; a model *added* to
``models:`` is not a change (it runs over the scans already committed; completion is per model).
A fingerprint written by an earlier format lacks some keys: they are adopted from the current run
(:func:`upgrade`), as nothing recorded contradicts them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mrseg_cohort.config import JobConfig
    from mrseg_cohort.segmentation.segmenter import ModelSpec

from mrseg_cohort.versions import defining_versions, major_version

FORMAT = 2

def model_fingerprint(spec: "ModelSpec") -> dict[str, Any]:
    """What defines one model's labels."""
    return {"weights_sha256": spec.sha256, "folds": [str(f) for f in spec.folds], "checkpoint": spec.checkpoint,
            "tile_step_size": spec.tile_step_size, "mirroring": spec.mirroring,
            "skip_empty_tiles": getattr(spec, "skip_empty_tiles", False),
            "label_map": {str(k): v for k, v in sorted(spec.label_names.items())},
            "modalities": list(spec.modalities), "contrasts": list(spec.contrasts) if spec.contrasts else None}


def job_fingerprint(job: "JobConfig", models: list["ModelSpec"], versions: dict[str, str]) -> dict[str, Any]:
    """The fingerprint of a job's results (see module docstring); plain JSON data."""
    return {
        "format": FORMAT,
        "models": {spec.name: model_fingerprint(spec) for spec in models},
        "base_model": job.base_model,
        "cohort": {"modality": job.cohort.modality},
        "contrasts": job.contrasts.model_dump(mode="json"),
        "stitching": job.stitching.model_dump(mode="json", exclude={"save_stitched"}),
        "measures": job.measures.model_dump(mode="json"),
        "software": defining_versions(versions),
    }


def recorded_base_model(stored: dict[str, Any] | None) -> str | None:
    """The base model an output's fingerprint records (format 1: its first model), or None."""
    if not stored:
        return None
    return stored.get("base_model") or next(iter(stored.get("models", {})), None)


def upgrade(stored: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``stored`` as the current format has it: keys an earlier format did not record are taken from
    ``current``, but the base model, which is the first model of the first run there (the model whose
    label files carry no suffix in outputs of format 1), and the software versions, which format 1
    held as major versions only (the current run's are recorded from now on)."""
    if stored.get("format", 1) >= FORMAT:
        return stored
    out = {**stored, "format": FORMAT}
    for key, value in current.items():
        out.setdefault(key, value)
    out["base_model"] = recorded_base_model(stored) or current["base_model"]
    stored_majors = stored.get("software", {})
    same_majors = all(major_version(current["software"].get(k, "")) == str(v) for k, v in stored_majors.items())
    out["software"] = current["software"] if same_majors else stored_majors
    return out


def changed_keys(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ, as ``key: old -> new``; models added in ``current`` are not
    changes (a removed model is)."""
    out: list[str] = []

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                where = f"{path}.{key}" if path else str(key)
                if path == "models" and key not in a:
                    continue  # a model added to models: runs over committed scans; not a change
                if key not in b:
                    out.append(f"{where}: {_short(a[key])} -> (removed)")
                elif key not in a:
                    out.append(f"{where}: (absent) -> {_short(b[key])}")
                else:
                    walk(a[key], b[key], where)
        elif a != b:
            out.append(f"{path}: {_short(a)} -> {_short(b)}")

    walk(stored, current, "")
    return out


def added_models(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Names of the models in ``current`` that ``stored`` does not have."""
    return [name for name in current.get("models", {}) if name not in stored.get("models", {})]


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12] + "..."  # a sha256
    return text if len(text) <= 60 else text[:57] + "..."

"""Units of work: a scan and the models still to run on it. Completion is per scan and model.

A scan (participant x visit) is done for a model when the model's ``scans`` row is committed.
Adding a model to ``models:`` therefore schedules every committed scan once more, for that model
only; nothing of the other models is redone. A unit's key names its models, so that the staged
rows of one pass (base) and a later one (body_comp) of the same scan never meet.
"""

from __future__ import annotations

from dataclasses import dataclass

from mrseg_cohort.manifest import ScanSource

ScanKey = tuple[str, str]
"""(participant_id, visit)."""
UnitKey = tuple[str, str, str]
"""(participant_id, visit, model names joined by "+", in configuration order)."""
CommittedKey = tuple[str, str, str]
"""(participant_id, visit, model) of a committed ``scans`` row."""


def unit_key(scan: ScanKey, models: tuple[str, ...]) -> UnitKey:
    return scan[0], scan[1], "+".join(models)


def unit_models(key: UnitKey) -> tuple[str, ...]:
    return tuple(key[2].split("+")) if key[2] else ()


@dataclass(frozen=True)
class ScanUnit:
    """One scan to process this run, and the models to run on it."""

    source: ScanSource
    models: tuple[str, ...]

    @property
    def key(self) -> UnitKey:
        return unit_key(self.source.key, self.models)


@dataclass(frozen=True)
class WorkPlan:
    """What a run does: units to process, scans already complete, units staged by an earlier run."""

    todo: list[ScanUnit]
    complete: int
    """Scans with every configured model committed."""
    staged: list[UnitKey]
    """Units whose rows an interrupted run staged but did not publish (published without recomputing)."""


def plan_work(sources: list[ScanSource], models: tuple[str, ...], committed: set[CommittedKey],
              staged: list[UnitKey]) -> WorkPlan:
    """For each scan, the configured models neither committed nor staged, in configuration order."""
    staged_models: dict[ScanKey, set[str]] = {}
    for key in staged:
        staged_models.setdefault((key[0], key[1]), set()).update(unit_models(key))
    todo, complete = [], 0
    for source in sources:
        pid, visit = source.participant_id, source.visit
        done = [m for m in models if (pid, visit, m) in committed]
        if len(done) == len(models):
            complete += 1
            continue
        have = set(done) | staged_models.get((pid, visit), set())
        missing = tuple(m for m in models if m not in have)
        if missing:
            todo.append(ScanUnit(source, missing))
    return WorkPlan(todo, complete, list(staged))

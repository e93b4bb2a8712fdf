"""Shards of one cohort: N independent runs (a SLURM job array, N Research Analysis Platform jobs)
that split one manifest between them and publish into one output.

A scan (participant x visit) belongs to shard ``sha256(canonical (participant, visit)) mod N``: the
same shard on every machine, in every process and whatever order the input lists the scans in
(Python's ``hash()`` of a string differs from one process to the next). Every contrast of a scan,
and every model run on it, goes with the scan.

Shards are numbered from 0: ``--shard 0/3``, ``--shard 1/3``, ``--shard 2/3`` together cover the
cohort once. Inside a SLURM array the shard comes from ``SLURM_ARRAY_TASK_ID`` minus
``SLURM_ARRAY_TASK_MIN`` out of ``SLURM_ARRAY_TASK_COUNT`` (so ``--array=1-3`` gives shards 0..2).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from typing import Iterable, Mapping, Protocol, TypeVar

log = logging.getLogger(__name__)

ARRAY_ENV = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX")
"""The SLURM array variables a shard is taken from (see :func:`shard_from_environment`)."""

_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count`` (``0 <= index < count``), written ``index/count``.

    Raises:
        ValueError: a count below 1 or an index outside ``0..count-1``.
    """

    index: int
    count: int

    def __post_init__(self) -> None:
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1:
            raise ValueError(f"shard count must be a whole number of at least 1, not {self.count!r}")
        if isinstance(self.index, bool) or not isinstance(self.index, int) or not 0 <= self.index < self.count:
            raise ValueError(f"shard index must be 0..{self.count - 1} for {self.count} shard(s) (shards are "
                             f"numbered from 0), not {self.index!r}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> "Shard":
        """``"1/3"`` -> ``Shard(1, 3)``; a ValueError naming the value otherwise."""
        match = _SPEC.match(text or "")
        if not match:
            raise ValueError(f"--shard {text!r}: expected I/N with 0 <= I < N, e.g. 0/4 for the first of 4 shards")
        try:
            return cls(int(match[1]), int(match[2]))
        except ValueError as err:
            raise ValueError(f"--shard {text!r}: {err}") from None

    def holds(self, participant_id: str, visit: str) -> bool:
        """Whether the scan ``(participant_id, visit)`` belongs to this shard."""
        return shard_of(participant_id, visit, self.count) == self.index


def shard_of(participant_id: str, visit: str, count: int) -> int:
    """The shard (0..count-1) of the scan ``(participant_id, visit)`` among ``count`` shards.

    The key is the JSON array ``[participant_id, visit]`` in UTF-8 (unambiguous: ``("1_2", "0")``
    and ``("1", "2_0")`` differ), hashed with sha256; its first 8 bytes, big-endian, modulo
    ``count``. Stable across processes, machines and Python versions.
    """
    if count < 1:
        raise ValueError(f"shard count must be at least 1, not {count}")
    key = json.dumps([str(participant_id), str(visit)], ensure_ascii=False, separators=(",", ":"))
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % count


class _Keyed(Protocol):
    participant_id: str
    visit: str


S = TypeVar("S", bound=_Keyed)


def select(sources: Iterable[S], shard: Shard | None) -> list[S]:
    """The sources (anything with ``participant_id`` and ``visit``, e.g. manifest entries) of
    ``shard``, in their given order; all of them when ``shard`` is None."""
    if shard is None:
        return list(sources)
    return [s for s in sources if shard.holds(s.participant_id, s.visit)]


def shard_from_environment(environ: Mapping[str, str]) -> Shard | None:
    """The shard of this SLURM array task, or None outside a job array.

    ``SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN`` of ``SLURM_ARRAY_TASK_COUNT``: ``--array=0-2``
    and ``--array=1-3`` both give shards 0, 1, 2 of 3. Logs which shard was taken.

    Raises:
        ValueError: the variables do not parse, or the array is not one contiguous range (``--array=1,5``
            or ``0-10:2``: its task ids cannot be numbered 0..N-1); pass ``--shard I/N`` then.
    """
    if not environ.get("SLURM_ARRAY_TASK_ID"):
        return None
    values: dict[str, int] = {}
    for name in ARRAY_ENV:
        raw = environ.get(name)
        if raw is None:
            continue
        try:
            values[name] = int(raw)
        except ValueError:
            raise ValueError(f"{name}={raw!r} is not a whole number; pass --shard I/N instead") from None
    task = values["SLURM_ARRAY_TASK_ID"]
    if "SLURM_ARRAY_TASK_COUNT" not in values:
        raise ValueError("SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard I/N")
    count = values["SLURM_ARRAY_TASK_COUNT"]
    first = values.get("SLURM_ARRAY_TASK_MIN", 0)
    last = values.get("SLURM_ARRAY_TASK_MAX", first + count - 1)
    if last - first + 1 != count:
        raise ValueError(f"SLURM array {first}-{last} has {count} task(s), not one contiguous range of task ids; "
                         f"submit --array={first}-{first + count - 1} (one task per shard), or pass --shard I/N")
    try:
        shard = Shard(task - first, count)
    except ValueError as err:
        raise ValueError(f"SLURM_ARRAY_TASK_ID={task} (array {first}-{last}): {err}") from None
    log.info("shard %s taken from the SLURM array (task %d of %d-%d)", shard, task, first, last)
    if count == 1:
        log.warning("a SLURM array of one task runs the whole cohort as one shard; to rerun one shard of N "
                    "(say after a failure), pass --shard I/N")
    return shard

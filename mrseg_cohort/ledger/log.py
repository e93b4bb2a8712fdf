"""The commit log of an output: numbered entries, each created exclusively, in one order.

``_work/log/<seq>.json`` (``seq`` from 1, twelve digits) holds either a *lease* entry (a run took
the output or a shard of it: its scope, lease generation and run id) or a *batch* entry (the units
and failure rows of a published batch, and which table parts it has). An entry is created with an
exclusive create (:meth:`Store.create_bytes`: a hard link on disk, ``If-None-Match: *`` on object
stores), so of two writers of one number exactly one succeeds; the other reads what it missed and
tries the next number. Writing entry ``n`` therefore means having read entries ``1..n-1``: the log
is one serial history of the output, whatever runs, shards and clocks there are.

Fencing: a run's *epoch* is the number of its own lease entry. It may create a batch entry only
while no lease entry of an overlapping scope (:func:`overlaps`) by another run lies between its
epoch and the number it creates: :meth:`Fence.catch_up` reads the entries it has not seen and raises
:class:`LeaseLost` when one does. A run that was suspended past its lease timeout (laptop lid, VM
pause, SIGSTOP) and taken over therefore cannot publish when it wakes: the run that took over wrote
its lease entry first.

``_work/log/<seq>.done`` marks a batch whose parts are all in ``tables/`` (see :mod:`.outputs`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.storage import Store, join_uri

LOG_FOLDER = "_work/log"
ALL = "all"
"""The scope of an unsharded run: every scan of the output."""


class LeaseLost(ConfigError):
    """This run's lease was taken over by another run: it must not publish (exit 2, one line)."""


def shard_scope(index: int, count: int) -> str:
    """The scope name of shard ``index`` of ``count`` (``"1-of-3"``), a folder name of the lease."""
    return f"{index}-of-{count}"


def describe_scope(scope: str) -> str:
    """``all`` -> ``the output``; ``1-of-3`` -> ``shard 1/3 of the output``."""
    if scope == ALL:
        return "the output"
    index, count = _parse(scope)
    return f"shard {index}/{count} of the output"


def _parse(scope: str) -> tuple[int, int]:
    index, _, count = scope.partition("-of-")
    return int(index), int(count)


def overlaps(a: str, b: str) -> bool:
    """Whether two scopes may hold a scan in common: an unsharded run overlaps everything, shards of
    one count are disjoint, shards of different counts overlap."""
    if a == ALL or b == ALL:
        return True
    (i, n), (j, m) = _parse(a), _parse(b)
    return n != m or i == j


def is_scope(name: str) -> bool:
    if name == ALL:
        return True
    try:
        index, count = _parse(name)
    except ValueError:
        return False
    return 0 <= index < count


class CommitLog:
    """Reads and appends the log of the output at ``root``."""

    def __init__(self, store: Store, root: str):
        self.store, self.root = store, root.rstrip("/")

    def uri(self, seq: int, suffix: str = ".json") -> str:
        return join_uri(self.root, LOG_FOLDER, f"{seq:012d}{suffix}")

    def listing(self) -> tuple[list[int], set[int]]:
        """(numbers of every entry, sorted; numbers of batches marked done), from one listing."""
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(join_uri(self.root, LOG_FOLDER),
                                                                       recursive=False)]
        entries = sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
        done = {int(n[:-5]) for n in names if n.endswith(".done") and n[:-5].isdigit()}
        return entries, done

    def last(self) -> int:
        entries, _ = self.listing()
        return entries[-1] if entries else 0

    def read(self, seq: int, wait_s: float = 5.0) -> dict:
        """Entry ``seq``. A store may list an object before a read finds it, and a file system
        without hard links shows a created file before it is complete: read again for ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                entry = json.loads(self.store.read_bytes(self.uri(seq)))
                return {**entry, "seq": seq}
            except (FileNotFoundError, ValueError):
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.2)

    def entries(self, after: int = 0) -> list[dict]:
        """Every entry numbered above ``after``, in order."""
        numbers, _ = self.listing()
        return [self.read(n) for n in numbers if n > after]

    def try_create(self, seq: int, body: dict) -> bool:
        """Create entry ``seq``; False when another writer has it."""
        try:
            self.store.create_bytes(self.uri(seq), json.dumps(body, default=str).encode())
            return True
        except FileExistsError:
            return False

    def mark_done(self, seq: int) -> None:
        self.store.write_bytes(self.uri(seq, ".done"), b"")


@dataclass
class Fence:
    """A run's position in the log: its scope, run id and epoch (its lease entry's number), and the
    last entry it has read."""

    log: CommitLog
    scope: str
    run_id: str
    epoch: int = 0
    seen: int = 0
    lost_to: dict | None = field(default=None)

    def catch_up(self) -> list[dict]:
        """The entries written since the last call, in order.

        Raises:
            LeaseLost: another run's lease entry of an overlapping scope came after this run's epoch.
        """
        new = self.log.entries(after=self.seen)
        for entry in new:
            self.seen = entry["seq"]
            if entry.get("kind") == "lease" and entry.get("run_id") != self.run_id and \
                    overlaps(entry.get("scope", ALL), self.scope) and entry["seq"] > self.epoch:
                self.lost_to = entry
                raise LeaseLost(self.lost_message())
        return new

    def lost_message(self) -> str:
        entry = self.lost_to or {}
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(entry.get("written_at", 0))))
        return (f"run {self.run_id} lost {describe_scope(self.scope)} at {self.log.root} to run "
                f"{entry.get('run_id', '?')} (host {entry.get('host', '?')}, since {when}): this run was "
                "taken for gone (suspended or cut off past output.lease_timeout_s); it publishes nothing more, "
                "and what it finished stays staged for the run that holds the output")

    def begin(self, host: str, generation: int) -> int:
        """Write this run's lease entry after the last entry there is (not fenced: a run taking the
        output follows whatever came before it); sets and returns the epoch."""
        self.seen = self.log.last()
        while not self.log.try_create(self.seen + 1, {"kind": "lease", "scope": self.scope, "run_id": self.run_id,
                                                      "host": host, "generation": generation,
                                                      "written_at": time.time()}):
            self.seen = max(self.seen + 1, self.log.last())
        self.seen = self.epoch = self.seen + 1
        return self.epoch

    def try_append(self, body: dict) -> int | None:
        """Create ``body`` as the entry after the last one read (call :meth:`catch_up` first);
        None when another writer has that number (catch up and try again)."""
        seq = self.seen + 1
        if self.log.try_create(seq, {**body, "scope": self.scope, "run_id": self.run_id, "written_at": time.time()}):
            self.seen = seq
            return seq
        return None

    def append(self, body: dict) -> int:
        """Create ``body`` as the next entry after everything read (catching up as often as another
        writer got there first); returns its number.

        Raises:
            LeaseLost: see :meth:`catch_up`.
        """
        while True:
            self.catch_up()
            seq = self.try_append(body)
            if seq is not None:
                return seq

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

A *reset* entry (``run --restart``) fences every run whose epoch came before it, whatever its
scope; entries before the latest reset are history (:attr:`CommitLog.floor`).

``_work/log/<seq>.done`` marks a batch whose parts are all in ``tables/`` (see :mod:`.outputs`);
``_work/log/<seq>.reset`` marks a reset entry, so that one listing finds the latest.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from mrseg_cohort.errors import ConfigError, StorageError
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
        """(numbers of every entry after the latest reset, sorted; numbers of batches marked done),
        from one listing."""
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(join_uri(self.root, LOG_FOLDER),
                                                                       recursive=False)]
        floor = max((int(n[:-6]) for n in names if n.endswith(".reset") and n[:-6].isdigit()), default=0)
        entries = sorted(n for n in (int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())
                         if n >= floor)
        done = {int(n[:-5]) for n in names if n.endswith(".done") and n[:-5].isdigit()}
        return entries, done

    def fenced_by_reset(self) -> set[str]:
        """Ids of the runs that held the output before its latest reset (``run --restart``), but the
        run that reset it: whatever they staged belongs to the results that were deleted."""
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(join_uri(self.root, LOG_FOLDER),
                                                                       recursive=False)]
        floor = max((int(n[:-6]) for n in names if n.endswith(".reset") and n[:-6].isdigit()), default=0)
        if not floor:
            return set()
        resetter = self.read(floor).get("run_id")
        history = self.read_many([n for n in self.numbers() if n < floor])
        return {e.get("run_id") for e in history if e.get("kind") == "lease"} - {resetter}

    def numbers(self) -> list[int]:
        """Every entry's number, resets' history included."""
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(join_uri(self.root, LOG_FOLDER),
                                                                       recursive=False)]
        return sorted(int(n[:-5]) for n in names if n.endswith(".json") and n[:-5].isdigit())

    def last(self) -> int:
        numbers = self.numbers()
        return numbers[-1] if numbers else 0

    def read(self, seq: int, wait_missing_s: float = 5.0, wait_damaged_s: float = 5.0) -> dict:
        """Entry ``seq``. A store may list an object before a read finds it (read again for
        ``wait_missing_s``), and a file system without hard links shows a created file before it is
        complete (read again for ``wait_damaged_s``).

        Raises:
            FileNotFoundError: there is no entry ``seq``.
            StorageError: the entry stays incomplete or damaged (names the file and what to do).
        """
        start = time.monotonic()
        while True:
            try:
                entry = json.loads(self.store.read_bytes(self.uri(seq)))
                if not isinstance(entry, dict):
                    raise ValueError("not a JSON object")
                return {**entry, "seq": seq}
            except FileNotFoundError:
                if time.monotonic() - start >= wait_missing_s:
                    raise
            except ValueError as err:
                if time.monotonic() - start >= wait_damaged_s:
                    raise StorageError(f"commit log entry {seq} is empty or damaged ({err}): a run died while "
                                       "creating it (on a file system without hard links); if no run uses the output "
                                       "now, delete that file and run again", self.uri(seq)) from None
            time.sleep(0.2)

    def read_many(self, numbers: list[int]) -> list[dict]:
        """Entries ``numbers``, read side by side (an object store answers each read in tens of ms)."""
        if len(numbers) <= 2:
            return [self.read(n) for n in numbers]
        with ThreadPoolExecutor(max_workers=min(16, len(numbers))) as pool:
            return list(pool.map(self.read, numbers))

    def entries(self, after: int = 0) -> list[dict]:
        """Every entry numbered above ``after``, in order: read one by one until the next is not there
        (no listing: each costs one read, and an object store listing newer entries first cannot
        make one be skipped)."""
        out = []
        seq = after + 1
        while True:
            try:
                out.append(self.read(seq, wait_missing_s=0))
            except FileNotFoundError:
                return out
            seq += 1

    def all_entries(self) -> list[dict]:
        """Every entry, from one listing and reads side by side (recovery, ``--restart``)."""
        numbers, _ = self.listing()
        return self.read_many(numbers)

    def try_create(self, seq: int, body: dict) -> bool:
        """Create entry ``seq``; False when another writer has it."""
        try:
            self.store.create_bytes(self.uri(seq), json.dumps(body, default=str).encode())
            return True
        except FileExistsError:
            return False

    def mark_done(self, seq: int) -> None:
        self.store.write_bytes(self.uri(seq, ".done"), b"")

    def mark_reset(self, seq: int) -> None:
        self.store.write_bytes(self.uri(seq, ".reset"), b"")


@dataclass
class Fence:
    """A run's position in the log: its scope, run id and epoch (its lease entry's number), and the
    last entry it has read. Thread-safe (the heartbeat thread catches up too)."""

    log: CommitLog
    scope: str
    run_id: str
    epoch: int = 0
    seen: int = 0
    lost_to: dict | None = field(default=None)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def catch_up(self) -> list[dict]:
        """The entries written since the last call, in order.

        Raises:
            LeaseLost: another run's lease entry of an overlapping scope, or a reset by another run,
                came after this run's epoch (also at every later call: a fenced run stays fenced).
        """
        with self._lock:
            if self.lost_to is not None:
                raise LeaseLost(self.lost_message())
            new = self.log.entries(after=self.seen)
            for entry in new:
                if self.fences(entry):
                    self.lost_to = entry
                    raise LeaseLost(self.lost_message())
                self.seen = entry["seq"]
            return new

    def check(self) -> None:
        """Raise :class:`LeaseLost` when an entry after the last one read fences this run; reads
        without moving on (the publisher, not the heartbeat, consumes the entries)."""
        with self._lock:
            if self.lost_to is not None:
                raise LeaseLost(self.lost_message())
            for entry in self.log.entries(after=self.seen):
                if self.fences(entry):
                    self.lost_to = entry
                    raise LeaseLost(self.lost_message())

    def fences(self, entry: dict) -> bool:
        """Whether ``entry`` ends this run's hold: another run's lease of an overlapping scope, or
        another run's ``--restart``, after this run's epoch."""
        if entry["seq"] <= self.epoch or entry.get("run_id") == self.run_id:
            return False
        kind = entry.get("kind")
        return kind == "reset" or (kind == "lease" and overlaps(entry.get("scope", ALL), self.scope))

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
        with self._lock:
            self.seen = self.log.last()
            body = {"kind": "lease", "scope": self.scope, "run_id": self.run_id, "host": host,
                    "generation": generation}
            while not self.log.try_create(self.seen + 1, {**body, "written_at": time.time()}):
                self.seen = max(self.seen + 1, self.log.last())
            self.seen = self.epoch = self.seen + 1
            self.lost_to = None
            return self.epoch

    def try_append(self, body: dict) -> int | None:
        """Create ``body`` as the entry after the last one read (call :meth:`catch_up` first);
        None when another writer has that number (catch up and try again).

        Raises:
            LeaseLost: this run was fenced (at any earlier :meth:`catch_up`).
        """
        with self._lock:
            if self.lost_to is not None:
                raise LeaseLost(self.lost_message())
            seq = self.seen + 1
            if self.log.try_create(seq, {**body, "scope": self.scope, "run_id": self.run_id,
                                         "written_at": time.time()}):
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

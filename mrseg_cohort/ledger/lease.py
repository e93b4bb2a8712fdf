"""Who holds an output, or a shard of it: lease files with heartbeats, and the log entry that fences.

A run holds a *scope*: ``all`` (an unsharded run) or one shard, ``<i>-of-<n>`` (:mod:`.log`). Its
lease is a sequence of generation files ``_work/lease/<scope>/<generation>.json``, each naming its
holder (run id, host, pid, start time) and its last heartbeat; the holder of a scope is its highest
generation, unless that one says it was released. Generations are never reused: a released lease
stays as the highest generation until the next run creates the one above it.

Taking a scope: every live holder of an overlapping scope refuses it (:class:`LeaseHeldError`,
naming the holder); else the next generation is created with an *exclusive* create (of two runs
starting together exactly one succeeds), and the run's lease entry is written to the commit log:
that entry is the run's epoch, the fencing token its publications are checked against
(:class:`~.log.Fence`). A store that cannot create exclusively is refused with one line: the
output's guarantees need it.

A holder is *stale* (gone) when its lease file has not been rewritten for ``timeout_s`` by the
store's own clock (the file's modification time against a probe written now: no machine's clock
enters, so a run whose clock is ahead cannot take over a live one), or at once when it ran on this
host and its process has ended. A stale lease is taken over with a warning.

A holder has *lost* its scope (:meth:`OutputLease.check`, each heartbeat) when its generation file
is gone, names another run, or a higher generation exists; publication is fenced by the log in
any case, whatever the heartbeats saw.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Callable

from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.ledger.log import ALL, CommitLog, Fence, LeaseLost, describe_scope, is_scope, overlaps
from mrseg_cohort.threads import leave_signals_to_the_main_thread

log = logging.getLogger(__name__)

LEASE_FOLDER = "_work/lease"

__all__ = ["LEASE_FOLDER", "LeaseHeldError", "LeaseHolder", "LeaseLost", "OutputLease"]


class LeaseHeldError(ConfigError):
    """Another run holds the output or an overlapping shard (exit 2 before any work)."""


@dataclass(frozen=True)
class LeaseHolder:
    """What a lease generation file says. Times are seconds since the epoch (UTC), by the holder's
    clock: shown to people, never compared with another machine's clock."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    generation: int
    scope: str = ALL
    released: bool = False
    legacy: bool = False
    """Written by an earlier version (``_work/lease/<generation>.json``), as scope ``all``."""

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return f"run {self.run_id} (host {self.host}, pid {self.pid}) since {since}"


AgeOf = Callable[[str], float]
"""Seconds since a lease file was last written, by the store's clock (tests give their own)."""


class OutputLease:
    """This run's claim on one scope of an output location.

    Args:
        store: the output's store.
        root: the output URI.
        run_id: this run's id.
        timeout_s: a lease file not rewritten for this long (store's clock) marks its holder as gone.
        heartbeat_s: how often :meth:`start_heartbeats` rewrites the lease file.
        scope: ``all`` or a shard's scope (:func:`~.log.shard_scope`).
        age_of: the age of a lease file in seconds (default: by the store's clock).
    """

    def __init__(self, store: Store, root: str, run_id: str, timeout_s: float = 180.0, heartbeat_s: float = 30.0,
                 scope: str = ALL, age_of: AgeOf | None = None, clock: Callable[[], float] = time.time):
        self.store, self.root, self.run_id, self.scope = store, root.rstrip("/"), run_id, scope
        self.timeout_s, self.heartbeat_s, self.clock = timeout_s, heartbeat_s, clock
        self.age_of = age_of or self._age_by_store_clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.generation: int | None = None
        self.started = clock()
        self.fence = Fence(CommitLog(store, self.root), scope, run_id)
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store_now: float | None = None

    # -- reading ------------------------------------------------------------------------------------
    def _folder(self, scope: str | None = None) -> str:
        return join_uri(self.root, LEASE_FOLDER, scope or self.scope)

    def _uri(self, generation: int, scope: str | None = None) -> str:
        return join_uri(self._folder(scope), f"{generation:012d}.json")

    def _generations(self, scope: str | None = None) -> list[int]:
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(self._folder(scope), suffix=".json",
                                                                       recursive=False)]
        return sorted(int(n[:-5]) for n in names if n[:-5].isdigit())

    def _scopes(self) -> list[str]:
        return [name for name in self.store.list_dirs(join_uri(self.root, LEASE_FOLDER)) if is_scope(name)]

    def _read(self, generation: int, scope: str | None = None) -> LeaseHolder | None:
        try:
            data = json.loads(self.store.read_bytes(self._uri(generation, scope)))
            return LeaseHolder(**data)
        except FileNotFoundError:
            return None  # replaced between listing and reading
        except (ValueError, TypeError) as err:  # a damaged file, or one written in place and not complete
            log.warning("lease file %s is unreadable (%s)", self._uri(generation, scope), err)
            return LeaseHolder("unknown", "unknown", -1, 0.0, 0.0, generation, scope or self.scope)

    def _read_soon(self, generation: int, wait_s: float = 5.0) -> LeaseHolder | None:
        """The lease that won a race for ``generation``: a store may refuse the exclusive create while
        the winner's upload is still going on, or list and refuse before a read finds it (seen with
        SeaweedFS), so it is read again for up to ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            holder = self._read(generation)
            if holder is not None or time.monotonic() >= deadline:
                return holder
            time.sleep(0.25)

    def _age_by_store_clock(self, uri: str) -> float:
        if self._store_now is None:  # one probe per look at the holders
            self._store_now = self.store.now(join_uri(self.root, LEASE_FOLDER))
        return self._store_now - self.store.modified(uri)

    def is_live(self, holder: LeaseHolder) -> bool:
        """Not released, its process not known to be gone from this host, and its lease file
        rewritten within ``timeout_s`` by the store's clock."""
        if holder.released:
            return False
        if holder.host == self.host and not _process_alive(holder.pid):
            return False
        uri = self._legacy_uri(holder.generation) if holder.legacy else self._uri(holder.generation, holder.scope)
        try:
            age = self.age_of(uri)
        except FileNotFoundError:
            return False
        return age <= self.timeout_s

    def holders(self) -> list[LeaseHolder]:
        """The latest lease of every scope there is (released ones included), and the lease of a run
        of an earlier version (``_work/lease/<generation>.json``: scope ``all``)."""
        out = []
        for scope in self._scopes():
            generations = self._generations(scope)
            if generations:
                holder = self._read(generations[-1], scope)
                if holder is not None:
                    out.append(holder)
        legacy = self._legacy_generations()
        if legacy:
            holder = self._read_legacy(legacy[-1])
            if holder is not None:
                out.append(holder)
        return out

    def _legacy_uri(self, generation: int) -> str:
        return join_uri(self.root, LEASE_FOLDER, f"{generation:012d}.json")

    def _legacy_generations(self) -> list[int]:
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(join_uri(self.root, LEASE_FOLDER), suffix=".json",
                                                                       recursive=False)]
        return sorted(int(n[:-5]) for n in names if n[:-5].isdigit())

    def _read_legacy(self, generation: int) -> LeaseHolder | None:
        try:
            data = json.loads(self.store.read_bytes(self._legacy_uri(generation)))
            return LeaseHolder(**{**data, "scope": ALL, "legacy": True})
        except FileNotFoundError:
            return None
        except (ValueError, TypeError):
            return LeaseHolder("unknown", "unknown", -1, 0.0, 0.0, generation, ALL, legacy=True)

    def _fence_legacy(self) -> None:
        """A run of an earlier version holds its lease as ``_work/lease/<generation>.json`` and takes
        a higher generation there for a takeover: one is written, so that such a run (gone, or
        asleep) stops publishing when it looks."""
        legacy = self._legacy_generations()
        if legacy:
            record = {"run_id": self.run_id, "host": self.host, "pid": self.pid, "started": self.started,
                      "heartbeat": self.clock(), "generation": legacy[-1] + 1}
            self.store.write_bytes(self._legacy_uri(legacy[-1] + 1), json.dumps(record).encode())

    def current(self) -> LeaseHolder | None:
        """The live holder of this run's scope, or None."""
        self._store_now = None
        generations = self._generations()
        holder = self._read(generations[-1]) if generations else None
        return holder if holder is not None and self.is_live(holder) else None

    # -- holding ------------------------------------------------------------------------------------
    def _record(self, released: bool = False) -> bytes:
        assert self.generation is not None
        return json.dumps(asdict(LeaseHolder(self.run_id, self.host, self.pid, self.started, self.clock(),
                                             self.generation, self.scope, released))).encode()

    def acquire(self) -> LeaseHolder | None:
        """Take this run's scope; returns the stale holder taken over (for a warning), if any.

        Raises:
            LeaseHeldError: a live run holds this scope or an overlapping one (the message names it).
            ConfigError: the store cannot create objects exclusively.
        """
        folder = join_uri(self.root, LEASE_FOLDER)
        if not self.store.honours_exclusive_create(folder):
            raise ConfigError(f"output {self.root}: this store does not refuse a second create of one object "
                              "(If-None-Match: *), which the output's exactly-once guarantees need; use a store "
                              "that does (AWS S3, MinIO, SeaweedFS, local disk), or a newer s3fs")
        self._store_now = None
        generations = self._generations()  # one listing decides both who holds this scope and the next number
        own = self._read(generations[-1]) if generations else None
        others = [h for h in self.holders() if h.legacy or (h.scope != self.scope and overlaps(h.scope, self.scope))]
        for holder in [h for h in (own, *others) if h is not None]:
            if self.is_live(holder):
                raise LeaseHeldError(self._held_message(holder))
        previous = own if own is not None and not own.released else None
        self.generation = (generations[-1] if generations else 0) + 1
        try:
            self.store.create_bytes(self._uri(self.generation), self._record())
        except FileExistsError:
            winner = self._read_soon(self.generation)
            self.generation = None
            shown = winner.describe() if winner else "another run (its lease file is not readable yet)"
            raise LeaseHeldError(f"{describe_scope(self.scope)} at {self.root} was just taken by {shown}") from None
        for old in generations:  # earlier generations are history now; the new one keeps the number
            self.store.remove(self._uri(old))
        self._fence_legacy()
        self.fence.begin(self.host, self.generation)
        if previous is not None:
            log.warning("took over %s from %s: it is gone (no heartbeat for %.0f s by the store's clock)",
                        describe_scope(self.scope), previous.describe(), self.timeout_s)
        return previous

    def _held_message(self, holder: LeaseHolder) -> str:
        what = describe_scope(holder.scope)
        mine = "" if holder.scope == self.scope else f" (this run wants {describe_scope(self.scope)})"
        return (f"{what} {self.root} is in use by {holder.describe()}{mine}; wait for it to finish, or stop it (a "
                f"killed run's lease is taken over {self.timeout_s:.0f} s after its last heartbeat)")

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds its scope (its generation file is
        there, names it, and no higher generation exists)."""
        if self.lost.is_set():
            raise LeaseLost(self._lost_message("it was taken over"))
        if self.generation is None:
            raise LeaseLost(self._lost_message("it does not hold it"))
        generations = self._generations()
        mine = self._read(self.generation) if self.generation in generations else None
        reason = ""
        if generations and generations[-1] > self.generation:
            newer = self._read(generations[-1])
            reason = f"it was taken over by {newer.describe() if newer else 'another run'}"
        elif mine is None:
            reason = "its lease file is gone"
        elif mine.run_id != self.run_id:
            reason = f"its lease file names run {mine.run_id}"
        if reason:
            self.lost.set()
            raise LeaseLost(self._lost_message(reason))

    def _lost_message(self, reason: str) -> str:
        return (f"run {self.run_id} lost {describe_scope(self.scope)} at {self.root} ({reason}); it publishes "
                "nothing more, and what it finished stays staged for the run that holds the output")

    def heartbeat(self) -> None:
        """Rewrite the lease file (after :meth:`check`, and after reading the log for a run of an
        overlapping scope that took over: a run fenced so stops within a heartbeat)."""
        self.check()
        self.fence.check()
        self.store.write_bytes(self._uri(self.generation), self._record())  # type: ignore[arg-type]

    def start_heartbeats(self, on_lost: Callable[[], None] = lambda: None) -> None:
        """Renew the lease every ``heartbeat_s`` in a daemon thread; a lost lease sets :attr:`lost`
        and calls ``on_lost`` (to stop the run)."""
        def beat() -> None:
            leave_signals_to_the_main_thread()
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.heartbeat()
                except LeaseLost as err:
                    log.error("%s", err)
                    on_lost()
                    return
                except OSError as err:  # storage hiccup: try again at the next beat
                    log.warning("lease heartbeat failed (%s); retrying in %.0f s", err, self.heartbeat_s)

        self._thread = threading.Thread(target=beat, name="mrseg-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop heartbeats and give the scope up, if this run still holds it: its generation file
        says so (and stays, so that the next run takes the next number)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is not None and not self.lost.is_set():
            try:
                self.check()
                self.store.write_bytes(self._uri(self.generation), self._record(released=True))
            except LeaseLost:
                pass
        self.generation = None

    def __enter__(self) -> "OutputLease":
        self.acquire()
        self.start_heartbeats()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

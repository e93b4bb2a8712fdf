"""One run per output: a lease with a heartbeat, taken over when its holder is gone.

The lease is a sequence of generation files under the output, ``_work/lease/<generation>.json``,
each naming its holder (run id, host, pid, start time) and its last heartbeat. The holder is the
highest generation. To take the output a run creates the next generation with an *exclusive*
create (:meth:`Store.create_bytes`: ``link`` on local disk, ``If-None-Match: *`` on S3), so of two
runs starting together exactly one succeeds; the other is refused with the holder's name. A
generation is stale when its heartbeat is older than ``timeout_s`` (the holder was killed or lost
its node), or at once when its holder ran on this host and its process is gone; a stale lease is
taken over with a warning. A holder that finds a higher generation (it was taken over while it
looked dead) has lost the output and must stop publishing (:class:`LeaseLost`).

Where an object store does not honour exclusive creates, the lease falls back to write, wait and
read back (a window of about a second in which two runs could both believe they hold it; the
publisher's second guard still keeps each scan once; docs/operations.md).
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

log = logging.getLogger(__name__)

LEASE_FOLDER = "_work/lease"


class LeaseHeldError(ConfigError):
    """Another run holds the output (exit 2 before any work)."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over by another run: it must stop writing."""


@dataclass(frozen=True)
class LeaseHolder:
    """What a lease generation file says. Times are seconds since the epoch (UTC)."""

    run_id: str
    host: str
    pid: int
    started: float
    heartbeat: float
    generation: int

    def describe(self, now: float) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.started))
        return (f"run {self.run_id} (host {self.host}, pid {self.pid}) since {since}, last heartbeat "
                f"{max(0.0, now - self.heartbeat):.0f} s ago")

    def is_stale(self, now: float, timeout_s: float, host: str) -> bool:
        """Heartbeat older than ``timeout_s``, or the holder's process is gone from this host."""
        if now - self.heartbeat > timeout_s:
            return True
        return self.host == host and not _process_alive(self.pid)


class OutputLease:
    """This run's claim on one output location.

    Args:
        store: the output's store.
        root: the output URI.
        run_id: this run's id.
        timeout_s: a heartbeat older than this marks the holder as gone.
        heartbeat_s: how often :meth:`start_heartbeats` renews the lease.
    """

    def __init__(self, store: Store, root: str, run_id: str, timeout_s: float = 180.0, heartbeat_s: float = 30.0,
                 clock: Callable[[], float] = time.time):
        self.store, self.root, self.run_id = store, root.rstrip("/"), run_id
        self.timeout_s, self.heartbeat_s, self.clock = timeout_s, heartbeat_s, clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.generation: int | None = None
        self.started = clock()
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading ------------------------------------------------------------------------------------
    def _uri(self, generation: int) -> str:
        return join_uri(self.root, LEASE_FOLDER, f"{generation:012d}.json")

    def _generations(self) -> list[int]:
        names = [u.rsplit("/", 1)[-1] for u in self.store.list_files(join_uri(self.root, LEASE_FOLDER),
                                                                       suffix=".json", recursive=False)]
        return sorted(int(n[:-5]) for n in names if n[:-5].isdigit())

    def _read(self, generation: int) -> LeaseHolder | None:
        try:
            data = json.loads(self.store.read_bytes(self._uri(generation)))
            return LeaseHolder(**data)
        except FileNotFoundError:
            return None  # released between listing and reading
        except (ValueError, TypeError) as err:  # a damaged lease file: treat it as stale
            log.warning("lease file %s is unreadable (%s); treating it as stale", self._uri(generation), err)
            return LeaseHolder("unknown", "unknown", -1, 0.0, 0.0, generation)

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

    def current(self) -> LeaseHolder | None:
        """The live holder of the output, or None (no lease, or only stale ones)."""
        generations = self._generations()
        if not generations:
            return None
        holder = self._read(generations[-1])
        if holder is None or holder.is_stale(self.clock(), self.timeout_s, self.host):
            return None
        return holder

    # -- holding ------------------------------------------------------------------------------------
    def _record(self) -> bytes:
        assert self.generation is not None
        return json.dumps(asdict(LeaseHolder(self.run_id, self.host, self.pid, self.started, self.clock(),
                                             self.generation))).encode()

    def acquire(self) -> LeaseHolder | None:
        """Take the output; returns the stale holder taken over (for a warning), if any.

        Raises:
            LeaseHeldError: a live run holds it (the message names it and since when).
        """
        exclusive = self.store.honours_exclusive_create(join_uri(self.root, LEASE_FOLDER))
        generations = self._generations()
        previous = self._read(generations[-1]) if generations else None
        now = self.clock()
        if previous is not None and not previous.is_stale(now, self.timeout_s, self.host):
            raise LeaseHeldError(f"output {self.root} is in use by {previous.describe(now)}; wait for it to "
                                 "finish, or stop it (a killed run's lease is taken over after "
                                 f"{self.timeout_s:.0f} s without a heartbeat)")
        self.generation = (generations[-1] if generations else 0) + 1
        try:
            self.store.create_bytes(self._uri(self.generation), self._record())
        except FileExistsError:
            winner = self._read_soon(self.generation)
            self.generation = None
            shown = winner.describe(self.clock()) if winner else "another run (its lease file is not readable yet)"
            raise LeaseHeldError(f"output {self.root} was just taken by {shown}") from None
        if not exclusive:
            self._confirm_without_exclusive_create()
        for old in generations:  # earlier generations are history now
            self.store.remove(self._uri(old))
        if previous is not None:
            log.warning("took over the output from %s: it is gone (stale lease)", previous.describe(now))
        return previous

    def _confirm_without_exclusive_create(self) -> None:
        time.sleep(1.0)
        generations = self._generations()
        mine = self._read(self.generation) if self.generation in generations else None
        if generations[-1:] != [self.generation] or mine is None or mine.run_id != self.run_id:
            self.generation = None
            raise LeaseHeldError(f"output {self.root} was taken by another run at the same moment "
                                 "(this store does not honour exclusive creates)")

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the output."""
        if self.lost.is_set():
            raise LeaseLost(f"run {self.run_id} lost the output {self.root} to another run")
        generations = self._generations()
        if self.generation is None or (generations and generations[-1] != self.generation):
            self.lost.set()
            raise LeaseLost(f"run {self.run_id} lost the output {self.root} to another run")

    def heartbeat(self) -> None:
        """Renew the lease (after :meth:`check`)."""
        self.check()
        self.store.write_bytes(self._uri(self.generation), self._record())  # type: ignore[arg-type]

    def start_heartbeats(self, on_lost: Callable[[], None] = lambda: None) -> None:
        """Renew the lease every ``heartbeat_s`` in a daemon thread; a lost lease sets :attr:`lost`
        and calls ``on_lost`` (to stop the run)."""
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    self.heartbeat()
                except LeaseLost as err:
                    log.error("%s; this run stops publishing", err)
                    on_lost()
                    return
                except OSError as err:  # storage hiccup: try again at the next beat
                    log.warning("lease heartbeat failed (%s); retrying in %.0f s", err, self.heartbeat_s)

        self._thread = threading.Thread(target=beat, name="mrseg-lease-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop heartbeats and give the output up (only if this run still holds it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.generation is not None and not self.lost.is_set():
            generations = self._generations()
            if generations and generations[-1] == self.generation:
                self.store.remove(self._uri(self.generation))
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

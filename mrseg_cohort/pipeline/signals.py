"""SIGINT and SIGTERM stop a run cleanly: the loop ends, finished scans are published.

A cluster stops a driver with SIGTERM (``ray job stop``, a deleted KubeRay RayJob, the driver pod's
termination), a terminal with SIGINT. The first signal asks the run to stop; a second one stops
the process at once (the next run recovers what it had staged).

``ray.init`` installs its own handlers (its C++ core's failure handler aborts the process on
SIGTERM, exit -6: kept out of the driver by
:func:`~mrseg_cohort.pipeline.session.without_failure_signal_handler`; its Python handler exits 15
without a word while it starts): :func:`held_while` keeps
SIGINT/SIGTERM pending in the main thread while Ray starts and then puts ours back. A signal that
another thread (a progress bar's, an I/O loop's) took meanwhile reaches Ray's handler, which raises
``SystemExit(15)`` inside ``ray.init``; the session catches it and hands the signal to ours
(:func:`deliver`). Either way the run stops through our handler (exit 130/143, the final line, Ray
shut down).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

class StopRequest:
    """Set from a signal handler or the lease's heartbeat thread; read by the loop."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""

    def set(self, reason: str) -> None:
        if not self._event.is_set():
            self.reason = reason
            self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Within the block, SIGINT/SIGTERM set ``stop`` (the main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {}

    def handler(signum, frame) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():  # a second signal: give up at once
            signal.signal(signum, previous.get(signum) or signal.SIG_DFL)
            raise KeyboardInterrupt(name)
        stop.set(name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    _active.append(handler)
    try:
        yield stop
    finally:
        _active.remove(handler)
        for sig, old in previous.items():
            signal.signal(sig, old)


_active: list = []


@contextlib.contextmanager
def held_while() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait (blocked in this thread, and so in the threads it
    starts); after it our handlers are installed again and a signal that came meanwhile is handled."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        reassert()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def deliver(signum: int) -> None:
    """Hand ``signum`` to the innermost :func:`stop_on_signals` handler, as if it had arrived there."""
    if _active:
        _active[-1](signum, None)


def reassert() -> None:
    """Install the innermost :func:`stop_on_signals` handler again (after a library replaced it)."""
    if _active and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _active[-1])

"""SIGINT and SIGTERM stop a run cleanly: the loop ends, finished scans are published.

A cluster stops a driver with SIGTERM (``ray job stop``, a deleted KubeRay RayJob, the driver pod's
termination), a terminal with SIGINT. The first signal asks the run to stop; a second one stops
the process at once (the next run recovers what it had staged).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

from mrseg_cohort.pipeline.scheduler import StopRequest

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
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)

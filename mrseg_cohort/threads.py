"""Threads of this tool's own leave SIGINT and SIGTERM to the main thread.

Python runs signal handlers in the main thread, but the kernel hands a process's signal to any
thread that does not block it; a thread of ours that blocks them keeps a signal from waking the
process through a thread while the main thread holds them back (:mod:`mrseg_cohort.pipeline.signals`).
"""

from __future__ import annotations

import signal
import threading


def leave_signals_to_the_main_thread() -> None:
    """Block SIGINT and SIGTERM in the calling thread (a no-op in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

"""Run ``mrseg-cohort run CONFIG`` and SIGKILL this process at a chosen point (for resume tests).

    python tests/crash_driver.py KILL_POINT CONFIG

Kill points:
    before-output      when the Ray stage starts, before any scan is read
    mid-run            after the first scan is finished and staged (nothing published yet)
    table-write        while publishing: after the first table part of a logged batch moved into tables/
    before-cleanup     after a batch's done mark, before its staged files are deleted
"""

from __future__ import annotations

import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def install(point: str) -> None:
    from mrseg_cohort.ledger import outputs
    from mrseg_cohort.io import storage
    from mrseg_cohort.pipeline import publisher, scheduler

    if point == "before-output":
        def run(self, units):
            _die()

        scheduler.Scheduler.run = run
    elif point == "mid-run":
        original_add = publisher.BatchPublisher.add_rows

        def add_rows(self, key, tables):
            original_add(self, key, tables)
            _die()

        publisher.BatchPublisher.add_rows = add_rows
    elif point == "table-write":  # a batch logged, its first part moved into tables/, the others not
        original_move = storage.Store.move

        def move(self, source, target):
            original_move(self, source, target)
            if "/tables/structures/part-" in target:
                _die()

        storage.Store.move = move
    elif point == "before-cleanup":  # a batch's done mark written, its staged rows not yet deleted
        original_mark = outputs.CommitLog.mark_done

        def mark_done(self, seq):
            original_mark(self, seq)
            _die()

        outputs.CommitLog.mark_done = mark_done
    else:
        raise SystemExit(f"unknown kill point {point}")


if __name__ == "__main__":
    point, config = sys.argv[1], sys.argv[2]
    install(point)
    from mrseg_cohort.cli import app

    app(["run", config, "--no-progress"])

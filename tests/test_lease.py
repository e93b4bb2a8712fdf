"""One run per output: the lease, on a local folder and on the S3 server (If-None-Match: *)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.lease import LeaseHeldError, LeaseLost, OutputLease


@pytest.fixture(params=["file", "s3"])
def root(request, tmp_path) -> tuple[Store, str]:
    if request.param == "file":
        return Store(), str(tmp_path / "out")
    return request.getfixturevalue("s3_root")


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_exclusive_create_refuses_a_second_writer(root):
    store, uri = root
    target = join_uri(uri, "once.json")
    store.create_bytes(target, b"first")
    with pytest.raises(FileExistsError):
        store.create_bytes(target, b"second")
    assert store.read_bytes(target) == b"first"
    assert store.honours_exclusive_create(uri)


def test_a_second_run_is_refused_naming_the_holder(root):
    store, uri = root
    first = OutputLease(store, uri, "run-A")
    first.acquire()
    with pytest.raises(LeaseHeldError, match=r"in use by run run-A \(host .*, pid \d+\) since .* UTC, last heartbeat"):
        OutputLease(store, uri, "run-B").acquire()
    first.release()
    second = OutputLease(store, uri, "run-B")
    second.acquire()  # released: free again
    assert second.current().run_id == "run-B"
    second.release()


def test_a_lease_without_heartbeat_is_taken_over_and_its_holder_learns_it(root):
    store, uri = root
    clock = Clock()
    gone = OutputLease(store, uri, "run-gone", timeout_s=60, clock=clock)
    gone.acquire()
    clock.now += 30
    with pytest.raises(LeaseHeldError):  # 30 s without heartbeat: still live
        OutputLease(store, uri, "run-new", timeout_s=60, clock=clock).acquire()
    clock.now += 31
    new = OutputLease(store, uri, "run-new", timeout_s=60, clock=clock)
    previous = new.acquire()
    assert previous.run_id == "run-gone"
    with pytest.raises(LeaseLost):
        gone.check()
    with pytest.raises(LeaseLost):
        gone.heartbeat()
    gone.release()  # must not remove the new holder's lease
    assert new.current().run_id == "run-new"


def test_the_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(root):
    store, uri = root
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(done.stdout)
    lease = OutputLease(store, uri, "run-killed")
    lease.acquire()
    record = json.loads(store.read_bytes(lease._uri(lease.generation)))
    store.write_bytes(lease._uri(lease.generation), json.dumps({**record, "pid": dead_pid}).encode())
    taken = OutputLease(store, uri, "run-after").acquire()
    assert taken.run_id == "run-killed"


def test_of_runs_starting_together_exactly_one_holds_the_output(root):
    store, uri = root
    results: dict[str, str] = {}
    barrier = threading.Barrier(4)

    def start(name: str) -> None:
        barrier.wait()
        try:
            OutputLease(store, uri, name).acquire()
            results[name] = "holds"
        except LeaseHeldError:
            results[name] = "refused"

    threads = [threading.Thread(target=start, args=(f"run-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results.values()) == ["holds", "refused", "refused", "refused"]


def test_a_run_that_loses_the_race_names_the_winner_even_if_its_lease_is_not_readable_yet(tmp_path):
    """Seen on SeaweedFS under load: the exclusive create was refused, but the winner's lease file
    was not readable at once; the refusal said only 'another run' (no host, no since)."""
    winner = OutputLease(Store(), str(tmp_path / "out"), "run-winner")
    winner.acquire()

    class LaggingStore(Store):
        """The winner's file exists (the create is refused) but its first reads find nothing."""

        misses = 3

        def read_bytes(self, uri):
            if uri.endswith(".json") and self.misses:
                self.misses -= 1
                raise FileNotFoundError(uri)
            return super().read_bytes(uri)

    loser = OutputLease(LaggingStore(), str(tmp_path / "out"), "run-loser")
    loser._generations = lambda: []  # it listed before the winner's file was there
    with pytest.raises(LeaseHeldError) as caught:
        loser.acquire()
    message = str(caught.value)
    assert "was just taken by run run-winner" in message and "host" in message and "since" in message, message

"""Who holds an output: the lease, its fencing in the commit log, and shards; on a local folder and on
the S3 server (If-None-Match: *)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
import time

import pandas as pd
import pyarrow as pa
import pytest

from mrseg_cohort.errors import ConfigError
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.ledger.lease import LeaseHeldError, LeaseLost, OutputLease
from mrseg_cohort.ledger.log import shard_scope
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.tables import to_table


@pytest.fixture(params=["file", "s3"])
def root(request, tmp_path) -> tuple[Store, str]:
    if request.param == "file":
        return Store(), str(tmp_path / "out")
    return request.getfixturevalue("s3_root")


class Ages:
    """A stand-in for the store's clock: the age (s) of every lease file, set by the test."""

    def __init__(self, age: float = 0.0):
        self.age = age

    def __call__(self, uri: str) -> float:
        return self.age


def _rows(pid: str, model: str = "base", run_id: str = "") -> dict[str, pa.Table]:
    keys = {"participant_id": pid, "visit": "0", "contrast": "in", "model": model}
    return {"structures": to_table("structures", [{**keys, "structure_id": 1, "structure": "spleen"}]),
            "intensities": to_table("intensities", [{**keys, "structure_id": 1, "structure": "spleen"}]),
            "scans": to_table("scans", [{**keys, "status": "ok", "run_id": run_id}])}


def _publish(outputs: Outputs, lease: OutputLease, pid: str, batch: str) -> int | None:
    key = (pid, "0", "base")
    outputs.stage(key, _rows(pid, run_id=lease.run_id))
    return outputs.publish(batch, {key: outputs.read_staged(key)}, [], lease.fence, set())[0]


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
    with pytest.raises(LeaseHeldError, match=r"the output .* is in use by run run-A \(host .*, pid \d+\) since .* UTC"):
        OutputLease(store, uri, "run-B").acquire()
    first.release()
    second = OutputLease(store, uri, "run-B")
    second.acquire()  # released: free again
    assert second.current().run_id == "run-B" and second.generation == 2  # generations are not reused
    second.release()


def test_a_lease_without_heartbeat_is_taken_over_and_its_holder_learns_it(root):
    store, uri = root
    ages = Ages(30)
    gone = OutputLease(store, uri, "run-gone", timeout_s=60, age_of=ages)
    gone.acquire()
    with pytest.raises(LeaseHeldError):  # 30 s without heartbeat: still live
        OutputLease(store, uri, "run-new", timeout_s=60, age_of=ages).acquire()
    ages.age = 61
    new = OutputLease(store, uri, "run-new", timeout_s=60, age_of=ages)
    previous = new.acquire()
    assert previous.run_id == "run-gone"
    with pytest.raises(LeaseLost):
        gone.check()
    with pytest.raises(LeaseLost):
        gone.heartbeat()
    gone.release()  # must not touch the new holder's lease
    ages.age = 0
    assert new.current().run_id == "run-new"


def test_staleness_is_judged_on_the_stores_clock_not_a_skewed_reader_clock(root):
    """A second run whose clock is 150 s ahead took over a live run (it compared the holder's
    heartbeat time with its own clock)."""
    store, uri = root
    holder = OutputLease(store, uri, "run-live", timeout_s=60)
    holder.acquire()
    ahead = OutputLease(store, uri, "run-ahead", timeout_s=60, clock=lambda: time.time() + 150)
    with pytest.raises(LeaseHeldError, match="in use by run run-live"):
        ahead.acquire()
    holder.release()


def test_a_suspended_run_that_wakes_after_others_finished_cannot_publish(root):
    """Generations were reused after release and check() compared only the number: a run suspended
    past the timeout (lid closed, SIGSTOP) woke up 'holding' the lease of a third run and both
    published. Now generations are never reused, and publication is fenced by the commit log."""
    store, uri = root
    outputs = Outputs(store, uri)
    ages = Ages(0)
    suspended = OutputLease(store, uri, "run-1", timeout_s=60, age_of=ages)
    suspended.acquire()
    ages.age = 500  # it stopped heartbeating
    second = OutputLease(store, uri, "run-2", timeout_s=60, age_of=ages)
    second.acquire()
    assert _publish(outputs, second, "p2", "run-2-00001") is not None
    second.release()
    ages.age = 0
    third = OutputLease(store, uri, "run-3", timeout_s=60, age_of=ages)
    third.acquire()
    assert (suspended.generation, second.generation, third.generation) == (1, None, 3)
    with pytest.raises(LeaseLost, match="run-1 lost the output"):
        suspended.check()  # wakes up
    with pytest.raises(LeaseLost, match="to run run-2"):
        _publish(outputs, suspended, "p1", "run-1-00001")  # even without asking check() first
    assert _publish(outputs, third, "p3", "run-3-00001") is not None
    third.release()
    scans = pa.concat_tables([pa.parquet.read_table(pa.BufferReader(store.read_bytes(u)))
                              for u in store.list_files(outputs.table_uri("scans"), suffix=".parquet")])
    assert sorted(scans.column("participant_id").to_pylist()) == ["p2", "p3"]  # p1 is nowhere
    assert not store.list_files(join_uri(uri, "_work", "parts"))


def test_no_lease_file_means_lost(root):
    store, uri = root
    lease = OutputLease(store, uri, "run-A")
    lease.acquire()
    store.remove(lease._uri(lease.generation))
    with pytest.raises(LeaseLost, match="its lease file is gone"):
        lease.check()


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
            if "/_work/lease/" in uri and uri.endswith(".json") and self.misses:
                self.misses -= 1
                raise FileNotFoundError(uri)
            return super().read_bytes(uri)

    loser = OutputLease(LaggingStore(), str(tmp_path / "out"), "run-loser")
    loser.holders = lambda: []  # it looked before the winner's file was there
    loser._generations = lambda scope=None: []
    with pytest.raises(LeaseHeldError) as caught:
        loser.acquire()
    message = str(caught.value)
    assert "was just taken by run run-winner" in message and "host" in message and "since" in message, message


def test_shards_of_one_count_hold_the_output_together_and_other_counts_wait(root):
    store, uri = root
    shards = [OutputLease(store, uri, f"run-s{i}", scope=shard_scope(i, 2)) for i in range(2)]
    for lease in shards:
        lease.acquire()
    outputs = Outputs(store, uri)
    assert _publish(outputs, shards[0], "a", "run-s0-00001") and _publish(outputs, shards[1], "b", "run-s1-00001")
    assert _publish(outputs, shards[0], "c", "run-s0-00002")  # the other shard's entries do not fence it
    with pytest.raises(LeaseHeldError, match=r"shard 0/2 of the output .* is in use by run run-s0.*this run wants "
                                             r"shard 0/3"):
        OutputLease(store, uri, "run-three", scope=shard_scope(0, 3)).acquire()
    with pytest.raises(LeaseHeldError, match="shard ./2 of the output"):
        OutputLease(store, uri, "run-all").acquire()
    with pytest.raises(LeaseHeldError, match="shard 1/2 of the output .* in use by run run-s1"):
        OutputLease(store, uri, "run-s1-again", scope=shard_scope(1, 2)).acquire()
    for lease in shards:
        lease.release()
    other = OutputLease(store, uri, "run-three", scope=shard_scope(0, 3))
    other.acquire()  # none live: another count is allowed
    other.release()


def test_a_store_that_cannot_create_exclusively_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(Store, "honours_exclusive_create", lambda self, folder: False)
    with pytest.raises(ConfigError, match="does not refuse a second create") as caught:
        OutputLease(Store(), str(tmp_path / "out"), "run-A").acquire()
    assert "\n" not in str(caught.value)


def test_exclusive_create_on_a_file_system_without_hard_links(tmp_path, monkeypatch):
    """dxfuse, SMB and some FUSE mounts refuse link(): the create crashed."""
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    store = Store()
    target = str(tmp_path / "x" / "once.json")
    store.create_bytes(target, b"first")
    with pytest.raises(FileExistsError):
        store.create_bytes(target, b"second")
    assert store.read_bytes(target) == b"first" and store.honours_exclusive_create(str(tmp_path))
    assert not [p for p in os.listdir(tmp_path / "x") if p.startswith(".")]  # no temporary files left


@pytest.mark.parametrize("mode,honoured", [("501", False), ("409-once", True)])
def test_servers_that_refuse_or_race_conditional_writes(mode, honoured, tmp_path):
    """A server answering 501 to If-None-Match crashed honours_exclusive_create with a StorageError;
    AWS's 409 ConditionalRequestConflict (two conditional writes met) was not retried."""
    from conditional_s3 import ConditionalS3

    server = ConditionalS3(mode)
    try:
        store = Store(server.options(), backoff_s=0.01)
        assert store.honours_exclusive_create("s3://bucket/out/_work/lease") is honoured
        lease = OutputLease(store, "s3://bucket/out", "run-A")
        if honoured:
            assert server.conflicts == 1  # answered 409 once, then created
        else:
            with pytest.raises(ConfigError, match="does not refuse a second create"):
                lease.acquire()
    finally:
        server.stop()


def test_an_s3fs_without_exclusive_writes_is_named(tmp_path, monkeypatch):
    import fsspec.implementations.memory as memory

    from mrseg_cohort.io.storage import ExclusiveCreateUnsupported

    def old_pipe_file(self, path, value, **kwargs):  # s3fs before 2024.12: no mode argument
        if "mode" in kwargs:
            raise TypeError("_pipe_file() got an unexpected keyword argument 'mode'")

    monkeypatch.setattr(memory.MemoryFileSystem, "pipe_file", old_pipe_file)
    with pytest.raises(ExclusiveCreateUnsupported, match="install s3fs 2024.12 or newer"):
        Store().create_bytes("memory://bucket/x", b"1")
    assert not Store().honours_exclusive_create("memory://bucket")


def test_a_fenced_run_stays_fenced_at_its_next_publication(root):
    """Found in review: catch_up moved past the fencing entry, so the run's second try (its final
    flush) published; its own-scope check passed when the takeover was by another scope."""
    store, uri = root
    outputs = Outputs(store, uri)
    whole = OutputLease(store, uri, "run-whole", age_of=Ages(0))
    whole.acquire()
    shard = OutputLease(store, uri, "run-shard", scope=shard_scope(0, 2), age_of=Ages(1e6))
    shard.acquire()  # the whole-output run looked gone
    for attempt in (1, 2):
        with pytest.raises(LeaseLost, match="to run run-shard"):
            _publish(outputs, whole, f"p{attempt}", f"run-whole-0000{attempt}")
    assert not [e for e in outputs.log.all_entries() if e.get("run_id") == "run-whole" and e["kind"] == "batch"]


def test_runs_of_overlapping_scopes_that_start_together_the_earlier_stops_at_its_next_heartbeat(root):
    """Found in review: an unsharded run and a shard run starting together both took the output (their
    generation files live in different folders); the earlier learnt it only at its first publication."""
    store, uri = root
    whole = OutputLease(store, uri, "run-whole")
    whole.acquire()
    shard = OutputLease(store, uri, "run-shard", scope=shard_scope(1, 3))
    shard.holders = lambda: []  # it looked before the other's lease was there
    shard.acquire()
    with pytest.raises(LeaseLost, match="to run run-shard"):
        whole.heartbeat()
    shard.heartbeat()  # the later one holds


def test_a_restart_fences_the_runs_before_it_and_their_late_staged_rows_are_not_published(tmp_path):
    """Found in review: --restart deleted the commit log with the restarting run's own lease entry, so a
    suspended shard run woke unfenced and published rows of the old configuration into the new output."""
    from mrseg_cohort.config import ModelConfig
    from mrseg_cohort.pipeline.run import restart_output

    uri = str(tmp_path / "out")
    store = Store()
    outputs = Outputs(store, uri)
    old = OutputLease(store, uri, "run-old", scope=shard_scope(0, 2), age_of=Ages(0))
    old.acquire()
    assert _publish(outputs, old, "p1", "run-old-00001")
    restarting = OutputLease(store, uri, "run-restart", age_of=Ages(1e6))
    restarting.acquire()

    class Job:  # what restart_output reads of a job
        models = (ModelConfig(weights="w"),)
        contrasts = type("C", (), {"available": ("in",)})
        stitching = type("S", (), {"save_stitched": False})

    restart_output(outputs, Job, restarting)
    assert not (tmp_path / "out" / "tables" / "scans").exists() or \
        not list((tmp_path / "out" / "tables" / "scans").glob("*.parquet"))
    with pytest.raises(LeaseLost):  # the old run wakes: fenced
        _publish(outputs, old, "p2", "run-old-00002")
    outputs.stage(("p3", "0", "base"), _rows("p3", run_id="run-old"))  # what it finished after the restart
    restarting.release()
    report = Outputs(store, uri).recover(live_runs=set())
    assert report.unpublished == [] and not outputs.staged_keys()  # the old run's late rows: discarded


def test_a_run_of_the_earlier_version_is_seen_and_fenced(tmp_path):
    """Found in review: lease files of the earlier version (_work/lease/<generation>.json) were ignored:
    a new run took the output from a live old run, which went on publishing unfenced."""
    store, uri = Store(), str(tmp_path / "out")
    legacy = join_uri(uri, "_work", "lease", f"{3:012d}.json")
    store.write_bytes(legacy, json.dumps({"run_id": "run-old-version", "host": "elsewhere", "pid": 7,
                                          "started": 1.0, "heartbeat": 2.0, "generation": 3}).encode())
    with pytest.raises(LeaseHeldError, match="in use by run run-old-version"):
        OutputLease(store, uri, "run-new").acquire()
    new = OutputLease(store, uri, "run-new", age_of=Ages(1e6))
    new.acquire()  # gone: taken over, and a higher generation where the old version looks
    above = json.loads(store.read_bytes(join_uri(uri, "_work", "lease", f"{4:012d}.json")))
    assert above["run_id"] == "run-new" and above["generation"] == 4


def test_a_damaged_log_entry_is_named_with_what_to_do(tmp_path):
    from mrseg_cohort.errors import StorageError

    store, uri = Store(), str(tmp_path / "out")
    outputs = Outputs(store, uri)
    store.write_bytes(outputs.log.uri(1), b"")  # created, never written: its writer died
    with pytest.raises(StorageError, match=r"commit log entry 1 is empty or damaged .* delete that file") as caught:
        outputs.log.read(1, wait_damaged_s=0.1)
    assert outputs.log.uri(1) in str(caught.value)


def test_recovery_leaves_a_live_runs_batch_to_it_and_finishing_twice_is_harmless(tmp_path):
    """Found in review: a starting shard's recovery finished a live shard's batch beside it; the one that
    came second rebuilt a part from staged rows the other had deleted (FileNotFoundError)."""
    store, uri = Store(), str(tmp_path / "out")
    outputs = Outputs(store, uri)
    live = OutputLease(store, uri, "run-live", scope=shard_scope(0, 2))
    live.acquire()
    key = ("p1", "0", "base")
    outputs.stage(key, _rows("p1"))
    calls = []
    original = Outputs._finish
    Outputs._finish = lambda self, *args, **kw: calls.append(args)  # the live run stops right after its commit point
    try:
        seq, _ = outputs.publish("run-live-00001", {key: outputs.read_staged(key)}, [], live.fence, set())
    finally:
        Outputs._finish = original
    other = Outputs(store, uri)
    other.recover(live_runs={"run-live", "run-other"})
    assert not other.store.exists(other.log.uri(seq, ".done"))  # left to the live run
    outputs._finish(*calls[0])  # the live run finishes
    other._finish(*calls[0])  # and a second finish (a recovery that looked before) changes nothing
    assert len(pd.read_parquet(tmp_path / "out" / "tables" / "scans")) == 1

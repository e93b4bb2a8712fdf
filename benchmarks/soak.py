"""Chaos soak: SIGKILLs at random moments, S3 faults and hostile operator acts, with the output
ledger's invariants checked after every step.

    python benchmarks/soak.py --scans 60 --kills 50 --out benchmarks/results/soak.json

A phantom cohort (demo grid) on a local SeaweedFS server; the job reads and writes it through a
fault-injecting TCP proxy (tests/fault_proxy.py: connection resets, stalls past the client timeout,
503 SlowDown, answers cut short). Each step starts ``mrseg-cohort run`` and does one of:

- ``kill``: at a random moment SIGKILLs the driver, a Ray worker process or the raylet (a worker or
  the raylet as soon as one exists when the moment comes before it);
- ``suspend``: at a random moment SIGSTOPs the run (driver and every process below it) for longer
  than the lease timeout, runs a second run that takes the output over and finishes, then SIGCONTs
  the first: it must publish nothing more (it stops with exit 2, or ends having had nothing to
  publish);
- ``full``: every write of a batch's parts fails with ENOSPC, "No space left on device" (a full
  disk; s3fs's write patched in the run's processes) while the run publishes: the run stops with
  one line, nothing of the batch visible;
- ``skew``: while the run works, a second run whose clock is 150 s ahead (libfaketime) is started:
  it must be refused (exit 2), not take over;
- ``restart-copy``: the output is copied to a new prefix and ``run --restart`` is run on the copy:
  the original output must not change (every object's ETag the same);
- ``shards``: two runs of one output at once, ``--shard 0/2`` and ``--shard 1/2``, one of them
  SIGKILLed at a random moment: the other finishes.

Each run is given the committed scans plus ``--per-step`` more (``--first-n``), so that faults fall
while scans are in flight; should the cohort be complete before the last kill, the job goes on into
a fresh output. After every step the output is read directly (not through the proxy) and checked:

- every scan (and model) at most once in ``scans``, every (scan, structure) at most once in
  ``structures`` and ``intensities``; every committed scan has all its structure rows;
- every object under ``tables/`` is a complete Parquet file (no partial or temporary object);
- no batch visible in one table and not in another (a batch's ``scans`` part only with its
  ``structures`` and ``intensities`` parts; a partial batch only while its log entry is not done);
- every label file a ``scans`` row names is readable and its voxel counts are the rows';
- no committed scan's label file was written again (its LastModified is unchanged): no network
  run is repeated after its commit;
- nothing outside the output changed (the input and a sentinel prefix: every object's ETag).

A last run without faults and kills must finish the cohort. Results: kills by target, operator acts
by kind, faults by kind, runs, violations (must be 0).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TARGETS = ("driver", "worker", "raylet")
ACTS = ("suspend", "full", "skew", "restart-copy", "shards")
"""Operator acts, besides kills (module docstring)."""
LEASE = {"lease_timeout_s": 20, "lease_heartbeat_s": 4}
"""A short lease timeout, so that a suspended run is taken over within a step."""

RAY_ENV = {"RAY_gcs_rpc_server_reconnect_timeout_s": "15"}
"""A driver whose raylet was killed gives up on its Ray after 15 s instead of Ray's 60 (shorter
steps, the same outcome: the run fails and the next step re-runs it)."""


def _processes(root_pid: int) -> dict[str, list[int]]:
    from procs import command_line, descendants

    found: dict[str, list[int]] = {"worker": [], "raylet": []}
    for pid in descendants(root_pid):
        line = command_line(pid)
        if line.startswith("ray::"):
            found["worker"].append(pid)
        elif "raylet/raylet" in line:
            found["raylet"].append(pid)
    return found


class Checker:
    """The invariants of the module docstring, on the output read without the proxy."""

    def __init__(self, store, root: str, lagged: set[str], n_structures: int = 40):
        self.store, self.root, self.n_structures = store, root.rstrip("/"), n_structures
        self.label_times: dict[str, object] = {}
        self.lagged = lagged
        """Objects listed but not found on a first read, found on a later one (reported, not violations)."""

    READS = 5

    def _table(self, name: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        parts, bad = [], []
        for uri in self.store.list_files(f"{self.root}/tables/{name}"):
            for attempt in range(self.READS):
                try:
                    parts.append(pq.read_table(io.BytesIO(self.store.read_bytes(uri))))
                    break
                except FileNotFoundError:  # listed but not found: a read-after-write lag of the server (this
                    # was s3fs's listings cache, now off in Store: such objects stayed unreadable for good)
                    self.lagged.add(uri)
                    time.sleep(2.0)
                except Exception as err:  # noqa: BLE001 - any unreadable object is a violation
                    bad.append(f"{uri}: {type(err).__name__}")
                    break
            else:
                bad.append(f"{uri}: listed, but not found in {self.READS} reads over {2 * self.READS} s")
        return (pa.concat_tables(parts, promote_options="default").to_pandas() if parts else None), bad

    def check(self) -> tuple[list[str], int]:
        """(violations, committed scans)."""
        import numpy as np

        from mrseg_cohort.io.nifti import read_labels
        from mrseg_cohort.ledger.outputs import Outputs

        problems: list[str] = []
        tables = {}
        for name in ("scans", "structures", "intensities", "failures"):
            tables[name], bad = self._table(name)
            problems += [f"unreadable table object {b}" for b in bad]
        scans, structures = tables["scans"], tables["structures"]
        if scans is None:
            return problems, 0
        ok = scans[scans.status == "ok"]
        for name, keys in (("scans", ["participant_id", "visit", "model"]),
                           ("structures", ["participant_id", "visit", "model", "structure_id"]),
                           ("intensities", ["participant_id", "visit", "model", "structure_id", "image_contrast"])):
            frame = tables[name]
            if frame is not None and frame.duplicated(keys).any():
                problems.append(f"{name}: {int(frame.duplicated(keys).sum())} duplicated rows")
        problems += self._batches_whole()
        per_scan = structures.groupby(["participant_id", "visit", "model"]).size() if structures is not None else {}
        fs, _ = self.store.fs_and_path(self.root)
        outputs = Outputs(self.store, self.root)
        for row in ok.itertuples():
            label_uri = outputs.resolve(row.label_uri)
            if per_scan.get((row.participant_id, row.visit, row.model), 0) != self.n_structures:
                problems.append(f"{row.participant_id}/{row.visit}: structure rows missing")
            try:
                labels = read_labels(self.store, label_uri).array
            except Exception as err:  # noqa: BLE001
                problems.append(f"{label_uri} unreadable: {type(err).__name__}")
                continue
            rows = structures[(structures.participant_id == row.participant_id) & (structures.visit == row.visit)
                              & (structures.model == row.model)].set_index("structure_id")["n_voxels"]
            counts = np.bincount(labels.ravel(), minlength=self.n_structures + 1)
            if not (rows.to_numpy() == counts[rows.index]).all():
                problems.append(f"{label_uri}: voxel counts differ from its rows")
            modified = fs.info(label_uri.split("://", 1)[-1]).get("LastModified")
            if self.label_times.setdefault(label_uri, modified) != modified:
                problems.append(f"{label_uri} written again after its scan was committed")
        return problems, len(ok)

    def _batches_whole(self) -> list[str]:
        """A batch's scans part only beside its structures and intensities parts; a partial batch
        only while its log entry is not marked done (a move cut by a kill, finished by the next run)."""
        from mrseg_cohort.ledger.log import CommitLog

        parts = {t: {u.rsplit("/part-", 1)[-1][:-8] for u in self.store.list_files(f"{self.root}/tables/{t}")}
                 for t in ("structures", "intensities", "scans")}
        log = CommitLog(self.store, self.root)
        numbers, done = log.listing()
        finished = {log.read(n).get("batch") for n in done if n in numbers}
        problems = []
        for batch in set().union(*parts.values()):
            holding = {t for t, batches in parts.items() if batch in batches}
            if len(holding) == 3:
                continue
            if "scans" in holding:
                problems.append(f"batch {batch}: in scans but not in {sorted({'structures', 'intensities'} - holding)}")
            elif batch in finished:
                problems.append(f"batch {batch}: done, but only in {sorted(holding)}")
        return problems


class Unchanged:
    """Every object under the given prefixes and its ETag, to check that nothing outside the output
    changes."""

    def __init__(self, store, prefixes: list[str]):
        self.store, self.prefixes = store, prefixes
        self.before = self._snapshot()

    def _snapshot(self) -> dict[str, str]:
        fs, _ = self.store.fs_and_path(self.prefixes[0])
        out = {}
        for prefix in self.prefixes:
            for uri in self.store.list_files(prefix):
                out[uri] = str(fs.info(uri.split("://", 1)[-1]).get("ETag"))
        return out

    def changes(self) -> list[str]:
        now = self._snapshot()
        changed = sorted(u for u in set(now) | set(self.before) if now.get(u) != self.before.get(u))
        return [f"outside the output, {u} was {'deleted' if u not in now else 'written'}" for u in changed[:10]]


def run_soak(scans: int, kills: int, fault_rate: float, kinds: tuple[str, ...], seed: int, max_delay_s: float,
             work: Path, per_step: int = 2, acts: tuple[str, ...] = ACTS, act_rate: float = 0.3,
             acts_once: bool = False) -> dict:
    """Steps until ``kills`` SIGKILLs were made; a share ``act_rate`` of the steps is an operator act
    among ``acts`` instead (each act at least once when there are steps enough; with ``acts_once``
    each exactly once, the short soak of the test tier)."""
    if act_rate >= 1 and not acts_once:
        raise ValueError("an act rate of 1 never kills: give acts_once, or a rate below 1")
    import yaml

    from fault_proxy import FaultProxy
    from procs import kill_matching
    from s3_server import start_weed

    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort

    rng = random.Random(seed)
    server = start_weed(work / "s3")
    DIRECT_ENDPOINT[0] = server.endpoint_url
    proxy = FaultProxy(int(server.endpoint_url.rsplit(":", 1)[1]), rate=fault_rate, kinds=kinds, stall_s=6.0,
                       seed=seed).start()
    direct = Store(server.options())
    prefix = f"s3://{server.bucket}/soak-{uuid.uuid4().hex[:6]}"
    write_phantom_cohort(direct, f"{prefix}/in", PhantomSpec(participants=scans, seed=seed))
    direct.write_bytes(f"{prefix}/sentinel/not-the-tools.txt", b"a user's file beside the output")
    outside = Unchanged(direct, [f"{prefix}/in", f"{prefix}/sentinel"])
    storage = {"endpoint_url": proxy.endpoint_url, "key": server.key, "secret": server.secret, "timeout_s": 3,
               "request_attempts": 2}
    lagged: set[str] = set()  # objects listed before they could be read, over all outputs (reported)

    def config_for(out: str, name: str = "job.yaml") -> Path:
        path = work / name
        path.write_text(yaml.safe_dump({
            "cohort": {"name": "soak", "layout": "phantom"},
            "input": {"uri": f"{prefix}/in", "storage": storage},
            "model": {"weights": "bundled:demo"},
            "output": {"uri": out, "storage": storage, "commit_every": 3, "commit_interval_s": 20, **LEASE},
            "resources": {"cpu_segmenters": 1, "threads_per_segmenter": 2, "memory_gb_per_scan": 0.3,
                          # a run whose raylet was killed while its actor started waits this long
                          "actor_start_timeout_s": 120}}))
        return path

    outputs = 1
    out = f"{prefix}/out-{outputs}"
    config = config_for(out)
    checker = Checker(direct, out, lagged)
    committed = 0
    killed: Counter = Counter()
    acted: Counter = Counter()
    results: dict = {"steps": [], "violations": []}
    t0 = time.monotonic()
    try:
        while sum(killed.values()) < kills:
            kill_steps = sum(1 for step in results["steps"] if step.get("act") == "kill")
            if kill_steps >= 6 * kills:  # runs that end before their kill, again and again (acts not counted)
                results["violations"].append(f"{kill_steps} kill steps for {sum(killed.values())} kills: "
                                             "the runs make no progress")
                break
            copy_pending = acts_once and "restart-copy" in acts and not acted["restart-copy"]
            if committed == scans and not copy_pending:  # the cohort is done before the last kill: a fresh output
                outputs += 1
                out = f"{prefix}/out-{outputs}"
                config, checker, committed = config_for(out), Checker(direct, out, lagged), 0
            first_n = min(scans, committed + per_step)
            possible = [a for a in acts if a != "restart-copy" or committed]  # a copy of something
            missing = [a for a in possible if not acted[a]]
            if acts_once:  # each act once; a copy as soon as there is something to copy
                possible = missing = sorted(missing, key=lambda a: a != "restart-copy")
            act = (missing[0] if missing else rng.choice(possible)) if possible and rng.random() < act_rate \
                else "kill"
            if act == "kill":
                step = _step(config, rng, max_delay_s, killed, kill_matching, first_n=first_n)
            elif act == "suspend":
                step = _suspended(config, rng, max_delay_s, kill_matching, first_n)
            elif act == "full":
                step = _full_disk(config, kill_matching, first_n, work)
            elif act == "skew":
                step = _skewed(config, rng, kill_matching, first_n, work)
            elif act == "shards":
                step = _shards_one_killed(config, rng, max_delay_s, kill_matching, first_n)
            else:
                step = _restart_copy(direct, config_for, out, outputs, kill_matching, lagged)
            if act != "kill":
                acted[act] += 1
            problems, committed = checker.check()
            problems += outside.changes() + step.pop("problems", [])
            step.update(act=act, output=outputs, committed=committed, violations=problems)
            results["steps"].append(step)
            results["violations"] += problems
            print(json.dumps(step), flush=True)
        proxy.enabled = False
        final = _step(config, rng, 0, killed, kill_matching, kill=False)
        problems, committed = checker.check()
        final.update(committed=committed, violations=problems + outside.changes())
        results["final"] = final
        results["violations"] += final["violations"]
        if committed != scans:
            results["violations"].append(f"the last run left {scans - committed} of {scans} scans uncommitted")
    finally:
        proxy.stop()
        server.stop()
    results.update(kills=dict(killed), acts=dict(acted), faults=dict(proxy.counts), runs=len(results["steps"]) + 1,
                   outputs=outputs, listed_before_readable=sorted(lagged),
                   hung_runs=sum(s.get("hung", False) for s in results["steps"]),
                   scans=scans, seconds=time.monotonic() - t0, n_violations=len(results["violations"]))
    return results


def _start(config: Path, first_n: int | None, tmpdir: str, extra: list[str] = (), env: dict | None = None,
           stdout=subprocess.DEVNULL) -> subprocess.Popen:
    limit = ["--first-n", str(first_n)] if first_n else []
    return subprocess.Popen([sys.executable, "-m", "mrseg_cohort.cli", "run", str(config), "--no-progress", *limit,
                             *extra], cwd=REPO, env={**os.environ, **RAY_ENV, "RAY_TMPDIR": tmpdir, **(env or {})},
                            stdout=stdout, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> tuple[int, str, bool]:
    """(exit status, stderr, hung): a run that no longer moves is recorded, killed and re-run."""
    try:
        _, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stderr, False
    except subprocess.TimeoutExpired:
        proc.kill()
        _, stderr = proc.communicate()
        return proc.returncode, stderr, True


def _last(stderr: str) -> str:
    return (stderr.strip().splitlines() or [""])[-1][:200]


def _step(config: Path, rng: random.Random, max_delay_s: float, killed: Counter, kill_matching,
          kill: bool = True, first_n: int | None = None) -> dict:
    """One run (of the first ``first_n`` participants), with a SIGKILL at a random moment (one of
    :data:`TARGETS`, as soon as it exists) unless ``kill`` is False."""
    tmpdir = f"/tmp/soak{uuid.uuid4().hex[:6]}"
    proc = _start(config, first_n, tmpdir)
    target, victim = (rng.choice(TARGETS), None) if kill else ("none", None)
    delay = rng.uniform(1.0, max_delay_s) if kill else 0.0
    deadline = time.monotonic() + delay
    try:
        while kill and proc.poll() is None and victim is None:
            if time.monotonic() >= deadline:
                pids = [proc.pid] if target == "driver" else _processes(proc.pid)[target]
                if pids:
                    victim = rng.choice(pids)
                    os.kill(victim, signal.SIGKILL)
                    killed[target] += 1
            time.sleep(0.2)
        code, stderr, hung = _finish(proc)
    finally:
        kill_matching(tmpdir)
    return {"target": target if victim else "none", "delay_s": round(delay, 1), "exit": code, "hung": hung,
            "last_line": _last(stderr)}


def _signal_tree(pid: int, sig: int) -> None:
    from procs import descendants

    for p in [pid, *descendants(pid)]:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _suspended(config: Path, rng: random.Random, max_delay_s: float, kill_matching, first_n: int) -> dict:
    """SIGSTOP a run past its lease timeout; a second run takes over and finishes; SIGCONT the
    first: it must publish nothing after the second run's lease entry."""
    import yaml

    job = yaml.safe_load(config.read_text())
    first_dir, second_dir = f"/tmp/soak{uuid.uuid4().hex[:6]}", f"/tmp/soak{uuid.uuid4().hex[:6]}"
    first = _start(config, first_n, first_dir)
    delay = rng.uniform(1.0, max_delay_s / 2)
    problems: list[str] = []
    try:
        _wait_for_a_holder(config, first)  # suspended while it holds the output: in its scans
        time.sleep(delay)
        if first.poll() is not None:  # it ended before the moment: nothing to suspend
            code, stderr, hung = _finish(first)
            return {"delay_s": round(delay, 1), "exit": code, "hung": hung, "last_line": _last(stderr),
                    "suspended": False}
        _signal_tree(first.pid, signal.SIGSTOP)
        time.sleep(LEASE["lease_timeout_s"] + 8)
        before = max((e["seq"] for e in _log_entries(job)), default=0)
        second_code, second_err, second_hung = _finish(_start(config, first_n, second_dir))
        _signal_tree(first.pid, signal.SIGCONT)
        code, stderr, hung = _finish(first)
    finally:
        kill_matching(first_dir)
        kill_matching(second_dir)
    entries = _log_entries(job)
    taking = [e for e in entries if e.get("kind") == "lease" and e["seq"] > before]
    if taking:
        epoch, holder = taking[0]["seq"], taking[0]["run_id"]
        late = [e["batch"] for e in entries if e.get("kind") == "batch" and e["seq"] > epoch and e["run_id"] != holder]
        if late:
            problems.append(f"a suspended run published after it was taken over: {late}")
    if second_code not in (0, 1):
        problems.append(f"the run that took over ended with {second_code}: {_last(second_err)}")
    return {"delay_s": round(delay, 1), "exit": code, "hung": hung or second_hung, "last_line": _last(stderr),
            "takeover_exit": second_code, "suspended": True, "problems": problems}


def _log_entries(job: dict) -> list[dict]:
    """The output's commit log, read directly (not through the proxy)."""
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.ledger.log import CommitLog

    options = {k: v for k, v in job["output"]["storage"].items() if k in ("key", "secret")}
    options["endpoint_url"] = DIRECT_ENDPOINT[0]
    return CommitLog(Store(options), job["output"]["uri"]).entries()


DIRECT_ENDPOINT: list[str] = [""]
"""The S3 server's own address (set by run_soak): checks read around the fault proxy."""


FULL_DISK = """\
# the soak's full disk: every write of a batch's parts fails with ENOSPC (installed in every process)
import errno

import s3fs

_pipe_file = s3fs.S3FileSystem._pipe_file


async def _full(self, path, data, *args, **kwargs):
    if "/_work/parts/" in path:
        raise OSError(errno.ENOSPC, "No space left on device", path)
    return await _pipe_file(self, path, data, *args, **kwargs)


s3fs.S3FileSystem._pipe_file = _full
"""


def _full_disk(config: Path, kill_matching, first_n: int, work: Path) -> dict:
    """Every write of a batch's parts fails with ENOSPC for the whole run (a sitecustomize in the
    run's processes): the run stops with one line naming the file, nothing of the batch visible."""
    hook = work / "full-disk"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(FULL_DISK)
    tmpdir = f"/tmp/soak{uuid.uuid4().hex[:6]}"
    env = {"PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    try:
        code, stderr, hung = _finish(_start(config, first_n, tmpdir, env=env))
    finally:
        kill_matching(tmpdir)
    problems = []
    if code not in (0, 2) or (code == 2 and "No space left on device" not in _last(stderr)):
        problems.append(f"a full disk while publishing ended the run with {code}: {_last(stderr)}")
    return {"exit": code, "hung": hung, "last_line": _last(stderr), "problems": problems}


def _skewed(config: Path, rng: random.Random, kill_matching, first_n: int, work: Path) -> dict:
    """A second run with its clock 150 s ahead while the first works: refused, not a takeover."""
    first_dir, second_dir = f"/tmp/soak{uuid.uuid4().hex[:6]}", f"/tmp/soak{uuid.uuid4().hex[:6]}"
    first = _start(config, first_n + 1, first_dir)  # one scan more: it works while the second starts
    problems: list[str] = []
    try:
        _wait_for_a_holder(config, first)
        faked = _faketime_env()
        if faked is None:
            problems.append("libfaketime is not installed (Debian's faketime): the skewed-clock act cannot run")
            second_code, second_err = None, ""
        elif first.poll() is None:
            second_code, second_err, _ = _finish(_start(config, first_n, second_dir, env=faked), timeout=300)
        else:
            second_code, second_err = None, ""
        code, stderr, hung = _finish(first)
        # refused while the first held the output, or started after it had ended: never a takeover
        if "took over" in second_err or "lost the output" in stderr:
            problems.append(f"a run with its clock 150 s ahead took over a live run ({second_code}): "
                            f"{_last(second_err)} / {_last(stderr)}")
    finally:
        kill_matching(first_dir)
        kill_matching(second_dir)
    return {"exit": code, "hung": hung, "last_line": _last(stderr), "skewed_exit": second_code,
            "skewed_refused": "in use by" in second_err, "skewed_line": _last(second_err), "problems": problems}


def _wait_for_a_holder(config: Path, run: subprocess.Popen, timeout_s: float = 120) -> None:
    """Until the output has a lease entry of ``run`` in its log (it holds the output), or it ended."""
    import yaml

    job = yaml.safe_load(config.read_text())
    before = max((e["seq"] for e in _log_entries(job)), default=0)
    deadline = time.monotonic() + timeout_s
    while run.poll() is None and time.monotonic() < deadline:
        if any(e.get("kind") == "lease" and e["seq"] > before for e in _log_entries(job)):
            return
        time.sleep(0.5)


def _faketime_env() -> dict | None:
    for lib in ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/aarch64-linux-gnu/faketime/"
                "libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"):
        if os.path.exists(lib):
            return {"LD_PRELOAD": lib, "FAKETIME": "+150", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
                    "FAKETIME_DONT_RESET": "1"}
    return None


def _shards_one_killed(config: Path, rng: random.Random, max_delay_s: float, kill_matching, first_n: int) -> dict:
    """Shards 0/2 and 1/2 of the output run at once; one is SIGKILLed at a random moment."""
    dirs = [f"/tmp/soak{uuid.uuid4().hex[:6]}" for _ in range(2)]
    runs = [_start(config, first_n + 1, d, extra=["--shard", f"{i}/2"]) for i, d in enumerate(dirs)]
    victim = rng.randrange(2)
    delay = rng.uniform(1.0, max_delay_s)
    try:
        deadline = time.monotonic() + delay
        while runs[victim].poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        if runs[victim].poll() is None:
            runs[victim].kill()
        results = [_finish(run) for run in runs]
    finally:
        for d in dirs:
            kill_matching(d)
    survivor = results[1 - victim]
    problems = [] if survivor[0] in (0, 1) else [f"shard {1 - victim}/2 ended with {survivor[0]} while shard {victim}/2 "
                                                 f"was killed: {_last(survivor[1])}"]
    return {"delay_s": round(delay, 1), "killed_shard": victim, "exit": survivor[0], "hung": survivor[2],
            "last_line": _last(survivor[1]), "problems": problems}


def _restart_copy(store, config_for, out: str, generation: int, kill_matching, lagged: set[str]) -> dict:
    """``run --restart`` on a copy of the output: the original must not change."""
    copy = f"{out}-copy"
    fs, _ = store.fs_and_path(out)
    for uri in store.list_files(out):
        target = copy + uri[len(out):]
        fs.copy(uri.split("://", 1)[-1], target.split("://", 1)[-1])
    original = Unchanged(store, [out])
    tmpdir = f"/tmp/soak{uuid.uuid4().hex[:6]}"
    try:
        code, stderr, hung = _finish(_start(config_for(copy, f"copy-{generation}.yaml"), 1, tmpdir,
                                            extra=["--restart"]))
    finally:
        kill_matching(tmpdir)
    problems = original.changes()
    copied, _ = Checker(store, copy, lagged).check()
    problems += [f"the restarted copy: {p}" for p in copied]
    if code not in (0, 1):
        problems.append(f"run --restart on a copied output ended with {code}: {_last(stderr)}")
    fs.rm(copy.split("://", 1)[-1], recursive=True)
    return {"exit": code, "hung": hung, "last_line": _last(stderr), "problems": problems}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=int, default=60)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--fault-rate", type=float, default=0.05, help="share of connections given a fault")
    ap.add_argument("--kinds", default="reset,stall,slowdown,truncate")
    ap.add_argument("--max-delay-s", type=float, default=50.0,
                    help="latest moment of a kill after a run starts (a run of 2 scans takes 40-70 s here: most "
                         "kills fall into Ray's start, the actor's start or the scans; some runs end first)")
    ap.add_argument("--per-step", type=int, default=2, help="scans each run is given beyond the committed ones")
    ap.add_argument("--acts", default=",".join(ACTS), help="operator acts besides kills (empty: kills only)")
    ap.add_argument("--act-rate", type=float, default=0.3, help="share of the steps that are an operator act")
    ap.add_argument("--seed", type=int, default=2026)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mrseg-soak-") as work:
        results = run_soak(args.scans, args.kills, args.fault_rate, tuple(args.kinds.split(",")), args.seed,
                           args.max_delay_s, Path(work), args.per_step, tuple(a for a in args.acts.split(",") if a),
                           args.act_rate)
    results["args"] = vars(args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1, default=str))
    print(json.dumps({k: results[k] for k in ("kills", "acts", "faults", "runs", "outputs", "n_violations",
                                              "seconds")}))
    sys.exit(1 if results["n_violations"] else 0)


if __name__ == "__main__":
    main()

"""Shards of one cohort (mrseg_cohort.sharding): disjoint, covering, stable, and taken from a SLURM array."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrseg_cohort.manifest import ScanSource
from mrseg_cohort.sharding import Shard, select, shard_from_environment, shard_of

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=12)
scans = st.lists(st.tuples(ids, st.sampled_from(["0", "1", "2", "3", "2_0"])), unique=True, max_size=60)


def _source(pid: str, visit: str) -> ScanSource:
    return ScanSource(pid, visit, "phantom", "MRI", (("in", (f"/in/{pid}/{visit}.nii.gz",)),))


@settings(max_examples=200, deadline=None)
@given(keys=scans, count=st.integers(1, 17), seed=st.randoms(use_true_random=False))
def test_shards_are_disjoint_and_cover_the_manifest_in_any_order(keys, count, seed):
    sources = [_source(p, v) for p, v in keys]
    shuffled = list(sources)
    seed.shuffle(shuffled)
    parts = [select(sources, Shard(i, count)) for i in range(count)]
    assert sorted(s.key for part in parts for s in part) == sorted(s.key for s in sources)  # cover, no repeats
    for i, part in enumerate(parts):  # the same scans whatever order the input lists them in
        assert {s.key for s in select(shuffled, Shard(i, count))} == {s.key for s in part}
        assert [s.key for s in part] == [s.key for s in sources if s in part]  # input order kept


def test_shard_of_is_sha256_of_the_pair_not_pythons_hash():
    key = json.dumps(["1002532", "2"], separators=(",", ":")).encode()
    expected = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") % 7
    assert shard_of("1002532", "2", 7) == expected
    # another interpreter (another PYTHONHASHSEED) gives the same shards
    code = "from mrseg_cohort.sharding import shard_of; print([shard_of(str(i), '2', 7) for i in range(50)])"
    runs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONHASHSEED": seed}).stdout for seed in ("1", "2")}
    assert runs == {str([shard_of(str(i), "2", 7) for i in range(50)]) + "\n"}


def test_the_pair_is_encoded_unambiguously():
    # "1_2" + "0" and "1" + "2_0" are different scans; a joined string would make them one key
    assert any(shard_of("1_2", "0", n) != shard_of("1", "2_0", n) for n in range(2, 40))


def test_shards_are_roughly_even():
    counts = [0] * 4
    for eid in range(1_000_000, 1_004_000):
        counts[shard_of(str(eid), "2", 4)] += 1
    assert min(counts) > 900 and max(counts) < 1100, counts


@pytest.mark.parametrize("text, shard", [("0/1", Shard(0, 1)), ("2/3", Shard(2, 3)), (" 1 / 4 ", Shard(1, 4))])
def test_parse(text, shard):
    assert Shard.parse(text) == shard and str(shard) == text.replace(" ", "")


@pytest.mark.parametrize("text, words", [("3/3", "0..2"), ("0/0", "at least 1"), ("-1/3", "expected I/N"),
                                         ("1", "expected I/N"), ("a/b", "expected I/N"), ("", "expected I/N")])
def test_parse_refuses_bad_values_in_one_line(text, words):
    with pytest.raises(ValueError) as err:
        Shard.parse(text)
    assert words in str(err.value) and "\n" not in str(err.value) and f"--shard {text!r}" in str(err.value)


def test_no_array_no_shard():
    assert shard_from_environment({}) is None
    assert shard_from_environment({"SLURM_JOB_ID": "5"}) is None


@pytest.mark.parametrize("env, shard", [
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0",
      "SLURM_ARRAY_TASK_MAX": "2"}, Shard(2, 3)),
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "3"}, Shard(0, 3)),  # --array=1-3
    ({"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "10"}, Shard(2, 4)),
])
def test_shard_from_a_slurm_array(env, shard, caplog):
    with caplog.at_level(logging.INFO, logger="mrseg_cohort.sharding"):
        assert shard_from_environment(env) == shard
    assert f"shard {shard} taken from the SLURM array" in caplog.text


@pytest.mark.parametrize("env, words", [
    ({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "5"}, "not one contiguous range"),  # --array=1,3,5 or 1-5:2
    ({"SLURM_ARRAY_TASK_ID": "x", "SLURM_ARRAY_TASK_COUNT": "3"}, "SLURM_ARRAY_TASK_ID='x'"),
    ({"SLURM_ARRAY_TASK_ID": "1"}, "SLURM_ARRAY_TASK_COUNT is not"),
    ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "0"}, "0..2"),
])
def test_a_slurm_array_that_cannot_be_sharded_is_one_line(env, words):
    with pytest.raises(ValueError) as err:
        shard_from_environment(env)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_a_one_task_array_warns_that_it_runs_everything(caplog):
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_MAX": "1"}
    assert shard_from_environment(env) == Shard(0, 1)
    assert "pass --shard I/N" in caplog.text


@pytest.mark.parametrize("index, count", [(True, 2), (0, 2.0), (1, 1)])
def test_shard_checks_its_fields(index, count):
    with pytest.raises(ValueError):
        Shard(index, count)


# -- the command line: run --shard, plan --shard, status --shard ---------------------------------------------
def _cli(*args: str, env: dict | None = None):
    from typer.testing import CliRunner

    from mrseg_cohort.cli import app

    return CliRunner().invoke(app, list(args), env=env)


@pytest.fixture
def two_scan_job(tmp_path, phantom_cohort, demo_model):
    """The demo phantoms' first two participants (2000000 in shard 0/2, 2000001 in shard 1/2)."""
    from conftest import write_job_yaml

    return write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(tmp_path / "out"), limits={"first_n": 2})


@pytest.mark.parametrize("args, env, words", [
    (("--shard", "2/2"), {}, "--shard '2/2': shard index must be 0..1"),
    (("--shard", "1of2"), {}, "--shard '1of2': expected I/N"),
    ((), {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "2",
          "SLURM_ARRAY_TASK_MAX": "4"}, "not one contiguous range of task ids"),
])
def test_run_refuses_a_bad_shard_in_one_line_before_any_work(args, env, words, two_scan_job, tmp_path):
    result = _cli("run", str(two_scan_job), "--no-progress", *args, env=env)
    assert result.exit_code == 2 and words in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and words in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_plan_and_status_per_shard_add_up_to_the_whole(two_scan_job):
    whole = _cli("plan", str(two_scan_job), "--no-sizes")
    assert whole.exit_code == 0 and "manifest: 2 scans of 2 participants" in whole.output, whole.output
    for i in range(2):
        part = _cli("plan", str(two_scan_job), "--no-sizes", "--shard", f"{i}/2")
        assert part.exit_code == 0 and f"manifest shard {i}/2: 1 scans of 1 participants" in part.output, part.output
        status = _cli("status", str(two_scan_job), "--shard", f"{i}/2")
        assert status.exit_code == 0 and f"shard {i}/2: 0 done, 0 finished (publishing), 0 failed, 1 pending, of 1 " \
            "scans" in status.output, status.output
    empty = _cli("plan", str(two_scan_job), "--no-sizes", "--shard", "2/7")  # neither scan hashes to 2 of 7
    assert empty.exit_code == 0 and "manifest shard 2/7: 0 scans" in empty.output, empty.output


@pytest.mark.slow  # two real runs: 3.7 min under a load of 12 on this 2-core machine
def test_two_shards_one_after_the_other_fill_one_output_exactly_once(two_scan_job, ray_local, tmp_path):
    """Shard 0/2 by --shard, shard 1/2 from a SLURM array's environment; then an empty shard: nothing to do."""
    from exactly_once import assert_each_scan_once

    first = _cli("run", str(two_scan_job), "--no-progress", "--shard", "0/2")
    assert first.exit_code == 0 and "(shard 0/2, " in first.output and "1 done, 0 failed" in first.output, first.output
    assert list(pd.read_parquet(tmp_path / "out" / "tables" / "scans")["participant_id"]) == ["2000000"]
    env = {"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1",
           "SLURM_ARRAY_TASK_MAX": "2"}  # --array=1-2, its second task
    second = _cli("run", str(two_scan_job), "--no-progress", env=env)  # the CLI's log lines go to its stderr
    assert second.exit_code == 0 and "(shard 1/2, " in second.output and "1 done, 0 failed" in second.output
    assert "shard 1/2 taken from the SLURM array (task 2 of 1-2)" in second.output, second.output
    assert "shard 1/2 holds 1 of the manifest's 2 scans" in second.output
    assert_each_scan_once(tmp_path / "out", 2)
    empty = _cli("run", str(two_scan_job), "--no-progress", "--shard", "2/7")
    assert empty.exit_code == 0 and "0 done, 0 failed, 0 already done" in empty.output, empty.output
    assert_each_scan_once(tmp_path / "out", 2)


# -- shard runs at the same time on one output (each holds its shard's lease) ------------------------------


def _start(config, *args: str, ray_tmp: str):
    import os

    from conftest import REPO

    log = open(f"{ray_tmp}.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "mrseg_cohort.cli", "run", str(config), "--no-progress", *args],
                            cwd=REPO, env={**os.environ, "RAY_TMPDIR": ray_tmp}, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    return proc, log


def _finish(proc, log, timeout: float = 900) -> tuple[int, str]:
    from procs import kill_matching

    try:
        code = proc.wait(timeout=timeout)
    finally:
        kill_matching(log.name.removesuffix(".log"))
    log.seek(0)
    return code, log.read()


@pytest.mark.slow
@pytest.mark.parametrize("where", ["file", "s3"])
def test_two_shard_runs_at_once_publish_into_one_output_exactly_once(where, request, tmp_path, phantom_cohort,
                                                                    demo_model):
    import uuid

    from conftest import write_job_yaml
    from exactly_once import assert_each_scan_once

    if where == "s3":
        server = request.getfixturevalue("s3_server")
        out = f"s3://{server.bucket}/shards-{uuid.uuid4().hex[:6]}"
        output = {"uri": out, "storage": server.options(), "commit_every": 1}
    else:
        out, output = str(tmp_path / "out"), {"uri": str(tmp_path / "out"), "commit_every": 1}
    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), out, output=output, limits={"first_n": 2},
                            resources={"cpu_segmenters": 1, "threads_per_segmenter": 1, "cpu_workers": 1,
                                       "memory_gb_per_scan": 0.5})
    runs = [_start(config, "--shard", f"{i}/2", ray_tmp=f"/tmp/sh{uuid.uuid4().hex[:6]}") for i in range(2)]
    results = [_finish(*run) for run in runs]
    for i, (code, text) in enumerate(results):
        assert code == 0 and f"(shard {i}/2, " in text and "1 done, 0 failed" in text, text[-3000:]
    if where == "file":
        assert_each_scan_once(Path(out), 2)
    else:
        scans = pd.read_parquet(f"{out}/tables/scans", storage_options=server.options())
        structures = pd.read_parquet(f"{out}/tables/structures", storage_options=server.options())
        assert sorted(scans["participant_id"]) == ["2000000", "2000001"] and len(structures) == 2 * 40
        assert not structures[["participant_id", "visit", "structure_id"]].duplicated().any()


@pytest.mark.slow
def test_another_shard_count_or_an_unsharded_run_is_refused_while_a_shard_runs(tmp_path, phantom_cohort,
                                                                             demo_model):
    import time
    import uuid

    from conftest import write_job_yaml
    from exactly_once import assert_each_scan_once

    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(out), limits={"first_n": 2})
    proc, log = _start(config, "--shard", "0/2", ray_tmp=f"/tmp/sh{uuid.uuid4().hex[:6]}")
    deadline = time.monotonic() + 300
    while "to process" not in open(log.name).read():  # it holds its shard's lease
        assert proc.poll() is None and time.monotonic() < deadline, open(log.name).read()[-3000:]
        time.sleep(0.5)
    for args in (("--shard", "0/3"), ()):
        refused = _cli("run", str(config), "--no-progress", *args)
        lines = [line for line in refused.output.splitlines() if line.startswith("error:")]
        assert refused.exit_code == 2 and len(lines) == 1 and "0/2" in lines[0], refused.output  # names it
    code, text = _finish(proc, log)
    assert code == 0, text[-3000:]
    # another N is allowed once no shard lease is live: shard 0/3 holds 2000001 (2000000, committed, is in 2/3)
    again = _cli("run", str(config), "--no-progress", "--shard", "0/3")
    assert again.exit_code == 0 and "1 done, 0 failed" in again.output, again.output
    assert_each_scan_once(out, 2)


def test_status_per_shard_counts_and_lists_only_that_shards_failures(two_scan_job, tmp_path):
    """A failure recorded for 2000001 (shard 1/2): shard 1/2 counts and lists it, shard 0/2 neither."""
    import datetime

    import pyarrow.parquet as pq

    from mrseg_cohort.tables import failures_table

    folder = tmp_path / "out" / "tables" / "failures"
    folder.mkdir(parents=True)
    row = {"participant_id": "2000001", "visit": "0", "stage": "read", "error_type": "BadScanError",
           "message": "station 3 is missing", "uri": "", "attempt": 1, "run_id": "r1", "models": "base",
           "time": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)}
    pq.write_table(failures_table([row]), folder / "part-r1.parquet")
    ours = _cli("status", str(two_scan_job), "--shard", "1/2")
    assert ours.exit_code == 0 and "0 done, 0 finished (publishing), 1 failed, 0 pending, of 1 scans" in ours.output
    assert "2000001/0 attempt 1 [read] BadScanError: station 3 is missing" in ours.output, ours.output
    other = _cli("status", str(two_scan_job), "--shard", "0/2")
    assert other.exit_code == 0 and "0 failed, 1 pending, of 1 scans" in other.output
    assert "2000001" not in other.output and "last failures" not in other.output, other.output


def test_status_names_the_runs_holding_the_output_or_its_shards(tmp_path, phantom_cohort):
    from typer.testing import CliRunner

    from conftest import write_job_yaml
    from mrseg_cohort.cli import app
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.ledger.lease import OutputLease
    from mrseg_cohort.ledger.log import shard_scope

    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(out))
    assert "no run holds the output" in CliRunner().invoke(app, ["status", str(config)]).output
    leases = [OutputLease(Store(), str(out), f"run-shard-{i}", scope=shard_scope(i, 3)) for i in (0, 2)]
    for lease in leases:
        lease.acquire()
    text = CliRunner().invoke(app, ["status", str(config)]).output
    assert "shard 0/3 of the output: held by run run-shard-0" in text and "shard 2/3 of the output: held by run " \
        "run-shard-2" in text and "shard 1/3" not in text, text
    for lease in leases:
        lease.release()
    assert "no run holds the output" in CliRunner().invoke(app, ["status", str(config)]).output

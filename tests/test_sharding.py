"""Shards of one cohort (mrseg_cohort.sharding): disjoint, covering, stable, and taken from a SLURM array."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys

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

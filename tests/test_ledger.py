"""The output ledger's invariants under faults: a batch visible in all tables or none, every unit once,
names that round-trip, nothing deleted outside the output, copied outputs that stay whole."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mrseg_cohort.io import storage
from mrseg_cohort.io.storage import Store
from mrseg_cohort.ledger.lease import OutputLease
from mrseg_cohort.ledger.names import key_name
from mrseg_cohort.ledger.outputs import Outputs, unit_from_name
from mrseg_cohort.manifest import id_problem
from mrseg_cohort.tables import to_table

TABLES = ("structures", "intensities", "scans", "failures")


def _rows(pid: str, visit: str = "0", models: tuple[str, ...] = ("base",), label_uri: str | None = None
          ) -> dict[str, pa.Table]:
    out: dict[str, list] = {"structures": [], "intensities": [], "scans": []}
    for model in models:
        keys = {"participant_id": pid, "visit": visit, "contrast": "in", "model": model}
        out["structures"].append({**keys, "structure_id": 1, "structure": "spleen", "n_voxels": 10})
        out["intensities"].append({**keys, "structure_id": 1, "structure": "spleen", "image_contrast": "in"})
        out["scans"].append({**keys, "status": "ok", "label_uri": label_uri or Outputs.label_path((pid, visit), "in",
                                                                                                  model)})
    return {name: to_table(name, rows) for name, rows in out.items()}


def _held(root: str, run_id: str = "run-1") -> tuple[Outputs, OutputLease]:
    outputs = Outputs(Store(), root)
    lease = OutputLease(outputs.store, outputs.root, run_id)
    lease.acquire()
    return outputs, lease


def _table(out: Path, name: str) -> pd.DataFrame:
    folder = out / "tables" / name
    if not folder.exists() or not list(folder.glob("*.parquet")):
        return pd.DataFrame(columns=["participant_id", "visit"])
    return pd.read_parquet(folder)


class Faults:
    """Makes the ``n``-th store write or move of a publication fail (ENOSPC for writes, EIO for moves)."""

    def __init__(self, n: int):
        self.n, self.calls = n, 0

    def install(self, monkeypatch) -> None:
        write, move = storage._replace_local, Store.move

        def failing_write(path, data):
            self._tick(errno.ENOSPC, "No space left on device")
            return write(path, data)

        def failing_move(store, source, target):
            self._tick(errno.EIO, "Input/output error")
            return move(store, source, target)

        monkeypatch.setattr(storage, "_replace_local", failing_write)
        monkeypatch.setattr(Store, "move", failing_move)

    def _tick(self, code: int, words: str) -> None:
        self.calls += 1
        if self.calls == self.n:
            raise OSError(code, words)


@pytest.mark.parametrize("n", range(1, 13))
def test_a_fault_at_any_write_of_a_publication_leaves_the_batch_in_all_tables_or_none(n, tmp_path, monkeypatch):
    """A full disk while a batch was published left structures and intensities readable with the
    batch's rows and scans without them: a pandas reader saw a partial batch. Now the parts are
    written under _work first and moved, and recovery finishes an interrupted move."""
    out = tmp_path / "out"
    outputs, lease = _held(str(out))
    rows = {}
    for pid in ("p1", "p2"):
        key = (pid, "0", "base")
        outputs.stage(key, _rows(pid))
        rows[key] = outputs.read_staged(key)
    failures = [{"participant_id": "p3", "visit": "0", "stage": "read", "error_type": "BadScanError",
                 "message": "x", "uri": "", "attempt": 1, "time": 0.0, "run_id": "run-1", "models": "base"}]
    faults = Faults(n)
    faults.install(monkeypatch)
    try:
        outputs.publish("run-1-00001", rows, failures, lease.fence, set())
        failed = False
    except OSError:
        failed = True
    monkeypatch.undo()
    counts = {t: len(_table(out, t)) for t in TABLES}
    present = {t for t, c in counts.items() if c}
    logged = bool(list((out / "_work" / "log").glob("*.json"))[1:])  # entry 1 is the lease's
    if not failed:
        assert counts == {"structures": 2, "intensities": 2, "scans": 2, "failures": 1}
    elif not logged:
        assert not present  # nothing of the batch is visible
    else:  # cut while its parts moved: scans, which marks scans committed, moves last
        assert "scans" not in present or present == set(TABLES)
    # the next run: recovery finishes the batch, or republishes the staged units
    lease.release()
    outputs2, lease2 = _held(str(out), "run-2")
    report = outputs2.recover(live_runs={"run-2"})
    committed = outputs2.committed_units()
    left = {k: outputs2.read_staged(k) for k in report.unpublished}
    if left:
        outputs2.publish("run-2-00001", left, [], lease2.fence, committed)
    scans = _table(out, "scans")
    assert sorted(scans["participant_id"]) == ["p1", "p2"], (n, faults.calls)
    assert sorted(_table(out, "structures")["participant_id"]) == ["p1", "p2"]
    assert not outputs2.staged_keys() and not list((out / "_work" / "parts").rglob("*.parquet"))
    assert faults.calls >= n or not failed


ids = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00"),
              min_size=1, max_size=24).filter(lambda v: not id_problem(v, "id"))


@settings(max_examples=300, deadline=None)
@given(pid=ids, visit=ids, models=st.lists(st.sampled_from(["base", "body_comp", "my__model", "m_"]),
                                           min_size=1, max_size=2, unique=True))
def test_every_accepted_id_round_trips_through_a_staged_file_name(pid, visit, models):
    """Ids such as A__B, sub_01_ with visit _2, or a model my__model did not round-trip: every later
    resume of an interrupted run failed with FileNotFoundError."""
    key = (pid, visit, "+".join(models))
    name = key_name(key)
    assert unit_from_name(name) == key
    assert "/" not in name and "\x00" not in name and not name.startswith(".")  # never a hidden file


def test_staged_units_with_awkward_ids_are_published_after_an_interruption(tmp_path):
    out = tmp_path / "out"
    outputs, lease = _held(str(out))
    keys = [("A__B", "0", "base"), ("sub_01_", "_2", "base"), ("x", "y", "my__model"), (".hidden", "0", "base")]
    for key in keys:
        outputs.stage(key, _rows(key[0], key[1], (key[2],)))
    lease.release()  # interrupted before publishing
    outputs, lease = _held(str(out), "run-2")
    report = outputs.recover(live_runs={"run-2"})
    assert sorted(report.unpublished) == sorted(keys)
    outputs.publish("run-2-00001", {k: outputs.read_staged(k) for k in report.unpublished}, [], lease.fence, set())
    scans = _table(out, "scans")
    assert sorted(zip(scans.participant_id, scans.visit, scans.model)) == sorted(keys)
    assert not outputs.staged_keys()


def test_a_unit_of_two_models_of_which_one_is_committed_publishes_only_the_other(tmp_path):
    """The whole unit was dropped (and recomputed by the next run) when one of its models had been
    committed meanwhile."""
    out = tmp_path / "out"
    outputs, lease = _held(str(out))
    committed: set = set()
    outputs.stage(("p1", "0", "base"), _rows("p1"))
    outputs.publish("run-1-00001", {("p1", "0", "base"): outputs.read_staged(("p1", "0", "base"))}, [],
                    lease.fence, committed)
    both = ("p1", "0", "base+body_comp")
    outputs.stage(both, _rows("p1", models=("base", "body_comp")))
    seq, published = outputs.publish("run-1-00002", {both: outputs.read_staged(both)}, [], lease.fence, committed)
    assert seq is not None and published == 1
    scans = _table(out, "scans")
    assert sorted(scans.model) == ["base", "body_comp"] and len(_table(out, "structures")) == 2
    assert not outputs.staged_keys()


def _published_output(root: Path, label_uri_of) -> Outputs:
    """An output with two scans published, their label files written, rows recording
    ``label_uri_of(root, pid)``."""
    outputs, lease = _held(str(root))
    rows = {}
    for pid in ("p1", "p2"):
        path = root / "labels" / pid / "0" / "in.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"labels of " + pid.encode())
        key = (pid, "0", "base")
        outputs.stage(key, _rows(pid, label_uri=label_uri_of(root, pid)))
        rows[key] = outputs.read_staged(key)
    outputs.write_fingerprint({"format": 2, "models": {"base": {}}, "base_model": "base"})
    outputs.publish("run-1-00001", rows, [], lease.fence, set())
    outputs.refresh_indexes()
    lease.release()
    return outputs


@pytest.mark.parametrize("recorded", ["relative", "absolute (earlier versions)"])
def test_restart_on_a_copied_output_deletes_only_inside_the_copy(recorded, tmp_path):
    """`cp -a out1 outr` then `run --restart` on the copy deleted every label file of out1 (the rows
    held absolute paths); a row edited to name any file got that file deleted."""
    def label_uri_of(root, pid):
        return Outputs.label_path((pid, "0"), "in", "base") if recorded == "relative" else \
            str(root / "labels" / pid / "0" / "in.nii.gz")

    first = tmp_path / "out1"
    _published_output(first, label_uri_of)
    victim = tmp_path / "precious.txt"
    victim.write_text("not the tool's")
    copy = tmp_path / "outr"
    shutil.copytree(first, copy, symlinks=True)
    scans = next((copy / "tables" / "scans").glob("*.parquet"))
    frame = pd.read_parquet(scans)
    frame.loc[frame.participant_id == "p2", "label_uri"] = str(victim)  # an edited row
    frame.loc[frame.participant_id == "p1", "participant_id"] = "p3"
    frame.to_parquet(scans)
    (copy / "_work" / "index" / "of-an-earlier-version.parquet").write_bytes(b"an index of another table")
    before = {p: p.read_bytes() for p in first.rglob("*") if p.is_file()}
    copied = Outputs(Store(), str(copy))
    assert copied.committed_keys() == {("p3", "0"), ("p2", "0")}  # the edited part, not the index
    assert copied.resolve(label_uri_of(first, "p1")) == str(copy / "labels" / "p1" / "0" / "in.nii.gz")
    deleted = copied.reset(["base"], [])
    assert deleted > 0 and victim.read_text() == "not the tool's"
    assert {p: p.read_bytes() for p in first.rglob("*") if p.is_file()} == before  # out1 untouched
    assert not (copy / "labels" / "p1" / "0" / "in.nii.gz").exists()
    assert not (copy / "labels" / "p2" / "0" / "in.nii.gz").exists()  # its own file, by the layout
    assert not list((copy / "tables").rglob("*.parquet"))
    assert not (copy / "_work" / "index").exists()  # every index this tool wrote there, and the folder


def test_a_copied_output_reads_its_own_label_files(tmp_path):
    first = tmp_path / "out1"
    _published_output(first, lambda root, pid: Outputs.label_path((pid, "0"), "in", "base"))
    moved = tmp_path / "moved"
    shutil.move(str(first), moved)
    outputs = Outputs(Store(), str(moved))
    for row in _table(moved, "scans").itertuples():
        assert not os.path.isabs(row.label_uri)
        assert Path(outputs.resolve(row.label_uri)).read_bytes() == b"labels of " + row.participant_id.encode()


def test_an_output_named_through_a_link_into_the_input_is_not_read_as_input(tmp_path):
    """Output /tmp/x/link/out with link -> the input folder: run 2 segmented its own label map as a
    new participant."""
    from conftest import write_job_yaml
    from mrseg_cohort.config import load_config
    from mrseg_cohort.manifest import discover

    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "p1.nii.gz").write_bytes(b"")
    (cohort / "out" / "labels" / "p1" / "0").mkdir(parents=True)
    (cohort / "out" / "labels" / "p1" / "0" / "in.nii.gz").write_bytes(b"")
    (cohort / "out" / "_work").mkdir()
    (cohort / "out" / "_work" / "fingerprint.json").write_text("{}")
    link = tmp_path / "x" / "link"
    link.parent.mkdir()
    link.symlink_to(cohort)
    job = load_config(write_job_yaml(tmp_path / "job.yaml", str(cohort), str(link / "out"),
                                     cohort={"name": "c", "layout": "nifti-folder"},
                                     contrasts={"available": ["in"], "segment": ["in"], "fat": None,
                                                "water": None}))
    assert [s.participant_id for s in discover(job, Store())] == ["p1"]
    assert Store().contains(str(link / "out"), str(cohort / "out" / "labels" / "p1" / "0" / "in.nii.gz"))
    assert not Store().contains(str(cohort / "out"), str(cohort / "p1.nii.gz"))

"""Participant ids and visits are checked once (manifest.id_problem), by the run and by the phantom
command alike, before anything is written (issue 23: a visit ``../../escape`` wrote outside the
phantom folder; a 240-character id left a label file that no table names)."""

from __future__ import annotations

import errno
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import write_job_yaml
from mrseg_cohort.cli import app
from mrseg_cohort.config import load_config
from mrseg_cohort.io.storage import Store
from mrseg_cohort.manifest import (MAX_ID_BYTES, NAME_MAX_BYTES, ScanSource, discover, id_problem, output_file_name,
                                   output_name_problem)
from mrseg_cohort.phantom.cohort import PhantomSpec, participant_id, write_phantom_cohort

SCALE = 3.0


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.mark.parametrize("args,message", [
    (["--visit", "../../escape"], "visit '../../escape' holds '/'"),
    (["--visit", ""], "visit '' is not a usable id"),
    (["--visit", ".."], "visit '..' is not a usable id"),
    (["--repeat-visit", "a\\b"], "repeat visit 'a\\\\b' holds '\\\\'"),
    (["--visit", "v" * (MAX_ID_BYTES + 1)], f"is {MAX_ID_BYTES + 1} bytes long"),
])
def test_phantom_refuses_visits_the_run_refuses_and_writes_nothing(tmp_path, args, message):
    before = _files(tmp_path)
    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "a" / "b"), "-n", "1", "--scale", str(SCALE), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output
    assert _files(tmp_path) == before  # not even the folder: nothing inside it, nothing beside it


def test_the_phantom_library_refuses_them_too(tmp_path):
    with pytest.raises(ValueError, match="holds '/'"):
        write_phantom_cohort(Store(), str(tmp_path / "p"), PhantomSpec(participants=1, visit="../x", scale=SCALE))
    assert not (tmp_path / "p").exists() and _files(tmp_path) == set()


def test_id_limits():
    assert id_problem("1" * MAX_ID_BYTES, "participant id") == ""
    assert "201 bytes long" in id_problem("1" * (MAX_ID_BYTES + 1), "participant id")
    assert "202 bytes long" in id_problem("é" * 101, "visit")  # bytes, not characters


@pytest.mark.parametrize("models", [("base",), ("base", "body_comp")])
def test_the_output_name_check_agrees_with_the_disk(tmp_path, models):
    """Ids pass exactly when the longest file name the output makes of them can be created here
    (the check is made on the output's own naming, whatever its encoding)."""
    outcomes = set()
    for pid_bytes, visit_bytes in ((150, 60), (150, 80), (150, 100), (200, 1), (200, 50), (100, 100)):
        scan = ScanSource("p" * pid_bytes, "v" * visit_bytes, "phantom", "MRI", ())
        problem = output_name_problem(scan, models)
        try:
            (tmp_path / output_file_name(scan, models)).touch()
            fits = True
        except OSError as err:
            assert err.errno == errno.ENAMETOOLONG, err
            fits = False
        assert (problem == "") == fits, (pid_bytes, visit_bytes, problem)
        assert fits or f"above the {NAME_MAX_BYTES} bytes" in problem
        outcomes.add(fits)
    assert outcomes == {True, False}  # both sides of the bound were tried


@pytest.fixture(scope="module")
def long_id_cohort(tmp_path_factory) -> tuple[Path, str]:
    """A one-participant phantom cohort whose participant id is 240 characters long."""
    root = tmp_path_factory.mktemp("long-id") / "cohort"
    write_phantom_cohort(Store(), str(root), PhantomSpec(participants=1, seed=8, scale=SCALE))
    long_id = "x" * 240
    (root / participant_id(8, 0)).rename(root / long_id)
    return root, long_id


def test_a_too_long_id_gets_a_problem_from_the_manifest(long_id_cohort, tmp_path):
    root, long_id = long_id_cohort
    job = load_config(write_job_yaml(tmp_path / "job.yaml", str(root), str(tmp_path / "out")))
    [source] = discover(job, Store())
    assert source.participant_id == long_id and "is 240 bytes long" in source.problem


def test_a_run_over_a_too_long_id_writes_nothing_for_it(long_id_cohort, tmp_path, ray_local):
    """The scan fails at read with a failures row; no label file (or staged row) is left for it."""
    root, long_id = long_id_cohort
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(root), str(out),
                            model={"tile_step_size": 1.0})
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 1, result.output
    [row] = pd.read_parquet(out / "tables" / "failures").to_dict("records")
    assert row["participant_id"] == long_id and row["stage"] == "read" and "240 bytes long" in row["message"]
    assert not [p for p in out.rglob("*.nii.gz")], sorted(_files(out))
    assert not any(long_id in name for name in _files(out))

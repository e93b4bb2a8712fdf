"""Offline weights on an HPC cluster: compute nodes that find no weights stop the job with one line naming the
path they tried, the machine, and the `weights fetch --dest` command to run on a login node."""

from __future__ import annotations

import socket
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import write_job_yaml
from mrseg_cohort.cli import app
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.weights.resolve import resolve

HOST = socket.gethostname()


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def test_mrseg_weights_path_without_weights_names_the_path_and_the_login_node_command(tmp_path):
    shared = tmp_path / "shared models" / "mrsegmentator"  # not fetched yet
    with pytest.raises(ConfigError) as err:
        resolve("base", {"MRSEG_WEIGHTS_PATH": str(shared)})
    message = str(err.value)
    assert "\n" not in message and f"not found on {HOST}" in message and f"{shared / 'base'} (missing)" in message
    assert "on a cluster: a login node) run `mrseg-cohort weights fetch base`" in message
    assert f"installs it into {shared / 'base'}" in message and "--dest" in message


def test_a_configured_weights_folder_missing_on_a_compute_node_is_one_line_with_the_fetch_command(
        tmp_path, phantom_cohort):
    weights = tmp_path / "shared models" / "mrsegmentator"  # model.weights: /shared/..., never fetched
    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(tmp_path / "out"),
                            model={"weights": str(weights)})
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    lines = _error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"weights folder {weights} does not exist on {HOST}" in lines[0]
    assert f"`mrseg-cohort weights fetch base --dest '{weights}'`" in lines[0]  # quoted: the path has a space
    assert "login node" in lines[0] and not (tmp_path / "out").exists()


def test_body_comp_folder_gets_the_body_comp_fetch_command(tmp_path):
    from mrseg_cohort.segmentation.model_folder import open_model_folder
    from mrseg_cohort.errors import ModelError

    with pytest.raises(ModelError, match=r"weights fetch body_comp --dest \S*/w/body_comp`"):
        open_model_folder(tmp_path / "w" / "body_comp", (0,))


def test_an_actor_on_a_node_without_the_weights_stops_the_job_naming_path_node_and_command(
        tmp_path, phantom_cohort, ray_local, monkeypatch):
    """The driver's node has the weights (its preflight passes); the actor's node does not (in Ray's worker
    process here, the folder the spec names is gone): the job stops before any scan, one line."""
    from mrseg_cohort.pipeline import run as run_module

    checked = run_module.preflight
    elsewhere = tmp_path / "node-local" / "mrsegmentator"

    def preflight_on_another_node(job):
        return [replace(spec, path=str(elsewhere)) for spec in checked(job)]

    monkeypatch.setattr(run_module, "preflight", preflight_on_another_node)
    out = tmp_path / "out"
    config = write_job_yaml(tmp_path / "job.yaml", str(phantom_cohort), str(out))
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    lines = _error_lines(result.output)
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "a segmentation actor could not start" in lines[0] and f"{elsewhere} does not exist on {HOST}" in lines[0]
    assert f"weights fetch base --dest {elsewhere}`" in lines[0] and "login node" in lines[0]
    assert not (out / "tables").exists()


def test_fetch_dest_on_a_login_node_then_model_weights_on_a_compute_node(tmp_path, demo_model, monkeypatch):
    """`weights fetch --dest` (here from a local zip, as a login node would download it) installs a folder
    that `model.weights: <folder>` and MRSEG_WEIGHTS_PATH=<folder> then find, with no network."""
    import hashlib
    import zipfile

    from mrseg_cohort.config import resolve_weights

    archive = tmp_path / "weights.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(Path(demo_model).rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(demo_model).as_posix())
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    shared = tmp_path / "shared" / "models" / "mrsegmentator"
    fetched = CliRunner().invoke(app, ["weights", "fetch", "base", "--url", str(archive), "--sha256", sha,
                                       "--dest", str(shared)])
    assert fetched.exit_code == 0 and f"installed at {shared}" in fetched.output, fetched.output
    assert (shared / "plans.json").is_file() and (shared / "fold_0" / "checkpoint_final.pth").is_file()
    assert resolve("base", {"MRSEG_WEIGHTS_PATH": str(shared)}).path == shared  # a model folder itself
    assert resolve_weights(str(shared)) == str(shared)

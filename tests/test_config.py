"""Config: strict validation with one line naming the key and the file."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mrseg_cohort.cli import app
from mrseg_cohort.config import load_config
from mrseg_cohort.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
GOOD = """
cohort: {name: t, layout: phantom}
input: {uri: data}
model: {weights: bundled:demo}
output: {uri: out}
"""


def _write(tmp_path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_good_config_resolves_paths_relative_to_the_file(tmp_path):
    job = load_config(_write(tmp_path, GOOD))
    assert job.input.uri == str(tmp_path / "data") and job.output.uri == str(tmp_path / "out")
    assert job.contrasts.segment == ("in",) and job.model.device == "auto"


@pytest.mark.parametrize("text,message", [
    (GOOD + "modle: {}\n", "unknown key 'modle' (did you mean 'model'?)"),
    (GOOD.replace("model: {weights: bundled:demo}", "model: {weights: bundled:demo, fold: [0]}"),
     "unknown key 'model.fold' (did you mean 'folds'?)"),
    (GOOD.replace("model: {weights: bundled:demo}", "model: {weights: bundled:demo, tile_step_size: big}"),
     "model.tile_step_size"),
    (GOOD.replace("output: {uri: out}", ""), "missing required key 'output'"),
    (GOOD.replace("layout: phantom", "layout: ukbb-dicom"), "cohort.layout"),
    (GOOD + "contrasts: {segment: [t1]}\n", "contrasts"),
    ("cohort: [\n", "not valid YAML"),
])
def test_bad_configs_stop_with_one_line_naming_key_and_file(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value)
    result = CliRunner().invoke(app, ["run", str(path)])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0]


def test_shipped_configs_validate():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load_config(path)


def test_help_of_every_command():
    runner = CliRunner()
    top = runner.invoke(app, ["--help"])
    assert top.exit_code == 0
    commands = [c.name or c.callback.__name__.replace("_", "-") for c in app.registered_commands]
    commands += [g.name for g in app.registered_groups]
    assert {"run", "phantom"} <= set(commands)
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "Usage" in result.output, name


def test_a_list_of_models_resolves_each_weights_path(tmp_path):
    text = GOOD.replace("model: {weights: bundled:demo}",
                        "models:\n  - {name: base, weights: w/base}\n  - {name: body_comp, weights: w/bc, labels: body_comp}")
    job = load_config(_write(tmp_path, text))
    assert [m.name for m in job.models] == ["base", "body_comp"] and job.model.name == "base"
    assert job.models[1].weights == str(tmp_path / "w" / "bc")
    both = GOOD + "models: [{weights: x}]\n"
    with pytest.raises(ConfigError, match="either 'model'"):
        load_config(_write(tmp_path, both))
    twice = GOOD.replace("model: {weights: bundled:demo}", "models: [{weights: a}, {weights: b}]")
    with pytest.raises(ConfigError, match="names must be unique"):
        load_config(_write(tmp_path, twice))


def test_command_line_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    """paths.py, the one rule: config paths against the config's folder, overrides against the cwd."""
    conf, work = tmp_path / "conf", tmp_path / "work"
    conf.mkdir(), work.mkdir()
    monkeypatch.chdir(work)
    job = load_config(_write(conf, GOOD), {"output.uri": "relout", "input.uri": "s3://b/in"})
    assert job.output.uri == str(work / "relout") and job.input.uri == "s3://b/in"
    assert job.model.weights == "bundled:demo"
    default = load_config(conf / "job.yaml")
    assert default.output.uri == str(conf / "out") and default.input.uri == str(conf / "data")
    for overrides in ({"output.uri": ""}, {"output.uri": "  "}):
        with pytest.raises(ConfigError, match="output.uri: the output URI is empty"):
            load_config(conf / "job.yaml", overrides)


def test_credentials_never_leave_the_config(tmp_path, caplog):
    import json
    import logging

    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.logs import MaskingFormatter
    from mrseg_cohort.ledger.outputs import Outputs

    text = GOOD.replace("output: {uri: out}", "output: {uri: out, storage: {endpoint_url: 'http://user:s3cr3tpw@h:9',"
                                              " key: AKIDEXAMPLE, secret: Wr0ngSecret}}")
    job = load_config(_write(tmp_path, text))
    assert job.output.storage.fsspec_options()["endpoint_url"] == "http://user:s3cr3tpw@h:9"  # still used
    dumped = json.dumps(job.model_dump(mode="json", exclude={"output": {"storage": {"key", "secret"}}}))
    shown = f"{job!r} {job.output.storage!r} {dumped}"
    assert "s3cr3tpw" not in shown and "Wr0ngSecret" not in shown and "http://***@h:9" in dumped
    outputs = Outputs(Store(), str(tmp_path / "out"))
    outputs.write_run_metadata("r1", {"config": {"endpoint": "http://user:s3cr3tpw@h:9"}, "note": "s3://u:p@b/x"})
    record = (tmp_path / "out" / "_work" / "runs" / "r1.json").read_text()
    assert "s3cr3tpw" not in record and "u:p@" not in record
    record_line = logging.makeLogRecord({"msg": "connecting to %s", "args": ("http://user:s3cr3tpw@h:9",)})
    assert MaskingFormatter(logging.Formatter("%(message)s")).format(record_line) == "connecting to http://***@h:9"

    numeric = GOOD.replace("output: {uri: out}", "output: {uri: out, storage: {key: AKIDEXAMPLE, secret: 12345678}}")
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, numeric))
    assert "output.storage.secret" in str(info.value) and "12345678" not in str(info.value)
    assert "quote the value" in str(info.value)


def test_exit_statuses_are_worded_once_for_every_help_and_the_readme():
    from mrseg_cohort.cli._common import PARTIAL_FAILURES, exit_statuses

    runner = CliRunner()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    names += [f"{g.name} {c.name}" for g in app.registered_groups for c in g.typer_instance.registered_commands]
    assert {"run", "evaluate", "plan", "status", "report", "measure", "phantom", "summary", "tables wide"} <= set(names)
    for name in names:
        help_text = " ".join(runner.invoke(app, [*name.split(), "--help"]).output.split())
        assert exit_statuses(name) in help_text, name
    readme = " ".join((REPO / "README.md").read_text().split())
    for name in (*PARTIAL_FAILURES, "plan"):
        assert exit_statuses(name) in readme, name
    assert "1 some scans failed" in exit_statuses("run") and "1 some" not in exit_statuses("plan")


def test_plan_estimate_refuses_impossible_resources():
    from mrseg_cohort.jobstate import estimate

    for args in ((10, 5.0, 5.0, 0, 8), (10, 5.0, 5.0, -2, 8), (10, 5.0, 5.0, 1, 0), (-1, 5.0, 5.0, 1, 8),
                 (10, -5.0, 5.0, 1, 8)):
        with pytest.raises(ValueError, match="must be"):
            estimate(*args, "test")
    assert estimate(3600, 1.0, 1.0, 1, 1, "test").wall_hours == pytest.approx(1.0)


@pytest.mark.parametrize("text,message", [
    (GOOD + "output: {uri: elsewhere}\n", "key 'output' is given twice (lines 5 and 6)"),
    (GOOD.replace("output: {uri: out}", "output:\n  uri: out\n  commit_every: 3\n  uri: elsewhere"),
     "key 'output.uri' is given twice (lines 6 and 8)"),
    (GOOD.replace("model: {weights: bundled:demo}", "models:\n  - {weights: bundled:demo}\n"
                  "  - {name: b, weights: bundled:demo, name: c}"), "key 'models[1].name' is given twice (line 6, twice)"),
])
def test_a_key_given_twice_is_refused_naming_the_key_and_both_lines(tmp_path, text, message):
    """Issue 23: PyYAML keeps the last of two equal keys; a second 'output:' moved the output silently."""
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value) and str(path) in str(info.value)
    result = CliRunner().invoke(app, ["plan", str(path)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], result.output


def test_merge_keys_may_be_overridden_and_equal_looking_keys_of_other_types_differ(tmp_path):
    """YAML's merge keys allow overriding what was merged in; 1 and "1" are different keys."""
    import yaml

    from mrseg_cohort.config import UniqueKeyLoader

    text = GOOD.replace("input: {uri: data}", "input: {uri: data, storage: &s {request_attempts: 2, timeout_s: 5}}")
    text = text.replace("output: {uri: out}", "output: {uri: out, storage: {<<: *s, request_attempts: 1}}")
    job = load_config(_write(tmp_path, text))
    assert (job.output.storage.request_attempts, job.output.storage.timeout_s) == (1, 5)
    assert yaml.load("a: &x {p: 1}\nb: {<<: *x, p: 2}\n", Loader=UniqueKeyLoader) == {"a": {"p": 1}, "b": {"p": 2}}
    assert yaml.load("1: a\n'1': b\n", Loader=UniqueKeyLoader) == {1: "a", "1": "b"}


@pytest.mark.parametrize("heartbeat,timeout", [(180, 180), (200, 180), (31, 30)])
def test_a_lease_heartbeat_not_shorter_than_its_timeout_is_refused(tmp_path, heartbeat, timeout):
    text = GOOD.replace("output: {uri: out}", f"output: {{uri: out, lease_heartbeat_s: {heartbeat}, "
                                              f"lease_timeout_s: {timeout}}}")
    with pytest.raises(ConfigError, match=f"lease_heartbeat_s \\({heartbeat} s\\) must be shorter than "
                                          f"lease_timeout_s \\({timeout} s\\)"):
        load_config(_write(tmp_path, text))
    shorter = text.replace(f"lease_heartbeat_s: {heartbeat}", f"lease_heartbeat_s: {timeout - 1}")
    assert load_config(_write(tmp_path, shorter)).output.lease_heartbeat_s == timeout - 1

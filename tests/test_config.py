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

"""``weights: mrsegmentator[:body_comp]`` resolves where MRSegmentator keeps its weights, in order."""

import shutil
import sys

import pytest
import yaml

from conftest import DEMO_MODEL, REPO
from mrseg_cohort.config import ModelConfig, load_config, resolve_weights
from mrseg_cohort.errors import ConfigError
from mrseg_cohort.segmentation.segmenter import check_model
from mrseg_cohort.weights.resolve import default_destination, resolve, weights_model_name


def _model_folder(path):
    """The files resolution looks for (contents do not matter to it)."""
    (path / "fold_0").mkdir(parents=True)
    for name in ("dataset.json", "plans.json", "fold_0/checkpoint_final.pth"):
        (path / name).write_text("{}")
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and no mrsegmentator package importable."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MRSEG_WEIGHTS_PATH", raising=False)
    monkeypatch.setattr("mrseg_cohort.weights.resolve.package_weights_dir", lambda: None)
    return tmp_path / "home"


def test_names():
    assert weights_model_name("mrsegmentator") == "base"
    assert weights_model_name("mrsegmentator:body_comp") == "body_comp"
    assert weights_model_name("/models/mrsegmentator") is None and weights_model_name("bundled:demo") is None
    with pytest.raises(ConfigError, match="unknown MRSegmentator model 'bodycomp'; known: base, body_comp"):
        weights_model_name("mrsegmentator:bodycomp")


def test_env_var_naming_a_model_folder_is_the_base_model(home, tmp_path):
    folder = _model_folder(tmp_path / "weights")
    env = {"MRSEG_WEIGHTS_PATH": str(folder)}
    _model_folder(home / ".mrsegmentator" / "base")  # lower priority: not used
    found = resolve("base", env)
    assert (found.path, found.source) == (folder, "env")
    with pytest.raises(ConfigError, match="legacy mode: base only"):
        resolve("body_comp", env)


def test_env_var_naming_a_root_with_one_folder_per_model(home, tmp_path):
    root = tmp_path / "root"
    _model_folder(root / "base"), _model_folder(root / "body_comp")
    env = {"MRSEG_WEIGHTS_PATH": str(root)}
    assert resolve("base", env).path == root / "base" and resolve("body_comp", env).path == root / "body_comp"
    assert resolve("body_comp", env).source == "env" and default_destination("base", env) == root / "base"


def test_env_var_set_is_the_only_place_looked_at(home, tmp_path):
    _model_folder(home / ".mrsegmentator" / "base")
    env = {"MRSEG_WEIGHTS_PATH": str(tmp_path / "elsewhere")}
    with pytest.raises(ConfigError, match=r"MRSEG_WEIGHTS_PATH: .*elsewhere/base \(missing\).*weights fetch base"):
        resolve("base", env)


def test_mrsegmentator_cache_in_home(home):
    folder = _model_folder(home / ".mrsegmentator" / "body_comp")
    found = resolve("body_comp", {})
    assert (found.path, found.source) == (folder, "cache")
    assert default_destination("base", {}) == home / ".mrsegmentator" / "base"


def test_mrsegmentator_1x_package_folder_found_without_importing_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    package = tmp_path / "site" / "mrsegmentator"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise RuntimeError('mrsegmentator was imported')\n")
    folder = _model_folder(package / "weights")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "mrsegmentator" or m.startswith("mrsegmentator.")]:
        monkeypatch.delitem(sys.modules, name)  # an earlier test (the agreement matrix) may have imported the real one
    found = resolve("base", {})
    assert (found.path, found.source) == (folder, "package") and "mrsegmentator" not in sys.modules
    with pytest.raises(ConfigError, match="body_comp model not found"):
        resolve("body_comp", {})  # MRSegmentator 1.x had only the base model


def test_nothing_found_lists_where_it_looked(home):
    (home / ".mrsegmentator" / "base").mkdir(parents=True)  # e.g. an interrupted MRSegmentator download
    with pytest.raises(ConfigError) as err:
        resolve("base", {})
    message = str(err.value)
    assert "\n" not in message and "MRSEG_WEIGHTS_PATH (not set)" in message
    assert ".mrsegmentator/base (no dataset.json, plans.json" in message
    assert "mrsegmentator package (not installed)" in message and "run `mrseg-cohort weights fetch base`" in message


def test_config_keeps_the_name_and_check_model_resolves_it(home, tmp_path, monkeypatch):
    shutil.copytree(DEMO_MODEL, home / ".mrsegmentator" / "base")
    job = load_config(REPO / "configs" / "ukbb.yaml")
    assert job.model.weights == "mrsegmentator" and load_config(REPO / "configs" / "nako.yaml").model.weights \
        == "mrsegmentator"
    spec = check_model(ModelConfig(weights="mrsegmentator", folds=(0,)))
    assert spec.path == str(home / ".mrsegmentator" / "base")
    monkeypatch.setenv("MRSEG_WEIGHTS_PATH", str(DEMO_MODEL))  # read when resolved, not at import
    assert resolve_weights("mrsegmentator") == str(DEMO_MODEL)
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({"cohort": {"name": "t", "layout": "phantom"}, "input": {"uri": "in"},
                                      "model": {"weights": "mrsegmentator:body_comp"}, "output": {"uri": "out"}}))
    assert load_config(config).model.weights == "mrsegmentator:body_comp"

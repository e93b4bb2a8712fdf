"""infra/apptainer.def (for HPC clusters: Apptainer, not Docker) makes the image infra/Dockerfile makes: the same
base, the same pinned packages, the same files, no MRSegmentator weights. Apptainer itself is not installable
here (Debian 12 has no package): the definition is parsed and its shell sections checked with `bash -n`."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from conftest import REPO
from test_infra import _docker_pins, _dockerfile, _lock

DEF = REPO / "infra" / "apptainer.def"


def _sections() -> tuple[dict[str, str], dict[str, str]]:
    """(header keywords, section name -> body) of the definition file."""
    text = DEF.read_text()
    header_text, *rest = re.split(r"^%(\w+)\s*$", text, flags=re.M)
    header = dict(re.findall(r"^(\w+):\s*(\S+)\s*$", header_text, flags=re.M))
    return header, dict(zip(rest[0::2], rest[1::2]))


def test_same_base_image_as_the_dockerfile():
    header, _ = _sections()
    base = re.search(r"^ARG CUDA_BASE_IMAGE=(\S+)", _dockerfile(), flags=re.M).group(1)
    assert header == {"Bootstrap": "docker", "From": base}


def test_same_pins_as_the_dockerfile_and_the_lock():
    _, sections = _sections()
    post = re.sub(r"#.*", "", sections["post"])
    pins = {re.sub(r"[-_.]+", "-", n.split("[", 1)[0]).lower(): v
            for n, v in re.findall(r"[\"']?([A-Za-z0-9][A-Za-z0-9_.\-]*(?:\[[a-z,]+\])?)==([\w.+\-]+)", post)}
    assert pins == _docker_pins()
    assert all(_lock().get(name) == version for name, version in pins.items())


def test_same_install_steps_as_the_dockerfile():
    _, sections = _sections()
    post = sections["post"]
    for step in ("python3.11 -m venv /opt/venv", "torch.version.cuda", "grep -viE '^(torch|torchvision)=='",
                 "pip install -c /tmp/constraints.txt", "pip install --no-deps", "mrseg-cohort --help",
                 "python jobs/run_cohort.py --help"):
        assert step in post and step in _dockerfile(), step
    assert "PATH=/opt/venv/bin:$PATH" in sections["environment"]
    assert sections["runscript"].split() == ["exec", "mrseg-cohort", '"$@"']


def test_same_files_as_the_dockerfile_and_no_model_weights():
    _, sections = _sections()
    copied = {line.split()[0] for line in sections["files"].strip().splitlines()}
    in_docker = {src.rstrip("/") for line in re.findall(r"^COPY (?!--from)(.+)$", _dockerfile(), flags=re.M)
                 for src in line.split()[:-1]}
    assert copied == in_docker and all((REPO / src).exists() for src in copied)
    text = DEF.read_text()
    assert "releases/download" not in text and "weights fetch base --dest" in text  # fetched outside the image
    assert "--nv" in text


@pytest.mark.parametrize("section", ["post", "runscript", "test"])
def test_shell_sections_parse(section, tmp_path):
    _, sections = _sections()
    script = tmp_path / f"{section}.sh"
    script.write_text(sections[section].replace("{{ TORCH_INDEX_URL }}", "https://pypi.org/simple"))
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_apptainer_accepts_it_where_installed(tmp_path):
    apptainer = shutil.which("apptainer") or shutil.which("singularity")
    if not apptainer:
        pytest.skip("no apptainer here (Debian 12 does not package it)")
    done = subprocess.run([apptainer, "build", "--help"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "--build-arg" in done.stdout  # %arguments need Apptainer >= 1.2

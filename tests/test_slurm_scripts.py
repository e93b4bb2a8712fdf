"""infra/slurm/ without a running SLURM: the scripts parse, the node-list parser (mrseg_cohort.slurm) agrees
with SLURM's own `scontrol show hostnames`, and the ports helper gives distinct free ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys

import pytest

from conftest import REPO
from mrseg_cohort.slurm import expand_nodelist, free_ports, hostnames, main

SCRIPTS = sorted((REPO / "infra" / "slurm").glob("*.sbatch"))
NODELISTS = {
    "gpu[01-03,07]": ["gpu01", "gpu02", "gpu03", "gpu07"],
    "a1,b[2-3]": ["a1", "b2", "b3"],
    "node[001-002],login": ["node001", "node002", "login"],
    "gpu01": ["gpu01"],
    "n[8-10]": ["n8", "n9", "n10"],
    "n[08-10]": ["n08", "n09", "n10"],
    "r[1-2]n[1-2]": ["r1n1", "r1n2", "r2n1", "r2n2"],
}


def test_scripts_exist_and_parse():
    assert {p.name for p in SCRIPTS} >= {"array.sbatch", "ray-cluster.sbatch"}
    for script in SCRIPTS:  # every branch parsed, the multi-node one included (no SLURM needed)
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, (script.name, done.stderr)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_forward_sigterm_and_requeue(script):
    text = script.read_text()
    for directive in ("#SBATCH --signal=B:TERM@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"):
        assert directive in text, (script.name, directive)
    assert "run_forwarding_sigterm" in text and 'exit "$status"' in text


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_the_run_is_the_forwarding_functions_own_child(script):
    """The run is started as a command (after the optional container prefix), never through a shell
    function: a function runs in a subshell, which the forwarded SIGTERM would end instead of the run."""
    calls = [line for line in script.read_text().splitlines() if line.startswith("run_forwarding_sigterm ")]
    assert len(calls) == 1, calls
    assert calls[0].startswith('run_forwarding_sigterm ${exec_prefix[@]+"${exec_prefix[@]}"} mrseg-cohort run '), calls


def test_both_scripts_forward_signals_with_one_and_the_same_function():
    bodies = {p.name: p.read_text().split("run_forwarding_sigterm() {", 1)[1].split("\n}\n", 1)[0] for p in SCRIPTS}
    assert len(set(bodies.values())) == 1, "the two copies of run_forwarding_sigterm differ"


@pytest.mark.parametrize("nodelist", NODELISTS)
def test_expand_nodelist(nodelist):
    assert expand_nodelist(nodelist) == NODELISTS[nodelist]


@pytest.mark.parametrize("bad, words", [("gpu[01-03", "unbalanced"), ("gpu]01[", "unbalanced"),
                                        ("gpu[3-1]", "runs backwards"), ("gpu[a-b]", "expected a number"),
                                        ("a,,b", "an empty name"), ("", "an empty name")])
def test_expand_nodelist_refuses_what_slurm_would_not_write(bad, words):
    with pytest.raises(ValueError, match=words):
        expand_nodelist(bad)


def test_hostnames_agree_with_scontrol(tmp_path):
    """`scontrol show hostnames` (needs only a slurm.conf to read, no daemon) gives what expand_nodelist gives."""
    if not shutil.which("scontrol"):
        pytest.skip("no scontrol (slurm-wlm not installed; .ci/run installs it)")
    from slurm_cluster import write_slurm_conf

    conf = write_slurm_conf(tmp_path, "localhost", 1, *free_ports(2))
    for nodelist, expected in NODELISTS.items():
        done = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                              env={"SLURM_CONF": str(conf), "PATH": "/usr/bin:/bin"}, timeout=30)
        assert done.returncode == 0 and done.stdout.split() == expected, (nodelist, done.stdout, done.stderr)


def test_hostnames_without_a_working_scontrol_falls_back(monkeypatch, tmp_path):
    fake = tmp_path / "scontrol"
    fake.write_text("#!/bin/sh\necho 'scontrol: fatal: Could not establish a configuration source' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    assert hostnames("gpu[01-03,07]") == NODELISTS["gpu[01-03,07]"]


def test_module_command(capsys):
    assert main(["hostnames", "a1,b[2-3]"]) == 0 and capsys.readouterr().out.split() == ["a1", "b2", "b3"]
    assert main(["ports", "3"]) == 0
    ports = [int(p) for p in capsys.readouterr().out.split()]
    assert len(set(ports)) == 3
    for port in ports:  # free right now: each can be bound
        with socket.socket() as s:
            s.bind(("", port))
    assert main(["hostnames", "gpu[3-1]"]) == 2 and "runs backwards" in capsys.readouterr().err
    assert main(["nodes"]) == 2 and "usage:" in capsys.readouterr().err


def test_module_runs_as_a_command():
    done = subprocess.run([sys.executable, "-m", "mrseg_cohort.slurm", "hostnames", "node[001-002],login"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and done.stdout.split() == ["node001", "node002", "login"], done.stderr

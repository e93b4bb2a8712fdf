"""Wrong calls of every command, run as a user runs them (the installed ``mrseg-cohort`` script and
``python -m mrseg_cohort`` in a subprocess): one plain line on stderr, ``error: <command>: ...``,
nothing on stdout, exit status 2; the full help only with ``--help`` (issue 23: a boxed 5-6 line
panel, and bare commands exited 2 printing the help on stdout and nothing on stderr).

The commands are read from the app itself, so a command added later is covered too.
"""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from typer.main import get_command

from mrseg_cohort.cli import app

SCRIPT = Path(sys.executable).parent / "mrseg-cohort"
PROGRAM = "mrseg-cohort"


def _commands() -> tuple[list[tuple[str, ...]], list[tuple[str, ...]], list[tuple[str, ...]]]:
    """(groups, leaf commands, leaf commands with a required argument) of the CLI, as argument paths."""
    groups, leaves, needing = [], [], []

    def walk(command, path: tuple[str, ...]) -> None:
        subs = getattr(command, "commands", None)
        if subs is None:
            leaves.append(path)
            if any(p.param_type_name == "argument" and p.required for p in command.params):
                needing.append(path)
            return
        groups.append(path)
        for name, sub in subs.items():
            walk(sub, (*path, name))

    walk(get_command(app), ())
    return groups, leaves, needing


GROUPS, LEAVES, NEEDS_ARGUMENT = _commands()


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1"}
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env, cwd="/")


def _run_all(calls: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    with ThreadPoolExecutor(max_workers=4) as pool:  # each call is mostly interpreter start-up
        return dict(zip(calls, pool.map(_run, calls.values())))


def _one_error_line(result: subprocess.CompletedProcess, command: str, phrase: str) -> None:
    shown = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 2, f"exit {result.returncode}\n{shown}"
    assert result.stdout == "", shown
    lines = result.stderr.splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith(f"error: {command}: ") and phrase in lines[0], shown
    assert lines[0].endswith(f"see {command} --help"), shown


@pytest.fixture(scope="module")
def script() -> str:
    if not SCRIPT.exists():
        pytest.skip(f"no console script at {SCRIPT} (install the package: pip install -e .)")
    return str(SCRIPT)


def test_the_app_has_the_commands_this_file_expects():
    assert {("run",), ("plan",), ("status",), ("phantom",), ("weights", "fetch"), ("tables", "wide")} <= set(LEAVES)
    assert {(), ("weights",), ("tables",)} <= set(GROUPS)
    assert {("run",), ("plan",), ("status",)} <= set(NEEDS_ARGUMENT)


def test_every_command_refuses_an_unknown_option_with_one_line(script):
    results = _run_all({" ".join(path): [script, *path, "--no-such-option"] for path in LEAVES})
    for path, result in zip(LEAVES, results.values()):
        _one_error_line(result, " ".join((PROGRAM, *path)), "No such option: --no-such-option")


def test_every_command_refuses_a_missing_argument_with_one_line(script):
    results = _run_all({" ".join(path): [script, *path] for path in NEEDS_ARGUMENT})
    for path, result in zip(NEEDS_ARGUMENT, results.values()):
        _one_error_line(result, " ".join((PROGRAM, *path)), "Missing argument")


def test_a_group_without_its_command_is_one_line_not_the_help(script):
    results = _run_all({" ".join(path) or "bare": [script, *path] for path in GROUPS})
    for path, result in zip(GROUPS, results.values()):
        _one_error_line(result, " ".join((PROGRAM, *path)), "no command given")


@pytest.mark.parametrize("args,command,phrase", [
    (["run", "job.yaml", "--first-n", "0"], "run", "Invalid value for '--first-n'"),
    (["plan", "job.yaml", "--gpus", "0"], "plan", "Invalid value for '--gpus'"),
    (["run", "a.yaml", "b.yaml"], "run", "unexpected extra argument"),
    (["rnu", "job.yaml"], "", "No such command 'rnu'"),
    (["--verbose"], "", "Missing command"),
])
def test_other_usage_errors(script, args, command, phrase):
    _one_error_line(_run([script, *args]), " ".join(filter(None, (PROGRAM, command))), phrase)


def test_python_dash_m_is_the_same_command():
    for module in ("mrseg_cohort", "mrseg_cohort.cli"):
        _one_error_line(_run([sys.executable, "-m", module]), f"python -m {module}", "no command given")


def test_help_is_still_the_full_help(script):
    results = _run_all({"top": [script, "--help"], "run": [script, "run", "--help"],
                        "weights": [script, "weights", "--help"]})
    for name, result in results.items():
        assert result.returncode == 0 and result.stderr == "", (name, result.stderr)
        assert "Usage:" in result.stdout and "--help" in result.stdout, (name, result.stdout)
    assert "run" in results["top"].stdout and "--first-n" in results["run"].stdout

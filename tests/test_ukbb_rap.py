"""infra/ukbb-rap/fan-out.sh against a fake `dx` that records its arguments: N Swiss Army Knife jobs, one per
shard, paths with spaces intact; and each job's command run here with a fake `docker` and `dx` in its place:
mrseg-cohort gets the config path as one argument and its shard, the output is uploaded, the exit status is
the run's (1, some scans failed, still uploads and succeeds)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

SCRIPT = REPO / "infra" / "ukbb-rap" / "fan-out.sh"
CONFIG = "/mrseg/UKB RAP/ukbb rap.yaml"          # project paths with spaces, as the Bulk folders have
IMAGE_FILE = "/mrseg/images/mrseg cohort 0.1.0.tar.gz"
DESTINATION = "/mrseg/my results"

RECORDER = """#!{python}
import json, os, sys
with open(os.environ["RECORD"], "a") as f:
    f.write(json.dumps([os.path.basename(sys.argv[0]), *sys.argv[1:]]) + "\\n")
if sys.argv[1:2] == ["run"] and os.path.basename(sys.argv[0]) == "dx":
    print("job-" + str(sum(1 for _ in open(os.environ["RECORD"]))))
if sys.argv[1:2] == ["run"] and os.path.basename(sys.argv[0]) == "docker":
    args = sys.argv[1:]
    out = args[args.index("--output") + 1]
    os.makedirs(os.path.join(out, "tables", "scans"), exist_ok=True)
    open(os.path.join(out, "tables", "scans", "part-1.parquet"), "w").close()
    sys.exit(int(os.environ.get("RUN_STATUS", "0")))
"""


@pytest.fixture
def fakes(tmp_path):
    """A bin folder with recording `dx` and `docker`; the record file."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("dx", "docker"):
        (bin_dir / name).write_text(RECORDER.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    return bin_dir, tmp_path / "record.jsonl"


def _calls(record: Path) -> list[list[str]]:
    return [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []


def _fan_out(fakes, *args: str) -> subprocess.CompletedProcess:
    bin_dir, record = fakes
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record)}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env, timeout=60)


def _options(argv: list[str]) -> dict[str, str]:
    out = {}
    for i, arg in enumerate(argv):
        if arg.startswith("-i") and "=" in arg:
            key, value = arg.split("=", 1)
            out.setdefault(key, value)
        elif arg.startswith("--") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            out[arg] = argv[i + 1]
    return out


COMMON = ("--config", CONFIG, "--image-file", IMAGE_FILE, "--destination", DESTINATION,
          "--instance-type", "mem2_ssd1_gpu1_x8")


def test_one_swiss_army_knife_job_per_shard_with_paths_intact(fakes):
    done = _fan_out(fakes, "--shards", "3", *COMMON)
    assert done.returncode == 0, done.stderr
    calls = _calls(fakes[1])
    assert len(calls) == 3 and all(c[:3] == ["dx", "run", "app-swiss-army-knife"] for c in calls)
    for i, call in enumerate(calls):
        options = _options(call)
        assert options["-iin"] == IMAGE_FILE and options["--destination"] == DESTINATION
        assert options["--name"] == f"mrseg-shard-{i}-of-3" and options["--instance-type"] == "mem2_ssd1_gpu1_x8"
        assert "-y" in call and "--brief" in call
        assert f"--shard {i}/3" in options["-icmd"]
        assert f"shard {i}/3: job job-{i + 1}" in done.stdout


@pytest.mark.parametrize("status, job_status", [(0, 0), (1, 0), (2, 1)])
def test_each_jobs_command_runs_the_shard_uploads_it_and_exits_with_the_runs_status(fakes, tmp_path, status,
                                                                                   job_status):
    assert _fan_out(fakes, "--shards", "2", "--only", "1", *COMMON).returncode == 0
    cmd = _options(_calls(fakes[1])[0])["-icmd"]
    fakes[1].unlink()
    home = tmp_path / "home dir"  # the instance's $HOME; the job runs in its working directory
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / "mrseg cohort 0.1.0.tar.gz").write_bytes(b"image")  # -iin downloads it here
    env = {**os.environ, "PATH": f"{fakes[0]}:{os.environ['PATH']}", "RECORD": str(fakes[1]), "HOME": str(home),
           "RUN_STATUS": str(status)}
    job = subprocess.run(["bash", "-c", cmd], cwd=work, capture_output=True, text=True, env=env, timeout=60)
    assert job.returncode == job_status, (job.stdout, job.stderr)
    load, run, upload = _calls(fakes[1])
    assert load[:3] == ["docker", "load", "-i"] and load[3] == "mrseg cohort 0.1.0.tar.gz"
    assert not (work / "mrseg cohort 0.1.0.tar.gz").exists()  # not uploaded back as an output
    out = f"{home}/mrseg-output/mrseg-shard-1-of-2"
    i = run.index("mrseg-cohort")
    assert run[i:] == ["mrseg-cohort", "run", f"/mnt/project{CONFIG}", "--shard", "1/2", "--output", out,
                       "--no-progress"]
    assert "--gpus" in run and "/mnt/project:/mnt/project:ro" in run and f"{home}:{home}" in run
    assert upload == ["dx", "upload", "-r", out, "--destination", f"{DESTINATION}/", "--brief"]
    assert not Path(out).exists()  # uploaded, then deleted from the instance disk
    assert f"mrseg-cohort run ended with exit status {status}" in job.stdout


def test_only_some_shards_and_a_dry_run(fakes):
    done = _fan_out(fakes, "--shards", "8", "--only", "3,5", *COMMON)
    assert done.returncode == 0 and [_options(c)["--name"] for c in _calls(fakes[1])] == [
        "mrseg-shard-3-of-8", "mrseg-shard-5-of-8"]
    fakes[1].unlink()
    dry = _fan_out(fakes, "--shards", "2", "--dry-run", *COMMON)
    assert dry.returncode == 0 and not _calls(fakes[1]) and dry.stdout.count("dx run app-swiss-army-knife") == 2


@pytest.mark.parametrize("args, words", [
    (("--shards", "0", *COMMON), "--shards must be a whole number"),
    (("--shards", "2", "--only", "2", *COMMON), "--only: shard '2' is not one of 0..1"),
    (("--shards", "2", "--config", "relative.yaml", "--image-file", IMAGE_FILE, "--destination", DESTINATION,
      "--instance-type", "x"), "--config must be the config's path in the project"),
    (("--shards", "2", "--config", CONFIG, "--image-file", IMAGE_FILE, "--destination", DESTINATION),
     "--instance-type is required"),
    (("--shards", "2", "--bogus", *COMMON), "unknown option --bogus"),
])
def test_bad_calls_are_one_line_and_exit_2(fakes, args, words):
    done = _fan_out(fakes, *args)
    assert done.returncode == 2 and done.stderr.strip().startswith("error: ") and words in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and not _calls(fakes[1])


def test_without_dx_it_says_how_to_get_it(tmp_path):
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(["bash", str(SCRIPT), "--shards", "2", *COMMON], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "no dx command" in done.stderr

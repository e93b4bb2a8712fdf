"""Bad calls: every wrong call gets one clear line and its exit status, and nothing surprising happens.

One table (:data:`CALLS`): issue 16's rows (and the two security items of issue 15), plus config and
option errors that already behave well, so that they stay so. Each row gives the command, the exit
status, a phrase one line of the output must hold, text the output must never hold, and paths that
must not exist afterwards. Commands run in-process (typer's CliRunner) in a scratch folder; config
and option errors stop before Ray starts. Three rows need a run: a one-participant phantom with the
bundled demo model (one real segmentation, shared by the rows that read its output), a full disk
(stops before segmentation) and a dead endpoint.

This file uses only the CLI and test helpers, so that it also runs against older code.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from conftest import DEMO_MODEL
from mrseg_cohort.cli import app
from mrseg_cohort.io.storage import Store
from mrseg_cohort.phantom.cohort import PhantomSpec, participant_id, write_phantom_cohort

NIFTI_SEED, ZIP_SEED, ZIP_VISIT = 5, 6, "2"
PID = participant_id(NIFTI_SEED, 0)       # the nifti phantom's one participant (1500000)
GOOD_ZIP = participant_id(ZIP_SEED, 0)    # 1600000: one zip
TWO_ZIPS = participant_id(ZIP_SEED, 1)    # 1600001: a zip and its re-download beside it
FULL_DISK_KB = 64
SCALE = 3.0  # coarse phantoms: quick to write and read; the network runs on the model's own grid anyway


@dataclass(frozen=True)
class Call:
    """One command line and what must come of it.

    ``args`` and ``absent`` hold placeholders: {tmp} the scratch folder, {config} its job YAML,
    {nifti} a one-participant phantom cohort, {done} the output of a finished run.
    """

    name: str
    origin: str                 # "issue 16: <row>", "issue 15: ...", or "guard" (already behaved well)
    args: tuple[str, ...]
    status: int
    phrase: str
    hidden: str = ""
    absent: tuple[str, ...] = ()
    config: dict | str | None = None   # dotted overrides of a good job, or the file's whole text
    config_at: str = "conf/job.yaml"
    setup: Callable[[Path, dict], None] | None = None
    check: Callable[[Path, dict], None] | None = None
    cwd: str = "."
    ray: bool = False
    shared: bool = False        # the finished run: executed once, checked by each row naming it


def good_job(nifti: str) -> dict:
    return {"cohort": {"name": "bad-calls", "layout": "phantom"}, "input": {"uri": nifti},
            "model": {"weights": str(DEMO_MODEL), "tile_step_size": 1.0}, "output": {"uri": "out"},
            "resources": {"cpu_segmenters": 1, "threads_per_segmenter": 2, "memory_gb_per_scan": 0.5}}


def _apply(job: dict, dotted: dict) -> dict:
    for key, value in dotted.items():
        node = job
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        if value is DROP:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return job


DROP = object()


# -- set-ups and checks of single rows ------------------------------------------------------------
def _write(rel: str, text: str | bytes) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, _: dict) -> None:
        path = tmp / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return setup


def _symlink_loop(rel: str) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, _: dict) -> None:
        (tmp / rel).symlink_to(tmp / rel)  # reading it: OSError ELOOP, a message holding the eid
    return setup


def _copy_cohort(rel: str) -> Callable[[Path, dict], None]:
    def setup(tmp: Path, scene: dict) -> None:
        shutil.copytree(scene["nifti"], tmp / rel)
    return setup


def _full_disk(tmp: Path, _: dict) -> None:
    target = tmp / "full"
    target.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FULL_DISK_KB}k", "tmpfs", str(target)],
                             capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()}")


def _failures_name_the_written_file(tmp: Path, _: dict) -> None:
    failures = pd.read_parquet(tmp / "full" / "tables" / "failures")
    [row] = failures.to_dict("records")
    assert row["stage"] == "write" and "No space left on device" in row["message"], row
    assert row["uri"] == str(tmp / "full" / "stitched" / PID / "0" / "in.nii.gz"), row


def _results_in_the_working_directory(tmp: Path, _: dict) -> None:
    scans = pd.read_parquet(tmp / "work" / "relout" / "tables" / "scans")
    assert list(scans["participant_id"]) == [GOOD_ZIP]


def _the_scan_with_two_zips_failed_the_other_ran(tmp: Path, _: dict) -> None:
    out = tmp / "work" / "relout" / "tables"
    assert list(pd.read_parquet(out / "scans")["participant_id"]) == [GOOD_ZIP]
    [row] = pd.read_parquet(out / "failures").to_dict("records")
    assert (row["participant_id"], row["visit"], row["stage"]) == (TWO_ZIPS, ZIP_VISIT, "read"), row
    for zip_path in (tmp / "in" / f"{TWO_ZIPS}_20201_{ZIP_VISIT}_0.zip",
                     tmp / "in" / "redownload" / f"{TWO_ZIPS}_20201_{ZIP_VISIT}_0.zip"):
        assert str(zip_path) in row["message"], row["message"]


def _finished_run_input(tmp: Path, scene: dict) -> None:
    """A zip cohort: participant GOOD_ZIP, and TWO_ZIPS with a re-download in a sub-folder."""
    zip_file = scene["zip"]
    (tmp / "in" / "redownload").mkdir(parents=True)
    shutil.copy(zip_file, tmp / "in" / zip_file.name)
    for folder in (tmp / "in", tmp / "in" / "redownload"):
        shutil.copy(zip_file, folder / f"{TWO_ZIPS}_20201_{ZIP_VISIT}_0.zip")
    (tmp / "work").mkdir()


FINISHED_RUN = dict(args=("run", "{config}", "-o", "relout", "--no-progress"), status=1,
                    phrase="1 scan(s) failed", cwd="work", ray=True, shared=True, setup=_finished_run_input,
                    config={"cohort.layout": "ukbb-dicom-zip", "input.uri": "../in", "output.uri": "out-in-config"})
"""One real run, from another working directory, over a cohort where one scan has two zips."""

NOT_STARTED = ("conf/out",)
"""The config's output folder: not even created by a call refused before any work."""
NOTHING_WRITTEN = ("conf/out/_work", "conf/out/tables", "conf/out/labels")
"""Nothing in the output folder (the preflight may have created the folder itself)."""


# -- the table --------------------------------------------------------------------------------------
CALLS = [
    # issue 16's table, row by row
    Call("output-uri-empty", "issue 16: output.uri empty", ("run", "{config}", "--no-progress"), 2,
         "output.uri: the output URI is empty", config={"output.uri": ""},
         absent=("conf/_work", "conf/labels", "conf/tables"), ray=True),
    Call("output-option-empty", "issue 16: output.uri empty (as -o '')", ("run", "{config}", "-o", ""), 2,
         "the output URI is empty", absent=NOT_STARTED, ray=True),
    Call("first-n-0", "issue 16: run --first-n 0", ("run", "{config}", "--first-n", "0", "--no-progress"), 2,
         "Invalid value for '--first-n'", absent=NOT_STARTED, ray=True),
    Call("output-relative-to-cwd", "issue 16: run -o relout from another working directory",
         check=_results_in_the_working_directory, absent=("conf/relout", "conf/out-in-config", "work/conf"),
         **FINISHED_RUN),
    Call("plan-gpus-negative", "issue 16: plan --gpus -2", ("plan", "{config}", "--gpus", "-2"), 2,
         "Invalid value for '--gpus'"),
    Call("plan-gpus-0", "issue 16: plan --gpus 0", ("plan", "{config}", "--gpus", "0"), 2,
         "Invalid value for '--gpus'"),
    Call("plan-cpu-workers-0", "issue 16: plan --cpu-workers 0", ("plan", "{config}", "--cpu-workers", "0"), 2,
         "Invalid value for '--cpu-workers'"),
    Call("participants-not-found-plan", "issue 16: participants file with ids that have no scans (plan)",
         ("plan", "{config}"), 0, "2 of 3 selected ids have no scans", setup=_write(
             "ids.txt", f"{PID}\n1599999\n1599998 20201_2_0\n"), config={"input.participants_file": "../ids.txt"}),
    Call("participants-not-found-run", "issue 16: participants file with ids that have no scans (run)",
         ("run", "{config}", "--no-progress"), 2, "1 of 1 selected ids have no scans",
         setup=_write("ids.txt", "1599999\n"), config={"input.participants_file": "../ids.txt"},
         absent=NOTHING_WRITTEN),
    Call("participants-bom", "issue 16: participants file with a UTF-8 BOM", ("plan", "{config}"), 0,
         "manifest: 1 scans of 1 participants", setup=_write("ids.txt", f"\ufeff{PID}\r\n".encode("utf-8")),
         config={"input.participants_file": "../ids.txt"}),
    Call("report-contrast-missing", "issue 16: report --contrast fat on an output without it",
         ("report", "{config}", "--output", "{done}", "--contrast", "fat", "--out", "{tmp}/r.html"), 2,
         "contrast 'fat' has no results", absent=("r.html",)),
    Call("report-no-results", "issue 16: report --output of a folder with no results",
         ("report", "{config}", "--output", "{tmp}/empty", "--out", "{tmp}/r.html"), 2, "no published results",
         absent=("r.html",)),
    Call("measure-unnamed-labels", "issue 16: measure --labels body_comp on a 40-class map",
         ("measure", "{nifti}/truth/" + PID + "/0/labels.nii.gz", "--labels", "body_comp", "--out",
          "{tmp}/m.parquet"), 0, "label map 'mrsegmentator_body_composition' does not name"),
    Call("phantom-into-cohort", "issue 16: phantom DIR -n 1 into an existing phantom cohort",
         ("phantom", "{tmp}/cohort", "-n", "1", "--seed", "7"), 2, "is not empty",
         setup=_copy_cohort("cohort"), absent=("cohort/" + participant_id(7, 0),)),
    Call("full-disk", "issue 16: output on a full disk", ("run", "{config}", "--no-progress"), 1,
         "1 scan(s) failed", setup=_full_disk, check=_failures_name_the_written_file,
         config={"output.uri": "../full", "stitching.save_stitched": True}, ray=True),
    Call("top-level-typo", "issue 16: top-level key typo ouptut", ("run", "{config}"), 2,
         "unknown key 'ouptut' (did you mean 'output'?)", config={"output": DROP, "ouptut": {"uri": "out"}},
         absent=NOT_STARTED),
    Call("typo-in-models-1", "issue 16: a typo inside models[1]", ("run", "{config}"), 2,
         "unknown key 'models[1].fold' (did you mean 'folds'?)",
         config={"model": DROP, "models": [{"weights": str(DEMO_MODEL)},
                                           {"name": "b", "weights": str(DEMO_MODEL), "fold": [0]}]},
         absent=NOT_STARTED),
    Call("output-under-sys", "issue 16: output under /sys", ("run", "{config}"), 2, "permission denied",
         hidden="credentials", config={"output.uri": "/sys/mrseg-cohort-bad-call"}),
    Call("second-zip-same-scan", "issue 16: a second zip for the same eid and instance",
         check=_the_scan_with_two_zips_failed_the_other_ran, **FINISHED_RUN),
    Call("eid-looks-like-http-500", "issue 16: an error text holding an eid such as 1500123",
         ("measure", "{tmp}/1500123_20201_2_0.nii.gz", "--out", "{tmp}/m.parquet"), 2,
         "Too many levels of symbolic links", hidden="attempts", setup=_symlink_loop("1500123_20201_2_0.nii.gz")),
    Call("first-n-hint-quoted", "issue 16: the --first-n hint the CLI prints", ("plan", "{config}"), 0,
         "(mrseg-cohort run '{tmp}/my configs/job.yaml' --first-n 3)", config_at="my configs/job.yaml"),
    # issue 15: the two security items
    Call("numeric-secret", "issue 15: a numeric secret echoed", ("run", "{config}"), 2,
         "output.storage.secret", hidden="12345678",
         config={"output.storage": {"key": "AKIDEXAMPLE", "secret": 12345678}}, absent=NOT_STARTED),
    Call("endpoint-credentials", "issue 15: user:password in an endpoint_url", ("run", "{config}"), 2,
         "input.uri", hidden="s3cr3tpw", absent=NOTHING_WRITTEN,
         config={"input.uri": "s3://bucket/cohort", "input.storage": {
             "endpoint_url": "http://user:s3cr3tpw@127.0.0.1:1", "anon": True, "request_attempts": 1}}),
    # issue 23: the manifest's refusals say why, in plan and status as in run
    Call("plan-input-missing", "issue 23: plan with a missing input.uri", ("plan", "{config}"), 2,
         "input.uri: cannot read", config={"input.uri": "../no-such-cohort"}, absent=NOT_STARTED),
    Call("status-input-missing", "issue 23: status with a missing input.uri", ("status", "{config}"), 2,
         "input.uri: cannot read", config={"input.uri": "../no-such-cohort"}, absent=NOT_STARTED),
    Call("plan-input-a-file", "issue 23: plan with an input.uri that is a file", ("plan", "{config}"), 2,
         "is a file, not a folder", setup=_write("a-file.txt", "x"), config={"input.uri": "../a-file.txt"},
         absent=NOT_STARTED),
    Call("run-input-a-file", "issue 23: run with an input.uri that is a file", ("run", "{config}"), 2,
         "is a file, not a folder", setup=_write("a-file.txt", "x"), config={"input.uri": "../a-file.txt"},
         absent=NOTHING_WRITTEN),
    Call("run-output-is-input", "issue 23: output = input with allow_non_empty", ("run", "{config}"), 2,
         "lie in this job's own output", setup=_copy_cohort("cohort"),
         config={"input.uri": "../cohort", "output.uri": "../cohort", "output.allow_non_empty": True},
         absent=("cohort/_work", "cohort/tables", "cohort/labels")),
    Call("plan-output-is-input", "issue 23: output = input with allow_non_empty (plan)", ("plan", "{config}"), 2,
         "lie in this job's own output", setup=_copy_cohort("cohort"),
         config={"input.uri": "../cohort", "output.uri": "../cohort", "output.allow_non_empty": True}),
    Call("participants-empty", "issue 23: an empty participants file", ("plan", "{config}"), 2,
         "selects none of the 1 scans found", setup=_write("ids.txt", ""),
         config={"input.participants_file": "../ids.txt"}),
    Call("participants-bom-only", "issue 23: a BOM-only participants file", ("run", "{config}"), 2,
         "(it lists no ids)", setup=_write("ids.txt", "\ufeff".encode("utf-8")),
         config={"input.participants_file": "../ids.txt"}, absent=NOTHING_WRITTEN),
    # guards: config and option errors that already stop with one line
    Call("config-missing", "guard", ("run", "{tmp}/nope.yaml"), 2, "cannot read the config file"),
    Call("yaml-invalid", "guard", ("run", "{config}"), 2, "is not valid YAML", config="cohort: [\n"),
    Call("yaml-not-a-mapping", "guard", ("plan", "{config}"), 2, "expected a mapping of sections",
         config="- cohort\n- input\n"),
    Call("nested-typo", "guard", ("run", "{config}"), 2, "unknown key 'model.fold' (did you mean 'folds'?)",
         config={"model.fold": [0]}, absent=NOT_STARTED),
    Call("section-typo", "guard", ("status", "{config}"), 2, "unknown key 'modle' (did you mean 'model'?)",
         config={"modle": {}}),
    Call("section-missing", "guard", ("run", "{config}"), 2, "missing required key 'output'",
         config={"output": DROP}),
    Call("layout-unknown", "guard", ("run", "{config}"), 2, "cohort.layout", config={"cohort.layout": "ukbb-dicom"}),
    Call("segment-not-available", "guard", ("run", "{config}"), 2, "segment must name contrasts",
         config={"contrasts.segment": ["t1"]}),
    Call("tile-step-not-a-number", "guard", ("run", "{config}"), 2, "model.tile_step_size",
         config={"model.tile_step_size": "big"}),
    Call("model-and-models", "guard", ("run", "{config}"), 2, "give either 'model'",
         config={"models": [{"weights": str(DEMO_MODEL)}]}),
    Call("model-names-twice", "guard", ("run", "{config}"), 2, "names must be unique",
         config={"model": DROP, "models": [{"weights": str(DEMO_MODEL)}, {"weights": str(DEMO_MODEL)}]}),
    Call("folds-empty", "guard", ("run", "{config}"), 2, "at least one fold", config={"model.folds": []}),
    Call("connectivity-7", "guard", ("run", "{config}"), 2, "measures.connectivity",
         config={"measures.connectivity": 7}),
    Call("commit-every-0", "guard", ("run", "{config}"), 2, "output.commit_every", config={"output.commit_every": 0}),
    Call("config-first-n-0", "guard", ("run", "{config}"), 2, "limits.first_n", config={"limits.first_n": 0}),
    Call("weights-missing", "guard", ("run", "{config}"), 2, "weights folder", config={"model.weights": "no-weights"},
         absent=NOT_STARTED),
    Call("bundled-unknown", "guard", ("run", "{config}"), 2, "no bundled model 'nope'",
         config={"model.weights": "bundled:nope"}, absent=NOT_STARTED),
    Call("pattern-placeholder", "guard", ("plan", "{config}"), 2, "unknown placeholder {{modality}}",
         config={"cohort.pattern": "{participant_id}/{modality}.nii.gz"}),
    Call("participant-regex-invalid", "guard", ("plan", "{config}"), 2, "not a valid regex",
         config={"cohort.layout": "nifti-folder", "cohort.participant_regex": "(unclosed"}),
    Call("participants-bad-line", "guard", ("plan", "{config}"), 2, "line 2",
         setup=_write("ids.txt", f"{PID}\n{PID},20201_2_0\n"), config={"input.participants_file": "../ids.txt"}),
    Call("participants-file-missing", "guard", ("plan", "{config}"), 2, "no-ids.txt",
         config={"input.participants_file": "../no-ids.txt"}),
    Call("input-missing", "guard", ("run", "{config}"), 2, "input.uri: cannot read",
         config={"input.uri": "../no-such-cohort"}, absent=NOTHING_WRITTEN),
    Call("output-blocked-by-a-file", "guard", ("run", "{config}"), 2, "output.uri: cannot write",
         setup=_write("blocker", "x"), config={"output.uri": "../blocker/out"}),
    Call("cuda-without-gpu", "guard", ("run", "{config}", "--no-progress"), 2, "no GPU is present",
         config={"model.device": "cuda"}, ray=True, absent=("conf/out/_work/runs", "conf/out/tables")),
    Call("evaluate-nothing-to-pair", "guard", ("evaluate", "--out", "{tmp}/ev"), 2, "give either --pred",
         absent=("ev",)),
    Call("evaluate-connectivity-5", "guard", ("evaluate", "--out", "{tmp}/ev", "--pred", "{tmp}", "--ref", "{tmp}",
                                              "--connectivity", "5"), 2, "must be 6, 18 or 26", absent=("ev",)),
    Call("measure-fat-without-water", "guard", ("measure", "{nifti}/truth/" + PID + "/0/labels.nii.gz", "--fat",
                                                "{tmp}/f.nii.gz", "--out", "{tmp}/m.parquet"), 2,
         "must be given together", absent=("m.parquet",)),
    Call("measure-out-not-parquet", "guard", ("measure", "{nifti}/truth/" + PID + "/0/labels.nii.gz", "--out",
                                              "{tmp}/m.csv"), 2, "must name a .parquet file", absent=("m.csv",)),
    Call("phantom-zero", "guard", ("phantom", "{tmp}/p", "-n", "0"), 2, "at least 1", absent=("p",)),
    Call("phantom-zip-nako", "guard", ("phantom", "{tmp}/p", "--format", "dicom-zip", "--layout", "nako"), 2,
         "needs --layout ukbb", absent=("p",)),
    Call("wide-no-results", "guard", ("tables", "wide", "{config}", "--output", "{tmp}/empty", "--out",
                                      "{tmp}/w.parquet"), 2, "no published results", absent=("w.parquet",)),
    Call("wide-unknown-measure", "guard", ("tables", "wide", "{config}", "--output", "{done}", "--measures",
                                           "volume_ml,bogus", "--out", "{tmp}/w.parquet"), 2, "unknown column",
         absent=("w.parquet",)),
    Call("wide-contrast-missing", "extension: tables wide --contrast fat, refused as report --contrast is", (
        "tables", "wide", "{config}", "--output", "{done}", "--contrast", "fat", "--out", "{tmp}/w.parquet"), 2,
         "contrast 'fat' has no results", absent=("w.parquet",)),
]


# -- running a row ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> dict:
    """The inputs rows share: a one-participant nifti phantom and one UK Biobank-like zip."""
    root = tmp_path_factory.mktemp("bad-calls")
    nifti, zips = root / "nifti", root / "zips"
    write_phantom_cohort(Store(), str(nifti), PhantomSpec(participants=1, seed=NIFTI_SEED, scale=SCALE))
    write_phantom_cohort(Store(), str(zips), PhantomSpec(participants=1, seed=ZIP_SEED, visit=ZIP_VISIT,
                                                         format="dicom-zip", scale=SCALE))
    (root / "empty").mkdir()
    return {"root": root, "nifti": nifti, "zip": zips / f"{GOOD_ZIP}_20201_{ZIP_VISIT}_0.zip", "runs": {}}


def _prepare(call: Call, tmp: Path, scene: dict) -> dict:
    (tmp / "empty").mkdir(exist_ok=True)
    if call.setup:
        call.setup(tmp, scene)
    config = tmp / call.config_at
    config.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(call.config, str):
        config.write_text(call.config)
    else:
        config.write_text(yaml.safe_dump(_apply(good_job(str(scene["nifti"])), dict(call.config or {}))))
    return {"tmp": str(tmp), "config": str(config), "nifti": str(scene["nifti"])}


def _invoke(call: Call, tmp: Path, scene: dict, request) -> tuple:
    if call.ray:
        request.getfixturevalue("ray_local")
    places = _prepare(call, tmp, scene)
    if "{done}" in " ".join(call.args):
        places["done"] = str(_finished(scene, request) / "work" / "relout")
    args = [a.format(**places) for a in call.args]
    cwd = Path.cwd()
    os.chdir(tmp / call.cwd)
    try:
        result = CliRunner().invoke(app, args)
    finally:
        os.chdir(cwd)
    return result, places


def _finished(scene: dict, request) -> Path:
    """The scratch folder of the one real run (made on first use, kept for the module)."""
    runs = scene["runs"]
    if "finished" not in runs:
        call = next(c for c in CALLS if c.shared)
        tmp = scene["root"] / "finished"
        tmp.mkdir()
        runs["finished"] = (tmp, *_invoke(call, tmp, scene, request))
    return runs["finished"][0]


def _unmount(tmp: Path) -> None:
    target = tmp / "full"
    if target.is_mount():
        subprocess.run(["umount", str(target)], check=False)


@pytest.mark.parametrize("call", CALLS, ids=[c.name for c in CALLS])
def test_bad_call(call: Call, tmp_path, scene, request):
    if call.name == "cuda-without-gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    tmp = tmp_path
    try:
        if call.shared:
            _finished(scene, request)
            tmp, result, places = scene["runs"]["finished"]
        else:
            result, places = _invoke(call, tmp, scene, request)
        output = result.output
        assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
            f"uncaught {result.exception!r}:\n{output}"
        assert "Traceback" not in output, output
        assert result.exit_code == call.status, f"exit {result.exit_code}, expected {call.status}:\n{output}"
        phrase = call.phrase.format(**places)
        assert any(phrase in line for line in output.splitlines()), f"{phrase!r} not on one line of:\n{output}"
        if call.hidden:
            assert call.hidden not in output, output
        if call.status == 2 and "Usage:" not in output:
            errors = [line for line in output.splitlines() if line.startswith("error:")]
            assert len(errors) == 1, f"expected one error line:\n{output}"
        for rel in call.absent:
            assert not (tmp / rel.format(**places)).exists(), f"{rel} exists after {call.name}"
        if call.check:
            call.check(tmp, scene)
    finally:
        if call.setup is _full_disk:
            _unmount(tmp)


def test_every_issue_row_is_in_the_table():
    """Issue 16's rows (all but the scheduler's in-flight bound, left to the pipeline rewrite), the two
    security items of issue 15, and at least 25 errors that already behaved well."""
    origins = {c.origin.split(" (")[0] for c in CALLS}
    rows = ["output.uri empty", "run --first-n 0", "run -o relout from another working directory",
            "plan --gpus -2", "plan --gpus 0", "plan --cpu-workers 0",
            "participants file with ids that have no scans", "participants file with a UTF-8 BOM",
            "report --contrast fat on an output without it", "report --output of a folder with no results",
            "measure --labels body_comp on a 40-class map", "phantom DIR -n 1 into an existing phantom cohort",
            "output on a full disk", "top-level key typo ouptut", "a typo inside models[1]", "output under /sys",
            "a second zip for the same eid and instance", "an error text holding an eid such as 1500123",
            "the --first-n hint the CLI prints"]
    assert {f"issue 16: {r}" for r in rows} <= origins
    assert {"issue 15: a numeric secret echoed", "issue 15: user:password in an endpoint_url"} <= origins
    assert sum(c.origin.startswith("guard") for c in CALLS) >= 25
    issue_23 = ["plan with a missing input.uri", "status with a missing input.uri", "plan with an input.uri that is a file",
                "output = input with allow_non_empty", "an empty participants file", "a BOM-only participants file"]
    assert {f"issue 23: {r}" for r in issue_23} <= origins

"""One bad scan never stops the others: a corpus of broken inputs mixed into a phantom cohort."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from conftest import write_job_yaml
from mrseg_cohort.config import load_config
from mrseg_cohort.io.storage import Store
from mrseg_cohort.phantom.cohort import PhantomSpec, participant_id, write_phantom_cohort
from mrseg_cohort.pipeline.run import run_job


def _rewrite(path: Path, fn) -> None:
    img = nib.load(path)
    data = np.asanyarray(img.dataobj)
    out = fn(data, img)
    path.write_bytes(gzip.compress(out.to_bytes()))


def _zero_dim(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[46:48] = (0).to_bytes(2, "little")  # dim[3] = 0
    path.write_bytes(gzip.compress(bytes(raw)))


def _absurd_dims(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[42:44] = (30000).to_bytes(2, "little")  # dim[1]
    path.write_bytes(gzip.compress(bytes(raw)[:1000]))


def _zero_spacing(path: Path) -> None:
    raw = bytearray(gzip.decompress(path.read_bytes()))
    raw[80:84] = np.float32(0.0).tobytes()  # pixdim[1] = 0 (SimpleITK would read 1 mm; a broken sform alone
    # is no error: SimpleITK, so MRSegmentator and this tool, then place the image by its qform)
    path.write_bytes(gzip.compress(bytes(raw)))


def _flip(data, img):
    affine = img.affine.copy()
    affine[:3, 0] *= -1
    return nib.Nifti1Image(data, affine)


CORRUPTIONS = {
    "truncated_gzip": ("in_station3", lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "truncated"),
    "not_an_image": ("in_station2", lambda p: p.write_bytes(b"this is a text file\n" * 50), "not a NIfTI file"),
    "corrupt_gzip": ("water_station4", lambda p: p.write_bytes(p.read_bytes()[:400] + bytes(2000)
                                                               + p.read_bytes()[2400:]), "corrupt"),
    "image_2d": ("water_station1", lambda p: _rewrite(p, lambda d, i: nib.Nifti1Image(d[:, :, 0], i.affine)),
                 "not 3-D"),
    "image_4d": ("fat_station2", lambda p: _rewrite(p, lambda d, i: nib.Nifti1Image(np.stack([d] * 3, -1),
                                                                                    i.affine)), "4-D"),
    "nan_voxels": ("in_station4", lambda p: _rewrite(p, lambda d, i: nib.Nifti1Image(
        np.where(d > 500, np.nan, d).astype(np.float32), i.affine)), "NaN"),
    "inf_voxels": ("opp_station5", lambda p: _rewrite(p, lambda d, i: nib.Nifti1Image(
        np.where(d > 300, np.inf, d).astype(np.float32), i.affine)), "infinite"),
    "zero_dim": ("in_station1", _zero_dim, "zero-size"),
    "absurd_dims": ("fat_station6", _absurd_dims, "max_dim"),
    "missing_station": ("fat_station3", lambda p: p.unlink(), "different numbers of stations"),
    "missing_contrast": ("in_station*", lambda p: p.unlink(), "to segment not found"),
    "unstitchable": ("in_station2", lambda p: _rewrite(p, _flip), "orientations differ"),
    "empty_file": ("water_station6", lambda p: p.write_bytes(b""), "only 0 bytes"),
    "empty_image": ("in_station*", lambda p: _rewrite(p, lambda d, i: nib.Nifti1Image(np.zeros_like(d), i.affine)),
                    "every voxel is 0"),
    "zero_spacing": ("opp_station1", _zero_spacing, "spacing"),
}


@pytest.fixture(scope="module")
def mixed_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad") / "in"
    write_phantom_cohort(Store(), str(root), PhantomSpec(participants=2, seed=31))
    template = root / participant_id(31, 1) / "0"
    bad = {}
    for n, (kind, (pattern, corrupt, message)) in enumerate(CORRUPTIONS.items()):
        pid = f"9{n:06d}"
        folder = root / pid / "0"
        shutil.copytree(template, folder)
        for path in sorted(folder.glob(pattern + ".nii.gz")):
            corrupt(path)
        bad[pid] = (kind, message)
    return root, bad


def test_every_bad_scan_is_a_clear_failure_row_and_good_scans_complete(mixed_cohort, demo_model, tmp_path,
                                                                       ray_local):
    root, bad = mixed_cohort
    assert len(bad) >= 12
    out = tmp_path / "out"
    job = load_config(write_job_yaml(tmp_path / "job.yaml", str(root), str(out)))
    summary = run_job(job)
    assert (summary.done, summary.failed) == (2, len(bad))
    failures = pd.read_parquet(out / "tables" / "failures").set_index("participant_id")
    assert set(failures.index) == set(bad)
    for pid, (kind, message) in bad.items():
        row = failures.loc[pid]
        assert message in row["message"], (kind, row["message"])
        assert row["stage"] in {"read", "stitch", "segment"} and row["attempt"] == 1
    named = failures[failures["uri"] != ""]
    assert len(named) >= 10 and all(u.endswith(".nii.gz") or u.endswith("/0") or "station" in u
                                    for u in named["uri"])
    scans = pd.read_parquet(out / "tables" / "scans")
    assert sorted(scans["participant_id"]) == sorted([participant_id(31, 0), participant_id(31, 1)])

    # the next run retries only the failed scans (attempt 2) and loses nothing already written
    again = run_job(job)
    assert (again.already_done, again.scheduled, again.failed) == (2, len(bad), len(bad))
    failures = pd.read_parquet(out / "tables" / "failures")
    assert sorted(failures.groupby("participant_id")["attempt"].max().unique()) == [2]
    assert len(pd.read_parquet(out / "tables" / "structures")) == 2 * 40


def test_cli_exit_status_and_summary_name_the_failures(mixed_cohort, demo_model, tmp_path, ray_local):
    from typer.testing import CliRunner

    from mrseg_cohort.cli import app

    root, bad = mixed_cohort
    config = write_job_yaml(tmp_path / "job.yaml", str(root), str(tmp_path / "out"),
                            limits={"first_n": 4})  # 2 good + the first 2 bad ones
    result = CliRunner().invoke(app, ["run", str(config), "--no-progress"])
    assert result.exit_code == 1, result.output
    text = " ".join(result.output.split())
    assert "2 scan(s) failed" in text and "tables/failures" in text, result.output  # (whole: it failed once, unexplained)
    status = CliRunner().invoke(app, ["status", str(config)])
    assert "2 done" in status.output and "2 failed" in status.output

    plan = CliRunner().invoke(app, ["plan", str(config)])
    assert plan.exit_code == 0, plan.output
    assert "manifest: 4 scans of 4 participants" in plan.output, plan.output
    assert "already done: 2;" in plan.output and "failed before: 2 (will be retried); new: 0; to process: 2" in plan.output
    # the estimate, recomputed from the scans table: medians over scans of the summed stage seconds
    scans = pd.read_parquet(tmp_path / "out" / "tables" / "scans").groupby("participant_id").sum(numeric_only=True)
    cpu_s = sum(scans[f"seconds_{s}"].median() for s in ("read", "stitch", "measure", "write"))
    whole = CliRunner().invoke(app, ["plan", str(config), "--scans", "100000", "--gpus", "8", "--cpu-workers", "16",
                                     "--device-seconds", "5"])
    hours = 100000 / min(8 / 5, 16 / cpu_s) / 3600
    assert f"estimate for 100000 scans on 8 device(s) and 16 CPU worker(s): {hours:.1f} h wall, " \
           f"{8 * hours:.1f} device-hours" in " ".join(whole.output.split()), whole.output

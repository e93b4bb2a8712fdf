"""Agreement matrix with MRSegmentator's own ``infer()`` (issue 22), slow tier.

Inputs: the real MRI and CT of ../shared/data, cropped, along every axis of tests/matrix_cases.py
(axis orders and flips, spacings, oblique directions, sizes, storage types, NIfTI scaling and
qform/sform, .nii/.nii.gz/.mha/.nrrd). Weights: the bundled demo model (1 fold), and for a subset
the demo model as 5 ``nnUNetTrainerNoMirroring`` folds.

Our side runs the nifti-folder pipeline's own stages without Ray: the manifest (``discover``),
``read_and_stitch`` (read_image -> load_scan -> stitch), the Segmenter, ``finish`` (the label file).
MRSegmentator 2.0.0's ``infer()`` runs once per model over all cases, in a process of its own
(tests/mrsegmentator_driver.py), beside ours; both with one torch thread. Every case must give 0
voxels differing from ``infer()`` and a label file on the input's own grid (as SimpleITK, i.e.
MRSegmentator, reads the input), unless it is listed in :data:`EXPLAINED` with the reason. The table
is written to ``agreement_matrix.md`` in the test's folder (and to ``$MRSEG_MATRIX_TABLE`` when
set) and printed; docs/segmentation.md holds a copy.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import REPO, shared_file, write_job_yaml
from matrix_cases import Case, matrix_cases, write_cases, write_demo_as_five_folds

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(importlib.util.find_spec("mrsegmentator") is None,
                                 reason="MRSegmentator (PyPI mrsegmentator) is not installed")]

EXPLAINED: dict[str, str] = {}
"""Case name -> why it may differ from infer() (docs/segmentation.md, agreement matrix). Empty: every
case must agree."""

ATOL_MM = 1e-4
ATOL_DIRECTION = 1e-5


@dataclass
class Row:
    case: Case
    model: str
    differing: int | None = None
    labelled: int = 0
    grid_equal: bool = False
    infer_grid_equal: bool = False
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.differing == 0 and self.grid_equal

    def cells(self) -> list[str]:
        differing = "n/a" if self.differing is None else str(self.differing)
        return [self.case.name, self.case.axis, self.case.what, self.model, differing, str(self.labelled),
                "yes" if self.grid_equal else "no", self.note or EXPLAINED.get(self.case.name, "")]


def _infer(model: Path, folds: str, images: list[Path], out: Path, log: dict) -> None:
    """MRSegmentator's infer() over ``images`` (one process, one torch thread)."""
    t = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(REPO / "tests" / "mrsegmentator_driver.py"), str(model), str(out),
                           folds, *map(str, images)], capture_output=True, text=True, timeout=1500, env=env)
    log[str(out)] = (done.returncode, done.stderr[-3000:], time.perf_counter() - t)


def _our_labels(input_folder: Path, output: Path, modality: str, model: dict) -> tuple[dict[str, Path], dict[str, str]]:
    """Our nifti-folder pipeline's stages, without Ray, over every file of ``input_folder``: the
    label file per case name, and the error line of cases that failed."""
    from mrseg_cohort.config import load_config
    from mrseg_cohort.errors import ScanError
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.manifest import discover
    from mrseg_cohort.pipeline.run import software_versions
    from mrseg_cohort.pipeline.stages import RunContext, finish, read_and_stitch, segmentation_inputs
    from mrseg_cohort.segmentation.segmenter import Segmenter, check_model
    from mrseg_cohort.ledger.work_units import ScanUnit

    config = write_job_yaml(output.with_suffix(".yaml"), str(input_folder), str(output),
                            cohort={"name": "matrix", "layout": "nifti-folder", "modality": modality,
                                    "participant_regex": r"^(?P<participant_id>[A-Za-z0-9.-]+?)\.(nii|mha|nrrd)"},
                            contrasts={"available": ["in"], "segment": ["in"], "fat": None, "water": None},
                            model={**model, "device": "cpu"})
    job = load_config(config)
    models = tuple(check_model(m) for m in job.models)
    ctx = RunContext(job, models, "matrix", software_versions(), "cpu")
    segmenter = Segmenter(list(models), "cpu", threads=1)
    labels, errors = {}, {}
    for source in discover(job, Store()):
        try:
            loaded = read_and_stitch(ctx, source)
            segmentations = {c: segmenter(image, source.modality, c)
                             for c, image in segmentation_inputs(ctx, loaded).items()}
            finish(ctx, ScanUnit(source, tuple(m.name for m in models)), loaded, segmentations)
        except ScanError as err:
            errors[source.participant_id] = str(err)
            continue
        uri = ctx.outputs().label_uri(source.key, "in", models[0].name, models[0].name)
        labels[source.participant_id] = Path(uri.removeprefix("file://"))
    return labels, errors


def _same_grid(a: sitk.Image, b: sitk.Image) -> str:
    """"" when ``a`` and ``b`` have one grid (shape, spacing, origin, direction), else what differs."""
    if a.GetSize() != b.GetSize():
        return f"shape {a.GetSize()} vs {b.GetSize()}"
    for what, x, y, tol in (("spacing", a.GetSpacing(), b.GetSpacing(), ATOL_MM),
                            ("origin", a.GetOrigin(), b.GetOrigin(), ATOL_MM),
                            ("direction", a.GetDirection(), b.GetDirection(), ATOL_DIRECTION)):
        if not np.allclose(x, y, rtol=0, atol=tol):
            return f"{what} {np.round(x, 5).tolist()} vs {np.round(y, 5).tolist()}"
    return ""


def _compare(case: Case, model: str, image_path: Path, ours: Path | None, reference: Path, error: str) -> Row:
    row = Row(case, model)
    image = sitk.ReadImage(str(image_path))
    ref = sitk.ReadImage(str(reference))
    row.infer_grid_equal = not _same_grid(ref, image)
    ref_array = sitk.GetArrayFromImage(ref)
    row.labelled = int((ref_array > 0).sum())
    if ours is None:
        row.note = f"our run failed: {error}"
        return row
    mine = sitk.ReadImage(str(ours))
    grid = _same_grid(mine, image)
    row.grid_equal = not grid
    notes = [f"our grid: {grid}"] if grid else []
    if mine.GetSize() == ref.GetSize():
        row.differing = int((sitk.GetArrayFromImage(mine) != ref_array).sum())
    if not row.infer_grid_equal:
        notes.append(f"infer()'s grid: {_same_grid(ref, image)}")
    row.note = "; ".join(notes)
    return row


def _table(rows: list[Row]) -> str:
    head = ["case", "axis", "what", "model", "voxels differing from infer()", "labelled voxels (infer())",
            "grid equal", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r.cells()) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def test_labels_equal_mrsegmentators_infer_on_every_case(tmp_path, demo_model):
    import torch

    import mrseg_cohort.pipeline.run  # noqa: F401  (fails here, before infer() runs for minutes)

    sources = {"mr": shared_file("mr.nii.gz"), "ct": shared_file("ct.nii.gz")}
    cases = matrix_cases()
    paths = write_cases(cases, sources, tmp_path / "in")
    five = write_demo_as_five_folds(demo_model, tmp_path / "demo-5-folds")
    runs = [("demo", demo_model, "0", cases),
            ("demo x 5 folds", five, "0,1,2,3,4", [c for c in cases if c.five_folds])]

    log: dict = {}
    reference = threading.Thread(target=lambda: [
        _infer(model, folds, [paths[c.name] for c in chosen], tmp_path / f"infer-{i}", log)
        for i, (_, model, folds, chosen) in enumerate(runs)])
    t0, threads = time.perf_counter(), torch.get_num_threads()
    reference.start()
    ours: list[tuple[dict, dict]] = []
    try:
        for i, (_, model, folds, chosen) in enumerate(runs):
            labels, errors = {}, {}
            config = {"weights": "bundled:demo"} if model == demo_model else \
                {"weights": str(model), "folds": [int(f) for f in folds.split(",")]}
            for modality in sorted({c.modality for c in chosen}):
                folder = tmp_path / f"run-{i}" / modality
                folder.mkdir(parents=True)
                for c in chosen:
                    if c.modality == modality:
                        shutil.copy(paths[c.name], folder / c.file_name)
                found, failed = _our_labels(folder, tmp_path / f"out-{i}-{modality}", modality, config)
                labels.update(found)
                errors.update(failed)
            ours.append((labels, errors))
        ours_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        reference.join()
    seconds = time.perf_counter() - t0

    rows, infer_failed = [], []
    for i, (model_name, _, _, chosen) in enumerate(runs):
        code, stderr, _ = log[str(tmp_path / f"infer-{i}")]
        if code != 0:
            infer_failed.append(f"MRSegmentator's infer() failed ({model_name}):\n{stderr}")
            continue
        labels, errors = ours[i]
        for case in chosen:
            reference_file = tmp_path / f"infer-{i}" / (case.name + "_seg" + case.suffix)
            rows.append(_compare(case, model_name, paths[case.name], labels.get(case.name), reference_file,
                                 next((e for k, e in errors.items() if k == case.name), "no label file")))
    table = _table(rows)
    timing = (f"{len(rows)} case runs in {seconds:.0f} s (ours: {ours_seconds:.0f} s; "
              + ", ".join(f"infer() {m}: {log[str(tmp_path / f'infer-{i}')][2]:.0f} s" for i, (m, *_) in enumerate(runs))
              + f"); load {os.getloadavg()[0]:.1f}\n")
    for target in filter(None, (tmp_path / "agreement_matrix.md", os.environ.get("MRSEG_MATRIX_TABLE"))):
        Path(target).write_text(table + "\n" + timing)
    print("\n" + table + timing)
    assert not infer_failed, "\n".join(infer_failed)
    assert all(r.infer_grid_equal for r in rows), "infer()'s own labels are off the input's grid:\n" + table
    failing = [r for r in rows if not r.ok and r.case.name not in EXPLAINED]
    assert not failing, (f"{len(failing)} of {len(rows)} case runs differ from MRSegmentator's infer() "
                         f"({', '.join(f'{r.case.name} [{r.model}]' for r in failing)}):\n{table}")

"""Reorientation to LPS (MRSegmentator's sitk.DICOMOrient) and labels back on the input's grid.

The same real scan stored as shipped, as RAS and with x/y swapped is one image in world space: the
network must see one array (MRSegmentator's weights were trained without mirroring), and each copy's
labels must come back on that copy's own grid. Checked against SimpleITK and against
MRSegmentator's own ``infer()`` (PyPI ``mrsegmentator``, skipped where it is not installed).
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from conftest import REPO, shared_file
from mrseg_cohort.config import ModelConfig
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.nifti import read_labels, read_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.orientation import lps_reorientation
from mrseg_cohort.segmentation.segmenter import Segmenter, check_model

LAYOUTS = ("LPS", "RAS", "PLS", "SAL")
"""As shipped (MR), nibabel's usual RAS, x/y swapped, and every axis moved."""


def _to_sitk(volume: Volume) -> sitk.Image:
    image = sitk.GetImageFromArray(volume.array)
    image.SetSpacing(volume.grid.spacing_xyz_mm)
    image.SetOrigin(volume.grid.origin_mm)
    image.SetDirection(volume.grid.direction)
    return image


def _directions() -> list[np.ndarray]:
    """All 48 axis-aligned directions and 100 random oblique ones (up to about 70 degrees)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1, -1), repeat=3):
            d = np.zeros((3, 3))
            for j, (p, s) in enumerate(zip(perm, signs)):
                d[p, j] = s
            out.append(d)
    rng = np.random.default_rng(0)
    for _ in range(100):
        rotation = Rotation.from_rotvec(rng.normal(size=3) * rng.uniform(0, 1.2)).as_matrix()
        out.append(rotation[:, rng.permutation(3)] * rng.choice((-1, 1), 3))
    return out


@pytest.mark.parametrize("direction", _directions())
def test_reorientation_equals_simpleitks_dicomorient(direction):
    rng = np.random.default_rng(1)
    grid = Grid((5, 6, 7), (3.0, 1.5, 2.0), (10.0, -20.0, 5.0), tuple(direction.ravel()))
    volume = Volume(rng.normal(size=grid.shape).astype(np.float32), grid)
    reference = sitk.DICOMOrient(_to_sitk(volume), "LPS")
    r = lps_reorientation(grid)
    assert np.array_equal(r.apply(volume.array), sitk.GetArrayFromImage(reference))
    np.testing.assert_allclose(r.target.spacing_xyz_mm, reference.GetSpacing())
    np.testing.assert_allclose(r.target.origin_mm, reference.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(r.target.direction, reference.GetDirection(), atol=1e-12)
    assert np.array_equal(r.undo(r.apply(volume.array)), volume.array)
    index = np.arange(volume.array.size).reshape(grid.shape)  # each voxel's own number
    moved = r.apply(index)
    for k in (0, index.size - 1, 93):  # a voxel keeps its world position
        before, after = np.argwhere(index == k)[0].astype(float), np.argwhere(moved == k)[0].astype(float)
        np.testing.assert_allclose(r.target.zyx_to_world(after), grid.zyx_to_world(before), atol=1e-9)


def _write_layouts(source: Path, folder: Path) -> list[Path]:
    """``source`` rewritten in every layout of :data:`LAYOUTS` with SimpleITK (independent of us)."""
    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(source))
    out = []
    for code in LAYOUTS:
        path = folder / f"{code.lower()}_{source.name}"
        sitk.WriteImage(sitk.DICOMOrient(image, code), str(path))
        out.append(path)
    return out


def _canonical(labels: Volume) -> np.ndarray:
    return lps_reorientation(labels.grid).apply(labels.array)


@pytest.fixture(scope="module")
def demo_segmenter(demo_model):
    models = [check_model(ModelConfig(weights=str(demo_model), mirroring=True))]
    return Segmenter(models, "cpu")


@pytest.mark.parametrize("name,modality", [("mr.nii.gz", "MRI"), ("ct.nii.gz", "CT")])
def test_one_scan_in_every_layout_gives_one_label_map_in_world_space(name, modality, demo_segmenter, tmp_path):
    paths = _write_layouts(shared_file(name), tmp_path)
    canonical, grids = [], []
    for path in paths:
        image = read_volume(Store(), str(path))
        labels = demo_segmenter(image, modality, "in").labels["base"]
        assert labels.shape == image.grid.shape
        canonical.append(_canonical(Volume(labels, image.grid)))
        grids.append(image.grid)
    assert len({g.axis_codes() for g in grids}) == len(LAYOUTS)
    assert (canonical[0] > 0).sum() > 1000
    for other in canonical[1:]:
        assert np.array_equal(other, canonical[0])


def test_labels_are_written_on_each_inputs_own_grid(tmp_path, demo_model, ray_local):
    """Through a job (nifti-folder layout): every copy's label file has that copy's geometry, and in
    world space all copies' labels are one map."""
    from conftest import write_job_yaml
    from mrseg_cohort.config import load_config
    from mrseg_cohort.pipeline.run import run_job

    paths = _write_layouts(shared_file("mr.nii.gz"), tmp_path / "in")
    config = write_job_yaml(tmp_path / "job.yaml", str(tmp_path / "in"), str(tmp_path / "out"),
                            cohort={"name": "layouts", "layout": "nifti-folder",
                                    "participant_regex": r"^(?P<participant_id>[a-z]+)_"},
                            contrasts={"available": ["in"], "segment": ["in"], "fat": None, "water": None})
    summary = run_job(load_config(config))
    assert summary.done == len(LAYOUTS) and summary.failed == 0
    canonical = []
    for path in paths:
        image = read_volume(Store(), str(path))
        labels = read_labels(Store(), str(tmp_path / "out" / "labels" / path.name.split("_")[0] / "0" / "in.nii.gz"))
        assert labels.grid.is_close(image.grid, atol_mm=1e-4), path.name
        canonical.append(_canonical(labels))
    assert all(np.array_equal(c, canonical[0]) for c in canonical[1:])


MRSEGMENTATOR = importlib.util.find_spec("mrsegmentator") is not None


@pytest.mark.skipif(not MRSEGMENTATOR, reason="MRSegmentator (PyPI mrsegmentator) is not installed")
def test_labels_equal_mrsegmentators_own_infer(demo_model, demo_segmenter, tmp_path):
    """MRSegmentator's infer() (its reader reorients to LPS, nnU-Net predicts with mirroring, labels
    written back in the input's orientation) and ours, with the same weights, on the real MRI and
    CT, stored as shipped and reoriented."""
    paths = []
    for name in ("mr.nii.gz", "ct.nii.gz"):
        paths += _write_layouts(shared_file(name), tmp_path / "in")
    done = subprocess.run([sys.executable, str(REPO / "tests" / "mrsegmentator_driver.py"), str(demo_model),
                           str(tmp_path / "out"), "0", *map(str, paths)], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    for path in paths:
        image = read_volume(Store(), str(path))
        reference = read_labels(Store(), str(tmp_path / "out" / path.name.replace(".nii.gz", "_seg.nii.gz")))
        assert reference.grid.is_close(image.grid, atol_mm=1e-4)
        modality = "CT" if "ct" in path.name else "MRI"
        ours = demo_segmenter(image, modality, "in").labels["base"]
        present = np.union1d(np.unique(ours), np.unique(reference.array))
        assert present.size > 5
        for value in present:
            a, b = ours == value, reference.array == value
            assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, (path.name, int(value))
        assert (ours != reference.array).sum() == 0, path.name

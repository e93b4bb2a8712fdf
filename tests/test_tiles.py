"""Skipping sliding-window tiles that do not meet the body: same labels, fewer tiles."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.segmentation.engine import ModelRunner, TileCounts
from mrseg_cohort.segmentation.model_folder import open_model_folder
from mrseg_cohort.segmentation.tiles import BodyMask, body_mask, tiles_to_run


def test_box_queries_equal_a_brute_force_search():
    rng = np.random.default_rng(0)
    mask = rng.random((9, 11, 7)) > 0.97
    body = BodyMask.of(mask, step=3)
    for _ in range(300):
        lo = tuple(int(v) for v in rng.integers(-5, 30, 3))
        hi = tuple(int(a + b) for a, b in zip(lo, rng.integers(0, 15, 3)))
        fine = np.kron(mask, np.ones((3, 3, 3), dtype=bool))  # each coarse voxel covers 3^3 model voxels
        box = tuple(slice(max(0, a), max(0, b)) for a, b in zip(lo, hi))
        assert body.any_in(lo, hi) == bool(fine[box].any()), (lo, hi)


def test_tiles_run_exactly_when_they_meet_the_grown_body():
    mask = np.zeros((20, 20, 20), dtype=bool)
    mask[8:12, 9:11, 2:4] = True
    body = BodyMask.of(mask, 1)
    corners = list(itertools.product((0, 6, 12), (0, 6, 12), (0, 6, 12)))
    for margin in (0, 3):
        run = tiles_to_run(body, corners, (8, 8, 8), (0, 0, 0), (margin,) * 3)
        grown = np.zeros_like(mask)
        grown[max(0, 8 - margin):12 + margin, max(0, 9 - margin):11 + margin, max(0, 2 - margin):4 + margin] = True
        expected = [bool(grown[z:z + 8, y:y + 8, x:x + 8].any()) for z, y, x in corners]
        assert run == expected and 0 < sum(run) < len(run)
    assert tiles_to_run(None, corners, (8, 8, 8), (0, 0, 0), (0, 0, 0)) == [True] * len(corners)


def test_every_part_that_could_be_body_is_kept_specks_are_not_and_a_flat_image_has_none():
    """The mask was the largest bright component above one Otsu threshold: a part of the body apart
    from the rest (past a station gap, an arm) or a far darker station lost its tiles."""
    rng = np.random.default_rng(1)
    image = np.abs(rng.normal(0, 1, (40, 40, 40))).astype(np.float32)  # noise: MRI air
    image[10:20, 10:30, 5:25] += 20  # the trunk
    image[10:20, 10:30, 30:34] += 20  # an arm, apart from it
    image[25:35, 10:30, 5:25] = image[25:35, 10:30, 5:25] / 10 + 2  # a station ten times darker
    image[2:4, 2:4, 36] += 20  # a bright speck of noise elsewhere (4 voxels)
    image[12:18, 15:25, 12:18] = 0.5  # a dark organ inside the trunk (as in a fat image)
    body = body_mask(image, 1)
    assert body.mask[10:20, 10:30, 5:25].all() and body.mask[10:20, 10:30, 30:34].all()
    assert body.mask[25:35, 10:30, 5:25].all()
    assert not body.mask[2:4, 2:4, 36].any() and not body.mask[36:].any()
    assert body_mask(np.full((5, 5, 5), 3.0, np.float32), 1) is None


@pytest.fixture(scope="module")
def phantom_with_air():
    """A phantom (demo grid) with 40 cm of noise-only slices (the phantom's own air noise) above and
    below: a field of view with air beyond the reach of any tile that meets the body. Returns the
    phantom, the padded image and the padded rows' slice of the phantom."""
    from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant

    r = render_spec_participant(PhantomSpec(1, seed=31), 0)
    image = np.rint(r.in_phase).astype(np.float32)
    rng = np.random.default_rng(2)
    pad = int(400 / r.grid.spacing_mm[0])
    shape = (pad, *image.shape[1:])
    air = np.abs(rng.normal(0, 5.1, shape) + 1j * rng.normal(0, 5.1, shape))  # Rayleigh, median about 6
    padded = np.concatenate([air, image, air]).astype(np.float32)
    return Volume(image, r.grid), Volume(padded, Grid(padded.shape, r.grid.spacing_mm)), slice(pad, pad + len(image))


def _within_reach(runner: ModelRunner, volume: Volume, body_rows: slice) -> slice:
    """Rows of ``volume`` within half a patch (plus the mask's coarse step) of the body's rows: every
    tile covering them meets the body, so skipping must not change them."""
    from mrseg_cohort.segmentation.tiles import coarse_step

    reach_mm = (runner.patch_size[0] // 2 + coarse_step(runner.spacing)) * runner.spacing[0]
    rows = int(reach_mm // volume.grid.spacing_mm[0])
    return slice(max(0, body_rows.start - rows), body_rows.stop + rows)


def test_skipping_keeps_the_labels_of_the_full_sliding_window(phantom_with_air, demo_model):
    """Where the body fills the field of view every tile runs and the labels are the same; with air
    beyond the reach of the body's tiles, fewer tiles run and the labels within reach are the same
    (beyond it, the full sliding window's labels are the demo model's guesses in pure noise)."""
    folder = open_model_folder(demo_model, (0,))
    full, skipping = ModelRunner(folder, "cpu"), ModelRunner(folder, "cpu", skip_empty_tiles=True)
    body, padded, rows = phantom_with_air
    counts = {(n, s): TileCounts() for n in ("body", "air") for s in (False, True)}
    a = full(body.array, body.grid.spacing_mm, tiles=counts["body", False])
    b = skipping(body.array, body.grid.spacing_mm, tiles=counts["body", True])
    assert np.array_equal(a, b) and len(np.unique(a)) > 30
    assert counts["body", True].run == counts["body", True].total == counts["body", False].run
    a = full(padded.array, padded.grid.spacing_mm, tiles=counts["air", False])
    b = skipping(padded.array, padded.grid.spacing_mm, tiles=counts["air", True])
    reach = _within_reach(skipping, padded, rows)
    assert np.array_equal(a[reach], b[reach]) and reach.stop - reach.start < len(a)
    assert counts["air", True].run < counts["air", True].total == counts["air", False].run


def test_skipped_tiles_agree_with_nnunets_predictor(phantom_with_air, demo_model, tmp_path):
    from mrseg_cohort.io.nifti import read_labels, write_volume
    from mrseg_cohort.io.storage import Store
    from nnunet_driver import predict_from_files

    _, padded, rows = phantom_with_air
    (tmp_path / "in").mkdir()
    write_volume(Store(), str(tmp_path / "in" / "case_0000.nii.gz"), padded, np.float32)
    predict_from_files(demo_model, (0,), tmp_path / "in", tmp_path / "pred")
    reference = read_labels(Store(), str(tmp_path / "pred" / "case.nii.gz")).array
    counts = TileCounts()
    runner = ModelRunner(open_model_folder(demo_model, (0,)), "cpu", skip_empty_tiles=True)
    ours = runner(padded.array, padded.grid.spacing_mm, tiles=counts)
    assert counts.run < counts.total
    reach = _within_reach(runner, padded, rows)
    ours, reference = ours[reach], reference[reach]
    for value in np.union1d(np.unique(ours), np.unique(reference)):
        a, b = ours == value, reference == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, int(value)
    assert (ours != reference).sum() == 0


def test_out_of_memory_retries_on_the_host_then_with_half_the_tiles_per_batch(monkeypatch):
    from mrseg_cohort.errors import SegmentationError
    from mrseg_cohort.segmentation.segmenter import Segmenter

    calls = []

    class Runner:
        model = type("M", (), {"name": "base"})
        tiles_per_batch = 8

        def __call__(self, array, spacing, times, prepared, counts, batch, on_host):
            calls.append((batch, on_host))
            if batch > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return np.zeros(array.shape, np.uint8)

    image = Volume(np.zeros((2, 2, 2), np.float32), Grid((2, 2, 2), (1.0, 1.0, 1.0)))
    segmenter = Segmenter.__new__(Segmenter)
    with pytest.raises(SegmentationError, match="also with the accumulators on the host and 4 tile"):
        segmenter._run(Runner(), image, None, None)
    assert calls == [(8, False), (8, True), (4, True)]
    calls.clear()
    Runner.tiles_per_batch = 4
    labels, _ = segmenter._run(Runner(), image, None, None)
    assert calls == [(4, False), (4, True), (2, True)] and labels.shape == (2, 2, 2)


@pytest.fixture(scope="module")
def tile_runners(demo_model):
    folder = open_model_folder(demo_model, (0,))
    return ModelRunner(folder, "cpu"), ModelRunner(folder, "cpu", skip_empty_tiles=True)


@pytest.fixture(scope="module")
def phantom_for_properties():
    from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant

    return render_spec_participant(PhantomSpec(1, seed=7), 0)


def _variant(rendered, contrast: str, edits: list[tuple[str, float, float]]) -> np.ndarray:
    """A phantom contrast with stations gone (zero-filled, as a stitched gap), dimmed to a tenth, or
    the body cut apart along x (limbs apart from the trunk); positions as fractions of the axis."""
    image = {"in": rendered.in_phase, "fat": rendered.fat, "water": rendered.water}[contrast]
    image = np.rint(image).astype(np.float32)
    for kind, start, length in edits:
        axis = 2 if kind == "apart" else 0
        n = image.shape[axis]
        a = int(start * n)
        b = min(n, a + max(2, int(length * n)))
        index = (slice(None), slice(None), slice(a, b)) if axis == 2 else (slice(a, b),)
        image[index] = image[index] * 0.1 if kind == "dim" else 0
    return image


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_edit = st.tuples(st.sampled_from(["gap", "dim", "apart"]), st.floats(0.05, 0.85), st.floats(0.04, 0.25))


@settings(max_examples=4, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(contrast=st.sampled_from(["in", "fat", "water"]), edits=st.lists(_edit, min_size=1, max_size=3))
def test_skipping_never_changes_the_labels_of_the_body(tile_runners, phantom_for_properties, contrast, edits):
    """Phantoms with stations gone (gaps, a missing station), a station ten times darker, the body cut
    apart, in in-phase, fat-only and water-only contrasts: wherever the phantom has body, the labels
    with tile skipping are the full sliding window's (the old mask, the largest component above one
    threshold, lost every tile past a gap or in a dark station)."""
    full, skipping = tile_runners
    image = _variant(phantom_for_properties, contrast, edits)
    spacing = phantom_for_properties.grid.spacing_mm
    a = full(image, spacing)
    b = skipping(image, spacing)
    body = (phantom_for_properties.labels > 0) & (image > 0)
    assert np.array_equal(a[body], b[body]), int((a[body] != b[body]).sum())


def test_skipping_keeps_the_labels_of_a_ct_within_reach_of_the_body(demo_model):
    """CT (air about -1000 HU, no MRI noise floor): the real CT with 40 cm of air above and below;
    tiles in the air alone are skipped, labels within reach of the body equal the full window's."""
    from conftest import shared_file
    from mrseg_cohort.io.nifti import read_volume
    from mrseg_cohort.io.storage import Store

    ct = read_volume(Store(), str(shared_file("ct.nii.gz")))
    rng = np.random.default_rng(3)
    pad = int(400 / ct.grid.spacing_mm[0])
    air = rng.normal(-1000, 20, (pad, *ct.array.shape[1:]))
    padded = np.concatenate([air, ct.array, air]).astype(np.float32)
    folder = open_model_folder(demo_model, (0,))
    full, skipping = ModelRunner(folder, "cpu"), ModelRunner(folder, "cpu", skip_empty_tiles=True)
    counts = {s: TileCounts() for s in (False, True)}
    a = full(padded, ct.grid.spacing_mm, tiles=counts[False])
    b = skipping(padded, ct.grid.spacing_mm, tiles=counts[True])
    reach = _within_reach(skipping, Volume(padded, Grid(padded.shape, ct.grid.spacing_mm)),
                          slice(pad, pad + len(ct.array)))
    assert np.array_equal(a[reach], b[reach]) and len(np.unique(a[reach])) > 5
    assert counts[True].run < counts[True].total == counts[False].run

"""Phantoms: reproducible from a seed, with the stated geometry, anatomy and fat fractions."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from mrseg_cohort.cli import app
from mrseg_cohort.io.nifti import read_labels, read_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant
from mrseg_cohort.phantom.stations import station_layout, station_slices, whole_body_grid


def test_same_seed_same_participant_other_seed_differs():
    a = render_spec_participant(PhantomSpec(1, seed=5), 0)
    b = render_spec_participant(PhantomSpec(1, seed=5), 0)
    c = render_spec_participant(PhantomSpec(1, seed=6), 0)
    assert np.array_equal(a.labels, b.labels) and np.array_equal(a.water, b.water)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("layout,n,spacing,matrix", [("ukbb", 6, (3.0, 2.232, 2.232), (168, 224)),
                                                       ("nako", 4, (3.0, 1.4, 1.4), (260, 320))])
def test_layout_geometry_full_size(layout, n, spacing, matrix):
    lay = station_layout(layout, 1.0)
    grid = whole_body_grid(lay)
    assert lay.n_stations == n and grid.spacing_mm == spacing and grid.shape[1:] == matrix
    slices = station_slices(lay)
    assert slices[0].stop == grid.shape[0] and slices[-1].start == 0  # station 1 most superior
    for upper, lower in zip(slices, slices[1:]):
        assert lower.stop - upper.start == lay.overlap_slices  # consecutive stations overlap
    if layout == "nako":
        assert grid.shape == (316, 260, 320)  # NAKO's stitched matrix


def test_written_cohort_layout_and_geometry(phantom_cohort):
    store = Store()
    meta = json.loads((phantom_cohort / "phantom.json").read_text())
    assert meta["layout"] == "ukbb" and meta["participants"] == 4
    pid = sorted(p.name for p in phantom_cohort.iterdir() if p.name.isdigit())[0]
    folder = phantom_cohort / pid / "0"
    files = sorted(f.name for f in folder.iterdir())
    assert files == sorted(f"{c}_station{k}.nii.gz" for c in ("in", "opp", "water", "fat") for k in range(1, 7))
    truth = read_labels(store, str(phantom_cohort / "truth" / pid / "0" / "labels.nii.gz"))
    stations = [read_volume(store, str(folder / f"in_station{k}.nii.gz")) for k in range(1, 7)]
    z_origins = [s.grid.origin_mm[2] for s in stations]
    assert z_origins == sorted(z_origins, reverse=True)  # station 1 is the most superior
    for s in stations:
        assert s.grid.spacing_mm == pytest.approx((6.0, 4.464, 4.464))
        assert s.grid.axis_codes() == "LPS" and s.grid.shape[1:] == truth.grid.shape[1:]
    top = stations[0].grid
    assert top.origin_mm[2] + (top.shape[0] - 1) * 6.0 == pytest.approx(
        truth.grid.origin_mm[2] + (truth.grid.shape[0] - 1) * 6.0)
    # every one of the 40 structures present, left structures on the participant's left (+x in LPS)
    present = set(np.unique(truth.array)) - {0}
    assert present == set(MRSEG)
    for left, right in MRSEG.pairs():
        zl, zr = (np.argwhere(truth.array == i).mean(axis=0) for i in (left, right))
        assert truth.grid.zyx_to_world(zl)[0] > truth.grid.zyx_to_world(zr)[0], MRSEG[left].name


def test_truth_table_matches_label_counts(phantom_cohort):
    table = pd.read_parquet(phantom_cohort / "truth" / "structures.parquet")
    assert set(table["model"]) == {"base", "body_comp"}
    assert len(table) == 4 * (len(MRSEG) + len(BODY_COMPOSITION))
    pid = table["participant_id"].iloc[0]
    truth = read_labels(Store(), str(phantom_cohort / "truth" / pid / "0" / "labels.nii.gz"))
    rows = table[(table.participant_id == pid) & (table.model == "base")].set_index("structure_id")
    counts = np.bincount(truth.array.ravel(), minlength=41)
    assert (rows["n_voxels"] == counts[rows.index]).all()
    assert rows["volume_ml"].to_numpy() == pytest.approx(counts[rows.index] * 6.0 * 4.464 * 4.464 / 1000)


def test_fat_fraction_of_images_is_the_stated_truth():
    r = render_spec_participant(PhantomSpec(1, seed=11), 0)
    for name in ("liver", "spleen", "left_gluteus_maximus", "right_femur", "spine"):
        mask = r.labels == MRSEG.id_of(name)
        ff = 100 * r.fat[mask] / (r.fat[mask] + r.water[mask])
        assert np.median(ff) == pytest.approx(r.ff_truth[name], abs=0.5), name
    vat = r.body_comp == BODY_COMPOSITION.id_of("visceral_fat")
    ff = 100 * r.fat[vat] / (r.fat[vat] + r.water[vat])
    assert np.median(ff) == pytest.approx(r.ff_truth["visceral_fat"], abs=0.5)
    assert np.allclose(r.in_phase, r.water + r.fat) and np.allclose(r.opposed_phase, np.abs(r.water - r.fat))


def test_broken_vessel_phantom_has_two_aorta_pieces():
    from scipy import ndimage

    r = render_spec_participant(PhantomSpec(1, seed=3, broken_vessel="aorta"), 0)
    _, n = ndimage.label(r.labels == MRSEG.id_of("aorta"), structure=np.ones((3, 3, 3)))
    assert n == 2


@pytest.mark.parametrize("args,message", [
    (["--participants", "0"], "at least 1"),
    (["--layout", "hcp"], "unknown phantom layout"),
])
def test_bad_calls_give_one_line_and_nonzero_exit(tmp_path, args, message):
    result = CliRunner().invoke(app, ["phantom", str(tmp_path / "out"), *args])
    assert result.exit_code == 2
    assert message in result.output and len(result.output.strip().splitlines()) == 1


def test_unwritable_output_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(app, ["phantom", str(blocker / "out"), "-n", "1"])
    assert result.exit_code == 2 and "cannot write" in result.output

"""Stitching: stations split from a known whole body come back to it (DESIGN.md section 4)."""

import numpy as np
import pytest
import SimpleITK as sitk

from mrseg_cohort.errors import StitchError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant
from mrseg_cohort.phantom.stations import station_layout, station_slices
from mrseg_cohort.stitching import scan_grid, stitch, target_grid


@pytest.fixture(scope="module")
def body():
    r = render_spec_participant(PhantomSpec(1, seed=21), 0)
    return r


def _stations(image: np.ndarray, grid: Grid, slices) -> list[Volume]:
    return [Volume(image[s], grid.crop((s.start, 0, 0), (s.stop, *grid.shape[1:]))) for s in slices]


def _resample(volume: Volume, grid: Grid) -> Volume:
    def to_sitk(v):
        img = sitk.GetImageFromArray(v.array.astype(np.float32))
        img.SetSpacing(v.grid.spacing_xyz_mm), img.SetOrigin(v.grid.origin_mm), img.SetDirection(v.grid.direction)
        return img

    ref = sitk.Image(grid.shape[2], grid.shape[1], grid.shape[0], sitk.sitkFloat32)
    ref.SetSpacing(grid.spacing_xyz_mm), ref.SetOrigin(grid.origin_mm), ref.SetDirection(grid.direction)
    out = sitk.Resample(to_sitk(volume), ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return Volume(sitk.GetArrayFromImage(out), grid)


def test_aligned_stations_stitch_back_exactly(body):
    slices = station_slices(station_layout("ukbb", 2.0))
    stations = _stations(body.in_phase, body.grid, slices)[::-1]  # order given must not matter
    grid = target_grid([s.grid for s in stations])
    assert grid.is_close(body.grid)
    result = stitch(stations, grid)
    np.testing.assert_allclose(result.volume.array, body.in_phase, rtol=1e-5)
    assert len(result.seams) == 5 and all(s.gap_mm == 0 and s.overlap_mm == pytest.approx(12.0)
                                          for s in result.seams)
    assert all(s.fusion_cost == pytest.approx(0.0, abs=1e-6) for s in result.seams)


def _smooth_field(grid: Grid) -> np.ndarray:
    """A smooth, positive test image (variations over 10-40 cm) sampled at the grid's voxel centres."""
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij")
    x, y, z = np.moveaxis(grid.zyx_to_world(np.stack([zz, yy, xx], axis=-1)), -1, 0)
    return (500 + 150 * np.sin(x / 60) * np.cos(y / 45) + 120 * np.cos(z / 70) + 60 * np.sin((x + z) / 90))


def test_off_grid_stations_within_one_percent_away_from_seams(body):
    """Stations on their own grids (shifted by fractions of a voxel) are resampled linearly and blended."""
    slices = station_slices(station_layout("ukbb", 2.0))
    rng = np.random.default_rng(0)
    stations = []
    for s in slices:
        g = body.grid.crop((s.start, 0, 0), (s.stop, *body.grid.shape[1:]))
        moved = Grid(g.shape, g.spacing_mm, tuple(np.add(g.origin_mm, rng.uniform(-0.5, 0.5, 3) * g.spacing_xyz_mm)),
                     g.direction)
        stations.append(Volume(_smooth_field(moved), moved))
    result = stitch(stations, body.grid)
    truth = _smooth_field(body.grid)
    covered = result.volume.array > 0
    covered[:, :2] = covered[:, -2:] = covered[:, :, :2] = covered[:, :, -2:] = False  # field-of-view edges
    seam_rows = np.zeros(body.grid.shape[0], dtype=bool)
    for s in slices[:-1]:
        seam_rows[s.start - 1: s.start + station_layout("ukbb", 2.0).overlap_slices + 1] = True
    err = np.abs(result.volume.array - truth) / truth.mean()
    assert err[covered & ~seam_rows[:, None, None]].mean() < 0.01
    assert err[covered & seam_rows[:, None, None]].mean() < 0.03
    assert all(0 <= s.fusion_cost < 0.01 for s in result.seams)


def test_contrasts_share_the_grid_so_labels_transfer(body):
    slices = station_slices(station_layout("ukbb", 2.0))
    water = _stations(body.water, body.grid, slices)
    fat = _stations(body.fat, body.grid, slices)
    grid = target_grid([s.grid for s in water + fat])
    sw, sf = stitch(water, grid), stitch(fat, grid)
    assert sw.volume.grid == sf.volume.grid == grid
    liver = body.labels == 5
    ff = sf.volume.array[liver] / (sf.volume.array[liver] + sw.volume.array[liver])
    assert 100 * np.median(ff) == pytest.approx(body.ff_truth["liver"], abs=0.5)


def test_gap_between_stations_is_flagged_not_filled(body):
    slices = station_slices(station_layout("ukbb", 2.0))
    stations = _stations(body.in_phase, body.grid, slices)
    del stations[2]  # a missing middle station leaves a gap
    result = stitch(stations, target_grid([s.grid for s in stations]))
    assert max(s.gap_mm for s in result.seams) > 0
    gap_rows = np.flatnonzero(result.volume.array.reshape(result.volume.grid.shape[0], -1).max(axis=1) == 0)
    assert gap_rows.size > 0


def test_overlapping_stations_with_different_orientation_are_refused(body):
    slices = station_slices(station_layout("ukbb", 2.0))
    a, b = _stations(body.in_phase, body.grid, slices[:2])
    flipped = Grid(b.grid.shape, b.grid.spacing_mm, b.grid.origin_mm, (-1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(StitchError, match="orientations differ"):
        stitch([a, Volume(b.array, flipped)], target_grid([a.grid, b.grid]))


def _unequal_stations(value: float, off_grid: bool) -> list[Volume]:
    """Six UK Biobank-like stations, 224 columns x 156..174 rows x 44 slices at 2.232 x 2.232 x 3 mm,
    centred on one in-plane axis and overlapping by 4 slices; ``off_grid``: odd row differences and a
    sub-voxel in-plane shift, so that stations do not lie on one grid."""
    rows = (174, 156, 168, 161, 172, 159) if off_grid else (174, 156, 168, 162, 172, 160)
    stations, z0 = [], 0.0
    for i, n_rows in enumerate(rows):
        shift = 0.37 * i if off_grid else 0.0
        origin = (-112 * 2.232 + shift, -(n_rows / 2) * 2.232 + shift / 2, z0)
        grid = Grid((44, n_rows, 224), (3.0, 2.232, 2.232), origin)
        stations.append(Volume(np.full(grid.shape, value, np.float32), grid))
        z0 += 40 * 3.0
    return stations


@pytest.mark.parametrize("off_grid", [False, True])
def test_unequal_fields_of_view_stitch_a_constant_to_a_constant(off_grid):
    """Where only one station covers a voxel it gives that voxel's value: no dimming in overlaps
    of stations with different row counts (issue 14: a constant 100 came out 25 -> 55 -> 95)."""
    stations = _unequal_stations(100.0, off_grid)
    grid = target_grid([s.grid for s in stations])
    result = stitch(stations, grid)
    image = result.volume.array
    covered = np.zeros(grid.shape, dtype=bool)
    for s in stations:
        covered |= _resample(Volume(np.ones(s.grid.shape, np.float32), s.grid), grid).array > 0
    assert covered.mean() > 0.9 and (image[~covered] == 0).all()
    np.testing.assert_allclose(image[covered], 100.0, rtol=0.005)
    assert len(result.seams) == 5 and all(s.fusion_cost == pytest.approx(0.0, abs=1e-4) for s in result.seams)


def test_a_voxel_only_one_station_covers_is_that_stations_value():
    rng = np.random.default_rng(5)
    stations = [Volume(rng.uniform(50, 150, s.grid.shape).astype(np.float32), s.grid)
                for s in _unequal_stations(0.0, off_grid=True)]
    grid = target_grid([s.grid for s in stations])
    image = stitch(stations, grid).volume.array
    on_target = [_resample(s, grid).array for s in stations]
    coverage = [_resample(Volume(np.ones(s.grid.shape, np.float32), s.grid), grid).array > 0 for s in stations]
    n_covering = np.sum(coverage, axis=0)
    for values, inside in zip(on_target, coverage):
        only = inside & (n_covering == 1)
        assert only.sum() > 1000
        np.testing.assert_allclose(image[only], values[only], rtol=1e-6)
    both = n_covering == 2
    lo = np.minimum.reduce([np.where(c, v, np.inf) for v, c in zip(on_target, coverage)])
    hi = np.maximum.reduce([np.where(c, v, -np.inf) for v, c in zip(on_target, coverage)])
    assert both.sum() > 1000 and ((image[both] >= lo[both] - 1e-3) & (image[both] <= hi[both] + 1e-3)).all()


def test_a_single_volume_keeps_its_own_grid_even_with_non_square_pixels():
    """It was resampled to its finer in-plane spacing (117 -> 145 rows at 3.0 x 2.4 mm): labels came out
    on another grid than the input's and differed from MRSegmentator's, which segments it as it is."""
    direction = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # axes permuted: not LPS either
    grid = Grid((20, 117, 91), (5.0, 3.0, 2.4), (12.5, -3.0, 40.0), direction)
    image = Volume(np.random.default_rng(0).random(grid.shape).astype(np.float32), grid)
    target = target_grid([grid], inplane_spacing_mm=1.0, z_spacing_mm=3.0)  # configured spacings: for stitching
    assert target == grid
    np.testing.assert_array_equal(stitch([image], target).volume.array, image.array)
    contrasts = [grid, Grid(grid.shape, grid.spacing_mm, grid.origin_mm, grid.direction)]  # in, fat, ...
    assert target_grid(contrasts) == grid


def test_stations_keep_each_axis_spacing_and_the_finest_along_each_axis():
    a = Grid((10, 117, 91), (4.0, 3.0, 2.4), (0.0, 0.0, 0.0))
    b = Grid((10, 117, 91), (3.0, 2.8, 2.6), (0.0, 0.0, 30.0))  # above a, other spacings
    grid = target_grid([a, b])
    assert grid.spacing_mm == (3.0, 2.8, 2.4)
    assert target_grid([a, b], inplane_spacing_mm=2.0).spacing_mm == (3.0, 2.0, 2.0)
    # the upper station stores x and y swapped (it gives the grid's axes): each spacing is taken along
    # the same world axis, 3.0 mm along y (the new array x) and 2.4 mm along x (the new array y)
    swapped = Grid((10, 91, 117), (3.0, 2.4, 3.0), (0.0, 0.0, 30.0), (0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    assert target_grid([a, swapped]).spacing_mm == (3.0, 2.4, 3.0)


def test_stations_stacked_along_an_in_plane_axis_are_refused_with_one_line():
    """Coronal stations: the slice axis is anterior-posterior and the stations follow each other
    head to foot along the arrays' y axis; feathering along the slice axis would blend nonsense."""
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # x: L, y: -S (head to foot), z: P
    upper = Grid((30, 100, 80), (4.0, 2.0, 2.0), (0.0, 0.0, 400.0), coronal)
    lower = Grid((30, 100, 80), (4.0, 2.0, 2.0), (0.0, 0.0, 220.0), coronal)
    with pytest.raises(StitchError, match="along their arrays' y axis") as caught:
        scan_grid({"in": [upper, lower]}, "in")
    assert "\n" not in str(caught.value)


def test_the_field_of_view_is_where_the_stations_cover_a_narrower_station_and_a_gap():
    lower = Grid((10, 20, 30), (3.0, 2.0, 2.0), (0.0, 0.0, 0.0))
    upper = Grid((10, 20, 24), (3.0, 2.0, 2.0), (0.0, 0.0, 45.0))  # 6 columns narrower, 5 slices above
    stations = [Volume(np.full(g.shape, 7.0, np.float32), g) for g in (lower, upper)]
    grid = target_grid([lower, upper])
    result = stitch(stations, grid)
    assert grid.shape == (25, 20, 30) and result.seams[0].gap_mm == pytest.approx(15.0)  # 5 slices
    fov = result.field_of_view
    assert fov[:10].all() and not fov[10:15].any() and fov[15:, :, :24].all() and not fov[15:, :, 24:].any()
    assert (result.volume.array[fov] == 7.0).all() and (result.volume.array[~fov] == 0).all()
    assert stitch(stations[:1], lower).field_of_view is None  # one station covers its own grid


def test_contrasts_of_one_volume_each_on_slightly_other_grids_keep_the_segmented_ones_grid():
    """Found in review: a fat image 4 mm off and 10 columns narrower than the in-phase image was
    refused as 'coronal stations'; a water image with finer slices had the segmented image resampled."""
    image = Grid((20, 117, 91), (3.0, 2.4, 2.4), (0.0, 0.0, 0.0))
    fat = Grid((20, 117, 81), (3.0, 2.4, 2.4), (4.0, 0.0, 0.0))
    water = Grid((40, 117, 91), (1.5, 2.4, 2.4), (0.0, 0.0, 0.0))
    assert scan_grid({"in": [image], "fat": [fat], "water": [water]}, "in") == image


def test_stations_that_abut_have_no_gap():
    """Seen in review: abutting stations got a gap of about 4e-15 mm half of the time, and with it a
    stitch_gap QC reason on every phenotype of the scan."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        spacing = float(rng.uniform(1.0, 6.0))
        z0 = float(rng.uniform(-500, 500))
        lower = Grid((10, 8, 8), (spacing, 2.0, 2.0), (0.0, 0.0, z0))
        upper = Grid((10, 8, 8), (spacing, 2.0, 2.0), (0.0, 0.0, z0 + 10 * spacing))
        stations = [Volume(np.ones(g.shape, np.float32), g) for g in (lower, upper)]
        result = stitch(stations, target_grid([lower, upper]))
        assert result.seams[0].gap_mm == 0.0 and result.field_of_view is None


def _blended_over_the_whole_volume(stations: list[Volume], grid: Grid) -> tuple[np.ndarray, np.ndarray]:
    """The blending rule applied to whole-volume arrays (how stitch computed it before it blended
    only the slices two stations reach): the reference for the faster path, and the field of view."""
    from mrseg_cohort.stitching import _slice_axis_world, _station_on_target, _z_extent

    axis = _slice_axis_world(grid)
    extents = [_z_extent(s.grid, axis) for s in stations]
    half = grid.spacing_mm[0] / 2
    z_pos = float(np.asarray(grid.origin_mm) @ axis) + grid.spacing_mm[0] * np.arange(grid.shape[0])
    acc, wsum, single = (np.zeros(grid.shape, np.float32) for _ in range(3))
    covered = np.zeros(grid.shape, np.uint8)
    for i in sorted(range(len(stations)), key=lambda i: extents[i][0]):
        lo, hi = extents[i]
        slices = np.flatnonzero((z_pos >= lo - half - 1e-6) & (z_pos <= hi + half + 1e-6))
        if slices.size == 0:
            continue
        z0, z1 = int(slices[0]), int(slices[-1]) + 1
        values, inside = _station_on_target(stations[i], grid, (z0, z1))
        zz = z_pos[z0:z1]
        ramp = np.clip(np.minimum(zz - lo, hi - zz) + half, 1e-6, None).astype(np.float32)[:, None, None]
        acc[z0:z1] += values * ramp
        wsum[z0:z1] += inside * ramp
        covered[z0:z1] += inside
        np.copyto(single[z0:z1], values, where=inside)
    np.divide(acc, wsum, out=acc, where=wsum > 0)
    acc[covered == 1] = single[covered == 1]
    return acc, covered > 0


@pytest.mark.parametrize("case", ["aligned", "off_grid", "gap", "three_reach_one_slice", "negative_and_signed_zero"])
def test_stitching_equals_blending_the_whole_volume_bit_for_bit(body, case):
    """Blending only the slices two or more stations reach gives every voxel the bits the
    whole-volume rule gives (the one-station slices copied, not blended), and the same field of view."""
    rng = np.random.default_rng(11)
    if case == "aligned":
        stations = _stations(body.in_phase, body.grid, station_slices(station_layout("ukbb", 2.0)))
    else:
        stations = [Volume(rng.uniform(50, 150, s.grid.shape).astype(np.float32), s.grid)
                    for s in _unequal_stations(0.0, off_grid=case != "gap")]
    if case == "gap":  # the fourth station 20 mm further up: a gap below it
        moved = stations[3].grid
        stations[3] = Volume(stations[3].array, Grid(moved.shape, moved.spacing_mm,
                                                     (*moved.origin_mm[:2], moved.origin_mm[2] + 150.0)))
        stations = stations[:4]
    if case == "three_reach_one_slice":  # a short station inside the overlap of two others
        g = stations[1].grid
        short = Grid((6, g.shape[1], g.shape[2]), g.spacing_mm, (*g.origin_mm[:2], g.origin_mm[2] + 110.0))
        stations.append(Volume(rng.uniform(50, 150, short.shape).astype(np.float32), short))
    if case == "negative_and_signed_zero":
        for s in stations:
            s.array[::7] *= -1
            s.array[1::5, ::3] = -0.0
    grid = target_grid([s.grid for s in stations])
    result = stitch(stations, grid)
    expected, field_of_view = _blended_over_the_whole_volume(stations, grid)
    assert np.array_equal(result.volume.array.view(np.int32), expected.view(np.int32))
    assert np.array_equal(result.field_of_view if result.field_of_view is not None else np.ones(grid.shape, bool),
                          field_of_view)
    if case == "gap":
        assert result.max_gap_mm > 0 and not field_of_view.all()

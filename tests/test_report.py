"""Tests of the QC report: an output folder built from phantom truth (no Ray), rendered and checked
in the page, in a headless Chromium, and pixel by pixel against the phantom's truth."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import time
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import DEMO_MODEL, REPO, write_job_yaml
from mrseg_cohort.cli import app
from mrseg_cohort.colortables import color_lookup
from mrseg_cohort.config import StitchingConfig, load_config
from mrseg_cohort.geometry import Grid
from mrseg_cohort.io.nifti import read_labels
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.labels import MRSEG
from mrseg_cohort.manifest import discover
from mrseg_cohort.report.previews import LABEL_ALPHA, canonical, choose_slices, render_plane
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.report.summaries import OUTLIER_MEASURES as S_MEASURES
from mrseg_cohort.report.summaries import find_outliers, redact
from mrseg_cohort.stats import robust_z
from mrseg_cohort.ledger.lease import OutputLease
from mrseg_cohort.ledger.work_units import ScanUnit

SECRET_KEY, SECRET = "AKIAEXAMPLEKEY123456", "s3cr3t-never-shown"
SHRUNK = "spleen"  # the structure cut down in one participant, to make an outlier


# -- the output folder --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def output(phantom_cohort, tmp_path_factory):
    """Labels (= phantom truth; one participant's spleen cut to a fifth), tables published through
    the pipeline's own stages and Outputs, a failures row, and a run record; the first participant's
    stitched images saved, the others not (the report re-stitches them)."""
    from mrseg_cohort.pipeline import stages
    from mrseg_cohort.pipeline.run import software_versions
    from mrseg_cohort.segmentation.segmenter import ModelSpec, Segmentation

    root = tmp_path_factory.mktemp("report")
    config = write_job_yaml(root / "job.yaml", str(phantom_cohort), str(root / "output"),
                            output={"storage": {"key": SECRET_KEY, "secret": SECRET}})
    job = load_config(config)
    spec = ModelSpec("base", str(DEMO_MODEL), (0,), "checkpoint_final.pth", 0.5, False, ("MRI", "CT"), None,
                     "ab" * 32, MRSEG.names)
    ctx = stages.RunContext(job, (spec,), "20260101T000000Z-test", software_versions(), "cpu")
    saving = stages.RunContext(job.model_copy(update={"stitching": StitchingConfig(save_stitched=True)}),
                               (spec,), ctx.run_id, ctx.versions, "cpu")
    store = Store()
    sources = discover(job, store)
    rows, truth = {}, {}
    for i, source in enumerate(sources):
        loaded = stages.read_and_stitch(saving if i == 0 else ctx, source)
        labels = read_labels(store, join_uri(str(phantom_cohort), "truth", *source.key, "labels.nii.gz"))
        assert labels.grid.is_close(loaded.grid)
        array = labels.array.copy()
        if i == 2:
            spleen = array == MRSEG.id_of(SHRUNK)
            z = np.nonzero(spleen)[0]
            array[spleen & (np.arange(array.shape[0])[:, None, None] > np.percentile(z, 20))] = 0
        truth[source.key] = (array, labels.grid)
        unit = ScanUnit(source, ("base",))
        rows[unit.key] = stages.finish(ctx, unit, loaded, {"in": Segmentation({"base": array}, {}, {})})
    failure = {"participant_id": "1099999", "visit": "0", "stage": "read", "error_type": "BadScanError",
               "message": "station 3 <script>alert('x')</script> is truncated", "uri": "/data/1099999/0",
               "attempt": 1, "time": time.time(), "run_id": ctx.run_id}
    outputs = ctx.outputs()
    lease = OutputLease(outputs.store, outputs.root, ctx.run_id)
    lease.acquire()
    outputs.publish(f"{ctx.run_id}-00001", rows, [failure], lease.fence, set())
    lease.release()
    outputs.write_run_metadata(ctx.run_id, {"run_id": ctx.run_id, "started": time.time(), "versions": ctx.versions,
                                            "config": job.model_dump(mode="json"),  # as an old run: secrets in
                                            "models": [{"name": "base", "sha256": spec.sha256, "folds": [0]}],
                                            "manifest": len(sources), "scheduled": len(sources)})
    return {"config": config, "job": job, "keys": [s.key for s in sources], "truth": truth, "root": root,
            "shrunk": sources[2].key}


@pytest.fixture(scope="module")
def report(output):
    out = output["root"] / "report.html"
    t = time.perf_counter()
    result = CliRunner().invoke(app, ["report", str(output["config"]), "--out", str(out), "--min-scans", "3"])
    assert result.exit_code == 0, result.output
    return {"path": out, "html": out.read_text(), "stdout": result.stdout, "seconds": time.perf_counter() - t}


@pytest.fixture(scope="module")
def report_covariates(output):
    """The report with covariates: the participant with the shrunk spleen and two others female, one
    male, all in their sixties (3 females: the smallest stratum assessed with --min-scans 3)."""
    keys, shrunk = output["keys"], output["shrunk"]
    male = next(k for k in keys if k != shrunk)
    path = output["root"] / "covariates.csv"
    pd.DataFrame({"eid": [k[0] for k in keys], "sex": ["m" if k == male else "f" for k in keys],
                  "age": [61, 63, 65, 67][: len(keys)], "height_cm": [170, 175, 180, 165][: len(keys)]}).to_csv(
        path, index=False)
    out = output["root"] / "report-covariates.html"
    result = CliRunner().invoke(app, ["report", str(output["config"]), "--out", str(out), "--min-scans", "3",
                                      "--covariates", str(path)])
    assert result.exit_code == 0, result.output
    return {"path": out, "html": out.read_text(), "stdout": result.stdout, "male": male}


class _Page(HTMLParser):
    """Images (with attributes), element ids and link targets of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict] = []
        self.ids: set[str] = set()
        self.links: list[tuple[str, str]] = []  # (href, class of the enclosing cell)
        self._cell_class = ""
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "td":
            self._cell_class = a.get("class") or ""
        if tag == "img":
            self.images.append(a)
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append((a["href"], self._cell_class))


def _decode(img: dict) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert img["src"].startswith(prefix)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(img["src"][len(prefix):]))).convert("RGB"))


# -- the page ---------------------------------------------------------------------------------------------
def test_report_renders_with_plots_and_previews(output, report):
    page = _Page(report["html"])
    embedded = [i for i in page.images if i["src"].startswith("data:image/png;base64,")]
    assert len(embedded) == len(page.images)  # self-contained: every image inline
    assert len([i for i in embedded if i.get("class") == "distribution"]) == 2
    previews = [i for i in embedded if i.get("data-view")]
    assert {(i["data-participant-id"], i["data-visit"]) for i in previews} == set(output["keys"])
    assert sorted(i["data-view"] for i in previews) == ["axial"] * 4 + ["coronal"] * 4
    assert "http://" not in report["html"] and "https://" not in report["html"] and "<script" not in report["html"]
    for section in ("overview", "metadata", "qc", "vessels", "distributions", "outliers", "failures", "previews"):
        assert section in page.ids
    assert "radiological convention" in report["html"]
    assert "re-stitched from 6 station file(s)" in report["html"]
    assert "stitched image " in report["html"]  # the first participant's saved image was used
    assert "4 scans" in report["stdout"] or "report of 4 scans" in report["stdout"]


def test_outliers_link_to_their_previews(output, report):
    page = _Page(report["html"])
    outlier_links = [href for href, css in page.links if css == "outlier"]
    assert outlier_links, "the shrunk spleen should be an outlier"
    assert all(href[1:] in page.ids for href in outlier_links)
    pid, visit = output["shrunk"]
    row = re.search(rf'<tr><td class="outlier"><a href="#([^"]+)">{pid}</a></td><td>{visit}</td><td>{SHRUNK}</td>'
                    r"<td>volume \(mL\)</td>", report["html"])
    assert row, "the spleen volume of the shrunk participant is listed as an outlier"
    target = row.group(1)
    assert re.search(rf'<figure class="preview" id="{re.escape(target)}">', report["html"])
    assert f'data-participant-id="{pid}"' in report["html"]


def test_failures_metadata_and_escaping(output, report):
    text = report["html"]
    assert "1099999" in text and "BadScanError" in text
    assert "<script>alert" not in text and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "ab" * 32 in text and "20260101T000000Z-test" in text  # weights checksum and run id
    assert SECRET not in text and SECRET_KEY not in text  # the run record held both
    assert re.search(r"key: (&#x27;)?\*\*\*", text) and re.search(r"secret: (&#x27;)?\*\*\*", text)
    for name in ("aorta", "inferior_vena_cava", "left_iliac_artery"):
        assert f"<td>{name}</td>" in text  # vessel consistency rows


def test_phenotypes_by_sex_and_their_outliers(output, report, report_covariates, tmp_path):
    """The shrunk spleen is a phenotype outlier among the three females; z as computed by hand from the
    phenotype table; without covariates the section says how to get them."""
    assert "give --covariates" in report["html"] and "phenotype outliers" not in report["stdout"]
    page = _Page(report_covariates["html"])
    assert "phenotypes" in page.ids
    figures = [i for i in page.images if i.get("class") == "phenotypes"]
    assert len(figures) == 1 and _decode(figures[0]).shape[1] > 1000
    table_path = tmp_path / "phenotypes.parquet"
    done = CliRunner().invoke(app, ["tables", "phenotypes", str(output["config"]), "--out", str(table_path)])
    assert done.exit_code == 0, done.output
    phen = pd.read_parquet(table_path)
    females = phen[phen["participant_id"] != report_covariates["male"][0]]
    x = females["spleen_volume_ml"].to_numpy()
    pid, visit = output["shrunk"]
    value = float(females.loc[females["participant_id"] == pid, "spleen_volume_ml"].iloc[0])
    z = (value - np.median(x)) / (1.4826 * np.median(np.abs(x - np.median(x))))
    assert z < -4
    row = re.search(rf'<td class="outlier">(?:<a href="#[^"]+">)?{pid}(?:</a>)?</td><td>{visit}</td><td>female</td>'
                    r'<td>60-69</td><td>spleen_volume_ml</td><td class="num">([^<]+)</td><td class="num">[^<]+</td>'
                    r'<td class="num">([^<]+)</td>', report_covariates["html"])
    assert row, "the shrunk spleen is listed among the phenotype outliers"
    assert float(row.group(1)) == pytest.approx(value, rel=1e-3) and float(row.group(2)) == pytest.approx(z, abs=0.01)
    assert "phenotype outliers" in report_covariates["stdout"]


# -- alignment of labels with anatomy -------------------------------------------------------------------
def _classify(rgb: np.ndarray, lut: np.ndarray, values: list[int], tolerance: float = 3.0) -> np.ndarray:
    """Per pixel, the label value among ``values`` whose colour blended over a grey level gives the pixel
    (0 where none does): p = (1 - a) g + a c  <=>  (p - a c) / (1 - a) is grey."""
    p = rgb.astype(np.float64)
    best = np.zeros(rgb.shape[:2], dtype=np.int32)
    best_spread = np.full(rgb.shape[:2], tolerance)
    for value in values:
        residual = (p - LABEL_ALPHA * lut[value]) / (1 - LABEL_ALPHA)
        spread = residual.max(axis=2) - residual.min(axis=2)
        ok = (spread < best_spread) & (residual.min(axis=2) > -2) & (residual.max(axis=2) < 257)
        best[ok], best_spread[ok] = value, spread[ok]
    return best


def _expected_pixel(mask_zyx: np.ndarray, grid: Grid, img: dict) -> tuple[float, float]:
    """Centroid (row, col) of truth voxels, through world LPS coordinates, in the preview's pixels."""
    world = grid.zyx_to_world(np.argwhere(mask_zyx).astype(float)).mean(axis=0)  # (x, y, z)
    axis = {"x": 0, "y": 1, "z": 2}
    col = (world[axis[img["data-col-axis"]]] - float(img["data-col0-mm"])) / float(img["data-col-step-mm"])
    row = (world[axis[img["data-row-axis"]]] - float(img["data-row0-mm"])) / float(img["data-row-step-mm"])
    return row, col


@pytest.mark.parametrize("view", ["coronal", "axial"])
def test_preview_labels_lie_on_the_truth_anatomy(output, report, view):
    pid, visit = output["keys"][1]  # a re-stitched one
    array, grid = output["truth"][(pid, visit)]
    img = next(i for i in _Page(report["html"]).images
               if i.get("data-view") == view and i["data-participant-id"] == pid and i["data-visit"] == visit)
    rgb = _decode(img)
    lut = color_lookup(MRSEG)
    names = list(MRSEG.names.values())  # every structure cut by the slice
    found = _classify(rgb, lut, list(MRSEG))
    # the truth plane: the voxel plane through the slice position (world y for coronal, z for axial)
    slice_mm = float(img["data-slice-mm"])
    plane_axis = 1 if view == "coronal" else 0
    index = int(round(grid.world_to_zyx(np.array([0.0, slice_mm, 0.0] if view == "coronal"
                                                 else [0.0, 0.0, slice_mm]))[plane_axis]))
    plane = np.zeros_like(array, dtype=bool)
    plane[(slice(None),) * plane_axis + (index,)] = True
    checked = {}
    for name in names:
        value = MRSEG.id_of(name)
        truth_mask = (array == value) & plane
        if truth_mask.sum() < 8:
            continue
        rows, cols = np.nonzero(found == value)
        assert rows.size > 0.5 * truth_mask.sum(), f"{name} barely visible in the {view} preview"
        expected = _expected_pixel(truth_mask, grid, img)
        got = (rows.mean(), cols.mean())
        assert abs(got[0] - expected[0]) < 3 and abs(got[1] - expected[1]) < 3, (name, got, expected)
        world = grid.zyx_to_world(np.argwhere(truth_mask).astype(float)).mean(axis=0)
        checked[name] = (got, world)
    assert len(checked) >= 8, f"too few structures checked in the {view} preview: {sorted(checked)}"
    assert any(MRSEG[a].name in checked and MRSEG[b].name in checked for a, b in MRSEG.pairs())
    # conventions, independent of the image's own geometry attributes:
    pairs = [(a, b) for a in checked for b in checked if a != b]
    for a, b in pairs:
        (ra, ca), wa = checked[a]
        (rb, cb), wb = checked[b]
        if wa[0] > wb[0] + 15:  # a lies at least 15 mm further to the participant's left (LPS +x)
            assert ca > cb, f"{a} should be right of {b} on the image (participant's left on image right)"
        up = 2 if view == "coronal" else 1  # coronal: superior up; axial: anterior (-y) up
        if (wa[up] > wb[up] + 15) if view == "coronal" else (wa[up] < wb[up] - 15):
            assert ra < rb, f"{a} should be above {b} in the {view} preview"
    if view == "coronal":
        assert {"liver", "heart", "spleen", "left_lung", "right_lung"} <= set(checked)


# -- Chromium --------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium; skipped when absent, except in CI (CI=true), where .ci/run installs it."""
    exe = shutil.which("chromium")
    if exe is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("chromium is missing in CI: .ci/run must install it (apt-get install -y chromium)")
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium)")
    return exe


def _render_in_chromium(chromium: str, page, tmp_path, timeout_s: float = 180) -> float:
    """Open ``page`` in headless Chromium and check the screenshot drew text and pictures; seconds taken."""
    screenshot = tmp_path / "report.png"
    command = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
               f"--screenshot={screenshot}", "--window-size=1400,3000", page.as_uri()]
    t = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    seconds = time.perf_counter() - t
    assert done.returncode == 0, done.stderr[-3000:]
    console = [line for line in done.stderr.splitlines() if "Uncaught" in line or "ERROR:CONSOLE" in line]
    assert not console, console
    assert screenshot.exists() and screenshot.stat().st_size > 10_000
    shot = np.asarray(Image.open(screenshot).convert("RGB"))
    assert shot.shape[:2] == (3000, 1400)
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # the page drew text and pictures, not a blank
    print(f"screenshot: {screenshot} after {seconds:.1f} s")
    return seconds


@pytest.mark.browser
def test_report_in_headless_chromium(chromium, report_covariates, tmp_path):
    """The report with covariates: every section of the plain report plus the phenotypes."""
    _render_in_chromium(chromium, report_covariates["path"], tmp_path)


# -- caps: a page a browser opens at once, whatever the cohort size (issue 26) --------------------------
CAPS = ["--max-outliers", "40", "--max-outlier-previews", "3", "--sample", "2"]


@pytest.fixture(scope="module")
def cohorts(output):
    """The output's tables replicated under new participant ids into outputs of 200 and 800 scans,
    as the read-side benchmark builds 100,000 (benchmarks/read_side_bench.py), and their reports
    with the same small caps."""
    import sys

    sys.path.insert(0, str(REPO / "benchmarks"))
    from read_side_bench import build

    found = {}
    for scans in (200, 800):
        dest = output["root"] / f"cohort-{scans}"
        build(str(output["root"] / "output"), str(dest), Store(), scans, 100)
        page = output["root"] / f"cohort-{scans}" / "report.html"
        result = CliRunner().invoke(app, ["report", str(output["config"]), "--output", str(dest), "--out", str(page),
                                          "--min-scans", "3", *CAPS])
        assert result.exit_code == 0, result.output
        found[scans] = {"output": dest, "page": page, "html": page.read_text(), "stdout": result.stdout}
    return found


def _section(html: str, anchor: str) -> str:
    start = html.index(f'<section id="{anchor}">')
    return html[start:html.index("</section>", start)]


def test_outliers_are_capped_on_the_page_and_listed_in_full_beside_it(cohorts):
    from mrseg_cohort.report.data import read_output

    for scans, found in cohorts.items():
        section = _section(found["html"], "outliers")
        full = pd.read_parquet(found["page"].parent / "report_outliers.parquet")
        data = read_output(Outputs(Store(), str(found["output"])))
        expected = find_outliers(data.structures, min_scans=3)
        assert len(full) == len(expected) > 40  # more outliers than the cap
        pd.testing.assert_frame_equal(full, expected.astype(full.dtypes.to_dict()), check_dtype=False)
        assert f"Outliers ({len(full)})" in section
        assert section.count('<td class="outlier">') == 40  # the cap
        assert '<a href="report_outliers.parquet">report_outliers.parquet</a>' in section
        listed = re.findall(r'<td class="outlier">(?:<a href="#[^"]+">)?([^<]+)(?:</a>)?</td><td>([^<]+)</td>'
                            r"<td>([^<]+)</td><td>([^<]+)</td>", section)
        assert len(listed) == 40
        # each structure and measure with outliers has its most extreme value on the page (turns)
        for (structure, measure), group in full.groupby(["structure", "measure"]):
            top = group.iloc[np.argmax(np.abs(group["z"].to_numpy()))]
            assert (top["participant_id"], top["visit"], structure, S_MEASURES[measure]) in listed or \
                len(full.groupby(["structure", "measure"])) > 40
        previews = [i for i in _Page(found["html"]).images if i.get("data-view") == "coronal"]
        assert 1 <= len(previews) <= 3 + 2
        assert f"report of {scans} scans, {len(full)} outlier values" in found["stdout"]


def test_page_size_does_not_grow_with_the_cohort(cohorts):
    small, large = (len(cohorts[n]["html"].encode()) for n in (200, 800))
    outliers = [len(pd.read_parquet(cohorts[n]["page"].parent / "report_outliers.parquet")) for n in (200, 800)]
    assert outliers[1] >= 3 * outliers[0]  # four times the scans, about four times the outliers ...
    assert abs(large - small) < 0.1 * small  # ... and the same page
    assert large < 50e6


def test_previews_stop_at_the_page_budget(output, cohorts, tmp_path):
    page = tmp_path / "budget.html"
    result = CliRunner().invoke(app, ["report", str(output["config"]), "--output", str(cohorts[200]["output"]),
                                      "--out", str(page), "--min-scans", "3", *CAPS, "--preview-budget-mb", "0.001"])
    assert result.exit_code == 0, result.output
    html = page.read_text()
    assert len([i for i in _Page(html).images if i.get("data-view") == "coronal"]) == 1  # the budget is spent by one
    assert "more scans chosen for a preview have none: the previews reached the page&#x27;s budget of 0.001 MB" in html


@pytest.mark.browser
def test_capped_report_of_a_larger_cohort_in_headless_chromium(chromium, cohorts, tmp_path):
    _render_in_chromium(chromium, cohorts[800]["page"], tmp_path, timeout_s=120)


# -- pure parts --------------------------------------------------------------------------------------------
def test_robust_z_known_values():
    z = robust_z(np.array([1.0, 2.0, 3.0, 4.0, 100.0]))  # median 3, MAD 1
    assert z == pytest.approx(np.array([-2, -1, 0, 1, 97]) / 1.4826)
    assert robust_z(np.array([5.0, 5.0, 5.0, 9.0])) == pytest.approx([0, 0, 0, 4 / (1.253314 * 1.0)])
    assert not robust_z(np.full(4, 2.0)).any()


def test_find_outliers_per_structure_and_minimum_scans():
    frame = pd.DataFrame({"participant_id": list("abcde") + list("ab"), "visit": "0",
                          "structure": ["liver"] * 5 + ["heart"] * 2, "n_voxels": 1,
                          "volume_ml": [10.0, 11.0, 12.0, 13.0, 90.0, 5.0, 500.0], "ff_median_pct": np.nan})
    found = find_outliers(frame, min_scans=3)
    assert found[["participant_id", "structure", "measure"]].values.tolist() == [["e", "liver", "volume_ml"]]
    assert found["z"].iloc[0] == pytest.approx((90 - 12) / (1.4826 * 1))


def test_redact_removes_credentials():
    config = {"output": {"uri": "s3://user:pw@bucket/x", "storage": {"key": "AK", "secret": "S", "anon": False,
                                                                      "aws_session_token": "T", "profile": "p"}},
              "model": {"checksum": "abc"}}
    clean = redact(config)
    assert clean["output"]["storage"] == {"key": "***", "secret": "***", "anon": False, "aws_session_token": "***",
                                          "profile": "p"}
    assert clean["output"]["uri"] == "s3://***@bucket/x" and clean["model"]["checksum"] == "abc"


def test_canonical_orientation_is_independent_of_storage_order():
    """The same anatomy stored LPS (z, y, x) and RAS-flipped with axes permuted gives one preview."""
    rng = np.random.default_rng(0)
    array = rng.integers(0, 5, size=(6, 7, 8)).astype(np.uint8)
    lps = Grid((6, 7, 8), (3.0, 2.0, 1.5), (10.0, 20.0, 30.0))
    # index axes (x, y, z) -> world (-x, -y, +z): flip x and y; then swap the array's y and x axes
    flipped = array[:, ::-1, ::-1]
    origin = lps.zyx_to_world(np.array([0, 6, 7]))
    ras = Grid((6, 7, 8), (3.0, 2.0, 1.5), tuple(origin), (-1, 0, 0, 0, -1, 0, 0, 0, 1))
    swapped = np.ascontiguousarray(flipped.transpose(0, 2, 1))  # array (z, x', y'): index axes (y', x', z)
    direction = (0, -1, 0, -1, 0, 0, 0, 0, 1)  # index axis i -> world -y, j -> world -x, k -> +z
    permuted = Grid((6, 8, 7), (3.0, 1.5, 2.0), tuple(origin), direction)
    for a, g in ((array, lps), (flipped, ras), (swapped, permuted)):
        c = canonical(a, g)
        np.testing.assert_array_equal(c.array, array)
        assert c.first_mm == pytest.approx((30.0, 20.0, 10.0)) and c.spacing_mm == pytest.approx((3.0, 2.0, 1.5))


def test_render_plane_puts_participant_left_on_image_right():
    labels = np.zeros((10, 4, 20), dtype=np.uint8)
    labels[2:4, :, 15:18] = MRSEG.id_of("left_kidney")   # large x = participant's left
    labels[6:8, :, 2:5] = MRSEG.id_of("right_kidney")
    grid = Grid(labels.shape, (2.0, 2.0, 2.0))
    image = canonical(np.full(labels.shape, 100.0, np.float32), grid)
    lab = canonical(labels, grid)
    y, _ = choose_slices(lab)
    plane = render_plane(image, lab, "coronal", y, color_lookup(MRSEG), (0.0, 200.0), 2.0)
    rgb = np.asarray(Image.open(io.BytesIO(plane.png)).convert("RGB"))
    found = _classify(rgb, color_lookup(MRSEG), list(MRSEG))
    left = np.argwhere(found == MRSEG.id_of("left_kidney")).mean(axis=0)
    right = np.argwhere(found == MRSEG.id_of("right_kidney")).mean(axis=0)
    assert left[1] > right[1]  # participant's left on the image right
    assert left[0] > right[0]  # z index 2..3 is inferior to 6..7: lower on the image (head up)

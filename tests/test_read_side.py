"""The read side at cohort scale (issue 26): the table reader (projection, filters, parts of older
versions, local and S3), the wide view, phenotypes and status against the plain pandas computations
they replaced (kept here as references), on seeded random outputs with missing rows, several models
and contrasts, and scans without a contrast."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import write_job_yaml
from mrseg_cohort.biomarkers.body_composition import BODY_COMPOSITION_COLUMNS
from mrseg_cohort.cli import app
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import read_table_folder, table_bytes
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phenotypes import derive
from mrseg_cohort.tables import SCHEMAS, failures_table, one_contrast, to_table, wide_name, wide_view


# -- the references: the plain pandas computations of before issue 26 -------------------------------
def reference_one_contrast(df: pd.DataFrame, contrast: str | None) -> pd.DataFrame:
    if contrast is not None:
        return df[df["contrast"] == contrast]
    first = df.groupby(["participant_id", "visit"])["contrast"].transform("min")
    return df[df["contrast"] == first]


def reference_wide_view(structures: pd.DataFrame, measures: tuple[str, ...], contrast: str | None = None,
                        scans: pd.DataFrame | None = None) -> pd.DataFrame:
    df = reference_one_contrast(structures, contrast)
    key = df["model"].astype(str) + "\0" + df["structure"].astype(str)
    names = {k: wide_name(*k.split("\0")) for k in key.unique()}
    df = df.assign(_name=key.map(names))
    frames = []
    for measure in measures:
        spread = df.pivot(index=["participant_id", "visit"], columns="_name", values=measure)
        spread.columns = [f"{name}__{measure}" for name in spread.columns]
        frames.append(spread)
    wide = pd.concat(frames, axis=1)
    if scans is not None and len(scans) and "vat_ml" in scans.columns:
        depots = reference_one_contrast(scans, contrast).dropna(subset=["vat_ml"])
        for model, rows in depots.groupby("model"):
            extra = rows.set_index(["participant_id", "visit"])[list(BODY_COMPOSITION_COLUMNS)]
            wide = wide.join(extra.add_prefix(f"{model}:"), how="left")
    return wide.reset_index()


# -- random outputs ---------------------------------------------------------------------------------
def random_tables(seed: int, participants: int = 30) -> dict[str, pd.DataFrame]:
    """``structures`` and ``scans`` rows (their schemas) of base and body_comp on a few visits and
    contrasts: some scans segmented on two contrasts, some rows without a contrast, structures
    missing at random, some scans without body_comp."""
    rng = np.random.default_rng(seed)
    structures, scans = [], []
    for p in rng.choice(np.arange(1000000, 1100000), participants, replace=False):
        for visit in rng.choice(["2", "3"], rng.integers(1, 3), replace=False):
            contrasts = list(rng.choice(["in", "opp", "water"], rng.integers(1, 3), replace=False))
            if rng.random() < 0.1:
                contrasts.append(None)
            models = ["base"] + (["body_comp"] if rng.random() < 0.7 else [])
            for contrast in contrasts:
                for model in models:
                    names = MRSEG.names if model == "base" else BODY_COMPOSITION.names
                    scans.append({"participant_id": str(p), "visit": str(visit), "contrast": contrast, "model": model,
                                  "status": "ok" if rng.random() < 0.9 else "failed",
                                  "swap_suspected": bool(rng.random() < 0.1),
                                  "stitch_max_gap_mm": float(rng.choice([0.0, 0.0, 4.5])),
                                  **({c: float(rng.uniform(100, 3000)) for c in BODY_COMPOSITION_COLUMNS}
                                     if model == "body_comp" else {})})
                    for sid, name in names.items():
                        if rng.random() < 0.08:
                            continue
                        n = int(rng.integers(0, 5000)) if rng.random() > 0.05 else 0
                        structures.append({
                            "participant_id": str(p), "visit": str(visit), "contrast": contrast, "model": model,
                            "structure_id": sid, "structure": name, "n_voxels": n, "volume_ml": n * 0.011,
                            "ff_median_pct": float(rng.uniform(0, 40)) if rng.random() > 0.1 else None,
                            "ff_mean_pct": float(rng.uniform(0, 40)), "ff_n_voxels": int(rng.integers(0, n + 1)),
                            "ff_eroded_empty": bool(rng.random() < 0.05), "n_components": int(rng.integers(0, 4)),
                            "touches_border": bool(rng.random() < 0.1), "fragmented": bool(rng.random() < 0.1),
                            "missing": bool(rng.random() < 0.05)})
    return {"structures": to_table("structures", structures).to_pandas(),
            "scans": to_table("scans", scans).to_pandas()}


# -- the reader -------------------------------------------------------------------------------------
@pytest.fixture
def root(store_root) -> tuple[Store, str]:
    """(store, root URI) on local disk and on the S3 server (conftest's ``store_root``)."""
    return store_root


def test_read_table_folder_projects_filters_and_combines_older_parts(root):
    store, uri = root
    folder = join_uri(uri, "tables", "structures")
    old = pa.table({"participant_id": ["1", "2"], "visit": ["2", "2"], "model": ["base", "body_comp"],
                    "volume_ml": [1.0, 2.0]})
    new = pa.table({"participant_id": ["3", "4", "5"], "visit": ["2", "3", "2"], "model": ["base"] * 3,
                    "volume_ml": [3.0, 4.0, 5.0], "n_voxels": pa.array([30, 40, 50], pa.int64())})
    store.write_bytes(join_uri(folder, "part-a.parquet"), table_bytes(old))
    store.write_bytes(join_uri(folder, "part-b.parquet"), table_bytes(new))
    store.write_bytes(join_uri(folder, ".part-c.parquet.tmp-1.parquet"), b"not parquet: hidden, never read")
    store.write_bytes(join_uri(folder, "notes.txt"), b"not a part")

    whole = read_table_folder(store, folder).sort_by("participant_id")
    reference = pa.concat_tables([old, new], promote_options="default")  # what the reader did before
    assert whole.equals(reference.select(whole.column_names))
    assert whole.column("n_voxels").to_pylist() == [None, None, 30, 40, 50]  # the older part's rows: nulls

    some = read_table_folder(store, folder, columns=["participant_id", "n_voxels", "no_such_column"],
                             filter=pc.field("model") == "base")
    assert some.column_names == ["participant_id", "n_voxels"]
    assert sorted(some.column("participant_id").to_pylist()) == ["1", "3", "4", "5"]
    one = read_table_folder(store, folder, filter=(pc.field("visit") == "3") & (pc.field("volume_ml") > 3.5))
    assert one.column("participant_id").to_pylist() == ["4"]
    typed = read_table_folder(store, folder, columns=["participant_id", "n_voxels"],
                              schema=pa.schema([("participant_id", pa.string()), ("n_voxels", pa.int64()),
                                                ("volume_ml", pa.float64())]))
    assert typed.schema.field("n_voxels").type == pa.int64() and typed.num_rows == 5

    assert read_table_folder(store, join_uri(uri, "tables", "nothing")) is None


def test_s3_parts_read_alike_through_arrow_and_through_fsspec(s3_root, monkeypatch):
    """Arrow's own S3 client (quick) and the store's fsspec one (the fallback) give the same table."""
    from mrseg_cohort.io import tables as io_tables

    store, uri = s3_root
    tables = random_tables(5, participants=6)
    publish_random(store, uri, tables, [])
    folder = join_uri(uri, "tables", "structures")
    assert isinstance(io_tables.arrow_filesystem(store, folder)[0], io_tables.pafs.S3FileSystem)
    reads = [read_table_folder(store, folder, columns=["participant_id", "structure", "volume_ml"],
                               filter=pc.field("model") == "base", schema=SCHEMAS["structures"]),
             read_table_folder(store, folder, columns=["participant_id", "structure", "volume_ml"])]
    monkeypatch.setattr(io_tables, "_arrow_s3", lambda options: None)
    assert isinstance(io_tables.arrow_filesystem(store, folder)[0], io_tables.pafs.PyFileSystem)
    reads += [read_table_folder(store, folder, columns=["participant_id", "structure", "volume_ml"],
                                filter=pc.field("model") == "base", schema=SCHEMAS["structures"]),
              read_table_folder(store, folder, columns=["participant_id", "structure", "volume_ml"])]
    base = tables["structures"][tables["structures"]["model"] == "base"]
    for got in reads[::2]:
        assert sorted(zip(got.column("participant_id").to_pylist(), got.column("structure").to_pylist())) == \
            sorted(zip(base["participant_id"], base["structure"]))
    assert reads[0].sort_by([("participant_id", "ascending"), ("structure", "ascending")]).equals(
        reads[2].sort_by([("participant_id", "ascending"), ("structure", "ascending")]))
    assert reads[1].num_rows == reads[3].num_rows == len(tables["structures"])


def test_arrow_s3_takes_only_the_options_it_understands():
    from mrseg_cohort.io.tables import _arrow_s3

    timeouts = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 60.0, "read_timeout": 60.0}
    assert _arrow_s3({"endpoint_url": "http://127.0.0.1:9000", "key": "k", "secret": "s",
                      "config_kwargs": timeouts}) is not None
    assert _arrow_s3({"client_kwargs": {"region_name": "eu-west-2"}, "config_kwargs": timeouts}) is not None
    assert _arrow_s3({"anon": True, "client_kwargs": {"region_name": "us-east-1"}}) is not None
    assert _arrow_s3({"profile": "ukbb", "client_kwargs": {"region_name": "eu-west-2"}}) is None  # fsspec's
    assert _arrow_s3({"config_kwargs": timeouts}) is None  # AWS without a region: fsspec finds the bucket's
    assert _arrow_s3({"endpoint_url": "https://host/path", "key": "k", "secret": "s"}) is None
    assert _arrow_s3({"endpoint_url": "http://user:pw@host:9000"}) is None


def test_read_table_folder_names_an_unreadable_part(root):
    store, uri = root
    folder = join_uri(uri, "tables", "scans")
    store.write_bytes(join_uri(folder, "part-1.parquet"), b"garbage, not parquet")
    for schema in (None, SCHEMAS["scans"]):
        with pytest.raises(ValueError, match="part-1.parquet"):
            read_table_folder(store, folder, schema=schema)


# -- the wide view and phenotypes against the references -------------------------------------------
@pytest.mark.parametrize("seed", range(6))
def test_wide_view_equals_the_pivot_it_replaced(seed):
    tables = random_tables(seed)
    structures, scans = tables["structures"], tables["scans"]
    for measures in (("volume_ml", "ff_median_pct", "n_components", "touches_border"), derive.MEASURES):
        for contrast in (None, "in", "opp"):
            if contrast is not None and contrast not in set(structures["contrast"].dropna()):
                continue
            expected = reference_wide_view(structures, measures, contrast, scans)
            got = wide_view(structures, measures, contrast, scans)
            pd.testing.assert_frame_equal(got, expected)
    shuffled = structures.sample(frac=1.0, random_state=seed)  # rows in any order give the same view
    pd.testing.assert_frame_equal(wide_view(shuffled, derive.MEASURES), reference_wide_view(shuffled, derive.MEASURES))
    for contrast in (None, "in"):
        pd.testing.assert_frame_equal(one_contrast(structures, contrast), reference_one_contrast(structures, contrast))


def test_wide_view_keeps_integer_and_boolean_columns_when_nothing_is_missing():
    rows = [{"participant_id": p, "visit": "2", "contrast": "in", "model": m, "structure": s, "n_components": 1,
             "touches_border": p == "b"} for p in "ab" for m in ("base", "x") for s in ("liver", "spleen")]
    frame = pd.DataFrame(rows).astype({"n_components": "int16"})
    got = wide_view(frame, ("n_components", "touches_border"))
    pd.testing.assert_frame_equal(got, reference_wide_view(frame, ("n_components", "touches_border")))
    assert got["x:liver__n_components"].dtype == np.int16 and got["spleen__touches_border"].dtype == bool
    assert list(got.columns[2:4]) == ["liver__n_components", "spleen__n_components"]


def test_wide_view_refuses_two_rows_of_one_cell_as_the_pivot_did():
    frame = pd.DataFrame({"participant_id": ["1", "1"], "visit": "2", "contrast": "in", "model": "base",
                          "structure": "liver", "volume_ml": [1.0, 2.0]})
    with pytest.raises(ValueError, match="duplicate entries"):
        reference_wide_view(frame, ("volume_ml",))
    with pytest.raises(ValueError, match="duplicate entries"):
        wide_view(frame, ("volume_ml",))


@pytest.mark.parametrize("seed", range(3))
def test_phenotypes_equal_those_of_the_pivot(seed, monkeypatch):
    tables = random_tables(seed, participants=40)
    got = derive.phenotype_table(tables["structures"], tables["scans"])
    monkeypatch.setattr(derive, "wide_view", reference_wide_view)
    monkeypatch.setattr(derive, "one_contrast", reference_one_contrast)
    expected = derive.phenotype_table(tables["structures"], tables["scans"])
    pd.testing.assert_frame_equal(got, expected)


# -- the commands on a published output -------------------------------------------------------------
def publish_random(store: Store, output: str, tables: dict[str, pd.DataFrame], failures: list[dict],
                   batches: int = 3) -> None:
    """The tables as `run` publishes them: one part per table and batch, rows of a scan together."""
    keys = sorted(set(zip(tables["scans"]["participant_id"], tables["scans"]["visit"])))
    for b in range(batches):
        mine = set(keys[b::batches])
        for name, frame in tables.items():
            rows = frame[[k in mine for k in zip(frame["participant_id"], frame["visit"])]]
            part = pa.Table.from_pandas(rows, preserve_index=False).cast(SCHEMAS[name])
            store.write_bytes(join_uri(output, "tables", name, f"part-run-{b:05d}.parquet"), table_bytes(part))
        if failures[b::batches]:
            store.write_bytes(join_uri(output, "tables", "failures", f"part-run-{b:05d}.parquet"),
                              table_bytes(failures_table(failures[b::batches])))


@pytest.fixture
def published(tmp_path):
    """A random output of base + body_comp rows (one contrast per scan), three batches, failure rows
    of scans that later succeeded and of scans that never did; a UK Biobank-layout input of empty
    zips naming every scan of the output, the failed ones and two never tried."""
    tables = random_tables(11, participants=25)
    tables = {name: frame[frame["contrast"].isin(["in"])] for name, frame in tables.items()}
    keys = sorted(set(zip(tables["scans"]["participant_id"], tables["scans"]["visit"])))
    never = [("2000001", "2"), ("2000002", "3")]
    tried = [("2000003", "2"), ("2000004", "2")]
    failures = [{"participant_id": p, "visit": v, "stage": "read", "error_type": "BadScanError",
                 "message": f"broken {i}", "uri": f"/in/{p}_20201_{v}_0.zip", "attempt": 1 + i % 2,
                 "time": 1.7e9 + 10 * i, "run_id": "r", "models": "base+body_comp"}
                for i, (p, v) in enumerate(never + keys[:3] + never)]
    output = str(tmp_path / "output")
    publish_random(Store(), output, {"structures": tables["structures"], "scans": tables["scans"]}, failures)
    zips = tmp_path / "zips"
    zips.mkdir()
    for p, v in keys + never + tried:
        (zips / f"{p}_20201_{v}_0.zip").touch()
    config = write_job_yaml(tmp_path / "job.yaml", str(zips), output, cohort={"name": "t", "layout": "ukbb-dicom-zip"},
                            model=None, models=[{"name": "base", "weights": "bundled:demo"},
                                                {"name": "body_comp", "weights": "bundled:demo_body_comp",
                                                 "labels": "body_comp", "modalities": ["MRI"]}])
    return {"config": config, "tables": tables, "failures": pd.DataFrame(failures), "keys": keys,
            "manifest": keys + never + tried, "output": output}


def test_status_counts_equal_the_plain_computation(published):
    scans, failures = published["tables"]["scans"], published["failures"]
    manifest = set(published["manifest"])
    models = {"base", "body_comp"}
    have = scans.groupby(["participant_id", "visit"])["model"].agg(set)
    done = {k for k, m in have.items() if models <= m} & manifest
    failed = (set(zip(failures["participant_id"], failures["visit"])) & manifest) - done
    result = CliRunner().invoke(app, ["status", str(published["config"]), "--last", "3"])
    assert f": {len(done)} done, 0 finished (publishing), {len(failed)} failed, " \
           f"{len(manifest) - len(done) - len(failed)} pending, of {len(manifest)} scans" in result.output
    newest = failures.sort_values("time", ascending=False).head(3)
    lines = [line for line in result.output.splitlines() if " attempt " in line]
    assert lines == [f"  {r.participant_id}/{r.visit} attempt {r.attempt} [{r.stage}] {r.error_type}: {r.message} "
                     f"({r.uri})" for r in newest.itertuples()]
    assert f"last failures (of {len(failures)} recorded attempts)" in result.output


def test_plan_estimate_from_the_cost_columns_equals_the_whole_table(published, tmp_path):
    from mrseg_cohort.jobstate import measured_costs

    scans = published["tables"]["scans"].copy()
    for i, stage in enumerate(("read", "stitch", "preprocess", "network", "export", "measure", "write")):
        scans[f"seconds_{stage}"] = np.linspace(0.5, 2.0, len(scans)) * (i + 1)
    output = str(tmp_path / "costs")
    publish_random(Store(), output, {"structures": published["tables"]["structures"], "scans": scans}, [])
    whole = pd.read_parquet(join_uri(output, "tables", "scans"))  # every column, as before issue 26
    config = write_job_yaml(tmp_path / "plan.yaml", os.path.dirname(published["output"]) + "/zips", output,
                            cohort={"name": "t", "layout": "ukbb-dicom-zip"})
    result = CliRunner().invoke(app, ["plan", str(config), "--no-sizes"])
    gpu, cpu, n = measured_costs(whole)
    assert f"per scan (median of {n} scans in this output): {gpu:.1f} s on the segmentation device, " \
           f"{cpu:.1f} s of CPU stages" in result.output, result.output


def test_tables_wide_and_phenotypes_equal_the_plain_computation(published, tmp_path, monkeypatch):
    structures, scans = published["tables"]["structures"], published["tables"]["scans"]
    runner = CliRunner()
    wide_out, phen_out = tmp_path / "wide.parquet", tmp_path / "phenotypes.parquet"
    done = runner.invoke(app, ["tables", "wide", str(published["config"]), "--out", str(wide_out)])
    assert done.exit_code == 0, done.output
    whole_structures = pd.read_parquet(join_uri(published["output"], "tables", "structures"))
    whole_scans = pd.read_parquet(join_uri(published["output"], "tables", "scans"))
    expected = reference_wide_view(whole_structures, ("volume_ml", "ff_median_pct", "n_components", "touches_border"),
                                   None, whole_scans)
    pd.testing.assert_frame_equal(pd.read_parquet(wide_out), pq.read_table(
        pa.BufferReader(table_bytes(expected))).to_pandas())
    done = runner.invoke(app, ["tables", "phenotypes", str(published["config"]), "--out", str(phen_out)])
    assert done.exit_code == 0, done.output
    monkeypatch.setattr(derive, "wide_view", reference_wide_view)
    monkeypatch.setattr(derive, "one_contrast", reference_one_contrast)
    expected = derive.phenotype_table(whole_structures, whole_scans)
    pd.testing.assert_frame_equal(pd.read_parquet(phen_out), pq.read_table(
        pa.BufferReader(table_bytes(expected))).to_pandas())
    assert len(structures) and len(scans)
    bad = runner.invoke(app, ["tables", "wide", str(published["config"]), "--out", str(wide_out),
                              "--measures", "volume_ml,no_such_measure"])
    assert bad.exit_code == 2 and "unknown column(s) ['no_such_measure']" in bad.output



def test_rows_of_scans_of_an_empty_frame_keep_their_columns():
    from mrseg_cohort.report.summaries import rows_of_scans, scan_keys

    empty = pd.DataFrame(columns=["participant_id", "visit", "z"])
    assert list(rows_of_scans(empty, [("1", "2")]).columns) == ["participant_id", "visit", "z"]
    frame = pd.DataFrame({"participant_id": pd.Categorical(["1", "1", "2"]), "visit": ["2", "3", "2"], "z": [1, 2, 3]})
    assert scan_keys(frame) == [("1", "2"), ("1", "3"), ("2", "2")]
    assert rows_of_scans(frame, [("1", "3"), ("2", "2"), ("9", "2")])["z"].tolist() == [2, 3]


def test_an_arrow_s3_503_while_reading_a_part_is_retried(tmp_path, monkeypatch):
    """Arrow's S3 client states a 503 only in its message ("AWS Error UNKNOWN (HTTP status 503)
    during HeadObject"): it was not judged transient, so one 503 on a part's HEAD stopped a run
    (found by the chaos soak). Now it is retried like botocore's 503; a 403 is not."""
    import pyarrow as pa
    import pyarrow.fs as pafs

    from mrseg_cohort.errors import StorageError
    from mrseg_cohort.io import storage, tables
    from mrseg_cohort.io.storage import Store, is_transient
    from mrseg_cohort.io.tables import arrow_s3_errors, write_table

    monkeypatch.setattr(storage.time, "sleep", lambda s: None)
    store = Store()
    folder = str(tmp_path / "scans")
    write_table(store, f"{folder}/part-1.parquet", pa.table({"participant_id": ["1", "2"]}))

    def arrow_words(status: int) -> OSError:
        return OSError(f"When reading information for key 'x/scans/part-1.parquet' in bucket 'b': AWS Error "
                       f"UNKNOWN (HTTP status {status}) during HeadObject operation: No response body.")

    class Flaky:  # Arrow's local file system, whose first two opens fail as Arrow's S3 client words a 503
        def __init__(self, status: int):
            self.status, self.calls, self.local = status, 0, pafs.LocalFileSystem()

        def open_input_stream(self, path):
            self.calls += 1
            if self.calls <= 2:
                raise arrow_words(self.status)
            return self.local.open_input_stream(path)

    flaky = Flaky(503)
    table = tables._read_whole_parts(store, folder, flaky, [(f"{folder}/part-1.parquet", 0)], None, None, None, [])
    assert table.column("participant_id").to_pylist() == ["1", "2"] and flaky.calls == 3
    refused = Flaky(403)
    with pytest.raises(StorageError, match=r"read failed: .*HTTP status 403"):
        tables._read_whole_parts(store, folder, refused, [(f"{folder}/part-1.parquet", 0)], None, None, None, [])
    assert refused.calls == 1
    with pytest.raises(OSError) as caught, arrow_s3_errors():
        raise OSError("participant 1500123: no such file")  # digits in a message are no status
    assert type(caught.value) is OSError and not is_transient(caught.value)

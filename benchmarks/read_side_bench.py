"""The read side at cohort scale (issue 26): `status`, `tables wide`, `tables phenotypes` and `report`
over an output of many scans, local and on the S3 test server.

    .venv/bin/python benchmarks/read_side_bench.py --source demo-output --config configs/demo.yaml \
        [--scans 100000] [--batch 200] [--store local|s3|both] [--work DIR] [--chromium] \
        [--out benchmarks/results/read-side.json]

The output is built from a small finished one (``--source``, e.g. what `make demo` writes, with its
job YAML ``--config``): its ``structures``, ``scans`` and ``intensities`` rows replicated under new
participant ids (1000000, 1000001, ...; scan n copies the source's scan n mod k), ``--batch`` scans
per part file as `mrseg-cohort run` publishes them (``tables/<table>/part-<batch>.parquet``), two
failure rows per batch for scans that never succeeded, the source's fingerprint, run records and
label files (each replicated scan's ``label_uri`` names its source scan's label file, copied into the output,
so previews render). ``status`` runs against a UK Biobank-layout manifest of empty
``<eid>_20201_0_0.zip`` files (one per scan, the failed ones included), and once more against the
source's own job YAML with the output replaced (its small manifest: what status costs on the output
side alone), as the other commands.

Each command runs in its own process under ``/usr/bin/time``: wall seconds, peak resident memory
(maximum RSS of the process and, for the report, what it waited for) and CPU seconds (user +
system). With ``--chromium`` the report is also opened in headless Chromium (time to a screenshot).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

TABLES = ("structures", "scans", "intensities")
FAILURES_PER_BATCH = 2
FIRST_ID = 1_000_000


def build(source: str, dest: str, store, scans: int, batch: int, with_index: bool = True) -> dict:
    """Replicate the tables of output ``source`` (local) into output ``dest`` (any URI of ``store``);
    ``with_index``: then write the output's indexes as a run does (``_work/index``; ``index_s``:
    seconds to write them from none, reading every part once)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mrseg_cohort.io.storage import Store, join_uri
    from mrseg_cohort.io.tables import table_bytes
    from mrseg_cohort.tables import SCHEMAS, failures_table

    local = Store()
    tables = {t: pq.read_table(os.path.join(source, "tables", t)).cast(SCHEMAS[t]) for t in TABLES}
    keys = sorted(set(zip(tables["scans"].column("participant_id").to_pylist(),
                          tables["scans"].column("visit").to_pylist())))
    rows_of = {}  # table -> per source key, its row indices
    for name, table in tables.items():
        pid, visit = table.column("participant_id").to_pylist(), table.column("visit").to_pylist()
        rows_of[name] = [np.flatnonzero([(p, v) == k for p, v in zip(pid, visit)]) for k in keys]
    labels = tables["scans"].column("label_uri").to_pylist()  # the source scan's label file, in dest
    in_dest = [join_uri(dest, u[u.rindex("labels/"):]) if u and "labels/" in u else u for u in labels]
    tables["scans"] = tables["scans"].set_column(tables["scans"].schema.get_field_index("label_uri"), "label_uri",
                                                 pa.array(in_dest, pa.string()))
    run_id = "20260101T000000Z-readbench"
    n_batches = -(-scans // batch)
    for b in range(n_batches):
        batch_id = f"{run_id}-{b + 1:05d}"
        first, last = b * batch, min((b + 1) * batch, scans)
        for name, table in tables.items():
            take = np.concatenate([rows_of[name][n % len(keys)] for n in range(first, last)])
            ids = np.concatenate([np.full(len(rows_of[name][n % len(keys)]), str(FIRST_ID + n), dtype=object)
                                  for n in range(first, last)])
            part = table.take(pa.array(take))
            part = part.set_column(0, "participant_id", pa.array(ids, pa.string()))
            store.write_bytes(join_uri(dest, "tables", name, f"part-{batch_id}.parquet"), table_bytes(part))
        failed = [{"participant_id": str(FIRST_ID + scans + b * FAILURES_PER_BATCH + i), "visit": keys[0][1],
                   "stage": "read", "error_type": "BadScanError", "message": "station 3 is truncated (benchmark)",
                   "uri": f"/input/{FIRST_ID + scans + b * FAILURES_PER_BATCH + i}_20201_0_0.zip", "attempt": 1,
                   "time": 1.767e9 + b, "run_id": run_id, "models": "base+body_comp"}
                  for i in range(FAILURES_PER_BATCH)]
        store.write_bytes(join_uri(dest, "tables", "failures", f"part-{batch_id}.parquet"),
                          table_bytes(failures_table(failed)))
        if b % 50 == 0:
            print(f"  batch {b + 1}/{n_batches}", file=sys.stderr)
    fingerprint = os.path.join(source, "_work", "fingerprint.json")
    for uri in local.list_files(os.path.join(source, "_work", "runs"), suffix=".json") + \
            ([fingerprint] if os.path.exists(fingerprint) else []) + local.list_files(os.path.join(source, "labels")):
        store.write_bytes(join_uri(dest, os.path.relpath(uri, source)), local.read_bytes(uri))
    from mrseg_cohort.ledger.outputs import INDEXED_COLUMNS, Outputs

    index_s = None
    if with_index:  # as a run leaves its output: the indexes of scans and failures cover every part
        t = time.perf_counter()
        Outputs(store, dest).refresh_indexes()
        index_s = round(time.perf_counter() - t, 2)
    else:  # as an output of the version before them: none (also where an earlier build left them)
        for table in INDEXED_COLUMNS:
            store.remove(Outputs(store, dest).index_uri(table))
    return {"scans": scans, "batches": n_batches, "source_scans": len(keys), "index_s": index_s,
            "structure_rows": sum(len(rows_of["structures"][n % len(keys)]) for n in range(scans)),
            "failures": n_batches * FAILURES_PER_BATCH, "visit": keys[0][1]}


def write_zips(folder: Path, n: int, visit: str) -> None:
    """Empty ``<eid>_20201_<visit>_0.zip`` files: a UK Biobank-layout manifest of ``n`` scans."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{FIRST_ID + i}_20201_{visit}_0.zip").touch()


def configs(config: Path, work: Path, output_uri: str, storage: dict | None, zips: Path) -> tuple[Path, Path]:
    """(the source's job YAML with the output replaced, the same with a UK Biobank-layout input)."""
    import yaml

    job = yaml.safe_load(config.read_text())
    base = config.parent
    job["input"]["uri"] = str((base / job["input"]["uri"]).resolve()) if "://" not in job["input"]["uri"] \
        else job["input"]["uri"]
    for model in job.get("models", []):
        weights = str(model.get("weights", ""))
        if weights and ":" not in weights and not os.path.isabs(weights):
            model["weights"] = str((base / weights).resolve())
    job["output"] = {**job.get("output", {}), "uri": output_uri}
    if storage:
        job["output"]["storage"] = storage
    main = work / f"job-{'s3' if storage else 'local'}.yaml"
    main.write_text(yaml.safe_dump(job))
    ukbb = {**job, "cohort": {**job["cohort"], "layout": "ukbb-dicom-zip"}, "input": {"uri": str(zips)}}
    ukbb["cohort"].pop("pattern", None)
    status = work / f"job-status-{'s3' if storage else 'local'}.yaml"
    status.write_text(yaml.safe_dump(ukbb))
    return main, status


def timed(command: list[str], cwd: Path, env: dict | None = None) -> dict:
    """Run ``command`` under /usr/bin/time: wall s, peak RSS MB, CPU s, exit status, last output."""
    load = os.getloadavg()[0]  # other agents share this machine: the 1-minute load beside each figure
    with tempfile.NamedTemporaryFile("r", suffix=".time") as stats:
        t = time.perf_counter()
        done = subprocess.run(["/usr/bin/time", "-f", "%e %M %U %S", "-o", stats.name, *command], cwd=cwd,
                              capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t
        fields = stats.read().split()[-4:]
    elapsed, rss_kb, user, system = (float(f) for f in fields)
    return {"wall_s": round(elapsed, 2), "peak_rss_mb": round(rss_kb / 1024), "cpu_s": round(user + system, 2),
            "exit": done.returncode, "stdout": done.stdout.strip().split("\n")[0][:300],
            "stderr": done.stderr.strip()[-400:],
            "outer_wall_s": round(wall, 2), "load_1min_before": round(load, 2)}


def chromium_seconds(html: Path, work: Path, timeout_s: int = 180) -> float | None:
    """Seconds for headless Chromium to open ``html`` and write a screenshot (None: timed out)."""
    exe = shutil.which("chromium")
    if exe is None:
        return None
    shot = work / "report.png"
    t = time.perf_counter()
    try:
        subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={work / 'chromium-profile'}", f"--screenshot={shot}",
                        "--window-size=1400,3000", html.as_uri()], capture_output=True, timeout=timeout_s, check=True)
    except subprocess.TimeoutExpired:
        return None
    return round(time.perf_counter() - t, 1)


def measure(main: Path, status: Path, work: Path, label: str, with_chromium: bool, code: Path | None,
            commands: list[str] | None = None, repeat: int = 1) -> dict:
    """Time the four commands on one output (or those named in ``commands``), each ``repeat``
    times (a list of figures when more than once); ``code``: a source tree to run instead of this one."""
    cli = [sys.executable, "-m", "mrseg_cohort"]
    env = {**os.environ, "PYTHONPATH": str(code)} if code else None
    out = work / label
    out.mkdir(parents=True, exist_ok=True)
    report = out / "report.html"
    runs = {
        "status": [*cli, "status", str(status)],
        "status (the demo's 4-scan manifest)": [*cli, "status", str(main)],
        "tables wide": [*cli, "tables", "wide", str(main), "--out", str(out / "wide.parquet")],
        "tables phenotypes": [*cli, "tables", "phenotypes", str(main), "--out", str(out / "phenotypes.parquet")],
        "report": [*cli, "report", str(main), "--out", str(report)],
    }
    results = {}
    for name, command in runs.items():
        if commands and name.split(" (")[0] not in commands:
            continue
        figures = []
        for _ in range(repeat):
            print(f"[{label}] {name} ...", file=sys.stderr)
            figures.append(timed(command, work, env))
            print(f"[{label}] {name}: {json.dumps({k: v for k, v in figures[-1].items() if k != 'stderr'})}",
                  file=sys.stderr)
        results[name] = figures[0] if repeat == 1 else figures
    if report.exists() and "report" in results:
        if isinstance(results["report"], list):  # --repeat: the page of the last run
            results["report"] = results["report"][-1] | {"runs": results["report"]}
        results["report"]["html_mb"] = round(report.stat().st_size / 1e6, 2)
        beside = [p for p in out.iterdir() if p.name.startswith("report") and p.suffix == ".parquet"]
        results["report"]["beside"] = {p.name: round(p.stat().st_size / 1e6, 2) for p in beside}
        if with_chromium:
            results["report"]["chromium_s"] = chromium_seconds(report, out)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", required=True, help="A finished output folder (local), e.g. demo-output.")
    ap.add_argument("--config", required=True, type=Path, help="Its job YAML, e.g. configs/demo.yaml.")
    ap.add_argument("--scans", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--store", choices=("local", "s3", "both"), default="both")
    ap.add_argument("--work", type=Path, help="Folder for the outputs (default: a temporary one, removed).")
    ap.add_argument("--reuse", action="store_true", help="Measure outputs already built in --work.")
    ap.add_argument("--chromium", action="store_true", help="Also time headless Chromium opening each report.")
    ap.add_argument("--code", type=Path, help="Run the commands of this source tree (PYTHONPATH), e.g. an "
                    "earlier commit's `git archive`, for a before/after comparison.")
    ap.add_argument("--label", default="", help="Suffix of the result folders (e.g. -before).")
    ap.add_argument("--out", type=Path, help="Write the figures as JSON here.")
    ap.add_argument("--commands", nargs="+", choices=("status", "tables wide", "tables phenotypes", "report"),
                    help="Time only these commands (default: all).")
    ap.add_argument("--repeat", type=int, default=1, help="Time each command this many times.")
    ap.add_argument("--no-index", action="store_true", help="Build the outputs without the indexes a run "
                    "writes (_work/index), as an earlier version's output.")
    args = ap.parse_args()

    from mrseg_cohort.io.storage import Store

    work = args.work or Path(tempfile.mkdtemp(prefix="read-side-"))
    work.mkdir(parents=True, exist_ok=True)
    zips = work / "zips"
    figures: dict = {"scans": args.scans, "batch": args.batch, "load_before": os.getloadavg(),
                     "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    server = None
    try:
        built = None
        if args.store in ("local", "both"):
            dest = str(work / "output")
            record = work / "built-local.json"
            if args.reuse and record.exists():
                built = json.loads(record.read_text())
            else:
                t = time.perf_counter()
                built = build(args.source, dest, Store(), args.scans, args.batch, not args.no_index)
                figures["build_local_s"] = round(time.perf_counter() - t, 1)
                record.write_text(json.dumps(built))
            main_cfg, status_cfg = configs(args.config, work, dest, None, zips)
        if args.store in ("s3", "both"):
            from s3_server import start_weed

            server = start_weed(work / "s3-server")
            dest = f"s3://{server.bucket}/read-side/output"
            storage = {"endpoint_url": server.endpoint_url, "key": server.key, "secret": server.secret}
            t = time.perf_counter()
            built = build(args.source, dest, Store(server.options()), args.scans, args.batch, not args.no_index)
            figures["build_s3_s"] = round(time.perf_counter() - t, 1)
            s3_main, s3_status = configs(args.config, work, dest, storage, zips)
        if built is not None:
            figures["built"] = built
        if not (zips.exists() and args.reuse):
            write_zips(zips, args.scans + (built or {}).get("failures", 0), (built or {}).get("visit", "0"))
        if args.store in ("local", "both"):
            figures["local"] = measure(main_cfg, status_cfg, work, "local" + args.label, args.chromium, args.code,
                                       args.commands, args.repeat)
        if args.store in ("s3", "both"):
            figures["s3"] = measure(s3_main, s3_status, work, "s3" + args.label, args.chromium, args.code,
                                    args.commands, args.repeat)
    finally:
        if server is not None:
            server.stop()
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    figures["load_after"] = os.getloadavg()
    text = json.dumps(figures, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

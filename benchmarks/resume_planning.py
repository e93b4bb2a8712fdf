"""Resume planning at cohort scale: a 100,000-scan manifest against 90,000 committed scans.

    python benchmarks/resume_planning.py [--manifest 100000] [--committed 90000] [--batch 200]

Builds an output folder holding ``--committed`` published scans (``--batch`` scans per table part and
batch manifest, as `mrseg-cohort run` publishes them), then, in a fresh process, times what
`mrseg-cohort run` does before scheduling: recovery of interrupted batches, reading the committed
keys, and the anti-join with the manifest. Prints seconds and the planning process's peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def build(root: Path, committed: int, batch: int) -> None:
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.io.tables import table_bytes
    from mrseg_cohort.ledger.outputs import Outputs
    from mrseg_cohort.tables import to_table

    outputs = Outputs(Store(), str(root))
    for b, start in enumerate(range(0, committed, batch)):
        keys = [(f"{1000000 + i}", "2") for i in range(start, min(start + batch, committed))]
        batch_id = f"20260101T000000Z-bench-{b:05d}"
        rows = [{"participant_id": p, "visit": v, "contrast": "in", "model": "base", "status": "ok"} for p, v in keys]
        outputs.store.write_bytes(f"{root}/_work/batches/{batch_id}.json",
                                  json.dumps({"batch": batch_id, "scans": keys, "failures": []}).encode())
        outputs.store.write_bytes(f"{root}/tables/scans/part-{batch_id}.parquet", table_bytes(to_table("scans", rows)))
        outputs.store.write_bytes(f"{root}/_work/batches/{batch_id}.done", b"")


def plan(root: str, manifest: int) -> None:
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.manifest import ScanSource
    from mrseg_cohort.ledger.outputs import Outputs

    sources = [ScanSource(f"{1000000 + i}", "2", "ukbb-dicom-zip", "MRI",
                          (("dicom-zip", (f"s3://bucket/20201/{1000000 + i}_20201_2_0.zip",)),))
               for i in range(manifest)]
    rss_manifest = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    outputs = Outputs(Store(), root)
    recovery = outputs.recover()
    t1 = time.perf_counter()
    committed = outputs.committed_keys()
    unpublished = set(recovery.unpublished)
    todo = [s for s in sources if s.key not in committed and s.key not in unpublished]
    t2 = time.perf_counter()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"manifest": manifest, "committed": len(committed), "to_schedule": len(todo),
                      "seconds_recover": round(t1 - t0, 2), "seconds_committed_and_antijoin": round(t2 - t1, 2),
                      "seconds_total": round(t2 - t0, 2), "peak_rss_mb": round(peak / 1024),
                      "rss_after_manifest_mb": round(rss_manifest / 1024)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--manifest", type=int, default=100_000)
    ap.add_argument("--committed", type=int, default=90_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--plan-only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plan_only:
        plan(args.plan_only, args.manifest)
        return
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        build(Path(tmp), args.committed, args.batch)
        print(f"built {args.committed} committed scans in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        subprocess.run([sys.executable, __file__, "--manifest", str(args.manifest), "--plan-only", tmp], check=True)


if __name__ == "__main__":
    main()

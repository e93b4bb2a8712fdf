"""Marginal cost of the body-composition model in the same pass, against running it as a separate job.

    python benchmarks/body_comp_bench.py [--scans 3] [--threads 2] [--format nifti|dicom-zip] [--scale 2]

On the same machine, in one run, for the same phantom scans (UK Biobank layout: station NIfTI files
at the demo models' grid (scale 2), or UK Biobank-sized DICOM zips (``--format dicom-zip --scale 1``,
6 stations x 4 contrasts, 2.232 x 2.232 x 3 mm, decoded and stitched like real field-20201 zips)), through
the pipeline's own stage functions (read + stitch, segment, finish: write labels, measure, stage),
the three variants interleaved scan by scan:
  base only        the base model alone (what a first job costs)
  body comp only   the body-composition model alone (what a separate second job costs)
  one pass         both models: each scan read, stitched and preprocessed once
The marginal cost of the second model is (one pass - base only); the target is under 60 % of the
separate job. Seconds are wall time per scan, median over scans after the first (warm-up) scan.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--format", choices=["nifti", "dicom-zip"], default="nifti")
    ap.add_argument("--scale", type=float, default=2.0, help="phantom grid: 2 = demo-model grid, 1 = UK Biobank's")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    import torch

    from mrseg_cohort.config import JobConfig
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.manifest import discover
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort
    from mrseg_cohort.pipeline import stages
    from mrseg_cohort.segmentation.segmenter import Segmenter, check_model
    from mrseg_cohort.ledger.work_units import ScanUnit

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bc-bench-"))
    write_phantom_cohort(Store(), str(work / "in"), PhantomSpec(participants=args.scans + 1, seed=5150,
                                                                    scale=args.scale, format=args.format))
    layout = "ukbb-dicom-zip" if args.format == "dicom-zip" else "phantom"
    models = {"base": {"name": "base", "weights": "bundled:demo"},
              "body_comp": {"name": "body_comp", "weights": "bundled:demo_body_comp", "labels": "body_comp",
                            "modalities": ["MRI"]}}
    variants = {"base only": ["base"], "body comp only": ["body_comp"], "one pass": ["base", "body_comp"]}
    runs = {}
    for variant, names in variants.items():
        job = JobConfig.model_validate({
            "cohort": {"name": "bench", "layout": layout}, "input": {"uri": str(work / "in")},
            "models": [models[n] for n in names], "output": {"uri": str(work / variant.replace(" ", "_"))}})
        specs = tuple(check_model(m) for m in job.models)
        runs[variant] = (job, stages.RunContext(job, specs, "bench", {}, "cpu"), Segmenter(list(specs), "cpu", args.threads))
    seconds: dict[str, list[float]] = {v: [] for v in variants}
    sources = discover(runs["one pass"][0], Store())
    for source in sources:  # variants interleaved scan by scan: slow drifts of the machine hit all alike
        for variant, (job, ctx, segmenter) in runs.items():
            t = time.perf_counter()
            loaded = stages.read_and_stitch(ctx, source)
            segs = {c: segmenter(v, "MRI", c) for c, v in stages.segmentation_inputs(ctx, loaded).items()}
            stages.finish(ctx, ScanUnit(source, tuple(variants[variant])), loaded, segs)
            seconds[variant].append(time.perf_counter() - t)
        print(source.participant_id, {v: round(s[-1], 2) for v, s in seconds.items()}, flush=True)
    results = {v: {"s_per_scan_median": float(np.median(s[1:])), "per_scan_s": s} for v, s in seconds.items()}
    marginal = results["one pass"]["s_per_scan_median"] - results["base only"]["s_per_scan_median"]
    separate = results["body comp only"]["s_per_scan_median"]
    results["marginal_s_per_scan"] = marginal
    results["marginal_over_separate"] = marginal / separate
    results["args"] = vars(args)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps({"marginal_s_per_scan": round(marginal, 2), "separate_job_s_per_scan": round(separate, 2),
                      "ratio": round(marginal / separate, 3)}))


if __name__ == "__main__":
    main()

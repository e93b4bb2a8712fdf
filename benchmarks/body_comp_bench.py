"""Marginal cost of the body-composition model in the same pass, against running it as a separate job.

    python benchmarks/body_comp_bench.py [--scans 3] [--threads 2]

On the same machine, in one run, for the same phantom scans (UK Biobank layout, scale 2), through
the pipeline's own stage functions (read + stitch, segment, finish: write labels, measure, stage):
  base only        the base model alone (what a first job costs)
  body comp only   the body-composition model alone (what a separate second job costs)
  one pass         both models: each scan read, stitched and preprocessed once
The marginal cost of the second model is (one pass - base only); the target is under 60 % of the
separate job. Seconds are wall time per scan, median over scans, after one warm-up scan.
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
    args = ap.parse_args()
    import torch

    from mrseg_cohort.config import JobConfig
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.manifest import discover
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort
    from mrseg_cohort.pipeline import stages
    from mrseg_cohort.segmentation.segmenter import Segmenter, check_model

    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="bc-bench-"))
    write_phantom_cohort(Store(), str(work / "in"), PhantomSpec(participants=args.scans + 1, seed=5150))
    models = {"base": {"name": "base", "weights": "bundled:demo"},
              "body_comp": {"name": "body_comp", "weights": "bundled:demo_body_comp", "labels": "body_comp",
                            "modalities": ["MRI"]}}
    variants = {"base only": ["base"], "body comp only": ["body_comp"], "one pass": ["base", "body_comp"]}
    results = {}
    for variant, names in variants.items():
        job = JobConfig.model_validate({
            "cohort": {"name": "bench", "layout": "phantom"}, "input": {"uri": str(work / "in")},
            "models": [models[n] for n in names], "output": {"uri": str(work / variant.replace(" ", "_"))}})
        specs = tuple(check_model(m) for m in job.models)
        ctx = stages.RunContext(job, specs, "bench", {}, "cpu")
        segmenter = Segmenter(list(specs), "cpu", args.threads)
        seconds = []
        for source in discover(job, Store()):
            t = time.perf_counter()
            loaded = stages.read_and_stitch(ctx, source)
            segs = {c: segmenter(v, "MRI", c) for c, v in stages.segmentation_inputs(ctx, loaded).items()}
            stages.finish(ctx, loaded, segs)
            seconds.append(time.perf_counter() - t)
        results[variant] = {"s_per_scan_median": float(np.median(seconds[1:])), "per_scan_s": seconds}
        print(variant, json.dumps(results[variant]), flush=True)
    marginal = results["one pass"]["s_per_scan_median"] - results["base only"]["s_per_scan_median"]
    separate = results["body comp only"]["s_per_scan_median"]
    results["marginal_s_per_scan"] = marginal
    results["marginal_over_separate"] = marginal / separate
    print(json.dumps({"marginal_s_per_scan": round(marginal, 2), "separate_job_s_per_scan": round(separate, 2),
                      "ratio": round(marginal / separate, 3)}))


if __name__ == "__main__":
    main()

"""Tile skipping on the CPU: seconds per scan with and without it, and the share of tiles run.

    python benchmarks/tile_skipping.py --out benchmarks/results/tile-skipping.json

For NAKO-sized (320 x 260 x 316 at 1.4 x 1.4 x 3 mm) and UK Biobank-sized (224 x 168 x 364 at
2.232 x 2.232 x 3 mm) phantoms, and each with 40 cm of air added above and below:

- with the bundled demo model, one process, variants interleaved: seconds of our engine with
  ``skip_empty_tiles`` off and on, tiles run / tiles there are, voxels that differ;
- with an MRSegmentator-sized plan (1.5 mm, patch 128^3, tile step 0.5; no network run, the tile
  selection only): tiles run / tiles there are.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def inputs() -> dict:
    from mrseg_cohort.geometry import Grid, Volume
    from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant

    out = {}
    rng = np.random.default_rng(0)
    for layout in ("nako", "ukbb"):
        r = render_spec_participant(PhantomSpec(1, layout=layout, seed=4242, scale=1.0), 0)
        image = np.rint(r.in_phase).astype(np.float32)
        out[layout] = Volume(image, r.grid)
        pad = int(400 / r.grid.spacing_mm[0])
        shape = (pad, *image.shape[1:])
        air = np.abs(rng.normal(0, 5.1, shape) + 1j * rng.normal(0, 5.1, shape)).astype(np.float32)
        padded = np.concatenate([air, image, air])
        out[f"{layout} + 40 cm air"] = Volume(padded, Grid(padded.shape, r.grid.spacing_mm))
    return out


def mrseg_sized_fraction(volume) -> dict:
    """Tiles an MRSegmentator-sized plan would run, from the same selection the engine makes."""
    import torch
    from acvl_utils.cropping_and_padding.padding import pad_nd_image
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    from nnunetv2.preprocessing.resampling.default_resampling import compute_new_shape

    from mrseg_cohort.segmentation.resampling import ResamplingPlan, resample_image
    from mrseg_cohort.segmentation.tiles import body_mask, coarse_step, tiles_to_run

    patch, spacing = (128, 128, 128), (1.5, 1.5, 1.5)
    image = volume.array
    x = torch.from_numpy((image - image.mean()) / image.std())
    new = tuple(int(s) for s in compute_new_shape(image.shape, volume.grid.spacing_mm, spacing))
    x = resample_image(x.double(), new, volume.grid.spacing_mm, spacing, ResamplingPlan(3)).float()[None]
    data, revert = pad_nd_image(x, patch, "constant", {"value": 0}, True, None)
    corners = list(itertools.product(*compute_steps_for_sliding_window(tuple(data.shape[1:]), patch, 0.5)))
    step = coarse_step(spacing)
    body = body_mask(x[0, ::step, ::step, ::step].numpy(), step)
    offset = tuple(int(r.start or 0) for r in revert[1:])
    run = tiles_to_run(body, corners, patch, offset, tuple(p // 2 + step for p in patch))
    return {"model_grid": list(new), "tiles_run": int(sum(run)), "tiles_total": len(run)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    from mrseg_cohort.segmentation.engine import ModelRunner, TileCounts
    from mrseg_cohort.segmentation.model_folder import open_model_folder

    torch.set_num_threads(args.threads)
    folder = open_model_folder(REPO / "mrseg_cohort" / "models" / "demo", (0,))
    runners = {skip: ModelRunner(folder, "cpu", skip_empty_tiles=skip) for skip in (False, True)}
    results = {}
    for name, volume in inputs().items():
        row: dict = {"shape": list(volume.grid.shape), "spacing_mm": list(volume.grid.spacing_mm)}
        labels = {}
        for skip, runner in runners.items():
            counts = TileCounts()
            t = time.perf_counter()
            labels[skip] = runner(volume.array, volume.grid.spacing_mm, tiles=counts)
            row[f"seconds_skip_{skip}"] = round(time.perf_counter() - t, 2)
            row[f"tiles_skip_{skip}"] = f"{counts.run}/{counts.total}"
        row["voxels_differing"] = int((labels[False] != labels[True]).sum())
        row["mrseg_sized"] = mrseg_sized_fraction(volume)
        results[name] = row
        print(name, json.dumps(row), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "torch": torch.__version__, "results": results},
                                         indent=1))


if __name__ == "__main__":
    main()

"""Our inference path against nnU-Net v2's own predictor: same input, same model, one run.

    python benchmarks/inference_bench.py --input nako --model demo --scans 2 --out benchmarks/results/cpu-nako-demo.json
    python benchmarks/inference_bench.py --input nako --model mrseg-sized --folds 5 --device cuda --out ...   # GPU

Inputs (stitched phantoms, in-phase contrast, written as NIfTI so both sides read a file):
  nako  320 x 260 x 316 voxels at 1.4 x 1.4 x 3 mm (NAKO's stitched Dixon matrix)
  ukbb  224 x 168 x 364 voxels at 2.232 x 2.232 x 3 mm (6 UK Biobank stations stitched)
  ambiguous  NAKO's matrix of MRI-like noise with a textured body-shaped ellipse
        (mrseg_cohort.phantom.noise): a model is unsure there, so near-tied logits test rounding
Models:
  demo         the bundled demo model (mrseg_cohort/models/demo)
  mrseg-sized  nnU-Net's default 3d_fullres PlainConvUNet, 6 stages, 32..320 features, 41 outputs,
               1.5 mm isotropic, patch 128^3, random weights (as ../shared/tools/gpu-anchor measures)

Each measurement runs in its own process (clean peak memory), in this order:
  nnunet-files  nnU-Net's predict_from_files over all scans (its fastest mode): wall, scans/hour
  nnunet-steps  nnU-Net's stages one by one on scan 0: wall and CPU seconds per stage
  ours-steps    our stages on scan 0 (read, preprocess, network, export, measure, write)
  ours-files    our engine over all scans (read -> labels written), wall, scans/hour
and then compares the labels of ours-files against nnunet-files: voxels differing per scan, Dice
per class. CPU seconds are the process's user + system time (all threads) plus its children's.
Steady state (``steady_s_per_scan``): the median time between consecutive finished scans after the
first (ours: per scan; nnU-Net: between its output files' modification times, since its worker
processes overlap the scans), leaving out start-up and the first scan's warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def peak_rss_mb() -> float:
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
               resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss) / 1024


class Stage:
    """Wall and CPU seconds of a block: ``with Stage(out, "read"): ...``."""

    def __init__(self, out: dict, name: str, device: str = "cpu"):
        self.out, self.name, self.device = out, name, device

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        self.out[self.name] = {"wall_s": time.perf_counter() - self.wall, "cpu_s": cpu_seconds() - self.cpu}
        return False


class GpuSampler:
    """nvidia-smi utilisation every 200 ms while alive (empty result without a GPU)."""

    def __init__(self):
        self.samples, self.proc = [], None
        if shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.samples.append(float(line))
            except ValueError:
                pass

    def stop(self) -> dict:
        if self.proc:
            self.proc.terminate()
        if not self.samples:
            return {}
        u = np.array(self.samples)
        return {"gpu_util_mean_pct": float(u.mean()), "gpu_busy_frac_gt50": float((u > 50).mean())}


# -- set-up ---------------------------------------------------------------------------------------
def make_inputs(work: Path, which: str, scans: int) -> list[Path]:
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.io.nifti import write_volume
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.phantom.cohort import PhantomSpec, render_spec_participant
    from mrseg_cohort.phantom.noise import textured_body_in_noise

    paths = []
    for i in range(scans):
        path = work / "in" / f"scan{i}_0000.nii.gz"
        if which == "ambiguous":  # NAKO's matrix, MRI-like noise, a textured body: the model is unsure
            write_volume(Store(), str(path), textured_body_in_noise((316, 260, 320), (3.0, 1.4, 1.4), seed=i),
                         np.float32)
        else:
            r = render_spec_participant(PhantomSpec(1, layout=which, seed=4242, scale=1.0), i)
            write_volume(Store(), str(path), Volume(np.rint(r.in_phase).astype(np.int16), r.grid), np.int16)
        paths.append(path)
    return paths


def make_mrseg_sized_model(root: Path, folds: int) -> Path:
    """A random-weight model folder with MRSegmentator's size (see module docstring)."""
    from mrseg_cohort.segmentation.random_model import MRSEG_FEATURES, RandomModelSpec, write_random_model

    return write_random_model(root, RandomModelSpec(features=MRSEG_FEATURES, patch_size=(128, 128, 128),
                                                    spacing_mm=(1.5, 1.5, 1.5), folds=folds))


# -- the measured paths (each in its own process) -----------------------------------------------
def run_nnunet_files(args, paths: list[Path], out_dir: Path) -> dict:
    from mrseg_cohort.segmentation.model_folder import make_nnunet_predictor, open_model_folder

    predictor = make_nnunet_predictor(open_model_folder(args.model_dir, tuple(range(args.folds))), args.device)
    sampler = GpuSampler()
    t, c = time.perf_counter(), cpu_seconds()
    predictor.predict_from_files([[str(p)] for p in paths], str(out_dir), save_probabilities=False, overwrite=True,
                                 num_processes_preprocessing=args.workers, num_processes_segmentation_export=args.workers)
    wall = time.perf_counter() - t
    finished = sorted(f.stat().st_mtime for f in out_dir.glob("*.nii.gz"))
    return {"scans": len(paths), "wall_s": wall, "s_per_scan": wall / len(paths),
            "scans_per_hour": 3600 * len(paths) / wall, "cpu_s_per_scan": (cpu_seconds() - c) / len(paths),
            **steady_state(list(np.diff(finished))), **sampler.stop()}


def steady_state(intervals: list[float]) -> dict:
    """Seconds between consecutive finished scans (after the first) and their median."""
    return {"intervals_s": [float(v) for v in intervals],
            "steady_s_per_scan": float(np.median(intervals)) if intervals else None}


def run_nnunet_steps(args, path: Path) -> dict:
    import torch
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from mrseg_cohort.segmentation.model_folder import make_nnunet_predictor, open_model_folder

    p = make_nnunet_predictor(open_model_folder(args.model_dir, tuple(range(args.folds))), args.device)
    stages: dict = {}
    with Stage(stages, "read"):
        data, props = SimpleITKIO().read_images([str(path)])
    with Stage(stages, "preprocess"):
        pre = p.configuration_manager.preprocessor_class(verbose=False)
        d, _, pprops = pre.run_case_npy(data, None, props, p.plans_manager, p.configuration_manager, p.dataset_json)
    with Stage(stages, "network", args.device):
        logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(d)).cpu()
    with Stage(stages, "export"):
        seg = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits, p.plans_manager, p.configuration_manager, p.label_manager, pprops, return_probabilities=False)
    with Stage(stages, "write"):
        SimpleITKIO().write_seg(seg, str(path.parent.parent / "nnunet_steps_seg.nii.gz"), pprops)
    return {"stages": stages, "model_grid_shape": list(d.shape[1:]), "logits_gb": logits.numel() * 2 / 1e9}


def run_ours_steps(args, path: Path) -> dict:
    from mrseg_cohort.biomarkers.scan import measure_scan
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.io.nifti import read_volume, write_volume
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.segmentation.engine import ModelRunner
    from mrseg_cohort.segmentation.model_folder import open_model_folder

    runner = ModelRunner(open_model_folder(args.model_dir, tuple(range(args.folds))), args.device)
    stages: dict = {}
    with Stage(stages, "read"):
        volume = read_volume(Store(), str(path))
    from mrseg_cohort.segmentation.engine import nonzero_box

    with Stage(stages, "preprocess", args.device):
        box = nonzero_box(volume.array)
        x = runner.preprocess(volume.array[box], volume.grid.spacing_mm)
    with Stage(stages, "network", args.device):
        logits = runner.logits(x)
    with Stage(stages, "export", args.device):
        labels = np.zeros(volume.grid.shape, np.uint8)
        labels[box] = runner.export(logits, volume.array[box].shape, volume.grid.spacing_mm)
    with Stage(stages, "measure"):
        measure_scan(Volume(labels, volume.grid), runner.model.label_map, {"in": volume}, segmented="in")
    with Stage(stages, "write"):
        write_volume(Store(), str(path.parent.parent / "ours_steps_seg.nii.gz"), Volume(labels, volume.grid), np.uint8)
    return {"stages": stages, "model_grid_shape": list(x.shape[1:])}


def run_ours_files(args, paths: list[Path], out_dir: Path) -> dict:
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.io.nifti import read_volume, write_volume
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.segmentation.engine import ModelRunner
    from mrseg_cohort.segmentation.model_folder import open_model_folder

    runner = ModelRunner(open_model_folder(args.model_dir, tuple(range(args.folds))), args.device)
    sampler = GpuSampler()
    out_dir.mkdir(parents=True, exist_ok=True)
    t, c = time.perf_counter(), cpu_seconds()
    finished = []
    for path in paths:
        volume = read_volume(Store(), str(path))
        labels = runner(volume.array, volume.grid.spacing_mm)
        write_volume(Store(), str(out_dir / path.name.replace("_0000", "")), Volume(labels, volume.grid), np.uint8)
        finished.append(time.perf_counter())
    wall = time.perf_counter() - t
    return {"scans": len(paths), "wall_s": wall, "s_per_scan": wall / len(paths),
            "scans_per_hour": 3600 * len(paths) / wall, "cpu_s_per_scan": (cpu_seconds() - c) / len(paths),
            **steady_state(list(np.diff(finished))), **sampler.stop()}


def agreement(ours_dir: Path, ref_dir: Path) -> dict:
    from mrseg_cohort.io.nifti import read_labels
    from mrseg_cohort.io.storage import Store

    worst, identical, differing = {}, [], []
    for ref in sorted(ref_dir.glob("*.nii.gz")):
        a = read_labels(Store(), str(ours_dir / ref.name)).array
        b = read_labels(Store(), str(ref)).array
        identical.append(float((a == b).mean()))
        differing.append(int((a != b).sum()))
        for c in range(1, 41):
            x, y = a == c, b == c
            if x.any() or y.any():
                d = 2 * (x & y).sum() / (x.sum() + y.sum())
                worst[c] = min(worst.get(c, 1.0), float(d))
    from mrseg_cohort.labels import MRSEG

    low = {MRSEG[c].name: round(v, 4) for c, v in sorted(worst.items(), key=lambda kv: kv[1])[:5]}
    return {"voxels_differing": differing, "voxels_identical_frac": identical,
            "min_dice_per_class": min(worst.values()) if worst else None, "lowest_classes": low}


def child(args) -> None:
    """One measured path in this process; prints one JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    paths = sorted(Path(args.work, "in").glob("*.nii.gz"))
    if args.path == "nnunet-files":
        res = run_nnunet_files(args, paths, Path(args.work, "pred_nnunet"))
    elif args.path == "nnunet-steps":
        res = run_nnunet_steps(args, paths[0])
    elif args.path == "ours-steps":
        res = run_ours_steps(args, paths[0])
    else:
        res = run_ours_files(args, paths, Path(args.work, "pred_ours"))
    res["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(res), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", choices=["nako", "ukbb", "ambiguous"], default="nako")
    ap.add_argument("--model", choices=["demo", "mrseg-sized"], default="demo")
    ap.add_argument("--folds", type=int, default=1)
    ap.add_argument("--scans", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--workers", type=int, default=1, help="nnU-Net's preprocessing/export worker processes")
    ap.add_argument("--paths", default="nnunet-files,nnunet-steps,ours-steps,ours-files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default=None)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.path:
        child(args)
        return
    work = Path(args.work or tempfile.mkdtemp(prefix="mrseg-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    res = {"args": vars(args), "torch": torch.__version__, "cpus": os.cpu_count(),
           "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"}
    t = time.perf_counter()
    make_inputs(work, args.input, args.scans)
    model_dir = REPO / "mrseg_cohort" / "models" / "demo" if args.model == "demo" else \
        make_mrseg_sized_model(work / "model", args.folds)
    res["setup_s"] = time.perf_counter() - t
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path in args.paths.split(","):
        cmd = [sys.executable, __file__, "--path", path, "--work", str(work), "--model-dir", str(model_dir),
               "--folds", str(args.folds), "--device", args.device, "--threads", str(args.threads),
               "--workers", str(args.workers), "--out", args.out]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        res[path] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-3000:]}
        out.write_text(json.dumps(res, indent=1))
        print(f"{path}: {json.dumps(res[path])[:400]}", flush=True)
    if (work / "pred_ours").exists() and (work / "pred_nnunet").exists():
        res["agreement"] = agreement(work / "pred_ours", work / "pred_nnunet")
    ours, theirs = res.get("ours-files", {}), res.get("nnunet-files", {})
    if ours.get("steady_s_per_scan") and theirs.get("steady_s_per_scan"):
        res["steady_ratio_ours_over_nnunet"] = ours["steady_s_per_scan"] / theirs["steady_s_per_scan"]
    res["load_average_at_end"] = os.getloadavg()
    out.write_text(json.dumps(res, indent=1))
    print(json.dumps(res.get("agreement"), indent=1))


if __name__ == "__main__":
    main()

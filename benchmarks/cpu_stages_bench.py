"""The CPU stages of one scan outside the network, each timed and profiled, on one core.

    python benchmarks/cpu_stages_bench.py --scans 4 --out benchmarks/results/cpu-stages-ukbb.json
    python benchmarks/cpu_stages_bench.py --scans 4 --profile /tmp/cpu-stages-prof   # + cProfile per stage

UK Biobank-sized phantom zips (field 20201 layout: 6 stations x 4 Dixon contrasts = 24 series, 1,536
DICOM slices, stitched 364 x 168 x 224 at 3 x 2.232 x 2.232 mm) go through the stages a CPU worker
runs, with the pipeline's own functions, the base and body-composition models as in
benchmarks/README.md §5:

  read     read_stations: the zip streamed, 1,536 slices decoded (pydicom), 24 series assembled
  stitch   target_grid + stitch of the 4 contrasts onto one grid
  write    the label file of each model (write_volume: uint8 NIfTI, gzip)
  measure  measure_scan per model (volumes, fat fractions, components, intensities, QC)

The segmentation between them (the demo models, so that the labels look like a model's) is not
timed. One process with one thread (``OMP_NUM_THREADS=1``, torch 1 thread): CPU seconds are the
process's user + system time per stage; wall seconds beside them. The first scan is a warm-up
(imports, caches); figures are medians over the others.

Side measurements on the first scan's data: gzip level of the label files (time and size per
level), and decoding the zip's slices with SimpleITK (GDCM) instead of pydicom (time, equal values).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core: before numpy/torch load their thread pools

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_seconds() -> float:
    me = resource.getrusage(resource.RUSAGE_SELF)
    return me.ru_utime + me.ru_stime


class Timed:
    """Wall and CPU seconds of a block into ``out[name]`` (summed), optionally under cProfile."""

    def __init__(self, out: dict, name: str, profiles: dict | None):
        self.out, self.name, self.profiles = out, name, profiles

    def __enter__(self):
        if self.profiles is not None:
            self.profile = self.profiles.setdefault(self.name, cProfile.Profile())
            self.profile.enable()
        self.wall, self.cpu = time.perf_counter(), cpu_seconds()
        return self

    def __exit__(self, *exc):
        wall, cpu = time.perf_counter() - self.wall, cpu_seconds() - self.cpu
        if self.profiles is not None:
            self.profile.disable()
        prev = self.out.get(self.name, {"wall_s": 0.0, "cpu_s": 0.0})
        self.out[self.name] = {"wall_s": prev["wall_s"] + wall, "cpu_s": prev["cpu_s"] + cpu}
        return False


def compression_levels(labels, levels: list[int]) -> dict:
    """Seconds and bytes of one label file per gzip level (nifti_bytes)."""
    from mrseg_cohort.io.nifti import nifti_bytes

    out = {}
    for level in levels:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            raw = nifti_bytes(labels, np.uint8, compresslevel=level)
            times.append(time.perf_counter() - t)
        out[str(level)] = {"s": min(times), "bytes": len(raw)}
    return out


def decoders(zip_path: str) -> dict:
    """pydicom (ours) against SimpleITK/GDCM on every slice of one zip: seconds and equal values."""
    import io
    import zipfile

    import pydicom
    import SimpleITK as sitk
    from pydicom.pixels import apply_modality_lut

    with zipfile.ZipFile(zip_path) as archive:
        blobs = [archive.read(i) for i in archive.infolist() if i.filename.lower().endswith(".dcm")]
    t = time.perf_counter()
    ours = []
    for blob in blobs:
        ds = pydicom.dcmread(io.BytesIO(blob))
        ours.append(np.asarray(apply_modality_lut(ds.pixel_array, ds), dtype=np.float32))
    t_pydicom = time.perf_counter() - t
    folder = tempfile.mkdtemp(prefix="dcm-")  # SimpleITK reads files, not bytes
    paths = []
    for k, blob in enumerate(blobs):
        paths.append(os.path.join(folder, f"{k}.dcm"))
        Path(paths[-1]).write_bytes(blob)
    t = time.perf_counter()
    theirs = []
    for path in paths:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(path)
        theirs.append(sitk.GetArrayFromImage(reader.Execute())[0].astype(np.float32))
    t_gdcm = time.perf_counter() - t
    equal = all(np.array_equal(a, b) for a, b in zip(ours, theirs))
    return {"slices": len(blobs), "pydicom_s": t_pydicom, "sitk_gdcm_s_from_files": t_gdcm, "values_equal": equal}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scans", type=int, default=4, help="scans measured, after one warm-up scan")
    ap.add_argument("--profile", help="write one cProfile file per stage (all scans) into this folder")
    ap.add_argument("--levels", default="1,2,3,6", help="gzip levels to compare for the label files")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    import torch

    from mrseg_cohort.biomarkers.scan import measure_scan
    from mrseg_cohort.config import JobConfig
    from mrseg_cohort.geometry import Volume
    from mrseg_cohort.io.limits import ReadLimits
    from mrseg_cohort.io.nifti import write_volume
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.loading import read_stations
    from mrseg_cohort.manifest import discover
    from mrseg_cohort.phantom.cohort import PhantomSpec, write_phantom_cohort
    from mrseg_cohort.segmentation.segmenter import Segmenter, check_model
    from mrseg_cohort.stitching import stitch, target_grid

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="cpu-stages-"))
    store = Store()
    write_phantom_cohort(store, str(work / "in"), PhantomSpec(participants=args.scans + 1, seed=5150, scale=1.0,
                                                              format="dicom-zip"))
    job = JobConfig.model_validate({
        "cohort": {"name": "bench", "layout": "ukbb-dicom-zip"}, "input": {"uri": str(work / "in")},
        "models": [{"name": "base", "weights": "bundled:demo"},
                   {"name": "body_comp", "weights": "bundled:demo_body_comp", "labels": "body_comp",
                    "modalities": ["MRI"]}],
        "output": {"uri": str(work / "out")}})
    specs = [check_model(m) for m in job.models]
    segmenter = Segmenter(specs, "cpu", 1)
    contrasts, measures = job.contrasts, job.measures
    profiles: dict | None = {} if args.profile else None
    per_scan, extra = [], {}
    for number, source in enumerate(discover(job, store)):
        stages: dict = {}
        prof = profiles if number > 0 else None
        with Timed(stages, "read", prof):
            stations, n_bytes = read_stations(store, source, tuple(contrasts.available), ReadLimits())
        with Timed(stages, "stitch", prof):
            grid = target_grid([v.grid for vols in stations.values() for v in vols],
                               job.stitching.inplane_spacing_mm, job.stitching.z_spacing_mm)
            stitched = {c: stitch(v, grid) for c, v in stations.items()}
        images = {c: s.volume for c, s in stitched.items()}
        segmented = contrasts.segment[0]
        seg = segmenter(images[segmented], "MRI", segmented)
        for spec in specs:
            volume = Volume(seg.labels[spec.name], grid)
            with Timed(stages, "write", prof):
                write_volume(store, str(work / "out" / f"{source.participant_id}_{spec.name}.nii.gz"), volume,
                             np.uint8)
            with Timed(stages, "measure", prof):
                measure_scan(volume, spec.label_map, images, contrasts.fat, contrasts.water, measures,
                             segmented=segmented, field_of_view=stitched[segmented].field_of_view)
        if number == 0:
            extra["gzip_levels"] = compression_levels(Volume(seg.labels["base"], grid),
                                                      [int(v) for v in args.levels.split(",")])
            extra["decoders"] = decoders(source.uris[0])
            extra["grid"] = {"shape": list(grid.shape), "spacing_mm": list(grid.spacing_mm)}
            extra["zip_bytes"] = n_bytes
        else:
            per_scan.append(stages)
        print(source.participant_id, {k: round(v["cpu_s"], 2) for k, v in stages.items()}, flush=True)
    names = ["read", "stitch", "write", "measure"]
    median = {n: {k: float(np.median([s[n][k] for s in per_scan])) for k in ("wall_s", "cpu_s")} for n in names}
    total = {k: sum(median[n][k] for n in names) for k in ("wall_s", "cpu_s")}
    results = {"scans": len(per_scan), "median_per_scan": median, "total_per_scan": total, "per_scan": per_scan,
               **extra, "load_average": os.getloadavg()}
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        for name, profile in (profiles or {}).items():
            profile.dump_stats(str(Path(args.profile) / f"{name}.prof"))
            with open(Path(args.profile) / f"{name}.txt", "w") as f:
                pstats.Stats(profile, stream=f).sort_stats("cumulative").print_stats(40)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(json.dumps({"median_per_scan": median, "total_per_scan": total, **extra}, indent=1))


if __name__ == "__main__":
    main()

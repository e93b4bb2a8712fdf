"""The per-scan stages as plain functions (no Ray): read + stitch, and finish (export, measure, stage).

:mod:`mrseg_cohort.pipeline.run` runs them as Ray tasks; tests call them directly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import numpy as np
import pyarrow as pa

from mrseg_cohort.biomarkers.body_composition import depot_summary, is_body_composition
from mrseg_cohort.biomarkers.scan import measure_scan
from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import ScanError, StorageError
from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.limits import ReadLimits
from mrseg_cohort.io.nifti import write_volume
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.loading import LoadedScan, load_scan
from mrseg_cohort.manifest import ScanSource
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.segmentation.segmenter import ModelSpec, Segmentation
from mrseg_cohort.tables import to_table
from mrseg_cohort.versions import software_versions, version_mismatch
from mrseg_cohort.ledger.work_units import ScanUnit

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """What every stage of one run needs, shipped to workers once (plain data)."""

    job: JobConfig
    models: tuple[ModelSpec, ...]
    run_id: str
    versions: dict
    """Software versions of the driver, which the output's fingerprint holds (:mod:`mrseg_cohort.versions`)."""
    device: str
    base_model: str = ""
    """The model whose label files carry no suffix, as the output recorded it (default: the job's)."""

    @property
    def base(self) -> str:
        return self.base_model or self.job.base_model

    @property
    def limits(self) -> ReadLimits:
        return ReadLimits.from_config(self.job.limits)

    def input_store(self) -> Store:
        return Store.from_config(self.job.input.storage)

    def outputs(self) -> Outputs:
        return Outputs.for_job(self.job)


@contextlib.contextmanager
def writing_outputs(source: ScanSource) -> Iterator[None]:
    """A failed write of this scan's outputs (full disk, read-only folder, store down) becomes its
    ``failures`` row at stage ``write``, naming the file; the job goes on with the other scans."""
    try:
        yield
    except StorageError as err:
        raise ScanError(f"cannot write the results: {err.message}", source.participant_id, "write",
                        err.uri) from err


def check_software(ctx: RunContext, source: ScanSource, stage: str) -> None:
    """A worker whose libraries compute differently from the driver's (another node's installation)
    fails the scan at once, naming the libraries, instead of mixing results of two versions."""
    mismatch = version_mismatch(ctx.versions)
    if mismatch:
        raise ScanError(f"this worker's software differs from the run's ({mismatch}); install the same versions "
                        "on every node", source.participant_id, stage)


def read_and_stitch(ctx: RunContext, source: ScanSource) -> LoadedScan:
    """Stage 1 (CPU): read every file of ``source`` and stitch each contrast onto one grid."""
    job = ctx.job
    check_software(ctx, source, "read")
    loaded = load_scan(ctx.input_store(), source, job.contrasts, job.stitching, ctx.limits)
    if job.stitching.save_stitched:
        t = time.perf_counter()
        out = ctx.outputs()
        with writing_outputs(source):
            for contrast, image in loaded.images.items():
                write_volume(out.store, out.stitched_uri(source.key, contrast), image, np.float32)
        loaded.seconds["write"] = time.perf_counter() - t
    return loaded


def segmentation_inputs(ctx: RunContext, loaded: LoadedScan) -> dict[str, Volume]:
    """The images the segmentation actor needs (the contrasts to segment), nothing more."""
    return {c: loaded.images[c] for c in ctx.job.contrasts.segment}


def finish(ctx: RunContext, unit: ScanUnit, loaded: LoadedScan,
           segmentations: dict[str, Segmentation]) -> dict[str, pa.Table]:
    """Stage 3 (CPU): write label files, measure, and stage the unit's rows; returns those rows.

    Args:
        unit: the scan and the models run on it in this pass.
        segmentations: per segmented contrast, the labels of the unit's models.
    """
    source = loaded.source
    check_software(ctx, source, "measure")
    outputs = ctx.outputs()
    # the scan's shared stages (read, stitch) are counted on its first row, so that summing a scan's
    # rows gives its cost and each further row what that model added
    shared = {"read": 0.0, "stitch": 0.0, "write": 0.0, **loaded.seconds}
    specs = [spec for spec in ctx.models if spec.name in unit.models]
    written: list[str] = []
    try:
        tables = _write_and_measure(ctx, loaded, segmentations, specs, outputs, shared, written)
        with writing_outputs(source):
            outputs.stage(unit.key, tables)
    except Exception:  # a scan that fails leaves no label file that no table names (only those it created)
        for uri in written:
            with contextlib.suppress(OSError):
                outputs.store.remove(uri)
        raise
    return tables


def _write_and_measure(ctx: RunContext, loaded: LoadedScan, segmentations: dict[str, Segmentation],
                       specs: list[ModelSpec], outputs: Outputs, shared: dict, written: list[str]) -> dict[str, pa.Table]:
    """The label files of a unit's models (the locations of those it created appended to
    ``written``) and its rows."""
    job, source, key, contrasts = ctx.job, loaded.source, loaded.source.key, ctx.job.contrasts
    structures, intensities, scans = [], [], []
    for contrast, seg in segmentations.items():
        for spec in specs:
            keys = {"participant_id": source.participant_id, "visit": source.visit, "contrast": contrast,
                    "model": spec.name}
            labels = seg.labels.get(spec.name)
            if labels is None:
                scans.append({**keys, **_scan_common(ctx, loaded, spec, seg), "status": "skipped",
                              "model_skipped_reason": seg.skipped.get(spec.name, "not run")})
                continue
            t = time.perf_counter()
            path = outputs.label_path(key, contrast, spec.name, ctx.base)  # recorded relative to the output
            uri = join_uri(outputs.root, path)
            volume = Volume(labels, loaded.grid)
            with writing_outputs(source):
                if not outputs.store.exists(uri):  # one there already (an earlier attempt's) is not ours to remove
                    written.append(uri)
                write_volume(outputs.store, uri, volume, np.uint8)
            t_write = time.perf_counter() - t
            measures = measure_scan(volume, spec.label_map, loaded.images, _present(contrasts.fat, loaded),
                                    _present(contrasts.water, loaded), job.measures, segmented=contrast,
                                    field_of_view=loaded.field_of_view)
            t_measure = time.perf_counter() - t - t_write
            depots = depot_summary(measures.structures) if is_body_composition(set(spec.label_names.values())) else {}
            structures += [{**keys, **r} for r in measures.structures]
            intensities += [{**keys, **r} for r in measures.intensities]
            stage_seconds = {"read": shared["read"], "stitch": shared["stitch"], "preprocess": 0.0,
                             **seg.seconds.get(spec.name, {}), "write": shared["write"] + t_write,
                             "measure": t_measure}
            shared = {stage: 0.0 for stage in shared}
            tiles = seg.tiles.get(spec.name)
            scans.append({**keys, **_scan_common(ctx, loaded, spec, seg), **measures.scan, **depots, "status": "ok",
                          "label_uri": path, **{f"seconds_{k}": v for k, v in stage_seconds.items()},
                          "tiles_total": tiles.total if tiles else None, "tiles_run": tiles.run if tiles else None})
    return {"structures": to_table("structures", structures), "intensities": to_table("intensities", intensities),
            "scans": to_table("scans", scans)}


def _present(contrast: str | None, loaded: LoadedScan) -> str | None:
    return contrast if contrast and contrast in loaded.images else None


def _scan_common(ctx: RunContext, loaded: LoadedScan, spec: ModelSpec, seg: Segmentation | None) -> dict:
    """The columns of a scan's row every model shares. Software versions are those of the processes
    that computed the row: the segmentation actor's for the network's libraries, this worker's for
    the rest."""
    grid = loaded.grid
    computed_by = {**software_versions(), **(seg.versions if seg is not None else {})}
    computed_by["software"] = computed_by.pop("mrseg_cohort")
    source = loaded.source
    return {
        "modality": source.modality, "layout": source.layout, "source_uris": list(source.uris),
        "contrasts_available": sorted(loaded.images), "n_stations": loaded.n_stations,
        "shape_z": grid.shape[0], "shape_y": grid.shape[1], "shape_x": grid.shape[2],
        "spacing_z_mm": grid.spacing_mm[0], "spacing_y_mm": grid.spacing_mm[1], "spacing_x_mm": grid.spacing_mm[2],
        "origin_mm": list(grid.origin_mm), "direction": list(grid.direction), "axis_codes": grid.axis_codes(),
        "stitch_max_gap_mm": max((s.gap_mm for s in loaded.seams), default=0.0),
        "stitch_max_fusion_cost": max((s.fusion_cost for s in loaded.seams if np.isfinite(s.fusion_cost)),
                                      default=float("nan")),
        "seams_json": json.dumps([s.__dict__ for s in loaded.seams]),
        "weights_sha256": spec.sha256, "folds": ",".join(str(f) for f in spec.folds),
        **{f"{key.lower()}_version": value for key, value in computed_by.items()},
        "device": ctx.device, "input_bytes": loaded.input_bytes,
        "run_id": ctx.run_id, "committed_at": datetime.now(timezone.utc),
    }

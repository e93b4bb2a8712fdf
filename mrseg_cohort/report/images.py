"""The image and labels of one committed scan, for its preview.

The image is the stitched image when the run saved it (``stitched/<pid>/<visit>/<contrast>.nii.gz``,
``stitching.save_stitched``); otherwise the scan's station files (``source_uris`` of its ``scans``
row) are read and stitched again with :func:`mrseg_cohort.loading.load_scan` and the job's
stitching settings, which gives the grid the labels were written on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mrseg_cohort.config import ContrastsConfig, JobConfig
from mrseg_cohort.errors import BadScanError
from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.limits import ReadLimits
from mrseg_cohort.io.nifti import read_labels, read_volume
from mrseg_cohort.io.storage import Store
from mrseg_cohort.loading import load_scan
from mrseg_cohort.manifest import ScanSource, pattern_regex
from mrseg_cohort.ledger.outputs import Outputs


@dataclass(frozen=True)
class ScanImages:
    image: Volume
    labels: Volume
    image_origin: str
    """Where the image came from, for the caption."""


def source_from_row(job: JobConfig, row: Mapping[str, Any]) -> ScanSource:
    """The :class:`ScanSource` of a ``scans`` row, from its ``source_uris`` and the job's layout.

    Station files of pattern layouts (phantom, nako-nifti) are assigned to contrasts and ordered by
    station with ``cohort.pattern``, as the manifest does; other layouts have a single file.
    """
    uris = [str(u) for u in (row.get("source_uris") if row.get("source_uris") is not None else [])]
    pid, visit = str(row["participant_id"]), str(row["visit"])
    layout = str(row.get("layout") or job.cohort.layout)
    modality = str(row.get("modality") or job.cohort.modality)
    if not uris:
        raise BadScanError("the scans row lists no source files", pid, "report")
    if layout == "ukbb-dicom-zip":
        files: tuple = (("dicom-zip", (uris[0],)),)
    elif layout == "nifti-folder":
        files = ((job.contrasts.segment[0], (uris[0],)),)
    else:
        regex = pattern_regex(job.cohort.pattern, job.contrasts.available)
        root = job.input.uri.rstrip("/") + "/"
        by_contrast: dict[str, list[tuple[int, str]]] = {}
        for uri in uris:
            match = regex.match(uri[len(root):]) if uri.startswith(root) else None
            if match is None:
                raise BadScanError(f"source file does not match cohort.pattern {job.cohort.pattern!r} under "
                                   f"input.uri {job.input.uri}", pid, "report", uri)
            station = int(match.groupdict().get("station") or 0)
            by_contrast.setdefault(match["contrast"], []).append((station, uri))
        files = tuple((c, tuple(u for _, u in sorted(v))) for c, v in sorted(by_contrast.items()))
    return ScanSource(pid, visit, layout, modality, files)


def scan_images(job: JobConfig, outputs: Outputs, row: Mapping[str, Any]) -> ScanImages:
    """Labels (``label_uri`` of the row) and the image of the contrast they were segmented on.

    Raises:
        BadScanError: the image is not on the labels' grid, or a source file does not match the layout.
        FileNotFoundError, PermissionError, ScanError: from reading (name the file).
    """
    pid, visit, contrast = str(row["participant_id"]), str(row["visit"]), str(row["contrast"])
    limits = ReadLimits.from_config(job.limits)
    recorded = row.get("label_uri")
    label_uri = outputs.resolve(str(recorded)) if recorded else \
        outputs.label_uri((pid, visit), contrast, str(row["model"]), outputs.base_model(job.base_model))
    labels = read_labels(outputs.store, str(label_uri), limits)
    saved = outputs.stitched_uri((pid, visit), contrast)
    if outputs.store.exists(saved):
        image, origin = read_volume(outputs.store, saved, limits), f"stitched image {saved}"
    else:
        source = source_from_row(job, row)
        only = ContrastsConfig(available=(contrast,), segment=(contrast,), fat=None, water=None)
        loaded = load_scan(Store.from_config(job.input.storage), source, only, job.stitching, limits)
        image = loaded.images[contrast]
        origin = f"re-stitched from {len(source.stations(contrast)) or len(source.uris)} station file(s)"
    mismatch = labels.grid.mismatch(image.grid)
    if mismatch:
        raise BadScanError(f"image and labels are on different grids ({mismatch})", pid, "report", str(label_uri))
    return ScanImages(image, labels, origin)

"""Read one scan's files and stitch every contrast onto one shared grid (the read + stitch stage).

All contrasts of a participant's visit share the grid computed from all of their stations, so the
labels of the segmented contrast apply voxel for voxel to the others (fat, water, ...).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from mrseg_cohort.config import ContrastsConfig, StitchingConfig
from mrseg_cohort.errors import BadScanError, ScanError, StorageError
from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.images import read_image
from mrseg_cohort.io.limits import ReadLimits
from mrseg_cohort.io.storage import Store
from mrseg_cohort.manifest import ScanSource
from mrseg_cohort.stitching import Seam, scan_grid, stitch


@dataclass
class LoadedScan:
    """The stitched images of one scan (participant x visit), all on one grid."""

    source: ScanSource
    images: dict[str, Volume]
    seams: tuple[Seam, ...]
    n_stations: int
    input_bytes: int
    seconds: dict[str, float] = field(default_factory=dict)
    field_of_view: np.ndarray | None = None
    """bool (Z, Y, X) on the grid: voxels a station of the segmented contrast covers; None: all."""

    @property
    def grid(self):
        return next(iter(self.images.values())).grid


def read_stations(store: Store, source: ScanSource, contrasts: tuple[str, ...],
                  limits: ReadLimits) -> tuple[dict[str, list[Volume]], int]:
    """Station volumes per contrast, and the bytes read. DICOM zips are read by io.dicom."""
    if source.layout == "ukbb-dicom-zip":
        from mrseg_cohort.io.dicom import read_ukbb_zip

        uri = source.uris[0]
        stations = read_ukbb_zip(store, uri, limits)
        return {c: v for c, v in stations.items() if c in contrasts}, store.size(uri)
    out: dict[str, list[Volume]] = {}
    n_bytes = 0
    for contrast in contrasts:
        volumes = []
        for uri in source.stations(contrast):
            volumes.append(read_image(store, uri, limits))
            n_bytes += store.size(uri)
        if volumes:
            out[contrast] = volumes
    return out, n_bytes


def load_scan(store: Store, source: ScanSource, contrasts: ContrastsConfig, stitching: StitchingConfig,
              limits: ReadLimits) -> LoadedScan:
    """Read and stitch the available contrasts of ``source``.

    Raises:
        BadScanError: the manifest found a problem with the scan's inputs (``source.problem``: two
            files for one scan), a contrast to segment is missing, contrasts have different station
            counts, or any file is unreadable (the error names the file).
    """
    if source.problem:
        raise BadScanError(source.problem, source.participant_id, "read", source.uris[0] if source.uris else "")
    t0 = time.perf_counter()
    wanted = tuple(c for c in contrasts.available)
    try:
        stations, n_bytes = read_stations(store, source, wanted, limits)
    except ScanError as err:
        raise err.with_context(source.participant_id, "read") from err
    except (FileNotFoundError, PermissionError) as err:
        raise BadScanError(f"cannot read input: {err}", source.participant_id, "read") from err
    except StorageError as err:  # still failing after the retries: this scan fails, the next run retries it
        raise ScanError(f"cannot read input: {err.message}", source.participant_id, "read", err.uri) from err
    missing = [c for c in contrasts.segment if c not in stations]
    if missing:
        raise BadScanError(f"contrast(s) {missing} to segment not found (found: {sorted(stations) or 'none'}) "
                           f"under visit {source.visit}", source.participant_id, "read",
                           source.uris[0] if source.uris else "")
    counts = {c: len(v) for c, v in stations.items()}
    if len(set(counts.values())) > 1:
        raise BadScanError(f"contrasts have different numbers of stations {counts}; every contrast "
                           "needs the same stations", source.participant_id, "read",
                           source.uris[0] if source.uris else "")
    t1 = time.perf_counter()
    images, seams, field_of_view = {}, (), None
    try:
        grid = scan_grid({c: [v.grid for v in vols] for c, vols in stations.items()}, contrasts.segment[0],
                         stitching.inplane_spacing_mm, stitching.z_spacing_mm)
        for contrast, volumes in stations.items():
            result = stitch(volumes, grid)
            images[contrast] = result.volume
            if contrast == contrasts.segment[0]:
                seams, field_of_view = result.seams, result.field_of_view
    except ScanError as err:
        raise err.with_context(source.participant_id, "stitch", source.uris[0] if source.uris else "") from err
    t2 = time.perf_counter()
    return LoadedScan(source, images, seams, max(counts.values()), n_bytes,
                      {"read": t1 - t0, "stitch": t2 - t1}, field_of_view)

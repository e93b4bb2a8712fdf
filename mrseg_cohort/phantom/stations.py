"""Station geometry of the phantom layouts: UK Biobank (6 stations) and NAKO (4 stations).

``scale`` coarsens spacing and shrinks the matrix by the same factor (same field of view), so
the default ``scale=2`` phantoms keep demo and tests fast on two CPU cores; ``scale=1`` gives
the real cohorts' matrix sizes (UK Biobank: 224 x 168 per station at 2.232 x 2.232 x 3 mm;
NAKO: stitched 320 x 260 x 316 at 1.4 x 1.4 x 3 mm).
"""

from __future__ import annotations

from dataclasses import dataclass

from mrseg_cohort.geometry import Grid

TOP_OF_FOV_MM = 1050.0
"""World z of the most superior slice centre (shoulders) in phantom coordinates."""


@dataclass(frozen=True)
class StationLayout:
    name: str
    n_stations: int
    inplane_mm: float
    z_mm: float
    matrix_yx: tuple[int, int]
    slices_per_station: int
    overlap_slices: int

    @property
    def total_slices(self) -> int:
        return self.n_stations * self.slices_per_station - (self.n_stations - 1) * self.overlap_slices


_FULL = {
    "ukbb": StationLayout("ukbb", 6, 2.232, 3.0, (168, 224), 64, 4),
    "nako": StationLayout("nako", 4, 1.4, 3.0, (260, 320), 82, 4),
}


def station_layout(layout: str, scale: float = 2.0) -> StationLayout:
    """The layout ``ukbb`` or ``nako`` coarsened by ``scale`` (1 = real matrix size)."""
    if layout not in _FULL:
        raise ValueError(f"unknown phantom layout {layout!r}; expected one of {sorted(_FULL)}")
    if scale <= 0:
        raise ValueError(f"scale must be positive, not {scale}")
    full = _FULL[layout]
    return StationLayout(layout, full.n_stations, full.inplane_mm * scale, full.z_mm * scale,
                         (max(8, round(full.matrix_yx[0] / scale)), max(8, round(full.matrix_yx[1] / scale))),
                         max(4, round(full.slices_per_station / scale)),
                         max(1, round(full.overlap_slices / scale)))


def whole_body_grid(layout: StationLayout) -> Grid:
    """The stitched grid: identity (LPS) direction, centred in x and y, top slice at TOP_OF_FOV_MM."""
    ny, nx = layout.matrix_yx
    nz = layout.total_slices
    s, sz = layout.inplane_mm, layout.z_mm
    origin = (-(nx - 1) / 2 * s, -(ny - 1) / 2 * s, TOP_OF_FOV_MM - (nz - 1) * sz)
    return Grid((nz, ny, nx), (sz, s, s), origin)


def station_slices(layout: StationLayout) -> list[slice]:
    """z index ranges of each station on the whole-body grid; station 1 is the most superior."""
    step = layout.slices_per_station - layout.overlap_slices
    nz = layout.total_slices
    out = []
    for k in range(layout.n_stations):
        stop = nz - k * step
        out.append(slice(stop - layout.slices_per_station, stop))
    return out

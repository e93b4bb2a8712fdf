"""Render one phantom participant on a grid: label maps, water and fat images, and the truth.

Pure: participant parameters and a grid in, arrays and records out (no files).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mrseg_cohort.geometry import Grid
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phantom import anatomy as A
from mrseg_cohort.phantom.shapes import render

NOISE_SIGMA = 4.0
"""Standard deviation of the Gaussian noise added to water and fat images (signal units)."""


@dataclass(frozen=True)
class RenderedParticipant:
    """Arrays are (z, y, x) on ``grid``.

    Attributes:
        labels: uint8 MRSegmentator labels (truth).
        body_comp: uint8 body-composition labels (truth).
        water, fat: float32 Dixon water and fat images (noise and bias field included).
        ff_truth: signal fat fraction in percent per structure name (noise-free tissue value).
    """

    grid: Grid
    labels: np.ndarray
    body_comp: np.ndarray
    water: np.ndarray
    fat: np.ndarray
    ff_truth: dict[str, float]

    @property
    def in_phase(self) -> np.ndarray:
        return self.water + self.fat

    @property
    def opposed_phase(self) -> np.ndarray:
        return np.abs(self.water - self.fat)


def _tissue_table(p: A.Participant) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Tissue names and per-tissue signal, ff, MRSeg label and body-composition label."""
    names = ["air", "lean", "sat_thorax", "sat_abdominal", "sat_gluteofemoral", "vat"]
    names += list(A.body_comp_wall_sectors()) + ["left_quadratus_lumborum", "right_quadratus_lumborum"]
    names += list(MRSEG.names.values())
    signal, ff, mrseg, bodycomp = (np.zeros(len(names), dtype=np.float64) for _ in range(4))
    for i, name in enumerate(names):
        if name == "air":
            continue
        key = "sat" if name.startswith("sat_") else name
        tissue = A.tissue_of(p, key)
        signal[i], ff[i] = tissue.signal, tissue.ff
        if name in MRSEG.names.values():
            mrseg[i] = MRSEG.id_of(name)
    bc = {"sat_thorax": "subcutaneous_fat", "sat_abdominal": "abdominal_subcutaneous_fat",
          "sat_gluteofemoral": "gluteofemoral_fat", "vat": "visceral_fat"}
    for i, name in enumerate(names):
        target = bc.get(name, name)
        if target in BODY_COMPOSITION.names.values():
            bodycomp[i] = BODY_COMPOSITION.id_of(target)
    return names, signal, ff, mrseg.astype(np.uint8), bodycomp.astype(np.uint8)


def _body_masks(p: A.Participant, grid: Grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(outer body, lean body, world z per slice) as (z, y, x) booleans and a (z,) array."""
    z0, y0, x0 = grid.zyx_to_world(np.zeros(3))[::-1]
    sz, sy, sx = grid.spacing_mm
    nz, ny, nx = grid.shape
    z = z0 + sz * np.arange(nz)
    y = (y0 + sy * np.arange(ny))[None, :, None]
    x = (x0 + sx * np.arange(nx))[None, None, :]
    a, b = (v[:, None, None] for v in A.lean_half_axes(p, z))
    t = A.sat_thickness(p, z)[:, None, None]
    torso = (z >= A.CROTCH_Z * p.height)[:, None, None]
    lean_torso = (x / a) ** 2 + (y / b) ** 2 <= 1
    outer_torso = (x / (a + t)) ** 2 + (y / (b + t)) ** 2 <= 1
    r = A.leg_radius(p, z)[:, None, None]
    legs_lean = np.zeros(grid.shape, dtype=bool)
    legs_outer = np.zeros(grid.shape, dtype=bool)
    for side in (1, -1):
        d2 = (x - side * A.LEG_OFFSET_X * p.width) ** 2 + y ** 2
        legs_lean |= d2 <= r ** 2
        legs_outer |= d2 <= (r + t) ** 2
    lean = np.where(torso, lean_torso, legs_lean)
    outer = np.where(torso, outer_torso, legs_outer)
    return outer, lean, z


def _bias_field(grid: Grid, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative field, 1 +- about 0.12, varying over 30-60 cm."""
    pts = [np.linspace(0, 1, n) for n in grid.shape]
    zz, yy, xx = np.meshgrid(*pts, indexing="ij", sparse=True)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    field = (1 + 0.06 * np.sin(2 * np.pi * 0.8 * zz + phase[0])
             + 0.04 * np.cos(2 * np.pi * 0.6 * yy + phase[1])
             + 0.04 * np.sin(2 * np.pi * 0.5 * xx + phase[2]))
    return np.asarray(field, dtype=np.float32)


def render_participant(p: A.Participant, grid: Grid, broken_vessel: str | None = None) -> RenderedParticipant:
    """Render participant ``p`` on ``grid`` (identity direction, LPS).

    Args:
        broken_vessel: name of a vessel to interrupt with a gap across its middle (for tests of
            connectivity: the vessel then has two components).
    """
    names, signal, ff, mrseg_of, bodycomp_of = _tissue_table(p)
    index = {n: i for i, n in enumerate(names)}
    outer, lean, z = _body_masks(p, grid)
    tissue = np.zeros(grid.shape, dtype=np.int16)
    sat_zone = np.where(z < A.ILIAC_CREST_Z * p.height, index["sat_gluteofemoral"],
                        np.where(z < A.DIAPHRAGM_Z * p.height, index["sat_abdominal"], index["sat_thorax"]))
    tissue[outer] = np.broadcast_to(sat_zone[:, None, None], grid.shape)[outer]
    tissue[lean] = index["lean"]
    _paint_cavity_and_wall(p, grid, z, tissue, index)
    for name, shapes in A.quadratus_lumborum(p).items():
        tissue[_union(shapes, grid) & lean] = index[name]
    structures = A.canonical_structures()
    for name in A.PAINT_ORDER:
        mask = _union(A.personalise(p, name, structures[name]), grid) & lean
        if name == broken_vessel:
            mask = _cut_middle(mask, grid)
        tissue[mask] = index[name]
    keep = [i for i, n in enumerate(names) if n in MRSEG.names.values() or n in A.body_comp_wall_sectors()
            or n.endswith("quadratus_lumborum")]
    _drop_fragments(tissue, keep, index["lean"], skip=index.get(broken_vessel or "", -1))
    rng = np.random.default_rng([p.seed, p.index, 7])
    bias = _bias_field(grid, rng)
    s = signal[tissue].astype(np.float32) * bias
    f = ff[tissue].astype(np.float32)
    water = np.abs(s * (1 - f) + rng.normal(0, NOISE_SIGMA, grid.shape).astype(np.float32))
    fat = np.abs(s * f + rng.normal(0, NOISE_SIGMA, grid.shape).astype(np.float32))
    truth = {n: 100.0 * ff[index[n]] for n in names if n in MRSEG.names.values()
             or n in BODY_COMPOSITION.names.values()}
    for bc_tissue, bc_name in (("sat_abdominal", "abdominal_subcutaneous_fat"),
                               ("sat_gluteofemoral", "gluteofemoral_fat"),
                               ("sat_thorax", "subcutaneous_fat"), ("vat", "visceral_fat")):
        truth[bc_name] = 100.0 * ff[index[bc_tissue]]
    return RenderedParticipant(grid, mrseg_of[tissue], bodycomp_of[tissue], water.astype(np.float32),
                               fat.astype(np.float32), truth)


def _union(shapes, grid: Grid) -> np.ndarray:
    mask = np.zeros(grid.shape, dtype=bool)
    for shape in shapes:
        mask |= render(shape, grid)
    return mask


def _paint_cavity_and_wall(p: A.Participant, grid: Grid, z: np.ndarray, tissue: np.ndarray,
                           index: dict[str, int]) -> None:
    """Visceral fat inside the abdominal cavity; rectus and oblique muscles in its wall."""
    z0, y0, x0 = grid.zyx_to_world(np.zeros(3))[::-1]
    sz, sy, sx = grid.spacing_mm
    y = (y0 + sy * np.arange(grid.shape[1]))[None, :, None]
    x = (x0 + sx * np.arange(grid.shape[2]))[None, None, :]
    in_z = ((z >= A.CAVITY_Z[0] * p.height) & (z <= A.CAVITY_Z[1] * p.height))[:, None, None]
    a, b = (v[:, None, None] for v in A.lean_half_axes(p, z))
    inner_a, inner_b = a - A.WALL_MM, b - A.WALL_MM
    inside_wall = (x / inner_a) ** 2 + (y / inner_b) ** 2 <= 1
    lean_ring = ((x / a) ** 2 + (y / b) ** 2 <= 1) & ~inside_wall
    anterior_of_spine = y < 30 * p.depth
    vat_scale = 0.55 + 0.45 * p.vat_scale
    vat_zone = (x / (inner_a * vat_scale)) ** 2 + (y / (inner_b * vat_scale)) ** 2 <= 1
    tissue[in_z & inside_wall & anterior_of_spine & vat_zone] = index["vat"]
    angle = np.degrees(np.arctan2(-y, x))  # 0 = participant's left, 90 = anterior
    for name, (lo, hi) in A.body_comp_wall_sectors().items():
        sector = (angle >= lo) & (angle <= hi) if hi <= 180 else (angle >= lo) | (angle <= hi - 360)
        tissue[in_z & lean_ring & sector] = index[name]


def _drop_fragments(tissue: np.ndarray, tissues: list[int], fill: int, skip: int) -> None:
    """Keep only the largest 26-connected piece of each tissue in ``tissues`` (pieces cut off by
    structures painted later become ``fill``), so every truth structure is one connected object."""
    import cc3d

    selected = np.isin(tissue, tissues) & (tissue != skip)
    components = cc3d.connected_components(np.where(selected, tissue, 0), connectivity=26)
    sizes = np.bincount(components.ravel())
    owner = np.zeros(sizes.size, dtype=np.int64)
    owner[components.ravel()] = tissue.ravel()
    largest = {}
    for comp in np.flatnonzero(sizes[1:]) + 1:
        t = owner[comp]
        if t not in largest or sizes[comp] > sizes[largest[t]]:
            largest[t] = comp
    drop = np.ones(sizes.size, dtype=bool)
    drop[0] = False
    drop[list(largest.values())] = False
    tissue[drop[components]] = fill


def _cut_middle(mask: np.ndarray, grid: Grid) -> np.ndarray:
    """``mask`` with a gap (at least 15 mm and 2 slices thick) across the middle of its z extent."""
    zs = np.flatnonzero(mask.any(axis=(1, 2)))
    if zs.size < 6:
        return mask
    gap = max(2, int(np.ceil(15.0 / grid.spacing_mm[0])))
    mid = (zs[0] + zs[-1]) // 2
    out = mask.copy()
    out[mid - gap // 2: mid - gap // 2 + gap] = False
    return out

"""Write a phantom cohort: station NIfTI files per contrast, truth label maps and a truth table.

Folder layout under the output URI (documented in docs/phantoms.md)::

    phantom.json                                   settings used (layout, seed, scale, version)
    <participant_id>/<visit>/<contrast>_station<k>.nii.gz   k = 1 (most superior) .. 6 (ukbb) or 4 (nako)
    truth/<participant_id>/<visit>/labels.nii.gz    MRSegmentator truth on the stitched grid (uint8)
    truth/<participant_id>/<visit>/body_comp.nii.gz body-composition truth (uint8)
    truth/<participant_id>/<visit>/<contrast>.nii.gz  the unsplit images (only with ``wholebody``)
    truth/structures.parquet                        one row per participant x model x structure

Contrasts: ``in`` (W + F), ``opp`` (|W - F|), ``water``, ``fat``; stored as int16 like scanner data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mrseg_cohort.geometry import Volume
from mrseg_cohort.io.nifti import write_volume
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import write_table
from mrseg_cohort.labels import BODY_COMPOSITION, MRSEG
from mrseg_cohort.phantom.anatomy import draw_participant
from mrseg_cohort.phantom.render import RenderedParticipant, render_participant
from mrseg_cohort.phantom.stations import station_layout, station_slices, whole_body_grid

CONTRASTS = ("in", "opp", "water", "fat")
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class PhantomSpec:
    """What to generate. ``swap_fat_water`` swaps the water and fat images of the listed stations
    (1-based) of every participant; ``broken_vessel`` interrupts that vessel (see render)."""

    participants: int
    layout: str = "ukbb"
    seed: int = 0
    scale: float = 2.0
    visit: str = "0"
    first_index: int = 0
    broken_vessel: str | None = None
    swap_fat_water: tuple[int, ...] = ()
    wholebody: bool = False


def participant_id(seed: int, index: int) -> str:
    """A 7-digit, UK Biobank eid-like id, unique per (seed mod 90, index < 100000)."""
    return f"{10 + seed % 90}{index:05d}"


def contrast_images(rendered: RenderedParticipant) -> dict[str, np.ndarray]:
    return {"in": rendered.in_phase, "opp": rendered.opposed_phase, "water": rendered.water,
            "fat": rendered.fat}


def render_spec_participant(spec: PhantomSpec, index: int) -> RenderedParticipant:
    """Render participant ``index`` of ``spec`` on its whole-body grid."""
    grid = whole_body_grid(station_layout(spec.layout, spec.scale))
    return render_participant(draw_participant(spec.seed, index), grid, spec.broken_vessel)


def write_phantom_cohort(store: Store, out_uri: str, spec: PhantomSpec) -> pd.DataFrame:
    """Generate ``spec.participants`` participants under ``out_uri``; returns the truth table."""
    if spec.participants < 1:
        raise ValueError(f"participants must be at least 1, not {spec.participants}")
    layout = station_layout(spec.layout, spec.scale)
    grid = whole_body_grid(layout)
    slices = station_slices(layout)
    store.make_dirs(out_uri)
    rows = []
    for index in range(spec.first_index, spec.first_index + spec.participants):
        pid = participant_id(spec.seed, index)
        rendered = render_participant(draw_participant(spec.seed, index), grid, spec.broken_vessel)
        images = contrast_images(rendered)
        folder = join_uri(out_uri, pid, spec.visit)
        for k, zslice in enumerate(slices, start=1):
            station_grid = grid.crop((zslice.start, 0, 0), (zslice.stop, *grid.shape[1:]))
            for contrast in CONTRASTS:
                source = contrast
                if k in spec.swap_fat_water and contrast in ("water", "fat"):
                    source = "fat" if contrast == "water" else "water"
                data = np.rint(images[source][zslice]).astype(np.int16)
                write_volume(store, join_uri(folder, f"{contrast}_station{k}.nii.gz"),
                             Volume(data, station_grid), np.int16)
        truth = join_uri(out_uri, "truth", pid, spec.visit)
        write_volume(store, join_uri(truth, "labels.nii.gz"), Volume(rendered.labels, grid), np.uint8)
        write_volume(store, join_uri(truth, "body_comp.nii.gz"), Volume(rendered.body_comp, grid), np.uint8)
        if spec.wholebody:
            for contrast in CONTRASTS:
                write_volume(store, join_uri(truth, f"{contrast}.nii.gz"),
                             Volume(np.rint(images[contrast]).astype(np.int16), grid), np.int16)
        rows += truth_rows(pid, spec.visit, rendered)
    table = pd.DataFrame(rows)
    write_table(store, join_uri(out_uri, "truth", "structures.parquet"), table)
    meta = {"generator_version": GENERATOR_VERSION, "layout": spec.layout, "seed": spec.seed,
            "scale": spec.scale, "participants": spec.participants, "first_index": spec.first_index,
            "visit": spec.visit, "broken_vessel": spec.broken_vessel,
            "swap_fat_water": list(spec.swap_fat_water), "grid": grid.to_dict(),
            "stations": [[s.start, s.stop] for s in slices], "contrasts": list(CONTRASTS)}
    store.write_bytes(join_uri(out_uri, "phantom.json"), json.dumps(meta, indent=1).encode())
    return table


def truth_rows(pid: str, visit: str, rendered: RenderedParticipant) -> list[dict]:
    """Truth per structure: voxel count and volume on the stitched grid, signal fat fraction (%)."""
    rows = []
    voxel_ml = rendered.grid.voxel_volume_ml
    for model, labels, label_map in (("base", rendered.labels, MRSEG),
                                     ("body_comp", rendered.body_comp, BODY_COMPOSITION)):
        counts = np.bincount(labels.ravel(), minlength=256)
        for value, name in label_map.names.items():
            rows.append({"participant_id": pid, "visit": visit, "model": model,
                         "structure_id": value, "structure": name, "n_voxels": int(counts[value]),
                         "volume_ml": float(counts[value]) * voxel_ml,
                         "ff_truth_pct": rendered.ff_truth[name]})
    return rows

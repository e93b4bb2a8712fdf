"""Write a phantom cohort: station NIfTI files per contrast, truth label maps and a truth table.

Folder layout under the output URI (documented in docs/phantoms.md)::

    phantom.json                                   settings used (layout, seed, scale, version)
    <participant_id>/<visit>/<contrast>_station<k>.nii.gz   k = 1 (most superior) .. 6 (ukbb) or 4 (nako)
    <participant_id>_20201_<visit>_0.zip            instead, with format "dicom-zip" (ukbb layout only;
                                                    see mrseg_cohort.phantom.dicom)
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
from mrseg_cohort.manifest import id_problem
from mrseg_cohort.phantom.anatomy import Participant, draw_participant
from mrseg_cohort.phantom.render import RenderedParticipant, render_participant
from mrseg_cohort.phantom.stations import station_layout, station_slices, whole_body_grid

CONTRASTS = ("in", "opp", "water", "fat")
FORMATS = ("nifti", "dicom-zip")
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
    format: str = "nifti"
    """``nifti`` (station files) or ``dicom-zip`` (UK Biobank field-20201 zips, ukbb layout)."""
    drop_series: tuple[tuple[str, int], ...] = ()
    """dicom-zip: (contrast, station) series left out of every zip (a broken participant)."""
    repeat_stations: tuple[int, ...] = ()
    """dicom-zip: stations acquired twice, the later acquisition being the right one."""
    repeat_visit: str | None = None
    """Image every participant a second time, as this visit (UK Biobank's repeat imaging, e.g. "3"):
    the same anatomy, images and noise, except for ``repeat_changes``."""
    repeat_changes: tuple[tuple[str, float], ...] = ()
    """At ``repeat_visit``: (structure, factor) multiplies the structure's radii. The volume grows by less
    than factor**3 where structures painted later cover part of it: the exact change is in the truth table."""
    repeat_ff_pct: tuple[tuple[str, float], ...] = ()
    """At ``repeat_visit``: (structure, signal fat fraction in percent) replaces the structure's fat fraction."""


def participant_id(seed: int, index: int) -> str:
    """A 7-digit, UK Biobank eid-like id, unique per (seed mod 90, index < 100000)."""
    return f"{10 + seed % 90}{index:05d}"


def contrast_images(rendered: RenderedParticipant) -> dict[str, np.ndarray]:
    return {"in": rendered.in_phase, "opp": rendered.opposed_phase, "water": rendered.water,
            "fat": rendered.fat}


def visits(spec: PhantomSpec) -> tuple[str, ...]:
    """The visits every participant of ``spec`` is imaged at."""
    return (spec.visit,) if spec.repeat_visit is None else (spec.visit, spec.repeat_visit)


def participant_at(spec: PhantomSpec, index: int, visit: str) -> Participant:
    """Participant ``index`` of ``spec`` as imaged at ``visit`` (``repeat_changes`` applied at the repeat visit)."""
    p = draw_participant(spec.seed, index)
    if visit == spec.repeat_visit and visit != spec.visit:
        for name, factor in spec.repeat_changes:
            if name not in p.organ_scale:
                raise ValueError(f"repeat_changes: {name!r} is not a phantom structure")
            p.organ_scale[name] *= factor
        for name, ff_pct in spec.repeat_ff_pct:
            if name not in p.ff:
                raise ValueError(f"repeat_ff_pct: {name!r} is not a phantom tissue")
            p.ff[name] = ff_pct / 100.0
    return p


def render_spec_participant(spec: PhantomSpec, index: int, visit: str | None = None) -> RenderedParticipant:
    """Render participant ``index`` of ``spec`` at ``visit`` (default: the first) on its whole-body grid."""
    grid = whole_body_grid(station_layout(spec.layout, spec.scale))
    return render_participant(participant_at(spec, index, visit or spec.visit), grid, spec.broken_vessel)


def station_volumes(spec: PhantomSpec, rendered: RenderedParticipant,
                    slices: list[slice]) -> dict[str, list[Volume]]:
    """Contrast -> int16 station volumes (station 1 most superior), fat/water swapped as ``spec`` says."""
    images = contrast_images(rendered)
    grid = rendered.grid
    out: dict[str, list[Volume]] = {c: [] for c in CONTRASTS}
    for k, zslice in enumerate(slices, start=1):
        station_grid = grid.crop((zslice.start, 0, 0), (zslice.stop, *grid.shape[1:]))
        for contrast in CONTRASTS:
            source = contrast
            if k in spec.swap_fat_water and contrast in ("water", "fat"):
                source = "fat" if contrast == "water" else "water"
            out[contrast].append(Volume(np.rint(images[source][zslice]).astype(np.int16), station_grid))
    return out


def write_nifti_stations(store: Store, out_uri: str, pid: str, visit: str,
                         stations: dict[str, list[Volume]]) -> None:
    """``<pid>/<visit>/<contrast>_station<k>.nii.gz`` under ``out_uri``."""
    folder = join_uri(out_uri, pid, visit)
    for contrast, volumes in stations.items():
        for k, volume in enumerate(volumes, start=1):
            write_volume(store, join_uri(folder, f"{contrast}_station{k}.nii.gz"), volume, np.int16)


def check_spec(spec: PhantomSpec) -> None:
    """Raise ValueError for a setting of ``spec`` out of range, before anything is written. Visits
    and participant ids are checked as the run checks them (:func:`mrseg_cohort.manifest.id_problem`):
    they name folders, so ``--visit ../../x`` would write outside the cohort folder."""
    if spec.participants < 1:
        raise ValueError(f"participants must be at least 1, not {spec.participants}")
    if spec.format not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {spec.format!r}")
    if spec.format == "dicom-zip" and spec.layout != "ukbb":
        raise ValueError(f"format dicom-zip writes UK Biobank zips: it needs layout ukbb, not {spec.layout!r}")
    for what, value in (("visit", spec.visit), ("repeat visit", spec.repeat_visit)):
        problem = id_problem(value, what) if value is not None else ""
        if problem:
            raise ValueError(problem)
    for index in range(spec.first_index, spec.first_index + spec.participants):
        problem = id_problem(participant_id(spec.seed, index), "participant id")
        if problem:
            raise ValueError(f"{problem} (seed {spec.seed}, index {index})")


def write_phantom_cohort(store: Store, out_uri: str, spec: PhantomSpec) -> pd.DataFrame:
    """Generate ``spec.participants`` participants under ``out_uri``; returns the truth table.

    ``out_uri`` must hold no (visible) files: one cohort per folder, described by its phantom.json.
    Adding to an existing cohort is refused rather than merged: participant ids come from (seed,
    index), so a second generation with the same seed would overwrite participants silently, and
    phantom.json and truth/structures.parquet could describe only one of the two generations.

    Raises:
        FileExistsError: ``out_uri`` already holds files.
        ValueError: a setting of ``spec`` is out of range (:func:`check_spec`).
    """
    check_spec(spec)
    layout = station_layout(spec.layout, spec.scale)
    grid = whole_body_grid(layout)
    slices = station_slices(layout)
    existing = store.list_files(out_uri)
    if existing:
        more = f" and {len(existing) - 1} more file(s)" if len(existing) > 1 else ""
        raise FileExistsError(f"{out_uri} is not empty (it holds {existing[0]}{more}); a phantom cohort is "
                              "written into a new or empty folder: choose another one or delete this one")
    store.make_dirs(out_uri)
    rows = []
    for index in range(spec.first_index, spec.first_index + spec.participants):
        pid = participant_id(spec.seed, index)
        for visit in visits(spec):
            rendered = render_participant(participant_at(spec, index, visit), grid, spec.broken_vessel)
            _write_participant(store, out_uri, spec, pid, visit, rendered, slices)
            rows += truth_rows(pid, visit, rendered)
    table = pd.DataFrame(rows)
    write_table(store, join_uri(out_uri, "truth", "structures.parquet"), table)
    meta = {"generator_version": GENERATOR_VERSION, "layout": spec.layout, "seed": spec.seed,
            "scale": spec.scale, "participants": spec.participants, "first_index": spec.first_index,
            "visit": spec.visit, "broken_vessel": spec.broken_vessel, "format": spec.format,
            "drop_series": [list(d) for d in spec.drop_series], "repeat_stations": list(spec.repeat_stations),
            "swap_fat_water": list(spec.swap_fat_water), "repeat_visit": spec.repeat_visit,
            "repeat_changes": [list(c) for c in spec.repeat_changes],
            "repeat_ff_pct": [list(c) for c in spec.repeat_ff_pct], "grid": grid.to_dict(),
            "stations": [[s.start, s.stop] for s in slices], "contrasts": list(CONTRASTS)}
    store.write_bytes(join_uri(out_uri, "phantom.json"), json.dumps(meta, indent=1).encode())
    return table


def _write_participant(store: Store, out_uri: str, spec: PhantomSpec, pid: str, visit: str,
                       rendered: RenderedParticipant, slices: list[slice]) -> None:
    """The station files (or zip) and truth label maps of one participant x visit."""
    grid = rendered.grid
    stations = station_volumes(spec, rendered, slices)
    if spec.format == "dicom-zip":
        from mrseg_cohort.phantom.dicom import write_ukbb_zip

        write_ukbb_zip(store, out_uri, pid, visit, stations, spec.seed, spec.drop_series, spec.repeat_stations)
    else:
        write_nifti_stations(store, out_uri, pid, visit, stations)
    del stations
    truth = join_uri(out_uri, "truth", pid, visit)
    write_volume(store, join_uri(truth, "labels.nii.gz"), Volume(rendered.labels, grid), np.uint8)
    write_volume(store, join_uri(truth, "body_comp.nii.gz"), Volume(rendered.body_comp, grid), np.uint8)
    if spec.wholebody:
        for contrast, image in contrast_images(rendered).items():
            write_volume(store, join_uri(truth, f"{contrast}.nii.gz"), Volume(np.rint(image).astype(np.int16), grid),
                         np.int16)


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

"""``mrseg-cohort measure``: the per-scan measurements for label maps that already exist."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from mrseg_cohort.cli import app
from mrseg_cohort.cli._common import exit_statuses, fail, one_line_errors
from mrseg_cohort.paths import from_command_line


@app.command(epilog=exit_statuses("measure"))
def measure(
    labels: str = typer.Argument(..., help="Label map (NIfTI path or URI)."),
    out: str = typer.Option(..., "--out", "-o", help="Structures table to write (FILE.parquet); the scan "
                            "table goes to FILE.scan.parquet and, with images, intensities to "
                            "FILE.intensity.parquet."),
    fat: str | None = typer.Option(None, "--fat", help="Dixon fat image on the labels' grid."),
    water: str | None = typer.Option(None, "--water", help="Dixon water image on the labels' grid."),
    image: list[str] = typer.Option([], "--image", help="Another contrast as NAME=URI (repeatable); "
                                    "intensities are tabulated per contrast."),
    contrast: str | None = typer.Option(None, "--contrast", help="Name of the contrast the labels were "
                                        "segmented on (an --image NAME, fat or water): fills mean_intensity."),
    label_map_name: str = typer.Option("mrseg", "--labels", help="Label map: mrseg, body_comp, or a JSON "
                                       "file (nnU-Net dataset.json, or {value: name})."),
    erosion_voxels_inplane: int = typer.Option(1, min=0, help="In-plane erosion before fat fractions."),
    connectivity: int = typer.Option(26, help="Connected-component connectivity: 6, 18 or 26."),
    border_margin_voxels: int = typer.Option(3, min=0, help="touches_border margin in voxels."),
) -> None:
    """Measure volumes, fat fractions, vessel connectivity, intensities and QC of one label map."""
    import pyarrow as pa

    from mrseg_cohort.biomarkers import INTENSITY_COLUMNS, SCAN_COLUMNS, STRUCTURE_COLUMNS, measure_scan
    from mrseg_cohort.config import MeasuresConfig
    from mrseg_cohort.io.images import read_image, read_label_image
    from mrseg_cohort.io.storage import Store
    from mrseg_cohort.io.tables import write_table

    if (fat is None) != (water is None):
        fail("--fat and --water must be given together")
    if connectivity not in (6, 18, 26):
        fail(f"--connectivity must be 6, 18 or 26, not {connectivity}")
    if not out.endswith(".parquet"):
        fail(f"--out must name a .parquet file, not {out!r}")
    uris = _image_uris(image, fat, water)
    if contrast is not None and contrast not in uris:
        fail(f"--contrast {contrast!r} is not one of the images given: {sorted(uris) or 'none'}")
    settings = MeasuresConfig(erosion_voxels_inplane=erosion_voxels_inplane, connectivity=connectivity,
                              border_margin_voxels=border_margin_voxels)
    out = from_command_line(out)
    with one_line_errors():
        store = Store()
        label_map = _label_map(store, label_map_name)
        label_volume = read_label_image(store, labels)
        images = {name: read_image(store, uri) for name, uri in uris.items()}
        result = measure_scan(label_volume, label_map, images, "fat" if fat else None,
                              "water" if water else None, settings, contrast)
        stem = out[: -len(".parquet")]
        tables = {out: (result.structures, STRUCTURE_COLUMNS),
                  f"{stem}.scan.parquet": ([result.scan], SCAN_COLUMNS)}
        if result.intensities:
            tables[f"{stem}.intensity.parquet"] = (result.intensities, INTENSITY_COLUMNS)
        for uri, (records, columns) in tables.items():
            schema = pa.schema([("labels_uri", pa.string())]
                               + [(c, pa.type_for_alias(t)) for c, t in columns.items()])
            rows = [{"labels_uri": labels, **record} for record in records]
            write_table(store, uri, pa.Table.from_pylist(rows, schema))
    scan = result.scan
    plane = _slice_plane(label_volume.grid)
    if fat and plane != "axial":  # in-plane = within the file's slices (docs/measures.md): say which these are
        typer.echo(f"warning: {labels} is stored in {plane} slices: the fat fractions erode within them and the "
                   "swap check runs slice by slice along them, as for any file's slices (docs/measures.md); "
                   "resample to axial slices for the cohorts' axial convention", err=True)
    if scan["n_voxels_unknown_label"]:  # a map naming a subset is a choice, a wrong map a mistake: say so
        typer.echo(f"warning: {labels} holds label values that label map {label_map.name!r} does not name "
                   f"({_ranges(scan['unknown_label_values'])}; {scan['n_voxels_unknown_label']} voxels): they are "
                   "not measured; if the map is not the one the labels were made with, give that one (--labels "
                   "mrseg, body_comp or a JSON file)", err=True)
    typer.echo(f"{scan['n_present']} of {scan['n_structures']} structures present; "
               f"swap_suspected={scan['swap_suspected']}, {scan['n_lr_implausible']} L/R implausible, "
               f"{scan['n_missing']} missing; wrote {', '.join(tables)}")


def _slice_plane(grid) -> str:
    """The anatomical plane of a grid's slices (array axis 0, index z, the third of its axis codes)."""
    return {"S": "axial", "I": "axial", "A": "coronal", "P": "coronal"}.get(grid.axis_codes()[2], "sagittal")


def _ranges(values: str) -> str:
    """``"11,12,13,20"`` -> ``"11-13, 20"``."""
    numbers = [int(v) for v in values.split(",") if v]
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    return ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 1 else str(r[0]) for r in runs)


def _image_uris(image: list[str], fat: str | None, water: str | None) -> dict[str, str]:
    uris: dict[str, str] = {}
    for item in image:
        name, sep, uri = item.partition("=")
        if not sep or not name or not uri:
            fail(f"--image must be NAME=URI, not {item!r}")
        if name in uris:
            fail(f"--image {name!r} given twice")
        uris[name] = uri
    for name, uri in (("fat", fat), ("water", water)):
        if uri is not None:
            if name in uris:
                fail(f"--image {name}=... clashes with --{name}; give the {name} image once")
            uris[name] = uri
    return uris


def _label_map(store, value: str):
    """A known map by name, or one read from a JSON file (dataset.json or {value: name})."""
    from mrseg_cohort.labels import KNOWN_MAPS, label_map_from_dataset_json

    if value in KNOWN_MAPS:
        return KNOWN_MAPS[value]
    if not value.endswith(".json"):
        raise ValueError(f"--labels must be one of {sorted(KNOWN_MAPS)} or a .json file, not {value!r}")
    try:
        data = json.loads(store.read_bytes(value))
    except json.JSONDecodeError as err:
        raise ValueError(f"--labels {value}: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(f"--labels {value}: expected a JSON object, not {type(data).__name__}")
    if "labels" not in data:
        if all(str(k).isdigit() for k in data):
            data = {"labels": {str(name): int(k) for k, name in data.items()}}
        else:
            data = {"labels": data}
    return label_map_from_dataset_json(data, Path(value).stem)

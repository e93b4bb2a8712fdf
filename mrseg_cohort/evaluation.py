"""Evaluate predicted label maps against references: pairing, label mapping, geometry, tables.

The science is in :mod:`mrseg_cohort.metrics`; this module finds the pairs, reads them through
:mod:`mrseg_cohort.io`, maps the reference's labels onto the evaluated label map, checks that both
share one grid (or resamples both when asked), and aggregates the per-class records into the
summary and the paper-style tables (docs/evaluation.md describes every output and column).

A pair that cannot be evaluated (unreadable file, missing prediction, geometry mismatch) becomes a
row with ``status == "error"`` and a message naming both files and what is wrong; the others go on.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from mrseg_cohort.errors import BadScanError, ConfigError, ScanError, StorageError
from mrseg_cohort.geometry import Grid, Volume
from mrseg_cohort.io.images import IMAGE_SUFFIXES, image_stem, read_label_image
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import read_table_file, write_table
from mrseg_cohort.labels import KNOWN_MAPS, LabelMap, label_map_from_dataset_json
from mrseg_cohort.metrics import evaluate_labels, label_values, vessel_consistency

log = logging.getLogger(__name__)

ALL_GROUP = "all"
INPUT_ERRORS = (ScanError, StorageError, OSError, ValueError)
"""Errors that describe the input (an error row); anything else is our bug (logged with traceback)."""


@dataclass(frozen=True)
class Pair:
    """One prediction/reference pair; ``groups`` are (column, value) such as ("dataset", "NAKO");
    ``participant_id`` joins covariates (empty: the pair id)."""

    pair_id: str
    pred_uri: str
    ref_uri: str
    groups: tuple[tuple[str, str], ...] = ()
    participant_id: str = ""

    @property
    def participant(self) -> tuple[str, str | None]:
        """(participant id, visit) for covariates: the ``participant_id`` (else the pair id) and the
        ``visit`` grouping column (None without one)."""
        return self.participant_id or self.pair_id, dict(self.groups).get("visit")


@dataclass(frozen=True)
class EvalOptions:
    """How pairs are evaluated.

    Attributes:
        labels: the evaluated label map (the prediction's), e.g. ``MRSEG``.
        ref_lut: 256 values: reference label value -> value in ``labels`` (0 = background).
        ref_listed: reference values the map names (mapped or dropped on purpose); others present
            in a reference are reported in ``ref_unmapped_values``.
        resample_mm: resample both maps (nearest neighbour) to this (z, y, x) spacing in mm first.
        connectivity: 6, 18 or 26, for component counts.
    """

    labels: LabelMap
    ref_lut: np.ndarray
    ref_listed: frozenset[int]
    resample_mm: tuple[float, float, float] | None = None
    connectivity: int = 26


@dataclass
class PairResult:
    """The outcome of one pair: its ``pairs`` row and its ``per_class`` rows (none on error)."""

    row: dict[str, Any]
    classes: list[dict[str, Any]] = field(default_factory=list)


# -- label maps ------------------------------------------------------------------------------------
def load_label_map(store: Store, spec: str) -> LabelMap:
    """``mrseg``, ``body_comp``, or a JSON file: nnU-Net dataset.json or ``{value: name}``."""
    if spec in KNOWN_MAPS:
        return KNOWN_MAPS[spec]
    data = _read_json(store, spec)
    if "labels" in data:
        return label_map_from_dataset_json(data, name=spec)
    try:
        return label_map_from_dataset_json({"labels": {n: int(v) for v, n in data.items()}}, name=spec)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{spec}: expected an nnU-Net dataset.json or a {{value: name}} JSON object; "
                          f"{err}") from err


def identity_options(labels: LabelMap, **kwargs: Any) -> EvalOptions:
    """Options for references already in ``labels``'s values (other values count as unmapped)."""
    lut = np.zeros(256, np.uint8)
    lut[list(labels)] = list(labels)
    return EvalOptions(labels, lut, frozenset(labels), **kwargs)


def options_with_map(store: Store, map_uri: str, labels: LabelMap, **kwargs: Any) -> EvalOptions:
    """Options whose reference values are mapped by the JSON file ``map_uri`` (docs/evaluation.md).

    The file is ``{"reference_labels": {value: name}, "map": {value or name: target or null}}``
    (``reference_labels`` optional; a bare ``{value: target}`` object also works). Targets are
    names or values in ``labels``; ``null`` drops a class on purpose; unlisted values become 0.
    """
    data = _read_json(store, map_uri)
    mapping = data.get("map", data) if isinstance(data, dict) else None
    names = data.get("reference_labels", {}) if isinstance(data, dict) and "map" in data else {}
    if not isinstance(mapping, dict) or not isinstance(names, dict):
        raise ConfigError(f"{map_uri}: expected a JSON object with a 'map' object")
    value_of = {str(name): int(value) for value, name in names.items()}
    lut, listed = np.zeros(256, np.uint8), set()
    for key, target in mapping.items():
        source = int(key) if str(key).lstrip("-").isdigit() else value_of.get(key)
        if source is None or not 0 < source < 256:
            raise ConfigError(f"{map_uri}: reference label {key!r} is not a value in 1..255 nor a name "
                              f"in its 'reference_labels'")
        listed.add(source)
        if target is not None:
            lut[source] = _target_value(target, labels, map_uri, key)
    return EvalOptions(labels, lut, frozenset(listed), **kwargs)


def _target_value(target: Any, labels: LabelMap, map_uri: str, key: str) -> int:
    if isinstance(target, int) and target in labels:
        return target
    if isinstance(target, str) and target in labels.names.values():
        return labels.id_of(target)
    raise ConfigError(f"{map_uri}: {key!r} maps to {target!r}, which is not a class of the "
                      f"{labels.name} label map (use one of its names, or null to drop it)")


# -- pairing ---------------------------------------------------------------------------------------
def pairs_from_folders(store: Store, pred_root: str, ref_root: str, group: str = ALL_GROUP) -> list[Pair]:
    """Pairs by file name (relative path, ``.nii``/``.nii.gz`` alike), one per reference file.

    A reference without a prediction gives a pair with ``pred_uri == ""`` (an error row later);
    predictions without a reference are left out, with a warning.
    """
    refs, preds = _images_by_key(store, ref_root), _images_by_key(store, pred_root)
    if not refs:
        raise FileNotFoundError(f"no .nii or .nii.gz label maps under the reference folder {ref_root}")
    extra = sorted(set(preds) - set(refs))
    if extra:
        log.warning("%d prediction(s) under %s have no reference and are left out, e.g. %s",
                    len(extra), pred_root, extra[0])
    return [Pair(key, preds.get(key, ""), uri, (("group", group),)) for key, uri in sorted(refs.items())]


def pairs_from_list(store: Store, list_uri: str) -> list[Pair]:
    """Pairs from a CSV or Parquet list with columns ``pred`` and ``ref`` (paths or URIs).

    An optional ``id`` column names pairs (default: the reference's file name); an optional
    ``participant_id`` (or ``eid``) column says whose scan it is (for ``--covariates``); every other
    column is a grouping column (e.g. ``dataset``, ``sequence``, ``visit``). Relative paths are
    relative to the list.
    """
    if list_uri.endswith(".parquet"):
        frame = read_table_file(store, list_uri).to_pandas()
    else:
        frame = pd.read_csv(io.BytesIO(store.read_bytes(list_uri)), dtype=str, keep_default_na=False)
    missing = {"pred", "ref"} - set(frame.columns)
    if missing:
        raise ConfigError(f"{list_uri}: needs columns 'pred' and 'ref'; missing {sorted(missing)} "
                          f"(found {list(frame.columns)})")
    participant_col = next((c for c in ("participant_id", "eid") if c in frame.columns), None)
    group_cols = [c for c in frame.columns if c not in ("pred", "ref", "id", participant_col)]
    base = list_uri.rsplit("/", 1)[0] if "/" in list_uri else "."
    pairs = []
    for i, rec in enumerate(frame.astype(str).to_dict("records")):
        pred, ref = (_resolve(base, rec[c].strip()) if rec[c].strip() else "" for c in ("pred", "ref"))
        if not ref:
            raise ConfigError(f"{list_uri}: row {i + 1} has an empty 'ref'")
        pair_id = rec.get("id") or image_stem(ref.rsplit("/", 1)[-1])
        pairs.append(Pair(pair_id, pred, ref, tuple((c, rec[c]) for c in group_cols),
                          rec[participant_col].strip() if participant_col else ""))
    ids = [p.pair_id for p in pairs]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"{list_uri}: pair id {dup!r} occurs more than once; add a unique 'id' column")
    return pairs


def _images_by_key(store: Store, root: str) -> dict[str, str]:
    """Image files under ``root`` by their relative path without the image suffix."""
    return {image_stem(uri[len(root.rstrip("/")) + 1:]): uri for uri in store.list_files(root)
            if uri.lower().endswith(IMAGE_SUFFIXES)}


def _resolve(base: str, path: str) -> str:
    if "://" in path or os.path.isabs(path):
        return path
    return join_uri(base, path) if "://" in base else os.path.normpath(os.path.join(base, path))


# -- one pair ---------------------------------------------------------------------------------------
def evaluate_pair(store: Store, pair: Pair, options: EvalOptions) -> PairResult:
    """Read, map, check and measure one pair; input errors become an error row, never raise."""
    start = time.perf_counter()
    row = base_row(pair)
    try:
        classes = _measure_pair(store, pair, options, row)
    except INPUT_ERRORS as err:
        row.update(status="error", error_type=type(err).__name__, error=str(err))
        classes = []
    except Exception as err:  # noqa: BLE001 - the per-pair boundary: our bug, keep going
        log.exception("internal error on pair %s (%s vs %s)", pair.pair_id, pair.pred_uri, pair.ref_uri)
        row.update(status="error", error_type=type(err).__name__, error=f"internal error: {err}")
        classes = []
    row["seconds"] = time.perf_counter() - start
    return PairResult(row, classes)


def base_row(pair: Pair, status: str = "ok", error_type: str = "", error: str = "") -> dict[str, Any]:
    """A ``pairs`` row with every column present (values filled in as the pair is measured)."""
    return {"pair_id": pair.pair_id, "pred_uri": pair.pred_uri, "ref_uri": pair.ref_uri, **dict(pair.groups),
            "status": status, "error_type": error_type, "error": error, "geometry_note": "",
            "resampled": False, "shape": None, "spacing_mm": None, "ref_unmapped_values": [],
            "pred_unknown_values": [], "seconds": math.nan}


def _measure_pair(store: Store, pair: Pair, options: EvalOptions, row: dict[str, Any]) -> list[dict]:
    if not pair.pred_uri:
        raise BadScanError(f"no prediction for reference {pair.ref_uri} (pair {pair.pair_id!r})",
                           uri=pair.ref_uri)
    ref = read_label_image(store, pair.ref_uri)
    pred = read_label_image(store, pair.pred_uri)
    note = pred.grid.mismatch(ref.grid)
    if note and options.resample_mm is None:
        raise BadScanError(f"prediction {pair.pred_uri} and reference {pair.ref_uri} differ in geometry: "
                           f"{note} (prediction != reference); fix the inputs or pass --resample-mm to "
                           f"resample both onto one grid", uri=pair.pred_uri)
    row["ref_unmapped_values"] = sorted(label_values(ref.array) - options.ref_listed)
    row["pred_unknown_values"] = sorted(label_values(pred.array) - set(options.labels))
    ref = ref.with_array(options.ref_lut[ref.array])
    if options.resample_mm is not None:
        target = resampled_grid(ref.grid, options.resample_mm)
        ref, pred = resample_nearest(ref, target), resample_nearest(pred, target)
    row.update(geometry_note=note, resampled=options.resample_mm is not None,
               shape=list(ref.grid.shape), spacing_mm=list(ref.grid.spacing_mm))
    records = evaluate_labels(pred.array, ref.array, ref.grid.spacing_mm, list(options.labels),
                              options.connectivity)
    keys = {"pair_id": pair.pair_id, **dict(pair.groups)}
    return [{**keys, "structure_id": m.label, "structure": options.labels[m.label].name,
             **{k: v for k, v in asdict(m).items() if k != "label"}} for m in records]


# -- resampling -------------------------------------------------------------------------------------
def resampled_grid(grid: Grid, spacing_mm: Sequence[float]) -> Grid:
    """``grid`` at ``spacing_mm`` (z, y, x): same origin (centre of voxel 0) and direction, extent
    kept: ``shape = max(1, round(shape * spacing / new spacing))`` per axis."""
    shape = tuple(max(1, round(n * s / t)) for n, s, t in zip(grid.shape, grid.spacing_mm, spacing_mm))
    return Grid(shape, tuple(spacing_mm), grid.origin_mm, grid.direction)  # type: ignore[arg-type]


def resample_nearest(volume: Volume, target: Grid) -> Volume:
    """Nearest-neighbour resampling of a label map onto ``target`` (SimpleITK; outside = 0)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(volume.grid.spacing_xyz_mm)
    image.SetOrigin(volume.grid.origin_mm)
    image.SetDirection(volume.grid.direction)
    out = sitk.Resample(image, target.shape[::-1], sitk.Transform(), sitk.sitkNearestNeighbor,
                        target.origin_mm, target.spacing_xyz_mm, target.direction, 0, image.GetPixelID())
    return Volume(sitk.GetArrayFromImage(out), target)


# -- many pairs -------------------------------------------------------------------------------------
def evaluate_pairs(store: Store, pairs: Iterable[Pair], options: EvalOptions,
                   on_result: Callable[[PairResult], None] | None = None) -> list[PairResult]:
    """Evaluate pairs one after another in this process (see mrseg_cohort.pipeline.evaluate for Ray)."""
    results = []
    for pair in pairs:
        results.append(evaluate_pair(store, pair, options))
        if on_result:
            on_result(results[-1])
    return results


# -- aggregation ------------------------------------------------------------------------------------
def frames(results: Sequence[PairResult], pairs: Sequence[Pair]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs table, per_class table) of ``results``; per_class keeps label order within a pair."""
    group_cols = list(dict.fromkeys(c for p in pairs for c, _ in p.groups))
    pair_frame = pd.DataFrame([r.row for r in results])
    rows = [c for r in results for c in r.classes]
    per_class = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["pair_id", *group_cols, "structure_id",
                                                                       "structure", "dice", "hd95_mm"])
    if len(per_class):
        per_class["structure_id"] = per_class["structure_id"].astype("int16")
    return pair_frame, per_class


def summarise(per_class: pd.DataFrame, group_cols: Sequence[str], labels: LabelMap) -> pd.DataFrame:
    """One row per group x structure: mean and SD of Dice and HD95, counts, vessel consistency.

    Groups are the combinations of ``group_cols`` (joined by " / "), plus ``all`` when there is
    more than one. Dice: NaN (reference empty) left out. HD95: mean and SD over finite values;
    ``n_hd95_inf`` counts the infinite ones (exactly one mask empty). SD is the sample SD (ddof 1).
    VC (vessels only): share of scans whose prediction has one component, among scans where the
    prediction holds the vessel; ``vc_ref`` likewise for the reference.
    """
    frame = per_class.assign(group=_group_labels(per_class, group_cols))
    parts = [frame] if frame["group"].nunique() <= 1 else [frame, frame.assign(group=ALL_GROUP)]
    rows = []
    for part in parts:
        for (group, sid), sub in part.groupby(["group", "structure_id"], sort=False):
            rows.append(_summary_row(str(group), int(sid), sub, labels))
    return pd.DataFrame(rows)


def _summary_row(group: str, sid: int, sub: pd.DataFrame, labels: LabelMap) -> dict[str, Any]:
    dice = sub["dice"].dropna()
    hd = sub["hd95_mm"].to_numpy(dtype=float)
    finite = hd[np.isfinite(hd)]
    is_vessel = labels[sid].is_vessel
    vc, n_vc = vessel_consistency(sub["n_components_pred"]) if is_vessel else (math.nan, 0)
    vc_ref, n_vc_ref = vessel_consistency(sub["n_components_ref"]) if is_vessel else (math.nan, 0)
    return {"group": group, "structure_id": sid, "structure": labels[sid].name, "n_pairs": len(sub),
            "n_dice": len(dice), "dice_mean": _mean(dice), "dice_sd": _sd(dice),
            "n_hd95_finite": len(finite), "n_hd95_inf": int(np.isinf(hd).sum()),
            "hd95_mm_mean": _mean(finite), "hd95_mm_sd": _sd(finite),
            "vc": vc, "n_vc": n_vc, "vc_ref": vc_ref, "n_vc_ref": n_vc_ref}


def paper_table(summary: pd.DataFrame, per_class: pd.DataFrame, group_cols: Sequence[str],
                metric: str) -> pd.DataFrame:
    """Structures as rows, groups as columns, cells "mean ± SD" (``metric``: dice, hd95_mm or vc).

    Dice cells have 2 decimals, HD95 1 decimal in mm with " [k inf]" when k pairs were infinite,
    VC "share (present in n)". The last row (dice, hd95_mm) is ``all structures``: each scan's mean
    over its structures (finite values), then mean ± SD over scans. Empty cells are "-".
    """
    groups = list(dict.fromkeys(summary["group"]))
    out = pd.DataFrame({"structure": list(dict.fromkeys(summary["structure"]))})
    for group in groups:
        sub = summary[summary["group"] == group].set_index("structure")
        out[group] = [_cell(sub.loc[s], metric) if s in sub.index else "-" for s in out["structure"]]
    if metric == "vc":
        keep = summary.groupby("structure", sort=False)["n_vc"].max() > 0
        return out[out["structure"].map(keep)].reset_index(drop=True)
    per_scan = per_class.assign(group=_group_labels(per_class, group_cols))
    per_scan = per_scan.assign(value=per_scan[metric].where(np.isfinite(per_scan[metric])))
    scan_means = per_scan.groupby(["group", "pair_id"], sort=False)["value"].mean().dropna()
    last = {"structure": "all structures"}
    for group in groups:
        values = scan_means if group == ALL_GROUP else scan_means[
            scan_means.index.get_level_values("group") == group]
        last[group] = _fmt(values.mean(), _sd(values), 2 if metric == "dice" else 1) if len(values) else "-"
    return pd.concat([out, pd.DataFrame([last])], ignore_index=True)


def _cell(row: pd.Series, metric: str) -> str:
    if metric == "dice":
        return _fmt(row["dice_mean"], row["dice_sd"], 2) if row["n_dice"] else "-"
    if metric == "hd95_mm":
        text = _fmt(row["hd95_mm_mean"], row["hd95_mm_sd"], 1) if row["n_hd95_finite"] else "-"
        return text + (f" [{row['n_hd95_inf']} inf]" if row["n_hd95_inf"] else "")
    return f"{row['vc']:.2f} (n={row['n_vc']})" if row["n_vc"] else "-"


def _fmt(mean: float, sd: float, decimals: int) -> str:
    return f"{mean:.{decimals}f} ± {sd:.{decimals}f}" if math.isfinite(sd) else f"{mean:.{decimals}f}"


def _group_labels(frame: pd.DataFrame, group_cols: Sequence[str]) -> pd.Series:
    if not group_cols:
        return pd.Series(ALL_GROUP, index=frame.index)
    return frame[list(group_cols)].astype(str).agg(" / ".join, axis=1)


def _mean(values: Any) -> float:
    return float(np.mean(values)) if len(values) else math.nan


def _sd(values: Any) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


# -- outputs ----------------------------------------------------------------------------------------
TABLE_METRICS = ("dice", "hd95_mm", "vc")


def write_outputs(store: Store, out_uri: str, results: Sequence[PairResult], pairs: Sequence[Pair],
                  labels: LabelMap) -> dict[str, pd.DataFrame]:
    """Write pairs, per_class, summary and the paper tables under ``out_uri``; returns the frames."""
    group_cols = list(dict.fromkeys(c for p in pairs for c, _ in p.groups))
    pair_frame, per_class = frames(results, pairs)
    store.make_dirs(out_uri)
    write_table(store, join_uri(out_uri, "pairs.parquet"), pair_frame)
    write_table(store, join_uri(out_uri, "per_class.parquet"), per_class)
    out = {"pairs": pair_frame, "per_class": per_class}
    if len(per_class):
        summary = summarise(per_class, group_cols, labels)
        write_table(store, join_uri(out_uri, "summary.parquet"), summary)
        store.write_bytes(join_uri(out_uri, "summary.csv"), summary.to_csv(index=False).encode())
        out["summary"] = summary
        for metric in TABLE_METRICS:
            table = paper_table(summary, per_class, group_cols, metric)
            name = f"table_{metric}"
            write_table(store, join_uri(out_uri, f"{name}.parquet"), table)
            store.write_bytes(join_uri(out_uri, f"{name}.csv"), table.to_csv(index=False).encode())
            store.write_bytes(join_uri(out_uri, f"{name}.md"), markdown(table).encode())
            out[name] = table
    return out


def markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of string cells (first column left, others right)."""
    head = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    lines += ["| " + " | ".join(str(v) for v in rec) + " |" for rec in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _read_json(store: Store, uri: str) -> Any:
    try:
        return json.loads(store.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{uri}: not valid JSON: {err}") from err

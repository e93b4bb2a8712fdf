"""Assemble the QC report of one output folder: read, summarise, draw, render one HTML page."""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass, field

import pandas as pd
import yaml

from mrseg_cohort.agreement.files import AgreementFiles, default_uri, read_agreement
from mrseg_cohort.colortables import color_lookup, label_colors
from mrseg_cohort.config import JobConfig
from mrseg_cohort.errors import ScanError
from mrseg_cohort.io.storage import Store
from mrseg_cohort.io.tables import read_frame
from mrseg_cohort.labels import KNOWN_MAPS, MRSEG, LabelMap, label_map_from_dataset_json
from mrseg_cohort.ledger.outputs import Outputs
from mrseg_cohort.phenotypes import PHENOTYPES, phenotype_table
from mrseg_cohort.phenotypes.covariates import normalise_covariates
from mrseg_cohort.phenotypes.derive import qc_column
from mrseg_cohort.phenotypes.normative import (Z_THRESHOLD, outlier_column, outlier_counts, outlier_rows,
                                               with_covariates)
from mrseg_cohort.report import html as h
from mrseg_cohort.report import summaries as S
from mrseg_cohort.report.agreement import agreement_section
from mrseg_cohort.report.agreement import outlier_keys as agreement_outlier_keys
from mrseg_cohort.report.data import OutputData, read_output
from mrseg_cohort.report.figures import distribution_png, phenotype_panels_png
from mrseg_cohort.report.images import scan_images
from mrseg_cohort.report.previews import (PreviewPlane, canonical, choose_slices, default_pixel_mm,
                                          intensity_window, render_plane)

log = logging.getLogger(__name__)

Key = tuple[str, str]


@dataclass(frozen=True)
class ReportOptions:
    """Settings of :func:`build_report`.

    Attributes:
        sample: participants' scans previewed at random (reproducible with ``seed``), besides outliers.
        contrast: segmented contrast to report (default: the first in sort order).
        z_threshold: |robust z| above which a value is an outlier (see report.summaries).
        min_scans: structures present in fewer scans are not assessed for outliers.
        max_outlier_previews: outlier scans previewed at most (the most extreme first); the rest are
            listed without a preview.
        preview_px: length in pixels of the longest field-of-view edge in previews.
        covariates: CSV or Parquet of participant covariates (path or URI): phenotype distributions by
            sex and phenotype outliers within sex x age band x visit (also stratum minimum ``min_scans``).
        phenotype_z_threshold: |robust z| above which a phenotype value is an outlier.
        agreement: summary table of ``mrseg-cohort agreement`` (path or URI) for the Agreement section;
            None: the output's own ``agreement/agreement.parquet`` when there is one.
    """

    sample: int = 6
    contrast: str | None = None
    z_threshold: float = S.Z_THRESHOLD
    min_scans: int = 10
    max_outlier_previews: int = 200
    seed: int = 0
    preview_px: int = 480
    covariates: str | None = None
    phenotype_z_threshold: float = Z_THRESHOLD
    agreement: str | None = None


@dataclass
class ReportResult:
    html: str
    scans: int = 0
    outliers: int = 0
    previews: int = 0
    preview_errors: list[str] = field(default_factory=list)
    phenotype_outliers: int | None = None
    agreement_outliers: int | None = None


def anchor_for(key: Key) -> str:
    """HTML id of a scan's preview: readable and unique for any participant id and visit."""
    text = f"{key[0]}-{key[1]}"
    digest = hashlib.sha1("\0".join(key).encode()).hexdigest()[:6]
    return f"scan-{re.sub(r'[^A-Za-z0-9_.-]', '_', text)}-{digest}"


def write_report(job: JobConfig, out_uri: str, options: ReportOptions = ReportOptions()) -> ReportResult:
    """Build the report (:func:`build_report`) and publish it at ``out_uri`` (a path or URI)."""
    result = build_report(job, options)
    Store.from_config(job.output.storage).write_bytes(out_uri, result.html.encode("utf-8"))
    return result


def build_report(job: JobConfig, options: ReportOptions = ReportOptions()) -> ReportResult:
    """Read the output folder of ``job`` and render its QC report as one self-contained HTML page.

    Raises:
        FileNotFoundError: the output holds no published results (no scans and no failures).
        ValueError: ``options.contrast`` has no results there (names those that have).
    """
    outputs = Outputs.for_job(job)
    data = read_output(outputs, job.base_model)
    if data.scans.empty and data.failures.empty:
        raise FileNotFoundError(f"no published results under {outputs.root} yet; run the job first, or give "
                                "the output folder of a run (--output)")
    try:
        structures, scans, contrast = S.select(data.structures, data.scans, data.base_model, options.contrast)
    except ValueError as err:
        raise ValueError(f"{outputs.root}: {err}") from None
    label_map = _label_map(structures, job)
    colors = {c.name: c.rgb for c in label_colors(label_map)}
    outliers = S.find_outliers(structures, options.z_threshold, options.min_scans)
    flags = S.scan_flags(scans)
    phenotypes = _phenotypes(job, outputs, data, options)
    agreement = _agreement(outputs, options)

    keys = list(zip(scans["participant_id"], scans["visit"]))
    outlier_keys = list(dict.fromkeys(zip(outliers["participant_id"], outliers["visit"])))
    rows = {k: r for k, r in zip(keys, scans.to_dict("records"))}
    agreement_keys = [k for k in agreement_outlier_keys(agreement) if k in rows] if agreement else []
    preview_keys = list(dict.fromkeys(outlier_keys[: options.max_outlier_previews]
                                      + agreement_keys[: options.max_outlier_previews]
                                      + S.sample_keys(keys, options.sample, options.seed)))
    previews, errors = {}, []
    for key in preview_keys:
        t = time.perf_counter()
        try:
            previews[key] = _preview(job, outputs, rows[key], label_map, options)
        except (ScanError, OSError, ValueError) as err:
            errors.append(f"{key[0]}/{key[1]}: {err}")
            previews[key] = err
            log.warning("no preview for %s/%s: %s", key[0], key[1], err)
        log.debug("preview %s/%s in %.1f s", key[0], key[1], time.perf_counter() - t)

    body = [
        _overview(job, data, scans, outliers, flags, contrast, phenotypes),
        _metadata_section(job, data, scans),
        _qc_section(scans, structures, flags, previews),
        _vessel_section(structures),
        _distribution_section(structures, label_map, colors, outliers, options),
        _outlier_section(outliers, previews, options),
        _phenotype_section(phenotypes, previews, options),
        *([agreement_section(agreement, previews, anchor_for, options.seed)] if agreement else []),
        _failures_section(data),
        _preview_section(preview_keys, previews, rows, outliers, flags, colors, label_map, outlier_keys, options),
    ]
    nav = [("overview", "Overview"), ("metadata", "Run metadata"), ("qc", "QC flags"), ("vessels", "Vessels"),
           ("distributions", "Distributions"), ("outliers", "Outliers"), ("phenotypes", "Phenotypes"),
           *([("agreement", "Agreement")] if agreement else []), ("failures", "Failures"), ("previews", "Previews")]
    subtitle = (f"Output {job.output.uri} | model {data.base_model}, contrast {contrast or '-'} | generated "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    page = h.page(f"mrseg-cohort QC report: {job.cohort.name}", subtitle, nav, body)
    n_previews = sum(isinstance(p, tuple) for p in previews.values())
    n_phenotype_outliers = int(phenotypes["n_outliers"].sum()) if phenotypes is not None and \
        "n_outliers" in phenotypes else None
    return ReportResult(page, len(scans), len(outliers), n_previews, errors, n_phenotype_outliers,
                        len(agreement.outside_loa) if agreement else None)


# -- previews ---------------------------------------------------------------------------------------
def _preview(job: JobConfig, outputs: Outputs, row: dict, label_map: LabelMap,
             options: ReportOptions) -> tuple[PreviewPlane, PreviewPlane, str]:
    images = scan_images(job, outputs, row)
    labels = canonical(images.labels.array, images.labels.grid)
    image = canonical(images.image.array, images.image.grid)
    y, z = choose_slices(labels)
    pixel_mm = default_pixel_mm(labels, options.preview_px)
    lut, window = color_lookup(label_map), intensity_window(image.array)
    return (render_plane(image, labels, "coronal", y, lut, window, pixel_mm),
            render_plane(image, labels, "axial", z, lut, window, pixel_mm), images.image_origin)


def _plane_img(plane: PreviewPlane, key: Key) -> str:
    attrs = {"class": f"preview-{plane.view}", "data-view": plane.view, "data-participant-id": key[0],
             "data-visit": key[1], "data-slice-mm": f"{plane.slice_mm:.3f}", "data-pixel-mm": f"{plane.pixel_mm:.5f}",
             "data-col-axis": plane.col_axis, "data-row-axis": plane.row_axis,
             "data-col0-mm": f"{plane.col0_mm:.4f}", "data-row0-mm": f"{plane.row0_mm:.4f}",
             "data-col-step-mm": f"{plane.col_step_mm:.5f}", "data-row-step-mm": f"{plane.row_step_mm:.5f}"}
    width = None
    if plane.view == "axial":  # shown at least 360 px wide (its field of view is small next to the coronal)
        natural = int.from_bytes(plane.png[16:20], "big")  # PNG IHDR width
        width = max(natural, 360)
    return h.png_img(plane.png, f"{plane.view} slice of {key[0]} visit {key[1]} with labels", attrs, width)


def _preview_section(keys: list[Key], previews: dict, rows: dict[Key, dict], outliers: pd.DataFrame,
                     flags: pd.DataFrame, colors: dict[str, tuple[int, int, int]], label_map: LabelMap,
                     outlier_keys: list[Key], options: ReportOptions) -> str:
    parts = [h.paragraph(
        f"{min(options.sample, len(rows))} scans drawn at random (seed {options.seed}) and every outlier scan "
        f"(at most {options.max_outlier_previews}). Coronal slice: the participant's head up and the participant's "
        "right on the image left (radiological convention); axial slice: anterior up, the participant's right on "
        "the image left. Slices are those showing the most structures. Labels are drawn at 50 % opacity in the "
        "colours of the colour tables written beside the labels.")]
    skipped = [k for k in outlier_keys if k not in previews]
    if skipped:
        parts.append(h.paragraph(f"{len(skipped)} outlier scans have no preview (raise --max-outlier-previews)."))
    flag_by_key = {(r["participant_id"], r["visit"]): [n for n, _, _ in S.SCAN_FLAGS if r[n]]
                   for r in flags.to_dict("records")}
    for key in keys:
        result, row = previews[key], rows[key]
        title = f"Participant {key[0]}, visit {key[1]}"
        if not isinstance(result, tuple):
            parts.append(f'<figure class="preview" id="{h.esc(anchor_for(key))}"><figcaption><b>{h.esc(title)}</b>: '
                         f"no preview: {h.esc(result)}</figcaption></figure>")
            continue
        coronal, axial, origin = result
        shown = sorted(set(coronal.labels_shown) | set(axial.labels_shown))
        hits = outliers[(outliers["participant_id"] == key[0]) & (outliers["visit"] == key[1])]
        notes = [f"{r.structure} {S.OUTLIER_MEASURES.get(r.measure, r.measure)} {h.fmt(r.value)} (z {r.z:+.1f})"
                 for r in hits.itertuples()]
        caption = (f"{title}, contrast {row['contrast']}, model {row['model']}. Left: coronal slice at y = "
                   f"{coronal.slice_mm:.1f} mm (LPS), head up, the participant's right on the image left "
                   f"(radiological convention). Right: axial slice at z = {axial.slice_mm:.1f} mm, anterior up, "
                   f"the participant's right on the image left. Pixel {coronal.pixel_mm:.2f} mm. Image: {origin}.")
        extra = ""
        if notes:
            extra += f"<br><b>Outliers:</b> {h.esc('; '.join(notes))}"
        if flag_by_key.get(key):
            extra += f"<br><b>QC flags:</b> {h.esc(', '.join(flag_by_key[key]))}"
        legend = h.legend((label_map[v].name, colors[label_map[v].name]) for v in shown if v in label_map)
        parts.append(f'<figure class="preview" id="{h.esc(anchor_for(key))}"><div class="planes">'
                     f"{_plane_img(coronal, key)}{_plane_img(axial, key)}</div>"
                     f"<figcaption>{h.esc(caption)}{extra}</figcaption>{legend}</figure>")
    return h.section("previews", "Previews", *parts)


# -- sections ---------------------------------------------------------------------------------------
def _overview(job: JobConfig, data: OutputData, scans: pd.DataFrame, outliers: pd.DataFrame, flags: pd.DataFrame,
              contrast: str | None, phenotypes: pd.DataFrame | None) -> str:
    failures = S.failures_with_status(data.failures, data.scans)
    flagged = int(flags[[n for n, _, _ in S.SCAN_FLAGS]].any(axis=1).sum()) if len(flags) else 0
    status = data.scans.groupby("status").size().to_dict() if len(data.scans) else {}
    items = [("scans reported", len(scans)), ("participants", scans["participant_id"].nunique()),
             ("scans with a QC flag", flagged), ("outlier values", len(outliers)),
             ("failures not resolved", int((~failures["resolved"]).sum()) if len(failures) else 0)]
    if phenotypes is not None and "n_outliers" in phenotypes:
        items.insert(4, ("phenotype outliers", int(phenotypes["n_outliers"].sum())))
    text = (f"Cohort {job.cohort.name} ({job.cohort.layout}), model {data.base_model}, segmented contrast "
            f"{contrast or '-'}. Scan rows by status (all models and contrasts): "
            + (", ".join(f"{k} {v}" for k, v in sorted(status.items())) or "none") + ".")
    return h.section("overview", "Overview", h.cards(items), h.paragraph(text))


def _metadata_section(job: JobConfig, data: OutputData, scans: pd.DataFrame) -> str:
    versions = S.model_versions(data.scans)
    runs = [[r.get("run_id", ""), _when(r.get("started")), r.get("manifest", ""), r.get("scheduled", ""),
             ", ".join(f"{k} {v}" for k, v in sorted((r.get("versions") or {}).items())),
             ", ".join(f"{m.get('name')}: {str(m.get('sha256', ''))[:16]}" for m in r.get("models") or [])]
            for r in data.runs]
    latest = data.runs[-1].get("config") if data.runs and isinstance(data.runs[-1].get("config"), dict) else None
    config, origin = (latest, "recorded by the latest run") if latest else \
        (job.model_dump(mode="json"), "given to the report (no run record found)")
    config_text = yaml.safe_dump(S.redact(config), sort_keys=False, default_flow_style=False, width=110)
    return h.section(
        "metadata", "Run metadata",
        "<h3>Models and software (from tables/scans)</h3>",
        h.table(["model", "weights sha256", "folds", "mrseg-cohort", "nnunetv2", "torch", "device", "scans"],
                versions.itertuples(index=False), numeric=[7]),
        "<h3>Runs (from _work/runs)</h3>",
        h.table(["run", "started (UTC)", "in manifest", "scheduled", "software", "models (sha256 prefix)"], runs),
        f"<details><summary>Configuration {h.esc(origin)} (credentials removed)</summary>{h.pre(config_text)}"
        "</details>")


def _qc_section(scans: pd.DataFrame, structures: pd.DataFrame, flags: pd.DataFrame, previews: dict) -> str:
    counts = S.scan_flag_counts(scans)
    per_structure = S.structure_flag_counts(structures)
    flagged = flags[flags[[n for n, _, _ in S.SCAN_FLAGS]].any(axis=1)] if len(flags) else flags
    flagged_rows = []
    for r in flagged.head(500).to_dict("records"):
        key = (r["participant_id"], r["visit"])
        link = f"#{anchor_for(key)}" if isinstance(previews.get(key), tuple) else None
        flagged_rows.append([h.Cell(key[0], link), key[1], ", ".join(n for n, _, _ in S.SCAN_FLAGS if r[n])])
    return h.section(
        "qc", "QC flags",
        h.paragraph("Flags are explained in docs/measures.md: swap_suspected (fat-water swap), lr_plausible (a left "
                    "structure's centroid lies on the participant's left of its partner's), touches_border (within 3 "
                    "voxels of the field-of-view edge: likely cut off), fragmented (largest component under 95 % of "
                    "the voxels), single_component (vessels), missing (absent where the field of view covers it)."),
        h.table(["flag", "meaning", "scans", "% of scans"],
                counts[["flag", "description", "scans", "percent"]].itertuples(index=False), numeric=[2, 3]),
        "<h3>Per structure</h3>",
        h.table(["value", "structure", "scans", "present", "touches border", "fragmented", "missing",
                 "L/R implausible"], per_structure.itertuples(index=False), numeric=[0, 2, 3, 4, 5, 6, 7]),
        f"<h3>Flagged scans ({len(flagged)}{', first 500 shown' if len(flagged) > 500 else ''})</h3>",
        h.table(["participant", "visit", "flags"], flagged_rows))


def _vessel_section(structures: pd.DataFrame) -> str:
    vc = S.vessel_consistency(structures)
    return h.section(
        "vessels", "Vessel consistency",
        h.paragraph("VC = the share of scans, among those where the vessel is present, in which it is one connected "
                    "component (26-connectivity unless configured otherwise)."),
        h.table(["vessel", "present in scans", "single component", "VC"], vc.itertuples(index=False),
                row_class=lambda i: "bad" if vc["vc"].iloc[i] < 0.9 else "", numeric=[1, 2, 3]))


def _distribution_section(structures: pd.DataFrame, label_map: LabelMap, colors: dict[str, tuple[int, int, int]],
                          outliers: pd.DataFrame, options: ReportOptions) -> str:
    order = list(label_map.names.values())
    parts = [h.paragraph(
        f"Boxes: quartiles and median over the scans where the structure is present; whiskers 1.5 IQR; points: "
        f"scans (red: outliers with |robust z| > {options.z_threshold:g}). Volumes on a logarithmic axis. Fat "
        "fraction is the signal fat fraction (not PDFF).")]
    for measure, label, log_scale in (("volume_ml", "volume (mL)", True),
                                      ("ff_median_pct", "fat fraction, median (%)", False)):
        present = structures[structures["n_voxels"].fillna(0) > 0]
        png = distribution_png(present, measure, label, order, colors, outliers, log_scale, seed=options.seed)
        parts.append(h.png_img(png, f"distribution of {label} per structure", {"class": "distribution"})
                     if png else h.paragraph(f"No {label} values."))
    return h.section("distributions", "Distributions", *parts)


def _outlier_section(outliers: pd.DataFrame, previews: dict, options: ReportOptions) -> str:
    rows = []
    for r in outliers.itertuples():
        key = (r.participant_id, r.visit)
        link = f"#{anchor_for(key)}" if isinstance(previews.get(key), tuple) else None
        rows.append([h.Cell(r.participant_id, link, "outlier"), r.visit, r.structure,
                     S.OUTLIER_MEASURES.get(r.measure, r.measure), r.value, r.median, round(float(r.z), 2),
                     h.Cell("preview", link) if link else "no preview"])
    return h.section(
        "outliers", f"Outliers ({len(outliers)})",
        h.paragraph(f"Robust z-score z = (x - median) / (1.4826 MAD) per structure and measure over the scans where "
                    f"the structure is present (MAD = median absolute deviation; Iglewicz and Hoaglin, 1993); "
                    f"|z| > {options.z_threshold:g} is an outlier. Structures present in fewer than "
                    f"{options.min_scans} scans are not assessed. Largest |z| first."),
        h.table(["participant", "visit", "structure", "measure", "value", "cohort median", "robust z", "preview"],
                rows, numeric=[4, 5, 6]))


def _phenotypes(job: JobConfig, outputs: Outputs, data: OutputData, options: ReportOptions) -> pd.DataFrame | None:
    """The phenotype table (with covariate columns when ``options.covariates``), None without base-model rows."""
    if not (data.structures["model"] == data.base_model).any():
        return None
    table = phenotype_table(data.structures, data.scans, data.base_model, options.contrast)
    if options.covariates:
        covariates = normalise_covariates(read_frame(outputs.store, options.covariates), options.covariates)
        table = with_covariates(table, covariates, options.phenotype_z_threshold, options.min_scans)
    return table


def _agreement(outputs: Outputs, options: ReportOptions) -> AgreementFiles | None:
    """The agreement tables of ``options.agreement``, else of the output's own folder, else None."""
    if options.agreement:
        return read_agreement(outputs.store, options.agreement)
    own = default_uri(outputs.root)
    return read_agreement(outputs.store, own) if outputs.store.exists(own) else None


def _phenotype_section(table: pd.DataFrame | None, previews: dict, options: ReportOptions) -> str:
    if table is None:
        return h.section("phenotypes", "Phenotypes", h.paragraph("No phenotypes: no rows of the base model."))
    names = [p.name for p in PHENOTYPES]
    assessed = options.covariates is not None
    flagged = {n: table[outlier_column(n)].to_numpy(dtype=bool) for n in names} if assessed else None
    png = phenotype_panels_png(table, names, outliers=flagged, seed=options.seed)
    qc = {n: int((table[qc_column(n)] != "").sum()) for n in names}
    if assessed:
        counts = outlier_counts(table)
        count_rows = [[r.phenotype, r.values, qc[r.phenotype], r.assessed, r.outliers] for r in counts.itertuples()]
        header = ["phenotype", "values", "with a QC reason", "assessed for outliers", "outliers"]
        text = (f"Per participant x visit (mrseg-cohort tables phenotypes; rules in docs/tables.md), by sex from the "
                f"covariates file. Outliers: |robust z| > {options.phenotype_z_threshold:g}, z = (x - median) / "
                f"(1.4826 MAD) within visit x sex x 10-year age band; strata with fewer than {options.min_scans} "
                "values, and rows without sex or age, are not assessed. Red points: outliers.")
    else:
        count_rows = [[n, int(table[n].notna().sum()), qc[n]] for n in names]
        header = ["phenotype", "values", "with a QC reason"]
        text = ("Per participant x visit (mrseg-cohort tables phenotypes; rules in docs/tables.md). Sex is unknown "
                "without covariates: give --covariates for distributions by sex and outliers within sex and age.")
    parts = [h.paragraph(text),
             h.png_img(png, "phenotype distributions by sex", {"class": "phenotypes"}) if png
             else h.paragraph("No phenotype values."),
             "<h3>Counts</h3>", h.table(header, count_rows, numeric=range(1, len(header)))]
    if assessed:
        rows = []
        for r in outlier_rows(table).itertuples():
            key = (r.participant_id, r.visit)
            link = f"#{anchor_for(key)}" if isinstance(previews.get(key), tuple) else None
            rows.append([h.Cell(r.participant_id, link, "outlier"), r.visit, r.sex, r.age_band, r.phenotype, r.value,
                         r.stratum_median, round(float(r.z), 2)])
        parts += [f"<h3>Phenotype outliers ({len(rows)})</h3>",
                  h.table(["participant", "visit", "sex", "age band", "phenotype", "value", "stratum median",
                           "robust z"], rows, numeric=[5, 6, 7])]
    return h.section("phenotypes", "Phenotypes", *parts)


def _failures_section(data: OutputData) -> str:
    failures = S.failures_with_status(data.failures, data.scans)
    shown = failures.head(500)
    rows = [[r["participant_id"], r["visit"], r["stage"], r["error_type"], r["message"], r["uri"], r["attempt"],
             _when(r["time"]), r["run_id"], "yes" if r["resolved"] else "no"] for r in shown.to_dict("records")]
    return h.section(
        "failures", f"Failures ({len(failures)})",
        h.paragraph("One row per failed attempt (tables/failures), newest first; resolved = the scan was committed by "
                    "a later run. Re-running the job retries unresolved scans."
                    + (" First 500 shown." if len(failures) > 500 else "")),
        h.table(["participant", "visit", "stage", "error", "message", "file", "attempt", "time (UTC)", "run",
                 "resolved"], rows, row_class=lambda i: "" if shown["resolved"].iloc[i] else "bad", numeric=[6]))


# -- helpers ----------------------------------------------------------------------------------------
def _label_map(structures: pd.DataFrame, job: JobConfig) -> LabelMap:
    """The reported model's label map, from the structures table (values and names as published)."""
    if len(structures):
        pairs = structures[["structure_id", "structure"]].drop_duplicates()
        return label_map_from_dataset_json({"labels": {str(n): int(i) for i, n in pairs.itertuples(index=False)}},
                                           job.base_model)
    labels = next((m.labels for m in job.models if m.name == job.base_model), "mrseg")
    return KNOWN_MAPS.get(labels, MRSEG)


def _when(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    try:
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, TypeError):
        return str(value)

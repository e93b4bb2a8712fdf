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
from mrseg_cohort.io.storage import Store, join_uri
from mrseg_cohort.io.tables import read_frame, table_bytes
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
from mrseg_cohort.report.data import OutputData, read_output, read_phenotype_inputs, read_scan_rows
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
        max_outliers: rows of each outlier list on the page (structure outliers, phenotype outliers,
            pairs outside the limits of agreement), taken in turns across structures (or phenotypes)
            from the most extreme; the full lists are written beside the page as Parquet and linked.
        max_outlier_previews: outlier scans previewed at most, in the same turns (each structure's
            most extreme first); the rest are listed without a preview.
        preview_budget_mb: megabytes of the page that previews may take at most (base64 PNG); scans
            beyond it are listed without a preview, so the page stays one a browser opens at once.
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
    max_outliers: int = 500
    max_outlier_previews: int = 24
    preview_budget_mb: float = 20.0
    seed: int = 0
    preview_px: int = 480
    covariates: str | None = None
    phenotype_z_threshold: float = Z_THRESHOLD
    agreement: str | None = None


MAX_RUNS = 100
"""Runs listed in the metadata section at most (the latest)."""
MAX_FAILURES = 500
"""Failure rows on the page at most (newest first); each message cut to :data:`MAX_MESSAGE` characters."""
MAX_MESSAGE = 500


@dataclass
class ReportResult:
    """The page and the tables written beside it (file name -> table; linked from the page)."""

    html: str
    scans: int = 0
    outliers: int = 0
    previews: int = 0
    preview_errors: list[str] = field(default_factory=list)
    phenotype_outliers: int | None = None
    agreement_outliers: int | None = None
    beside: dict[str, pd.DataFrame] = field(default_factory=dict)


def anchor_for(key: Key) -> str:
    """HTML id of a scan's preview: readable and unique for any participant id and visit."""
    text = f"{key[0]}-{key[1]}"
    digest = hashlib.sha1("\0".join(key).encode()).hexdigest()[:6]
    return f"scan-{re.sub(r'[^A-Za-z0-9_.-]', '_', text)}-{digest}"


def write_report(job: JobConfig, out_uri: str, options: ReportOptions = ReportOptions()) -> ReportResult:
    """Build the report (:func:`build_report`) and publish it at ``out_uri`` (a path or URI), with
    its full outlier lists beside it (``<name>_outliers.parquet``, ...: :attr:`ReportResult.beside`)."""
    folder, _, file_name = out_uri.rstrip("/").rpartition("/")
    result = build_report(job, options, file_name.rsplit(".", 1)[0] if "." in file_name else file_name)
    store = Store.from_config(job.output.storage)
    for name, table in result.beside.items():
        store.write_bytes(join_uri(folder, name) if folder else name, table_bytes(table))
    store.write_bytes(out_uri, result.html.encode("utf-8"))
    return result


def beside_name(page: str, table: str) -> str:
    """File name of a table written beside the page ``<page>.html``: ``<page>_<table>.parquet``."""
    return f"{page}_{table}.parquet"


def build_report(job: JobConfig, options: ReportOptions = ReportOptions(), page: str = "report") -> ReportResult:
    """Read the output folder of ``job`` and render its QC report as one self-contained HTML page;
    ``page`` is the page's file name without suffix (the tables beside it are named after it).

    The page stays small whatever the cohort size: lists are capped (``max_outliers``, first 500
    flagged scans and failures), previews are capped in number and bytes, figures draw a subset
    of points; the full outlier lists are returned in :attr:`ReportResult.beside`.

    Raises:
        FileNotFoundError: the output holds no published results (no scans and no failures).
        ValueError: ``options.contrast`` has no results there (names those that have).
    """
    outputs = Outputs.for_job(job)
    phenotypes = _phenotypes(job, outputs, outputs.base_model(job.base_model), options)  # first: its inputs freed
    try:
        data = read_output(outputs, job.base_model, None, options.contrast)
    except ValueError as err:
        if not outputs.store.list_files(outputs.table_uri("scans")) + outputs.store.list_files(
                outputs.table_uri("failures")):
            raise FileNotFoundError(_NOTHING.format(root=outputs.root)) from None
        raise ValueError(f"{outputs.root}: {err}") from None
    if data.scans.empty and data.failures.empty:
        raise FileNotFoundError(_NOTHING.format(root=outputs.root))
    structures, scans, contrast = data.structures, data.selected_scans, data.contrast
    label_map = _label_map(structures, job)
    colors = {c.name: c.rgb for c in label_colors(label_map)}
    located = S.outliers_with_rows(structures, options.z_threshold, options.min_scans)
    outliers = located.drop(columns="row")
    flags = S.scan_flags(scans)
    agreement = _agreement(outputs, options)

    keys = set(S.scan_keys(scans))
    agreement_keys = [k for k in agreement_outlier_keys(agreement) if k in keys] if agreement else []
    preview_keys = list(dict.fromkeys(S.scans_in_turns(outliers, options.max_outlier_previews)
                                      + agreement_keys[: options.max_outlier_previews]
                                      + S.sample_keys(keys, options.sample, options.seed)))
    rows = read_scan_rows(outputs, preview_keys, data.model, contrast)
    previews, errors, budget = {}, [], options.preview_budget_mb * 1e6
    for key in preview_keys:
        if budget <= 0:
            break
        t = time.perf_counter()
        try:
            if key not in rows:
                raise ValueError("its scans row could not be read back")
            previews[key] = _preview(job, outputs, rows[key], label_map, options)
            budget -= sum(len(p.png) for p in previews[key][:2]) * 4 / 3  # base64
        except (ScanError, OSError, ValueError) as err:
            errors.append(f"{key[0]}/{key[1]}: {err}")
            previews[key] = err
            log.warning("no preview for %s/%s: %s", key[0], key[1], err)
        log.debug("preview %s/%s in %.1f s", key[0], key[1], time.perf_counter() - t)

    beside = {beside_name(page, "outliers"): outliers}
    phenotype_outliers = outlier_rows(phenotypes) if phenotypes is not None and options.covariates else None
    if phenotype_outliers is not None:
        beside[beside_name(page, "phenotype_outliers")] = phenotype_outliers
    body = [
        _overview(job, data, scans, outliers, flags, contrast, phenotypes),
        _metadata_section(job, data, scans),
        _qc_section(scans, structures, flags, previews),
        _vessel_section(structures),
        _distribution_section(structures, label_map, colors, located, options),
        _outlier_section(outliers, previews, options, beside_name(page, "outliers")),
        _phenotype_section(phenotypes, phenotype_outliers, previews, options, beside_name(page, "phenotype_outliers")),
        *([agreement_section(agreement, previews, anchor_for, options.seed, options.max_outliers)]
          if agreement else []),
        _failures_section(data),
        _preview_section(list(previews), previews, rows, outliers, flags, colors, label_map,
                         len(preview_keys) - len(previews), options),
    ]
    nav = [("overview", "Overview"), ("metadata", "Run metadata"), ("qc", "QC flags"), ("vessels", "Vessels"),
           ("distributions", "Distributions"), ("outliers", "Outliers"), ("phenotypes", "Phenotypes"),
           *([("agreement", "Agreement")] if agreement else []), ("failures", "Failures"), ("previews", "Previews")]
    subtitle = (f"Output {job.output.uri} | model {data.base_model}, contrast {contrast or '-'} | generated "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    html_page = h.page(f"mrseg-cohort QC report: {job.cohort.name}", subtitle, nav, body)
    n_previews = sum(isinstance(p, tuple) for p in previews.values())
    n_phenotype_outliers = int(phenotypes["n_outliers"].sum()) if phenotypes is not None and \
        "n_outliers" in phenotypes else None
    return ReportResult(html_page, len(scans), len(outliers), n_previews, errors, n_phenotype_outliers,
                        len(agreement.outside_loa) if agreement else None, beside)


_NOTHING = ("no published results under {root} yet; run the job first, or give the output folder of a run "
            "(--output)")


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
                     over_budget: int, options: ReportOptions) -> str:
    parts = [h.paragraph(
        f"{options.sample} scans drawn at random (seed {options.seed}) and outlier scans (at most "
        f"{options.max_outlier_previews}: the scan of each structure's most extreme value first, then the next ones). "
        "Coronal slice: the participant's head up and the participant's "
        "right on the image left (radiological convention); axial slice: anterior up, the participant's right on "
        "the image left. Slices are those showing the most structures. Labels are drawn at 50 % opacity in the "
        "colours of the colour tables written beside the labels.")]
    if over_budget:
        parts.append(h.paragraph(f"{over_budget} more scans chosen for a preview have none: the previews reached "
                                 f"the page's budget of {options.preview_budget_mb:g} MB (--preview-budget-mb)."))
    flag_by_key = {(r["participant_id"], r["visit"]): [n for n, _, _ in S.SCAN_FLAGS if r[n]]
                   for r in S.rows_of_scans(flags, keys).to_dict("records")}
    hits_by_key = {k: g for k, g in S.rows_of_scans(outliers, keys).groupby(["participant_id", "visit"], sort=False)}
    for key in keys:
        result, row = previews[key], rows.get(key, {})
        title = f"Participant {key[0]}, visit {key[1]}"
        if not isinstance(result, tuple):
            parts.append(f'<figure class="preview" id="{h.esc(anchor_for(key))}"><figcaption><b>{h.esc(title)}</b>: '
                         f"no preview: {h.esc(result)}</figcaption></figure>")
            continue
        coronal, axial, origin = result
        shown = sorted(set(coronal.labels_shown) | set(axial.labels_shown))
        hits = hits_by_key.get(key, outliers.iloc[:0])
        notes = [f"{r.structure} {S.OUTLIER_MEASURES.get(r.measure, r.measure)} {h.fmt(r.value)} (z {r.z:+.1f})"
                 for r in hits.head(20).itertuples()]
        if len(hits) > 20:
            notes.append(f"{len(hits) - 20} more")
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
            for r in data.runs[-MAX_RUNS:]]
    latest = data.runs[-1].get("config") if data.runs and isinstance(data.runs[-1].get("config"), dict) else None
    config, origin = (latest, "recorded by the latest run") if latest else \
        (job.model_dump(mode="json"), "given to the report (no run record found)")
    config_text = yaml.safe_dump(S.redact(config), sort_keys=False, default_flow_style=False, width=110)
    return h.section(
        "metadata", "Run metadata",
        "<h3>Models and software (from tables/scans)</h3>",
        h.table(["model", "weights sha256", "folds", "mrseg-cohort", "nnunetv2", "torch", "device", "scans"],
                versions.itertuples(index=False), numeric=[7]),
        f"<h3>Runs (from _work/runs{_runs_shown(len(data.runs))})</h3>",
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
                          located: pd.DataFrame, options: ReportOptions) -> str:
    """``located``: :func:`~mrseg_cohort.report.summaries.outliers_with_rows` of ``structures``."""
    order = list(label_map.names.values())
    parts = [h.paragraph(
        f"Boxes: quartiles and median over the scans where the structure is present; whiskers 1.5 IQR; points: "
        f"scans, at most 2000 per structure drawn at random (red: outliers with |robust z| > "
        f"{options.z_threshold:g}, the most extreme 2000 per structure). Volumes on a logarithmic axis. Fat "
        "fraction is the signal fat fraction (not PDFF).")]
    present = structures[structures["n_voxels"].fillna(0) > 0]
    for measure, label, log_scale in (("volume_ml", "volume (mL)", True),
                                      ("ff_median_pct", "fat fraction, median (%)", False)):
        flagged = present.index.isin(located.loc[located["measure"] == measure, "row"].to_numpy())
        png = distribution_png(present, measure, label, order, colors, flagged, log_scale, seed=options.seed)
        parts.append(h.png_img(png, f"distribution of {label} per structure", {"class": "distribution"})
                     if png else h.paragraph(f"No {label} values."))
    return h.section("distributions", "Distributions", *parts)


def _outlier_section(outliers: pd.DataFrame, previews: dict, options: ReportOptions, full_list: str) -> str:
    shown = S.round_robin(outliers, options.max_outliers)
    rows = []
    for r in shown.itertuples():
        key = (r.participant_id, r.visit)
        link = f"#{anchor_for(key)}" if isinstance(previews.get(key), tuple) else None
        rows.append([h.Cell(r.participant_id, link, "outlier"), r.visit, r.structure,
                     S.OUTLIER_MEASURES.get(r.measure, r.measure), r.value, r.median, round(float(r.z), 2),
                     h.Cell("preview", link) if link else "no preview"])
    counts = S.outliers_per_structure(outliers)
    listed = (f"All {len(outliers)} are listed below, largest |z| first; the list is also in "
              if len(shown) == len(outliers) else
              f"{len(shown)} of the {len(outliers)} are listed below, largest |z| first, taken in turns across "
              "structures and measures (each one's most extreme values first); all of them are in ")
    return h.section(
        "outliers", f"Outliers ({len(outliers)})",
        h.paragraph(f"Robust z-score z = (x - median) / (1.4826 MAD) per structure and measure over the scans where "
                    f"the structure is present (MAD = median absolute deviation; Iglewicz and Hoaglin, 1993); "
                    f"|z| > {options.z_threshold:g} is an outlier. Structures present in fewer than "
                    f"{options.min_scans} scans are not assessed."),
        h.paragraph_with_link(listed, full_list, " (Parquet, beside this page)."),
        "<h3>Per structure and measure</h3>",
        h.table(["structure", "measure", "outliers", "largest |z|"],
                [[r.structure, S.OUTLIER_MEASURES.get(r.measure, r.measure), r.outliers, round(float(r.max_abs_z), 2)]
                 for r in counts.itertuples()], numeric=[2, 3]),
        "<h3>Outlier values</h3>",
        h.table(["participant", "visit", "structure", "measure", "value", "cohort median", "robust z", "preview"],
                rows, numeric=[4, 5, 6]))


def _phenotypes(job: JobConfig, outputs: Outputs, base_model: str, options: ReportOptions) -> pd.DataFrame | None:
    """The phenotype table as ``tables phenotypes`` makes it (with covariate columns when
    ``options.covariates``), None without base-model rows."""
    inputs = read_phenotype_inputs(outputs)
    if inputs is None or not (inputs[0]["model"] == base_model).any():
        return None
    table = phenotype_table(*inputs, base_model, options.contrast)
    del inputs
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


def _phenotype_section(table: pd.DataFrame | None, outliers: pd.DataFrame | None, previews: dict,
                       options: ReportOptions, full_list: str) -> str:
    """``outliers``: :func:`~mrseg_cohort.phenotypes.normative.outlier_rows` of ``table`` (with covariates)."""
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
    if assessed and outliers is not None:
        rows = []
        shown = S.round_robin(outliers, options.max_outliers, by=("phenotype",))
        for r in shown.itertuples():
            key = (r.participant_id, r.visit)
            link = f"#{anchor_for(key)}" if isinstance(previews.get(key), tuple) else None
            rows.append([h.Cell(r.participant_id, link, "outlier"), r.visit, r.sex, r.age_band, r.phenotype, r.value,
                         r.stratum_median, round(float(r.z), 2)])
        listed = (f"All {len(outliers)} are listed, largest |z| first; also in " if len(shown) == len(outliers) else
                  f"{len(shown)} of the {len(outliers)} are listed, largest |z| first, taken in turns across "
                  "phenotypes; all of them are in ")
        parts += [f"<h3>Phenotype outliers ({len(outliers)})</h3>",
                  h.paragraph_with_link(listed, full_list, " (Parquet, beside this page)."),
                  h.table(["participant", "visit", "sex", "age band", "phenotype", "value", "stratum median",
                           "robust z"], rows, numeric=[5, 6, 7])]
    return h.section("phenotypes", "Phenotypes", *parts)


def _failures_section(data: OutputData) -> str:
    failures = S.failures_with_status(data.failures, data.scans)
    shown = failures.head(MAX_FAILURES)
    rows = [[r["participant_id"], r["visit"], r["stage"], r["error_type"], _cut(r["message"]), r["uri"], r["attempt"],
             _when(r["time"]), r["run_id"], "yes" if r["resolved"] else "no"] for r in shown.to_dict("records")]
    return h.section(
        "failures", f"Failures ({len(failures)})",
        h.paragraph("One row per failed attempt (tables/failures), newest first; resolved = the scan was committed by "
                    "a later run. Re-running the job retries unresolved scans."
                    + (f" First {MAX_FAILURES} shown." if len(failures) > MAX_FAILURES else "")),
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


def _runs_shown(runs: int) -> str:
    return f"; the latest {MAX_RUNS} of {runs}" if runs > MAX_RUNS else ""


def _cut(text: object, limit: int = MAX_MESSAGE) -> object:
    """``text`` cut to ``limit`` characters (marked with an ellipsis)."""
    return text[: limit - 1] + "…" if isinstance(text, str) and len(text) > limit else text


def _when(value: object) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, (int, float)):
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(value))
    try:
        return pd.Timestamp(value).strftime("%Y-%m-%d %H:%M:%S")
    except (ValueError, TypeError):
        return str(value)

"""The report's Agreement section: the tables ``mrseg-cohort agreement`` wrote, drawn and linked.

Per pair a scatter plot with the identity line and a Bland-Altman plot
(:mod:`~mrseg_cohort.report.agreement_figures`), the summary (stratum ``all``) and the strata, how the
reference's definitions differ from ours, and the participants outside the limits of agreement linked
to their previews. Reading is :func:`mrseg_cohort.agreement.files.read_agreement`'s.
"""

from __future__ import annotations

import math
from typing import Callable

import pandas as pd

from mrseg_cohort.agreement.files import AgreementFiles
from mrseg_cohort.report import html as h
from mrseg_cohort.report.agreement_figures import agreement_png

Key = tuple[str, str]
ANCHOR = "agreement"
TITLE = "Agreement"


def outlier_keys(files: AgreementFiles) -> list[Key]:
    """Participant x visits with a pair outside the limits, largest |z| first (each once)."""
    table = files.outside_loa
    return list(dict.fromkeys(zip(table["participant_id"].astype(str), table["visit"].astype(str))))


def agreement_section(files: AgreementFiles, previews: dict, anchor_for: Callable[[Key], str], seed: int = 0,
                      max_rows: int | None = None) -> str:
    """The section's HTML; ``previews`` maps a key to its rendered preview (a tuple) or an error;
    ``max_rows``: pairs outside the limits listed at most (the largest |z| first; all are in the
    agreement's own ``_outside_loa`` table)."""
    summary = files.summary
    overall = summary[summary["stratum"] == "all"]
    parts = [h.paragraph(
        f"Our phenotypes against the reference of {files.uri} (mrseg-cohort agreement; docs/agreement.md). "
        "Difference = ours - reference, in our unit. Bland-Altman (1999): bias with its 95 % CI, 95 % limits of "
        "agreement = bias ± 1.96 SD of the differences with their CIs (shaded). ICC(A,1) absolute agreement and "
        "ICC(C,1) consistency (McGraw & Wong 1996), Lin's CCC, Pearson r, Spearman rho; lines of ours on the "
        "reference by least squares and Deming regression. Red points: outside the limits of agreement.")]
    parts.append(h.table(
        ["pair", "unit", "paired", "excluded (ours missing / QC, ref. missing / error / QC)", "not processed",
         "bias [95 % CI]", "SD", "limits of agreement [CIs]", "prop. bias slope (p)", "ICC(A,1) [CI]",
         "ICC(C,1) [CI]", "CCC", "r", "rho", "Deming", "outside", "note"],
        [_summary_row(r) for r in overall.to_dict("records")], numeric=[2, 4, 6, 11, 12, 13, 15]))
    for record in overall.to_dict("records"):
        rows = files.values[(files.values["phenotype"] == record["phenotype"])
                            & (files.values["reference_column"].astype(str) == str(record["reference_column"]))]
        png = agreement_png(rows, record, seed=seed)
        parts.append(f"<h3>{h.esc(record['pair'])}: {h.esc(record.get('title') or '')}</h3>")
        parts.append(h.png_img(png, f"agreement plots of {record['pair']}", {"class": "agreement"}) if png
                     else h.paragraph("No paired values."))
        if record.get("differs"):
            parts.append(h.paragraph(f"How the definitions differ: {record['differs']}"))
    strata = summary[summary["stratum"] != "all"]
    if len(strata):
        parts += ["<h3>By stratum</h3>", h.table(
            ["pair", "stratum", "value", "paired", "bias [95 % CI]", "limits of agreement", "ICC(A,1)", "CCC", "r"],
            [[r["pair"], r["stratum"], r["stratum_value"], _int(r["n_paired"]), _ci(r, "bias"),
              _limits(r), _num(r["icc_a1"]), _num(r["ccc"]), _num(r["pearson_r"])] for r in strata.to_dict("records")],
            numeric=[3, 6, 7, 8])]
    outside = files.outside_loa
    rows = []
    listed = outside if max_rows is None else outside.head(max_rows)
    for r in listed.to_dict("records"):
        key = (str(r["participant_id"]), str(r["visit"]))
        link = f"#{anchor_for(key)}" if isinstance(previews.get(key), tuple) else None
        rows.append([h.Cell(key[0], link, "outlier"), key[1], r["pair"], _num(r["ours"]), _num(r["reference"]),
                     _num(r["difference"]), _num(r["z"], 2), h.Cell("preview", link) if link else "no preview"])
    parts += [f"<h3>Outside the limits of agreement ({len(outside)})</h3>",
              h.paragraph("Pairs whose difference lies outside the limits of agreement of their pair (all strata "
                          "together); z = (difference - bias) / SD of the differences, largest |z| first."
                          + (f" The first {len(listed)} are listed; all are in the agreement's _outside_loa table "
                             "beside its summary." if len(listed) < len(outside) else "")),
              h.table(["participant", "visit", "pair", "ours", "reference", "difference", "z", "preview"], rows,
                      numeric=[3, 4, 5, 6])]
    return h.section(ANCHOR, TITLE, *parts)


def _num(value: object, digits: int = 3) -> str:
    if value is None or value is pd.NA:
        return ""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "" if math.isnan(number) else h.fmt(number, digits)


def _int(value: object) -> str:
    return "" if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)) \
        else str(int(value))


def _ci(r: dict, key: str) -> str:
    value = _num(r.get(key))
    lower, upper = _num(r.get(f"{key}_ci_lower")), _num(r.get(f"{key}_ci_upper"))
    return f"{value} [{lower}, {upper}]" if value and lower else value


def _limits(r: dict) -> str:
    lower, upper = _num(r.get("loa_lower")), _num(r.get("loa_upper"))
    return f"{lower} to {upper}" if lower else ""


def _summary_row(r: dict) -> list:
    excluded = " / ".join(_int(r[f"n_{s}"]) for s in ("missing_ours", "qc_ours", "missing_reference",
                                                       "reference_error", "qc_reference"))
    limits = ""
    if _num(r["loa_lower"]):
        limits = (f"{_num(r['loa_lower'])} [{_num(r['loa_lower_ci_lower'])}, {_num(r['loa_lower_ci_upper'])}] to "
                  f"{_num(r['loa_upper'])} [{_num(r['loa_upper_ci_lower'])}, {_num(r['loa_upper_ci_upper'])}]")
    slope = _num(r["prop_bias_slope"])
    slope = f"{slope} ({_num(r['prop_bias_p'], 2)})" if slope and _num(r["prop_bias_p"]) else slope
    deming = f"{_num(r['deming_intercept'])} + {_num(r['deming_slope'])} x" if _num(r["deming_slope"]) else ""
    return [r["pair"], r["unit"], _int(r["n_paired"]), excluded, _int(r["n_not_processed"]), _ci(r, "bias"),
            _num(r["sd_diff"]), limits, slope, _ci(r, "icc_a1"), _ci(r, "icc_c1"), _num(r["ccc"]),
            _num(r["pearson_r"]), _num(r["spearman_rho"]), deming, _int(r["n_outside_loa"]), r.get("note") or ""]

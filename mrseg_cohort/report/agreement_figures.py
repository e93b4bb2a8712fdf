"""The agreement plots of one pair: ours against the reference with the identity line, and the
Bland-Altman plot (difference against mean, with the bias and the limits of agreement and their CIs).

Pure: the pair's rows of the agreement ``values`` table and its ``summary`` row in, PNG bytes out
(matplotlib's object API on the Agg canvas, as :mod:`mrseg_cohort.report.figures`).
"""

from __future__ import annotations

import io
import math

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mrseg_cohort.report.figures import OUTLIER_COLOR

POINT_COLOR = "#1f4e79"
LINE_COLOR = "#333333"
DEMING_COLOR = "#2e7d32"
LIMIT_COLOR = "#b26a00"


def agreement_png(values: pd.DataFrame, summary: dict, max_points: int = 4000, seed: int = 0) -> bytes | None:
    """Scatter plot (left) and Bland-Altman plot (right) of one pair.

    Args:
        values: the pair's rows of the ``values`` table (``status`` paired are drawn; ``outside_loa`` red).
        summary: the pair's ``all`` row of the summary (bias, limits, their CIs, the regression lines).
        max_points: at most this many points (a reproducible random subset; outliers always drawn).

    Returns:
        PNG bytes, or None when the pair has no paired value.
    """
    paired = values[values["status"] == "paired"]
    if paired.empty:
        return None
    x = paired["reference"].to_numpy(dtype=float)
    y = paired["ours"].to_numpy(dtype=float)
    red = paired["outside_loa"].to_numpy(dtype=bool)
    shown = np.flatnonzero(~red)
    if shown.size > max_points:
        shown = np.sort(np.random.default_rng(seed).choice(shown, max_points, replace=False))
    hit = np.flatnonzero(red)
    unit = summary.get("unit") or ""
    unit_text = "" if unit == "1" else f" ({unit})"

    fig = Figure(figsize=(10.0, 4.0), dpi=90)
    FigureCanvasAgg(fig)
    scatter, bland = fig.subplots(1, 2)
    low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    pad = (high - low) * 0.05 or max(abs(high), 1.0) * 0.05
    span = np.array([low - pad, high + pad])
    scatter.plot(span, span, color=LINE_COLOR, linestyle="--", linewidth=1, label="identity")
    for key, color, name in (("ols", "#888888", "least squares"), ("deming", DEMING_COLOR, "Deming")):
        slope, intercept = summary.get(f"{key}_slope"), summary.get(f"{key}_intercept")
        if _finite(slope, intercept):
            scatter.plot(span, intercept + slope * span, color=color, linewidth=1.2, label=name)
    scatter.scatter(x[shown], y[shown], s=10, color=POINT_COLOR, alpha=0.55, linewidths=0, zorder=3)
    if hit.size:
        scatter.scatter(x[hit], y[hit], s=26, color=OUTLIER_COLOR, edgecolors="black", linewidths=0.5, zorder=4,
                        label="outside the limits")
    scatter.set_xlim(*span)
    scatter.set_ylim(*span)
    scatter.set_xlabel(f"reference{unit_text}")
    scatter.set_ylabel(f"ours{unit_text}")
    scatter.legend(fontsize=7, loc="upper left")
    scatter.set_title(f"ours against reference, n = {paired.shape[0]}", fontsize=9)

    mean = (x + y) / 2
    difference = y - x
    bias = summary.get("bias")
    for key, label in (("bias", "bias"), ("loa_lower", "lower limit"), ("loa_upper", "upper limit")):
        value = summary.get(key)
        lower = summary.get(f"{key}_ci_lower")
        upper = summary.get(f"{key}_ci_upper")
        if not _finite(value):
            continue
        color = LINE_COLOR if key == "bias" else LIMIT_COLOR
        bland.axhline(value, color=color, linestyle="-" if key == "bias" else "--", linewidth=1.2)
        if _finite(lower, upper) and upper > lower:
            bland.axhspan(lower, upper, color=color, alpha=0.12, linewidth=0)
        bland.annotate(f"{label} {value:.3g}", xy=(1.0, value), xycoords=("axes fraction", "data"), fontsize=7,
                       ha="right", va="bottom", color=color)
    bland.axhline(0, color="#bbbbbb", linewidth=0.8, zorder=1)
    bland.scatter(mean[shown], difference[shown], s=10, color=POINT_COLOR, alpha=0.55, linewidths=0, zorder=3)
    if hit.size:
        bland.scatter(mean[hit], difference[hit], s=26, color=OUTLIER_COLOR, edgecolors="black", linewidths=0.5,
                      zorder=4)
    bland.set_xlabel(f"mean of ours and reference{unit_text}")
    bland.set_ylabel(f"ours - reference{unit_text}")
    title = "Bland-Altman"
    if _finite(bias):
        title += f": bias {bias:.3g}, 95 % limits {summary['loa_lower']:.3g} to {summary['loa_upper']:.3g}"
    bland.set_title(title, fontsize=9)
    for ax in (scatter, bland):
        ax.grid(color="#e5e5e5", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.tick_params(labelsize=8)
    fig.suptitle(str(summary.get("pair", "")), fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _finite(*values: object) -> bool:
    return all(isinstance(v, (int, float, np.floating)) and math.isfinite(float(v)) for v in values)

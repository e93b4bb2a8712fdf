"""Report figures: per-structure distributions as box plots with the scans drawn as points.

Pure: frames in, PNG bytes out. Figures are made with matplotlib's object API on the Agg canvas
(no pyplot state, no display needed), so they can be drawn in any thread or worker.
"""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

RGB = tuple[int, int, int]
OUTLIER_COLOR = "#d62728"
_HORIZONTAL = ({"orientation": "horizontal"}
               if tuple(int(p) for p in matplotlib.__version__.split(".")[:2]) >= (3, 10) else {"vert": False})


def distribution_png(values: pd.DataFrame, measure: str, label: str, order: list[str],
                     colors: dict[str, RGB], flagged: np.ndarray | None = None, log_scale: bool = False,
                     max_points: int = 2000, seed: int = 0) -> bytes | None:
    """Horizontal box plot per structure of ``values[measure]``, with a strip of the scans' values.

    Args:
        values: rows with ``structure``, ``participant_id``, ``visit`` and ``measure`` (NaN left out).
        measure: the column to plot; ``label`` its axis label (with unit).
        order: structures top to bottom (those without values are left out).
        colors: structure -> RGB of its box (the colour table's colour).
        flagged: per row of ``values``, whether it is an outlier (drawn in red on top).
        log_scale: logarithmic value axis (volumes span 1 to 2000 mL); non-positive values left out.
        max_points: at most this many points per structure are drawn (a reproducible random subset),
            and at most this many outliers (those furthest from the structure's median); the boxes
            use every value.

    Returns:
        PNG bytes, or None when no structure has a value.
    """
    x_all = pd.to_numeric(values[measure], errors="coerce").to_numpy(dtype=np.float64)
    keep = np.isfinite(x_all) & (x_all > 0) if log_scale else np.isfinite(x_all)
    red_all = np.zeros(len(values), dtype=bool) if flagged is None else np.asarray(flagged, dtype=bool)
    code, names = pd.factorize(values["structure"])
    kept = np.flatnonzero(keep & (code >= 0))
    kept = kept[np.argsort(code[kept], kind="stable")]  # grouped by structure, rows in their order
    bounds = np.searchsorted(code[kept], np.arange(len(names) + 1))
    by_structure = {str(names[c]): kept[bounds[c]:bounds[c + 1]] for c in range(len(names))
                    if bounds[c + 1] > bounds[c]}
    shown = [name for name in order if name in by_structure]
    if not shown:
        return None

    fig = Figure(figsize=(8.0, 1.2 + 0.26 * len(shown)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    rng = np.random.default_rng(seed)
    positions = np.arange(len(shown))[::-1]  # first structure at the top
    series = [x_all[by_structure[name]] for name in shown]
    boxes = ax.boxplot(series, positions=positions, widths=0.6, patch_artist=True,
                       showfliers=False, medianprops={"color": "black", "linewidth": 1.2}, **_HORIZONTAL)
    for patch, name in zip(boxes["boxes"], shown):
        r, g, b = colors.get(name, (160, 160, 160))
        patch.set_facecolor((r / 255, g / 255, b / 255, 0.75))
        patch.set_edgecolor("#444444")
    for pos, name, x in zip(positions, shown, series):
        is_outlier = red_all[by_structure[name]]
        normal = np.flatnonzero(~is_outlier)
        if normal.size > max_points:
            normal = rng.choice(normal, max_points, replace=False)
        jitter = rng.uniform(-0.18, 0.18, size=x.size)
        ax.scatter(x[normal], pos + jitter[normal], s=6, color="#333333", alpha=0.45, linewidths=0, zorder=3)
        red_rows = np.flatnonzero(is_outlier)
        if red_rows.size > max_points:  # the most extreme
            red_rows = red_rows[np.argsort(-np.abs(x[red_rows] - np.median(x)), kind="stable")[:max_points]]
        if red_rows.size:
            ax.scatter(x[red_rows], pos + jitter[red_rows], s=22, color=OUTLIER_COLOR, edgecolors="black",
                       linewidths=0.5, zorder=4)
    ax.set_yticks(positions, [name.replace("_", " ") for name in shown], fontsize=8)
    ax.set_ylim(-0.7, len(shown) - 0.3)
    if log_scale:
        ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.grid(axis="x", color="#dddddd", linewidth=0.6)
    ax.set_axisbelow(True)
    n_scans = _distinct_scans(values, np.concatenate([by_structure[name] for name in shown]))
    ax.set_title(f"{label}: {n_scans} scans (red: outliers, |robust z| > threshold)", fontsize=10)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()


def _distinct_scans(values: pd.DataFrame, rows: np.ndarray) -> int:
    """Number of distinct (participant_id, visit) among the rows ``rows`` (positions) of ``values``."""
    if not len(rows):
        return 0
    pid, _ = pd.factorize(values["participant_id"])
    visit, visits = pd.factorize(values["visit"])
    return int(np.count_nonzero(np.bincount(pid[rows].astype(np.int64) * len(visits) + visit[rows])))


SEX_GROUPS = (("female", "#c2185b"), ("male", "#1565c0"), (None, "#9e9e9e"))
"""Sex groups of the phenotype panels (None: sex unknown), with their box colours."""


def phenotype_panels_png(table: pd.DataFrame, names: list[str], labels: dict[str, str] | None = None,
                         outliers: dict[str, np.ndarray] | None = None, columns: int = 5,
                         max_points: int = 1000, seed: int = 0) -> bytes | None:
    """One small panel per phenotype: a horizontal box per sex (female, male, unknown) with the rows'
    values as points, outliers in red.

    Args:
        table: rows with ``sex`` (female, male or None) and a column per name in ``names``.
        labels: panel titles (default: the column names).
        outliers: name -> bool array over ``table``'s rows, drawn in red.
        max_points: at most this many points per box (a reproducible random subset; outliers always
            drawn); the boxes use every value.

    Returns:
        PNG bytes, or None when no phenotype has a finite value.
    """
    shown = [n for n in names if np.isfinite(table[n].to_numpy(dtype=float)).any()]
    if not shown:
        return None
    rows = -(-len(shown) // columns)
    fig = Figure(figsize=(2.7 * columns, 1.55 * rows + 0.3), dpi=90)
    FigureCanvasAgg(fig)
    rng = np.random.default_rng(seed)
    sex = table["sex"] if "sex" in table else pd.Series(None, index=table.index, dtype=object)
    members = {group: (sex == group).to_numpy(dtype=bool) if group else ~sex.isin(["female", "male"]).to_numpy()
               for group, _ in SEX_GROUPS}
    for k, name in enumerate(shown):
        ax = fig.add_subplot(rows, columns, k + 1)
        x = table[name].to_numpy(dtype=float)
        flagged = outliers.get(name) if outliers else None
        ticks = []
        for group, color in SEX_GROUPS:
            use = members[group] & np.isfinite(x)
            if not use.any():
                continue
            pos = -len(ticks)
            ticks.append((pos, f"{group or 'unknown'} ({int(use.sum())})"))
            box = ax.boxplot([x[use]], positions=[pos], widths=0.6, patch_artist=True, showfliers=False,
                             medianprops={"color": "black"}, **_HORIZONTAL)
            box["boxes"][0].set_facecolor(color + "99")
            values = x[use]
            red = flagged[use] if flagged is not None else np.zeros(values.size, dtype=bool)
            jitter = rng.uniform(-0.2, 0.2, size=values.size)
            normal = np.flatnonzero(~red)
            if normal.size > max_points:
                normal = rng.choice(normal, max_points, replace=False)
            ax.scatter(values[normal], pos + jitter[normal], s=5, color="#333333", alpha=0.5, linewidths=0, zorder=3)
            if red.any():
                ax.scatter(values[red], pos + jitter[red], s=20, color=OUTLIER_COLOR, edgecolors="black",
                           linewidths=0.5, zorder=4)
        ax.set_yticks([t for t, _ in ticks], [label for _, label in ticks], fontsize=7)
        ax.set_ylim(-len(ticks) + 0.4, 0.6)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title((labels or {}).get(name, name), fontsize=8)
        ax.grid(axis="x", color="#dddddd", linewidth=0.5)
        ax.set_axisbelow(True)
    fig.subplots_adjust(left=0.075, right=0.99, bottom=0.2 / rows, top=1 - 0.25 / rows, wspace=0.7, hspace=0.55)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return buffer.getvalue()

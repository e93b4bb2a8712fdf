"""The QC report: one self-contained HTML page per output folder (``mrseg-cohort report``).

Modules: ``data`` reads the tables and run records, ``summaries`` computes outliers, flag counts,
vessel consistency and metadata, ``figures`` draws distributions, ``images`` fetches a scan's image
and labels, ``previews`` renders overlay slices, ``html`` renders the page, ``build`` assembles it.
"""

from mrseg_cohort.report.build import ReportOptions, ReportResult, anchor_for, build_report, write_report

__all__ = ["ReportOptions", "ReportResult", "anchor_for", "build_report", "write_report"]

"""The ``mrseg-cohort`` command line: a thin typer layer over the library.

Each command lives in its own module under ``mrseg_cohort.cli`` and is registered here. Commands
parse arguments, load the config, call one library function and show progress; heavy imports
(torch, ray) happen inside the commands so that ``--help`` is instant.
"""

from __future__ import annotations

import typer

from mrseg_cohort.cli._common import OneLineUsageErrors

app = typer.Typer(cls=OneLineUsageErrors, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="Run MRSegmentator over whole cohorts of whole-body MRI and tabulate the results.")


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    json_logs: bool = typer.Option(False, "--json-logs", help="One JSON object per log line."),
) -> None:
    """mrseg-cohort: MRSegmentator over whole cohorts."""
    from mrseg_cohort.cli._common import setup_logging

    setup_logging(verbose, json_logs)


def _register() -> None:
    from mrseg_cohort.cli import phantom, run, state, tables  # noqa: F401  (each module adds its commands to `app`)
    from mrseg_cohort.cli import measure  # noqa: F401
    from mrseg_cohort.cli import evaluate  # noqa: F401
    from mrseg_cohort.cli import report  # noqa: F401
    from mrseg_cohort.cli import weights  # noqa: F401
    from mrseg_cohort.cli import agreement  # noqa: F401


_register()

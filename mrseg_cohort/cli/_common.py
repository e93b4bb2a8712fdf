"""What every command shares: logging set-up and turning our errors into one line + exit code."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Iterator

import typer

from mrseg_cohort.errors import ConfigError, ScanError, StorageError

EXIT_USAGE = 2


def setup_logging(verbose: bool = False, json_logs: bool = False) -> None:
    """Human-readable logs on stderr (or one JSON object per line with ``json_logs``)."""
    from mrseg_cohort.logs import configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO, json_logs)


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Show expected errors as one line on stderr and exit 2 (no traceback)."""
    try:
        yield
    except (ConfigError, ScanError, StorageError, FileNotFoundError, PermissionError,
            NotADirectoryError, IsADirectoryError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_USAGE) from None


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(EXIT_USAGE)

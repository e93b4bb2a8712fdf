"""What every command shares: logging set-up, exit statuses, and our errors as one line + exit code."""

from __future__ import annotations

import contextlib
import logging
import shlex
from enum import IntEnum
from typing import Iterator, NoReturn

import typer
from typer.core import TyperGroup

from mrseg_cohort.errors import ConfigError, ScanError, StorageError
from mrseg_cohort.redact import mask_url_credentials

try:  # typer from 0.2x carries its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError


class ExitStatus(IntEnum):
    """The exit statuses of every command; their wording is :data:`EXIT_MEANINGS`."""

    DONE = 0
    SOME_FAILED = 1
    CANNOT_START = 2
    INTERRUPTED = 130
    """SIGINT (Ctrl-C): 128 + 2, as shells report it."""
    TERMINATED = 143
    """SIGTERM (``kill``, ``ray job stop``, a deleted KubeRay RayJob): 128 + 15."""


EXIT_MEANINGS: dict[ExitStatus, str] = {
    ExitStatus.DONE: "done",
    ExitStatus.SOME_FAILED: "some {items} failed, the others are done ({where})",
    ExitStatus.CANNOT_START: "a bad call, config, input or output: one line on stderr says what is wrong",
    ExitStatus.INTERRUPTED: "stopped by SIGINT (finished scans are published; the same command resumes)",
    ExitStatus.TERMINATED: "stopped by SIGTERM (likewise)",
}
"""What each status means, worded once for ``--help`` and the README (``{items}``, ``{where}``: see
:data:`PARTIAL_FAILURES`). A new status is one more member and one more line here."""

PARTIAL_FAILURES: dict[str, tuple[str, str]] = {
    "run": ("scans", "listed in tables/failures; the same command retries them"),
    "evaluate": ("pairs", "listed in pairs.parquet"),
    "weights list": ("weights folders", "those whose files no longer match their fetch record are named"),
}
"""Commands that can end with some items failed: what the items are and where they are listed."""


INTERRUPTIBLE = ("run",)
"""Commands that stop cleanly on SIGINT/SIGTERM with their own exit statuses."""

SIGNAL_EXIT = {"SIGINT": ExitStatus.INTERRUPTED, "SIGTERM": ExitStatus.TERMINATED}
"""Exit status of a run the named signal stopped."""


def exit_statuses(command: str) -> str:
    """The exit statuses of ``command`` in one sentence, as its ``--help`` and the README give them."""
    parts = []
    for status, meaning in EXIT_MEANINGS.items():
        if status in SIGNAL_EXIT.values() and command not in INTERRUPTIBLE:
            continue
        if status == ExitStatus.SOME_FAILED:
            if command not in PARTIAL_FAILURES:
                continue
            items, where = PARTIAL_FAILURES[command]
            meaning = meaning.format(items=items, where=where)
        parts.append(f"{int(status)} {meaning}")
    return "Exit status: " + "; ".join(parts) + "."


def shell_command(*words: str) -> str:
    """A command line to copy and paste: every word quoted for a POSIX shell where it needs it."""
    return " ".join(shlex.quote(str(w)) for w in words)


def setup_logging(verbose: bool = False, json_logs: bool = False) -> None:
    """Human-readable logs on stderr (or one JSON object per line with ``json_logs``)."""
    from mrseg_cohort.logs import configure_logging

    configure_logging(logging.DEBUG if verbose else logging.INFO, json_logs)


def error_line(message: object) -> str:
    """``error: <message>`` on one line, with any URL credentials masked."""
    text = " ".join(line.strip() for line in str(message).strip().splitlines())
    return f"error: {mask_url_credentials(text)}"


@contextlib.contextmanager
def one_line_errors() -> Iterator[None]:
    """Show expected errors as one line on stderr and exit 2 (no traceback)."""
    try:
        yield
    except (ConfigError, ScanError, StorageError, OSError, ValueError) as err:
        typer.echo(error_line(err), err=True)
        raise typer.Exit(ExitStatus.CANNOT_START) from None


def fail(message: str) -> NoReturn:
    """Stop the command: ``message`` as one line on stderr, exit status 2."""
    typer.echo(error_line(message), err=True)
    raise typer.Exit(ExitStatus.CANNOT_START)


class OneLineUsageErrors(TyperGroup):
    """The command groups of ``mrseg-cohort`` (give every ``typer.Typer`` of the CLI ``cls=`` this):
    a wrong call (an unknown option or command, a missing argument, a value out of range, no command
    at all) is one line on stderr, ``error: ...`` naming the command, and exit status 2, instead of a
    boxed usage panel; the full help is ``--help``."""

    def parse_args(self, ctx, args):  # type: ignore[no-untyped-def]
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            raise UsageError("no command given", ctx)  # typer's NoArgsIsHelpError prints the help as it is made
        return super().parse_args(ctx, args)

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def]
        with _usage_errors_as_one_line():
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx):  # type: ignore[no-untyped-def]
        with _usage_errors_as_one_line():  # the sub-command's own arguments are parsed in here
            return super().invoke(ctx)


@contextlib.contextmanager
def _usage_errors_as_one_line() -> Iterator[None]:
    try:
        yield
    except UsageError as err:
        command = err.ctx.command_path if err.ctx is not None else "mrseg-cohort"
        what = "no command given" if isinstance(err, NoArgsIsHelpError) else err.format_message().rstrip(".")
        typer.echo(error_line(f"{command}: {what}; see {command} --help"), err=True)
        raise typer.Exit(ExitStatus.CANNOT_START) from None

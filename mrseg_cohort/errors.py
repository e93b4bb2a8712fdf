"""The project's exceptions: who, where, what, and what to do next.

Every class subclasses the builtin it refines and keeps all of its state in ``args``, so that Ray can
pickle an exception raised in a worker and rebuild it with ``cls(*args)`` in the driver.

- :class:`ConfigError` stops a job before any work (bad YAML, unknown key, missing bucket, bad model).
- :class:`ScanError` and subclasses concern one scan: they become a ``failures`` row and the job goes on.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A job cannot start: the message names the file or key and what to change."""


class ModelError(ConfigError):
    """A model folder cannot be used (missing files, label map mismatch, unknown trainer)."""


class StorageError(OSError):
    """An object store or file system operation failed after retries (names the URI)."""

    def __init__(self, message: str, uri: str = ""):
        super().__init__(message, uri)
        self.message, self.uri = message, uri

    def __str__(self) -> str:
        return f"{self.message} ({self.uri})" if self.uri else self.message


class ScanError(Exception):
    """One scan (participant x visit) cannot be processed; the job goes on with the others.

    Args:
        message: what was expected, what was found, and the next step, for a person to read.
        participant_id: the participant, as in the manifest ("" when not yet known).
        stage: pipeline stage ("read", "stitch", "segment", "measure", "write", ...).
        uri: the file or object concerned ("" when not one file).
    """

    def __init__(self, message: str, participant_id: str = "", stage: str = "", uri: str = ""):
        super().__init__(message, participant_id, stage, uri)
        self.message, self.participant_id, self.stage, self.uri = message, participant_id, stage, uri

    def __str__(self) -> str:
        who = f"{self.participant_id} " if self.participant_id else ""
        where = f"[{self.stage}] " if self.stage else ""
        what = f" ({self.uri})" if self.uri else ""
        return f"{who}{where}{self.message}{what}"

    def with_context(self, participant_id: str | None = None, stage: str | None = None,
                     uri: str | None = None) -> "ScanError":
        """A copy of this error with missing context filled in (existing values are kept)."""
        return type(self)(self.message, self.participant_id or participant_id or "",
                          self.stage or stage or "", self.uri or uri or "")


class BadScanError(ScanError, ValueError):
    """The input itself is wrong: not an image, wrong dimensions, NaN voxels, missing stations, ..."""


class StitchError(BadScanError):
    """Stations cannot be combined into one image (orientation disagrees, no overlap rule applies)."""


class ScanTooLargeError(BadScanError):
    """A file or image exceeds the configured limits (checked before allocating memory)."""


class SegmentationError(ScanError, RuntimeError):
    """The model failed on this scan (including out of memory for this one scan)."""

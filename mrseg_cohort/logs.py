"""Logging set-up: plain lines for people, JSON lines for log collectors (``--json-logs``); the
``user:password@`` of any URL in a line is masked (an endpoint URL in an error, say)."""

from __future__ import annotations

import json
import logging
import time

from mrseg_cohort.redact import mask_url_credentials


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and any ``extra`` fields."""

    _skip = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        out = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
               "level": record.levelname, "logger": record.name, "message": record.getMessage()}
        out.update({k: v for k, v in vars(record).items() if k not in self._skip})
        if record.exc_info:
            out["traceback"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class MaskingFormatter(logging.Formatter):
    """Another formatter's lines with URL credentials masked."""

    def __init__(self, inner: logging.Formatter):
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return mask_url_credentials(self.inner.format(record))


def configure_logging(level: int = logging.INFO, json_logs: bool = False) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(MaskingFormatter(
        JsonFormatter() if json_logs else
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("botocore", "aiobotocore", "s3fs", "fsspec", "urllib3", "matplotlib", "PIL", "numexpr"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

"""Credentials out of everything shown or stored: one definition used by errors, logs, run records
and the report.

- :func:`mask_url_credentials`: ``scheme://user:password@host`` -> ``scheme://***@host`` in any text;
- :func:`redact`: a JSON-like value with the values of credential-named keys replaced and every
  string's URL credentials masked.
"""

from __future__ import annotations

import re
from typing import Any

REDACTED = "***"
SECRET_KEYS = re.compile(r"(^|_)(key|secret|password|passwd|token|credentials?)$|^aws_", re.IGNORECASE)
"""Names of configuration keys whose values are credentials."""
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/@\s]+@", re.IGNORECASE)


def mask_url_credentials(text: str) -> str:
    """``text`` with the ``user:password@`` part of every URL in it replaced by ``***@``."""
    return _URL_USERINFO.sub(lambda m: m["scheme"] + REDACTED + "@", text)


def redact(value: Any) -> Any:
    """A copy of ``value`` (JSON-like) with credentials replaced by ``***``: values of keys named like
    key, secret, password, token or credentials, and user:password@ parts of URLs."""
    if isinstance(value, dict):
        return {k: REDACTED if SECRET_KEYS.search(str(k)) and v not in (None, "") else redact(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return mask_url_credentials(value)
    return value

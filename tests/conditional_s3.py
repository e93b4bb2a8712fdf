"""A tiny S3 endpoint on 127.0.0.1 that answers conditional PUTs (``If-None-Match: *``) as some real
servers do: ``501 NotImplemented`` (a server without conditional writes), or ``409
ConditionalRequestConflict`` once before answering normally (AWS, when two conditional writes meet).

It speaks just enough S3 for :class:`mrseg_cohort.io.storage.Store`'s exclusive create and delete:
PUT, HEAD, GET (object and ListObjectsV2), DELETE and DeleteObjects, kept in memory.
"""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse
from xml.sax.saxutils import escape

_ERROR = '<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'


class ConditionalS3:
    """``mode``: ``"501"`` or ``"409-once"``."""

    def __init__(self, mode: str):
        self.mode, self.objects, self.conflicts = mode, {}, 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # botocore sends "Expect: 100-continue" with a PUT's body

            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                if "Content-Length" not in (headers or {}):
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _error(self, status: int, code: str) -> None:
                self._answer(status, _ERROR.format(code=code, message=code).encode(),
                             {"Content-Type": "application/xml"})

            def _key(self) -> str:
                return urlparse(self.path).path.lstrip("/")

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self._key()
                if self.headers.get("If-None-Match") == "*":
                    if outer.mode == "501":
                        return self._error(501, "NotImplemented")
                    if outer.mode == "409-once" and outer.conflicts == 0:
                        outer.conflicts += 1
                        return self._error(409, "ConditionalRequestConflict")
                    if key in outer.objects:
                        return self._error(412, "PreconditionFailed")
                outer.objects[key] = body
                self._answer(200, b"", {"ETag": '"0"'})

            def do_HEAD(self) -> None:  # noqa: N802
                key = self._key()
                if key in outer.objects:
                    self._answer(200, b"", {"Content-Length": str(len(outer.objects[key])), "ETag": '"0"',
                                            "Last-Modified": "Mon, 07 Dec 2026 00:00:00 GMT"})
                else:
                    self._answer(404)

            def do_GET(self) -> None:  # noqa: N802
                url = urlparse(self.path)
                query = parse_qs(url.query)
                if "list-type" in query:
                    bucket = url.path.strip("/")
                    prefix = query.get("prefix", [""])[0]
                    keys = [k[len(bucket) + 1:] for k in outer.objects if k.startswith(f"{bucket}/{prefix}")]
                    items = "".join(f"<Contents><Key>{escape(k)}</Key><Size>1</Size><ETag>\"0\"</ETag>"
                                    "<LastModified>2026-12-07T00:00:00.000Z</LastModified></Contents>" for k in keys)
                    body = ('<?xml version="1.0" encoding="UTF-8"?><ListBucketResult><Name>{}</Name><Prefix>{}</Prefix>'
                            "<KeyCount>{}</KeyCount><IsTruncated>false</IsTruncated>{}</ListBucketResult>"
                            ).format(escape(bucket), escape(prefix), len(keys), items)
                    return self._answer(200, body.encode(), {"Content-Type": "application/xml"})
                key = self._key()
                if key not in outer.objects:
                    return self._error(404, "NoSuchKey")
                self._answer(200, outer.objects[key])

            def do_POST(self) -> None:  # noqa: N802  (DeleteObjects)
                import re

                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
                bucket = urlparse(self.path).path.strip("/")
                for key in re.findall(r"<Key>(.*?)</Key>", body):
                    outer.objects.pop(f"{bucket}/{key}", None)
                self._answer(200, b'<?xml version="1.0" encoding="UTF-8"?><DeleteResult></DeleteResult>',
                             {"Content-Type": "application/xml"})

            def do_DELETE(self) -> None:  # noqa: N802
                outer.objects.pop(self._key(), None)
                self._answer(204)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def options(self) -> dict:
        return {"endpoint_url": self.endpoint_url, "key": "test", "secret": "testtest",
                "config_kwargs": {"retries": {"max_attempts": 1, "mode": "standard"}}}

    def stop(self) -> None:
        self.server.shutdown()

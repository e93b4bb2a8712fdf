"""A tiny HTTP file server on 127.0.0.1 for download tests: Range requests (206), and connections
cut after a given number of bytes, one setting per request."""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@dataclass
class FileServer:
    """``files``: path -> bytes served; ``cuts``: per request in order, bytes after which the
    connection is closed (None: serve all); ``honour_range``: answer Range with 206."""

    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)
    cuts: list[int | None] = field(default_factory=list)
    honour_range: bool = True
    requests: list[dict] = field(default_factory=list)
    sent: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def _handler(state: FileServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def do_GET(self):
            state.requests.append({"path": self.path, "range": self.headers.get("Range"),
                                   "authorization": self.headers.get("Authorization")})
            cut = state.cuts.pop(0) if state.cuts else None
            data = state.files.get(self.path)
            if data is None:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            found = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
            if found and state.honour_range:
                start = int(found.group(1))
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            body = body if cut is None else body[:cut]
            self.wfile.write(body)
            state.sent += len(body)
            if cut is not None:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)

    return Handler


@pytest.fixture
def file_server():
    state = FileServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)

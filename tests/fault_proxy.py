"""A fault-injecting TCP proxy on 127.0.0.1 in front of an S3 server (for the soak and its test).

Each new client connection is either passed through, or gets one fault, drawn with probability
``rate`` among ``kinds``:

- ``reset``: the request is read, then the connection is reset (RST, as a dropped connection);
- ``stall``: the request is read and nothing answers for ``stall_s`` (past the client's timeout);
- ``slowdown``: answered ``503 SlowDown`` (S3's throttling error) without reaching the server;
- ``truncate``: the server's answer is cut off after half of its bytes.

``counts`` says how many of each were injected. Run it in a thread with :meth:`start`.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
from collections import Counter

KINDS = ("reset", "stall", "slowdown", "truncate")

_SLOWDOWN = (b"HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nConnection: close\r\n"
             b"Content-Length: %d\r\n\r\n%s")
_SLOWDOWN_BODY = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
                  b"<Message>Please reduce your request rate.</Message></Error>")


class FaultProxy:
    def __init__(self, upstream_port: int, rate: float = 0.1, kinds: tuple[str, ...] = KINDS, stall_s: float = 8.0,
                 seed: int = 0):
        self.upstream_port, self.rate, self.kinds, self.stall_s = upstream_port, rate, kinds, stall_s
        self.random = random.Random(seed)
        self.counts: Counter = Counter()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self.enabled = True

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "FaultProxy":
        threading.Thread(target=self._serve, name="fault-proxy", daemon=True).start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def _draw(self) -> str:
        if self.enabled and self.random.random() < self.rate:
            kind = self.random.choice(self.kinds)
            self.counts[kind] += 1
            return kind
        return "pass"

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fault = self._draw()
        try:
            if fault in ("reset", "stall", "slowdown"):
                await _read_request(reader)
                if fault == "reset":
                    _reset(writer)
                    return
                if fault == "stall":
                    await asyncio.sleep(self.stall_s)
                else:
                    writer.write(_SLOWDOWN % (len(_SLOWDOWN_BODY), _SLOWDOWN_BODY))
                    await writer.drain()
                writer.close()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            if fault == "truncate":
                request = await _read_request(reader)
                up_writer.write(request)
                await up_writer.drain()
                answer = await _read_response(up_reader, head_only=request.startswith(b"HEAD "))
                writer.write(answer[: max(1, len(answer) // 2)])
                await writer.drain()
                _reset(writer)
                up_writer.close()
                return
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head + await reader.readexactly(_content_length(head))


async def _read_response(reader: asyncio.StreamReader, head_only: bool) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    return head if head_only else head + await reader.readexactly(_content_length(head))


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()

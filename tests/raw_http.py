"""HTTP/1.1 over a bare socket, for the requests no HTTP client would send.

`exchange` writes bytes as they are and reads one answer: a status line, headers and a
`Content-Length` body, or nothing at all when the server closes the connection without
answering. Each read has a deadline (waits.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from waits import within

#: Longest wait for an answer or a close: generous, the server's own deadlines are shorter.
ANSWER_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Answer:
    """One answer; `status` None when the connection closed without one."""

    status: int | None
    head: bytes
    body: bytes

    def header(self, name: str) -> str | None:
        for line in self.head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower().encode():
                return value.strip().decode("latin-1")
        return None


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    """The next answer on `reader`, or `Answer(None, ...)` once it is closed without one."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        assert exc.partial == b"", f"a partial answer before the close: {exc.partial[:200]!r}"
        return Answer(None, b"", b"")
    except ConnectionResetError:
        return Answer(None, b"", b"")
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(b" ")
    assert len(parts) >= 2 and parts[0].startswith(b"HTTP/"), status_line
    answer = Answer(int(parts[1]), head, b"")
    length = answer.header("Content-Length")
    body = await reader.readexactly(int(length)) if length else b""
    return Answer(answer.status, head, body)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def send(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write `data`; a server that has already closed the connection is not an error here."""
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def exchange(port: int, data: bytes, timeout: float = ANSWER_TIMEOUT_S) -> Answer:
    """Send `data` on a new connection and read one answer (or the close)."""
    reader, writer = await connect(port)
    try:
        await send(writer, data)
        answer: Answer = await within(read_answer(reader), timeout, f"an answer to {data[:80]!r}")
        return answer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def closed_by_server(reader: asyncio.StreamReader, timeout: float, what: str) -> bytes:
    """Wait for the server to close the connection; return whatever it sent before."""
    received = bytearray()

    async def drain() -> None:
        try:
            while chunk := await reader.read(65536):
                received.extend(chunk)
        except ConnectionResetError:
            pass

    await within(drain(), timeout, what)
    return bytes(received)

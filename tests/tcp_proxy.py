"""A TCP proxy for outage tests: a test cuts a service off its database and lets it back.

The proxy binds its port itself (port 0) and keeps it until `close()`: a cut never lets the
port go, so no other process can take it while a service under test still points at it.
"""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """Forwards 127.0.0.1:`port` to `target`; `cut()` and `mend()` switch it off and on.

    While cut, every open connection is broken and new ones are accepted and reset at once
    (as a server that went away would do to them). `target` may change while the proxy runs,
    say when the server behind it comes back on another port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.connected = True
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.BaseTransport] = set()
        self._port: int | None = None

    @property
    def port(self) -> int:
        assert self._port is not None, "start() the proxy first"
        return self._port

    async def start(self) -> Proxy:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self._port = int(self.server.sockets[0].getsockname()[1])
        return self

    def cut(self) -> None:
        self.connected = False
        for transport in list(self.transports):
            transport.abort()
        self.transports.clear()

    def mend(self) -> None:
        self.connected = True

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.connected:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        if not self.connected:  # cut while this connection was being made
            up_writer.transport.abort()
            writer.transport.abort()
            return
        pair = (writer.transport, up_writer.transport)
        self.transports.update(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
            )
        finally:
            self.transports.difference_update(pair)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

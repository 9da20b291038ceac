"""Transports: what the client needs from a connection, whatever carries it.

Frames are whole FlatBuffers ``Frame``s without a length prefix. On TCP each frame is a u32
little-endian length N followed by the N bytes (1 <= N <= max_frame); on WebSocket each binary
message carries exactly one frame, and a text message is a protocol error.
"""

import asyncio
import struct
from typing import Awaitable, Callable, Protocol
from urllib.parse import urlsplit

from .errors import ConnectionLost, ProtocolError

#: Bytes of the length prefix before every frame on the TCP stream.
LEN_PREFIX = 4
_LEN = struct.Struct("<I")


class Transport(Protocol):
    async def recv(self) -> bytes:
        """The next frame. Raises ConnectionLost when the connection ends, ProtocolError on bad framing."""

    def send(self, frame: bytes) -> None:
        """Queues one frame (frames are written in order)."""

    async def close(self) -> None:
        """Closes the connection; a pending recv() raises ConnectionLost."""


#: Opens a connection; ``max_frame`` bounds what is accepted from the server.
Dialer = Callable[[int], Awaitable[Transport]]


class TcpTransport:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, max_frame: int):
        self._reader = reader
        self._writer = writer
        self._max_frame = max_frame

    async def recv(self) -> bytes:
        try:
            prefix = await self._reader.readexactly(LEN_PREFIX)
            (n,) = _LEN.unpack(prefix)
            # Checked as soon as the prefix is readable, without waiting for the body.
            if n == 0:
                raise ProtocolError("zero-length frame")
            if n > self._max_frame:
                raise ProtocolError(f"frame of {n} bytes exceeds the limit of {self._max_frame} bytes")
            return await self._reader.readexactly(n)
        except asyncio.IncompleteReadError:
            raise ConnectionLost("connection closed by the peer") from None
        except (ConnectionError, OSError) as e:
            raise ConnectionLost(f"tcp: {e}") from e

    def send(self, frame: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(_LEN.pack(len(frame)) + frame)

    async def close(self) -> None:
        self._writer.close()
        try:
            await self._writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def parse_tcp_url(url: str):
    u = urlsplit(url)
    if u.scheme != "tcp" or not u.hostname or not u.port:
        raise ValueError(f"expected tcp://host:port, got {url!r}")
    return u.hostname, u.port


def tcp_dialer(url: str) -> Dialer:
    host, port = parse_tcp_url(url)

    async def dial(max_frame: int) -> Transport:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError as e:
            raise ConnectionLost(f"tcp {host}:{port}: {e}") from e
        return TcpTransport(reader, writer, max_frame)

    return dial


class WebSocketTransport:
    def __init__(self, ws):
        self._ws = ws
        self._out: "asyncio.Queue[bytes]" = asyncio.Queue()
        self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        try:
            while True:
                await self._ws.send(await self._out.get())
        except Exception:  # the reader reports why the connection ended
            pass

    async def recv(self) -> bytes:
        from websockets.exceptions import ConnectionClosed, PayloadTooBig

        try:
            msg = await self._ws.recv()
        except ConnectionClosed as e:
            raise ConnectionLost(f"websocket closed ({e})") from None
        except PayloadTooBig as e:
            raise ProtocolError(f"frame too large: {e}") from None
        if isinstance(msg, str):
            await self._ws.close(1003, "binary frames only")
            raise ProtocolError("text message from the server (frames are binary messages)")
        return msg

    def send(self, frame: bytes) -> None:
        self._out.put_nowait(frame)

    async def close(self) -> None:
        self._writer.cancel()
        await self._ws.close()


def websocket_dialer(url: str) -> Dialer:
    u = urlsplit(url)
    if u.scheme not in ("ws", "wss"):
        raise ValueError(f"expected ws:// or wss://, got {url!r}")

    async def dial(max_frame: int) -> Transport:
        try:
            from websockets.asyncio.client import connect
        except ImportError as e:  # pragma: no cover - depends on the installation
            raise ConnectionLost("ws:// needs the websockets package: pip install 'ringpost-client[ws]'") from e
        try:
            ws = await connect(url, max_size=max_frame, compression=None, ping_interval=None)
        except Exception as e:  # websockets raises OSError, InvalidHandshake, InvalidURI...
            raise ConnectionLost(f"websocket {url}: {e}") from e
        return WebSocketTransport(ws)

    return dial


def dialer_for(url: str) -> Dialer:
    scheme = urlsplit(url).scheme
    if scheme == "tcp":
        return tcp_dialer(url)
    if scheme in ("ws", "wss"):
        return websocket_dialer(url)
    raise ValueError(f"unsupported URL scheme in {url!r} (tcp://, ws://, wss://)")

"""The template's wire: JSON objects, each after its 4-byte big-endian length,
over the socketpair between the worker and its template."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import Any

__all__ = ["FrameReader", "encode", "read_frame", "send_frame"]

_HEADER = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024


def encode(message: dict[str, Any]) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode()
    return _HEADER.pack(len(body)) + body


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Whole, even on a non-blocking socket (the template's): the worker reads every frame as it comes."""
    blocking = sock.getblocking()
    sock.setblocking(True)
    try:
        sock.sendall(encode(message))
    finally:
        sock.setblocking(blocking)


class FrameReader:
    """Frames out of bytes as they arrive (the template's non-blocking side)."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        out = []
        while len(self._buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > self.max_frame:
                raise ValueError(f"frame of {size} bytes is over the {self.max_frame}-byte limit")
            if len(self._buffer) < _HEADER.size + size:
                break
            out.append(json.loads(self._buffer[_HEADER.size : _HEADER.size + size]))
            del self._buffer[: _HEADER.size + size]
        return out


async def read_frame(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next frame (the worker's asyncio side); ``IncompleteReadError`` at EOF."""
    (size,) = _HEADER.unpack(await reader.readexactly(_HEADER.size))
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    message: dict[str, Any] = json.loads(await reader.readexactly(size))
    return message

"""Wire format between a runner and its supervisor: length-prefixed JSON frames on a Unix socket.

Supervisor → runner: `{"type": "health"}`, `{"type": "predict", "id", "input", "output_dir"}`,
`{"type": "cancel", "id"}`.
Runner → supervisor: `{"type": "status", "state": "setting_up"|"ready"|"setup_failed", "error"?}`,
then per predict any number of `progress` / `log` frames and one `result` or `error`.
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Any

MAX_FRAME = 64 * 1024 * 1024
_HEADER = struct.Struct(">I")


class ProtocolError(ConnectionError):
    """The peer sent something that is not a frame, or went away mid-frame."""


def send_frame(sock: socket.socket, message: dict[str, Any]) -> None:
    """Send one message."""
    data = json.dumps(message, separators=(",", ":")).encode()
    if len(data) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(data)} bytes exceeds the {MAX_FRAME}-byte limit")
    sock.sendall(_HEADER.pack(len(data)) + data)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ProtocolError("connection closed by the peer")
        buf += chunk
    return bytes(buf)


def recv_frame(sock: socket.socket) -> dict[str, Any]:
    """Receive one message; raises ProtocolError when the peer is gone or misbehaves."""
    (length,) = _HEADER.unpack(_recv_exact(sock, _HEADER.size))
    if length > MAX_FRAME:
        raise ProtocolError(f"peer announced a frame of {length} bytes")
    try:
        message = json.loads(_recv_exact(sock, length))
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from exc
    if not isinstance(message, dict) or "type" not in message:
        raise ProtocolError("frame is not a typed message")
    return message

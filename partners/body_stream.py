"""A request body read with plain blocking `read(n)` calls by a worker thread.

The package validator reads its input synchronously; an upload arrives as the server's async
body stream. `RequestBody.read` runs on the worker thread that `run_in_threadpool` started
and fetches the next block from the event loop (`anyio.from_thread.run`), so the body goes
from the socket to the validator and the encryptor without ever being spooled to disk.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio.from_thread

from kit.errors import PayloadTooLarge

BLOCK = 1 << 20


class RequestBody:
    """`read(n)` over an async iterator of byte chunks, in blocks of about 1 MiB."""

    def __init__(self, chunks: AsyncIterator[bytes], *, limit: int) -> None:
        self._chunks = chunks
        self._limit = limit
        self._buf = b""
        self._pos = 0
        self._ended = False
        self.received = 0

    async def _next_block(self) -> bytes:
        parts: list[bytes] = []
        size = 0
        while size < BLOCK and not self._ended:
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._ended = True
                break
            if not chunk:
                continue
            size += len(chunk)
            self.received += len(chunk)
            if self.received > self._limit:
                raise PayloadTooLarge(f"packages are limited to {self._limit} bytes")
            parts.append(chunk)
        return b"".join(parts)

    async def start(self) -> bool:
        """Read the first block on the event loop; False when the body is empty."""
        self._buf, self._pos = await self._next_block(), 0
        return bool(self._buf)

    def read(self, n: int = -1, /) -> bytes:
        """Up to `n` bytes (a block when n < 0); b"" at the end. Call from a worker thread."""
        if self._pos >= len(self._buf):
            if self._ended:
                return b""
            self._buf, self._pos = anyio.from_thread.run(self._next_block), 0
            if not self._buf:
                return b""
        end = len(self._buf) if n is None or n < 0 else min(len(self._buf), self._pos + n)
        if self._pos == 0 and end == len(self._buf):
            out = self._buf
        else:
            out = self._buf[self._pos:end]
        self._pos = end
        return out

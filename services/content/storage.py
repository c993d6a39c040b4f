"""Where attachment bytes live: a small interface, and local disk behind it by default.

An object store (S3, MinIO, OSS) replaces `LocalStorage` by implementing the same three
calls; nothing else in the service touches files. Keys are opaque strings chosen by the
storage; the database keeps them next to each attachment's metadata.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterable, AsyncIterator, Protocol

log = logging.getLogger(__name__)

CHUNK = 256 * 1024


@dataclass(frozen=True)
class Stored:
    key: str
    size: int
    sha256: str  # hex


class AttachmentStorage(Protocol):
    async def put(self, chunks: AsyncIterable[bytes]) -> Stored:
        """Store a stream; all or nothing (an exception from `chunks` leaves nothing behind)."""

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes [start, end) of a stored object (end None: to its end). Raises
        FileNotFoundError at once when there is no such object."""

    async def delete(self, key: str) -> None:
        """Remove an object; removing one that is gone already is not an error."""


class LocalStorage:
    """Files under `root`, two hex digits of fan-out (`root/ab/ab12…`); uploads are written
    to `root/.tmp/` (the same file system), synced, then renamed into place."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.tmp = self.root / ".tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if len(key) < 8 or not all(c in "0123456789abcdef" for c in key):
            raise FileNotFoundError(key)  # never a path outside the root
        return self.root / key[:2] / key

    async def put(self, chunks: AsyncIterable[bytes]) -> Stored:
        key = secrets.token_hex(16)
        part = self.tmp / f"{key}.part"
        digest, size = hashlib.sha256(), 0
        handle = await asyncio.to_thread(open, part, "xb")
        try:
            async for chunk in chunks:
                if chunk:
                    size += len(chunk)
                    await asyncio.to_thread(_write, handle, digest, chunk)
            await asyncio.to_thread(_sync_close, handle)
            target = self._path(key)
            await asyncio.to_thread(target.parent.mkdir, exist_ok=True)
            await asyncio.to_thread(os.replace, part, target)
        except BaseException:
            handle.close()
            part.unlink(missing_ok=True)
            raise
        return Stored(key=key, size=size, sha256=digest.hexdigest())

    async def open(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(open, self._path(key), "rb")
        if start:
            handle.seek(start)

        async def chunks() -> AsyncIterator[bytes]:
            remaining = None if end is None else end - start
            try:
                while remaining is None or remaining > 0:
                    size = CHUNK if remaining is None else min(CHUNK, remaining)
                    chunk = await asyncio.to_thread(handle.read, size)
                    if not chunk:
                        break
                    if remaining is not None:
                        remaining -= len(chunk)
                    yield chunk
            finally:
                handle.close()

        return chunks()

    async def delete(self, key: str) -> None:
        try:
            await asyncio.to_thread(self._path(key).unlink, True)
        except FileNotFoundError:
            pass

    def sweep_partials(self, older_than_s: float = 3600) -> int:
        """Remove uploads a crashed process left half-written (at start-up)."""
        removed, cutoff = 0, time.time() - older_than_s
        for part in self.tmp.glob("*.part"):
            try:
                if part.stat().st_mtime < cutoff:
                    part.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


def _write(handle, digest, chunk: bytes) -> None:
    digest.update(chunk)
    handle.write(chunk)


def _sync_close(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()

"""Image data on local disk: ``<state dir>/images/<image id>``.

Uploads stream into ``<id>.part`` (hashed as they arrive, written off the event
loop) and are renamed into place only once complete and verified, so a reader
never sees a partial file and a failed upload leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20  # bytes per disk write / read


def file_name(image_id: object) -> str:
    """An image's file name: its canonical uuid, so no id can name a path outside the store
    (ValueError for anything else)."""
    return str(uuid.UUID(str(image_id)))


def image_path(state_dir: Path, image_id: str) -> Path:
    """The data file of an image of the novalite whose state directory is ``state_dir``."""
    return Path(state_dir) / "images" / file_name(image_id)


class UploadError(Exception):
    """The data could not be stored (size or checksum mismatch, client went away, disk full)."""


class ImageTooLarge(UploadError):
    """More data arrived than the caller's ``max_size`` allows (a size cap or a quota)."""


class StorageFull(UploadError):
    """Writing on would leave the store's filesystem less free space than its reserve."""


@dataclass(frozen=True)
class StoredImage:
    """What an upload produced: Glance's ``size``, ``checksum`` and ``os_hash_*``."""

    size: int
    checksum: str       # md5, hex
    os_hash_algo: str   # always sha512
    os_hash_value: str


def _close(f) -> None:
    """Close an upload's file; ENOSPC surfacing at close is the disk being full too."""
    try:
        f.close()
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StorageFull("The image store's disk is full.") from None
        raise


class ImageStore:
    """One directory of image files, named by image id."""

    def __init__(self, root: Path, reserve_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.reserve_free_bytes = reserve_free_bytes

    def free_bytes(self) -> int:
        """Bytes an upload may still write: the filesystem's free space less the reserve."""
        self.root.mkdir(parents=True, exist_ok=True)
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize - self.reserve_free_bytes

    def path(self, image_id: str) -> Path:
        """Where an active image's data lives (the image cache reads it from here)."""
        return self.root / file_name(image_id)  # same as image_path(state_dir, image_id)

    def exists(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    async def write(
        self,
        image_id: str,
        chunks: AsyncIterable[bytes],
        *,
        expected_size: int | None = None,
        expected_md5: str | None = None,
        expected_sha256: str | None = None,
        max_size: int | None = None,
    ) -> StoredImage:
        """Stream ``chunks`` to disk; raise UploadError (leaving no file) unless all is well.

        ImageTooLarge once more than ``max_size`` bytes arrived; StorageFull before a write
        that would eat into the reserve, or when the disk fills anyway (ENOSPC)."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(image_id)
        part = final.with_name(final.name + ".part")
        md5, sha512, sha256 = hashlib.md5(usedforsecurity=False), hashlib.sha512(), hashlib.sha256()
        size = 0

        def flush(f, data: bytes) -> None:
            if self.free_bytes() < len(data):
                raise StorageFull("Not enough free space left in the image store.")
            md5.update(data)
            sha512.update(data)
            if expected_sha256:
                sha256.update(data)
            try:
                f.write(data)
                f.flush()
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise StorageFull("The image store's disk is full.") from None
                raise

        f = await asyncio.to_thread(open, part, "wb")
        try:
            buf = bytearray()
            async for chunk in chunks:
                size += len(chunk)
                if expected_size is not None and size > expected_size:
                    raise UploadError(f"Image exceeds the expected size of {expected_size} bytes.")
                if max_size is not None and size > max_size:
                    raise ImageTooLarge(f"Image data exceeds {max_size} bytes.")
                buf += chunk
                if len(buf) >= CHUNK:
                    await asyncio.to_thread(flush, f, bytes(buf))
                    buf.clear()
            if buf:
                await asyncio.to_thread(flush, f, bytes(buf))
            await asyncio.to_thread(_close, f)
            if expected_size is not None and size != expected_size:
                raise UploadError(f"Image size {size} does not match the expected size {expected_size}.")
            if expected_md5 and md5.hexdigest() != expected_md5.lower():
                raise UploadError("Image checksum (md5) does not match the owner-specified checksum.")
            if expected_sha256 and sha256.hexdigest() != expected_sha256.lower():
                raise UploadError("Image checksum (sha256) does not match the owner-specified checksum.")
            await asyncio.to_thread(os.replace, part, final)
        except BaseException:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(f.close)
            part.unlink(missing_ok=True)
            raise
        return StoredImage(size, md5.hexdigest(), "sha512", sha512.hexdigest())

    async def read(self, image_id: str, chunk_size: int = CHUNK) -> AsyncIterator[bytes]:
        """The image data in chunks, read off the event loop."""
        f = await asyncio.to_thread(open, self.path(image_id), "rb")
        try:
            while data := await asyncio.to_thread(f.read, chunk_size):
                yield data
        finally:
            await asyncio.to_thread(f.close)

    def delete(self, image_id: str) -> None:
        """Remove an image's data and any leftover partial upload."""
        final = self.path(image_id)
        final.unlink(missing_ok=True)
        final.with_name(final.name + ".part").unlink(missing_ok=True)

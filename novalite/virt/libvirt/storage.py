"""Storage pools and their volumes, on a host's one connection.

A host's volumes live in a libvirt storage pool: a ``dir`` pool of qcow2 files,
or a ``logical`` pool over an LVM volume group (raw logical volumes). Volume
data moves through libvirt streams (``virStorageVolUpload`` / ``Download``),
so no filesystem is shared with the host.

libvirt's test driver (``test:///``, simulated hosts) implements pools and
volumes in memory: define/build/create, ``createXML``, ``createXMLFrom`` and
``delete`` work and report paths under the pool's target, but no file is
written; ``virStorageVolResize`` is not supported (a larger clone keeps the
source's capacity there) and neither are streams (upload and download raise
VirtError with VIR_ERR_NO_SUPPORT).

What a pool or a volume looks like is decided in :func:`design_pool` and
:func:`design_volume`; the XML is written by :mod:`novalite.virt.libvirt.config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterable, AsyncIterator, Iterator

import libvirt
import structlog

from novalite.virt.driver import (
    DownloadTarget,
    PoolUsage,
    StoragePoolSpec,
    UploadSource,
    VirtError,
    VolumeInfo,
)
from novalite.virt.libvirt.config import LibvirtConfigStoragePool, LibvirtConfigStorageVolume
from novalite.virt.libvirt.host import LibvirtHost

__all__ = ["CHUNK", "LibvirtStorage", "design_pool", "design_sized_volume", "design_volume", "purge_pools"]

log = structlog.get_logger(__name__)

GiB = 1024**3
CHUNK = 256 * 1024  # bytes per stream send/recv


def design_pool(pool: StoragePoolSpec) -> LibvirtConfigStoragePool:
    """A dir pool (mode 0755: qemu runs as its own user) or a logical pool over an LVM2 volume group."""
    if pool.type == "logical":
        return LibvirtConfigStoragePool(pool_type="logical", name=pool.name, source_name=pool.source or "",
                                        source_format="lvm2", target_path=pool.target)
    return LibvirtConfigStoragePool(pool_type=pool.type, name=pool.name, target_path=pool.target,
                                    target_mode="0755")


def design_volume(name: str, size_gb: int, fmt: str) -> LibvirtConfigStorageVolume:
    """A volume of ``size_gb`` GiB, nothing allocated up front; qcow2 files readable by qemu (0644)."""
    return design_sized_volume(name, size_gb * GiB, fmt)


def design_sized_volume(name: str, capacity: int, fmt: str, backing: VolumeInfo | None = None,
                        mode: str | None = None) -> LibvirtConfigStorageVolume:
    """A volume of ``capacity`` bytes, nothing allocated up front; qcow2 files readable by qemu
    (0644), other files with ``mode``. ``backing``: a qcow2 overlay on that volume (its file and format)."""
    vol = LibvirtConfigStorageVolume(name=name, capacity=capacity, allocation=0, target_mode=mode)
    if fmt == "qcow2":
        vol.target_format = "qcow2"
        vol.target_mode = "0644"
    elif mode is not None:
        vol.target_format = fmt
    if backing is not None:
        vol.backing_path, vol.backing_format = backing.path, backing.format
    return vol


def purge_pools(conn: libvirt.virConnect, prefix: str) -> list[str]:
    """Remove every pool whose name starts with ``prefix`` with its volumes and its directory on the
    host (a cloud's teardown: tests, benchmarks; pools live on the host, not in a state directory)."""
    gone = []
    for pool in conn.listAllStoragePools(0):
        if not pool.name().startswith(prefix):
            continue
        if not pool.isActive():
            pool.create(0)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        with contextlib.suppress(libvirt.libvirtError):  # a logical pool's volume group stays the operator's
            pool.delete(0)
        pool.undefine()
        gone.append(pool.name())
    return gone


def _error(exc: libvirt.libvirtError, what: str) -> VirtError:
    return VirtError(f"{what}: {exc.get_error_message()}", exc.get_error_code())


async def _next_chunk(chunks: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return None


class LibvirtStorage:
    """The storage pools of one host; blocking methods (``*_sync``) run in the host's workers."""

    def __init__(self, host: LibvirtHost) -> None:
        self.host = host

    def _pool(self, name: str) -> libvirt.virStoragePool:
        try:
            pool = self.host.connection().storagePoolLookupByName(name)
            if not pool.isActive():
                pool.create(0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"no storage pool {name} on {self.host.uri}") from exc
        return pool

    def _volume(self, pool: str, name: str) -> libvirt.virStorageVol:
        try:
            return self._pool(pool).storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"no volume {name} in {pool}") from exc

    def ensure_sync(self, spec: StoragePoolSpec) -> None:
        conn = self.host.connection()
        try:
            try:
                pool = conn.storagePoolLookupByName(spec.name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = conn.storagePoolDefineXML(design_pool(spec).to_xml(), 0)
                if spec.type == "dir":
                    pool.build(0)  # mkdir of the target (the test driver accepts it too)
                log.info("storage_pool_defined", pool=spec.name, uri=self.host.uri, target=spec.target)
            if not pool.isActive():
                pool.create(0)
            try:
                if not pool.autostart():
                    pool.setAutostart(1)
            except libvirt.libvirtError:
                log.warning("storage_pool_autostart_failed", pool=spec.name)
            pool.refresh(0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot set up storage pool {spec.name} on {self.host.uri}") from exc

    def create_sync(self, pool: str, name: str, size_gb: int, fmt: str) -> str:
        sp = self._pool(pool)
        try:
            self.delete_sync(pool, name)  # a leftover of a crashed attempt
            vol = sp.createXML(design_volume(name, size_gb, fmt).to_xml(), 0)
            return vol.path()
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot create volume {name} in {pool}") from exc

    def clone_sync(self, pool: str, source: str, name: str, size_gb: int, fmt: str,
                   source_pool: str | None = None) -> str:
        """virStorageVolCreateXMLFrom: the host copies (qemu-img converts) the data, across pools too."""
        sp = self._pool(pool)
        try:
            src = (self._pool(source_pool) if source_pool else sp).storageVolLookupByName(source)
            self.delete_sync(pool, name)
            vol = sp.createXMLFrom(design_volume(name, size_gb, fmt).to_xml(), src, 0)
            if vol.info()[1] < size_gb * GiB:
                try:
                    vol.resize(size_gb * GiB, 0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # the test driver
                        raise
            return vol.path()
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot copy volume {source} to {name}") from exc

    def make_sync(self, pool: str, name: str, capacity: int, fmt: str, backing: str | None) -> str:
        """A new volume of ``capacity`` bytes (at least the backing volume's size for an overlay)."""
        sp = self._pool(pool)
        try:
            base = self.info_sync(pool, backing) if backing is not None else None
            if backing is not None and base is None:
                raise VirtError(f"no volume {backing} in {pool} to back {name}")
            if base is not None:
                capacity = max(capacity, base.capacity)
            self.delete_sync(pool, name)  # a leftover of a crashed attempt
            vol = sp.createXML(design_sized_volume(name, capacity, fmt, base, mode="0644").to_xml(), 0)
            return vol.path()
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot create volume {name} in {pool}") from exc

    def grow_sync(self, pool: str, name: str, capacity: int) -> None:
        """Grow the volume to ``capacity`` bytes; a larger one stays as it is (never shrunk)."""
        vol = self._volume(pool, name)
        try:
            if vol.info()[1] < capacity:
                vol.resize(capacity, 0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot grow volume {name} in {pool}") from exc

    def info_sync(self, pool: str, name: str) -> VolumeInfo | None:
        """The volume's path, format (as libvirt probed it) and capacity; None when there is none."""
        sp = self._pool(pool)
        try:
            vol = sp.storageVolLookupByName(name)
            cfg = LibvirtConfigStorageVolume.from_xml(vol.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return None
            raise _error(exc, f"cannot look up volume {name}") from exc
        return VolumeInfo(path=cfg.target_path or vol.path(), format=cfg.target_format or "raw",
                          capacity=cfg.capacity, backing=cfg.backing_path,
                          physical=cfg.physical if cfg.physical is not None else cfg.capacity)

    def tail_sync(self, path: str, max_bytes: int) -> bytes | None:
        """The last ``max_bytes`` of the volume at ``path`` on the host (a pool's file written
        behind its back, a serial log: the pool holding the directory is refreshed first when
        the volume is not known yet); None when there is no such file or pool."""
        conn = self.host.connection()
        try:
            try:
                vol = conn.storageVolLookupByPath(path)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                    raise
                sp = conn.storagePoolLookupByTargetPath(os.path.dirname(path))
                sp.refresh(0)
                vol = sp.storageVolLookupByName(os.path.basename(path))
            size = vol.info()[1]  # current: libvirt re-reads a file volume's size on each call
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_STORAGE_VOL, libvirt.VIR_ERR_NO_STORAGE_POOL,
                                        libvirt.VIR_ERR_NO_SUPPORT):  # the test driver: no log to read
                return None
            raise _error(exc, f"cannot look up {path}") from exc
        offset = max(0, size - max_bytes)
        out = bytearray()
        with self._stream(f"cannot read {path} on {self.host.uri}") as stream:
            vol.download(stream, offset, size - offset, 0)
            while data := stream.recv(CHUNK):
                out += data
        return bytes(out)

    def delete_sync(self, pool: str, name: str) -> bool:
        sp = self._pool(pool)
        try:
            vol = sp.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise _error(exc, f"cannot look up volume {name}") from exc
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot delete volume {name}") from exc
        return True

    def names_sync(self, pool: str) -> list[str]:
        sp = self._pool(pool)
        try:
            sp.refresh(0)
            return [v.name() for v in sp.listAllVolumes(0)]
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot list volumes of {pool}") from exc

    def refresh_sync(self, pool: str) -> None:
        try:
            self._pool(pool).refresh(0)
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot refresh {pool}") from exc

    def usage_sync(self, pool: str) -> PoolUsage:
        """The pool's info after a refresh (a dir pool's numbers are its filesystem's, measured
        on the host; the test driver's pools report 100 GiB free of 100 GiB)."""
        sp = self._pool(pool)
        try:
            sp.refresh(0)
            _state, capacity, allocation, available = sp.info()
        except libvirt.libvirtError as exc:
            raise _error(exc, f"cannot read the size of {pool}") from exc
        return PoolUsage(capacity=capacity, allocation=allocation, available=available)

    # -- streams -------------------------------------------------------------------
    # A blocking stream in a worker; an async source or target is driven on the loop
    # one chunk at a time (the worker waits for each).

    @contextlib.contextmanager
    def _stream(self, what: str) -> Iterator[libvirt.virStream]:
        """A blocking stream, finished when the body ends, aborted when it fails."""
        stream = self.host.connection().newStream(0)
        try:
            yield stream
            stream.finish()
        except BaseException as exc:
            try:
                stream.abort()
            except libvirt.libvirtError:
                pass
            if isinstance(exc, libvirt.libvirtError):
                raise _error(exc, what) from exc
            raise

    def upload_sync(self, pool: str, name: str, source: UploadSource, loop: asyncio.AbstractEventLoop) -> int:
        vol = self._volume(pool, name)
        local = not isinstance(source, AsyncIterable)
        length = os.stat(source).st_size if local else 0  # 0: up to the end of the volume
        sent = 0
        with self._stream(f"cannot upload to volume {name} on {self.host.uri}") as stream:
            vol.upload(stream, 0, length, 0)
            if local:
                with open(source, "rb") as f:
                    while chunk := f.read(CHUNK):
                        sent += self._send(stream, chunk)
            else:
                chunks = aiter(source)
                while chunk := asyncio.run_coroutine_threadsafe(_next_chunk(chunks), loop).result():
                    sent += self._send(stream, chunk)
        log.info("volume_uploaded", pool=pool, volume=name, bytes=sent)
        return sent

    @staticmethod
    def _send(stream: libvirt.virStream, chunk: bytes) -> int:
        rest = chunk
        while rest:
            rest = rest[stream.send(rest):]
        return len(chunk)

    def download_sync(self, pool: str, name: str, target: DownloadTarget, loop: asyncio.AbstractEventLoop) -> int:
        vol = self._volume(pool, name)
        received = 0
        with contextlib.ExitStack() as files, self._stream(f"cannot download volume {name} from {self.host.uri}") \
                as stream:
            if isinstance(target, str | os.PathLike):
                f = files.enter_context(open(target, "wb"))

                def sink(data: bytes) -> None:
                    f.write(data)
            else:
                def sink(data: bytes) -> None:
                    asyncio.run_coroutine_threadsafe(target(data), loop).result()

            vol.download(stream, 0, 0, 0)
            while data := stream.recv(CHUNK):
                sink(data)
                received += len(data)
        log.info("volume_downloaded", pool=pool, volume=name, bytes=received)
        return received

"""One libvirt storage pool per compute host, every call in worker threads.

The pool is named ``<volume.pool_prefix><host>`` so several clouds can share one
libvirtd. By default it is a ``dir`` pool of qcow2 files under
``<state dir>/volumes/<host>`` that novalite defines, builds and starts; with
``volume.pool_type = "logical"`` it is an LVM pool over the operator's volume
group ``volume.pool_source`` (raw logical volumes).

libvirt's test driver (``test:///``, simulated hosts) implements pools and
volumes in memory: define/build/create, ``createXML``, ``createXMLFrom`` and
``delete`` work and report paths under the pool's target, but no file is
written, and ``virStorageVolResize`` is not supported (a larger clone keeps the
source's capacity there). So simulated hosts go through the same calls.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt
import structlog
from lxml import etree

from novalite.virt.libvirt.driver import silence_libvirt_stderr

log = structlog.get_logger(__name__)

T = TypeVar("T")
GiB = 1024**3


class PoolError(Exception):
    """A storage pool or volume call failed."""


@dataclass(frozen=True, slots=True)
class PoolDef:
    name: str
    type: str  # "dir" | "logical"
    target: str  # directory, or /dev/<vg> for logical
    source: str | None = None  # the volume group of a logical pool

    @property
    def volume_format(self) -> str:
        return "qcow2" if self.type == "dir" else "raw"


def pool_xml(pool: PoolDef) -> str:
    root = etree.Element("pool", type=pool.type)
    etree.SubElement(root, "name").text = pool.name
    if pool.type == "logical":
        source = etree.SubElement(root, "source")
        etree.SubElement(source, "name").text = pool.source or ""
        etree.SubElement(source, "format", type="lvm2")
    target = etree.SubElement(root, "target")
    etree.SubElement(target, "path").text = pool.target
    if pool.type == "dir":
        perms = etree.SubElement(target, "permissions")
        etree.SubElement(perms, "mode").text = "0755"  # qemu runs as its own user
    return etree.tostring(root, encoding="unicode")


def volume_xml(name: str, size_gb: int, fmt: str) -> str:
    root = etree.Element("volume")
    etree.SubElement(root, "name").text = name
    etree.SubElement(root, "capacity", unit="bytes").text = str(size_gb * GiB)
    etree.SubElement(root, "allocation", unit="bytes").text = "0"
    target = etree.SubElement(root, "target")
    if fmt == "qcow2":
        etree.SubElement(target, "format", type="qcow2")
        perms = etree.SubElement(target, "permissions")
        etree.SubElement(perms, "mode").text = "0644"
    return etree.tostring(root, encoding="unicode")


class LibvirtPoolHost:
    """The storage pool of one host, on its own libvirt connection, calls in worker threads."""

    def __init__(self, uri: str, pool: PoolDef, max_threads: int = 2) -> None:
        self.uri = uri
        self.pool = pool
        self.simulated = uri.startswith("test:")
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="libvirt-pool")
        self._closed = False
        silence_libvirt_stderr()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise PoolError(f"storage backend for {self.uri} is closed")
        ctx = contextvars.copy_context()
        return await asyncio.get_running_loop().run_in_executor(
            self._executor, functools.partial(ctx.run, fn, *args)
        )

    def _connection(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is None:
                try:
                    self._conn = libvirt.open(self.uri)
                except libvirt.libvirtError as exc:
                    raise PoolError(f"cannot connect to {self.uri}: {exc.get_error_message()}") from exc
            return self._conn

    def _pool(self) -> libvirt.virStoragePool:
        try:
            pool = self._connection().storagePoolLookupByName(self.pool.name)
        except libvirt.libvirtError as exc:
            raise PoolError(f"no storage pool {self.pool.name} on {self.uri}: {exc.get_error_message()}") from exc
        if not pool.isActive():
            pool.create(0)
        return pool

    # -- blocking parts ------------------------------------------------------------
    def _ensure_sync(self) -> None:
        conn = self._connection()
        try:
            try:
                pool = conn.storagePoolLookupByName(self.pool.name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                pool = conn.storagePoolDefineXML(pool_xml(self.pool), 0)
                if self.pool.type == "dir":
                    pool.build(0)  # mkdir of the target (the test driver accepts it too)
                log.info("storage_pool_defined", pool=self.pool.name, uri=self.uri, target=self.pool.target)
            if not pool.isActive():
                pool.create(0)
            try:
                if not pool.autostart():
                    pool.setAutostart(1)
            except libvirt.libvirtError:
                log.warning("storage_pool_autostart_failed", pool=self.pool.name)
            pool.refresh(0)
        except libvirt.libvirtError as exc:
            raise PoolError(f"cannot set up storage pool {self.pool.name} on {self.uri}: "
                            f"{exc.get_error_message()}") from exc

    def _create_sync(self, name: str, size_gb: int) -> str:
        pool = self._pool()
        try:
            self._delete_sync(name)  # a leftover of a crashed attempt
            vol = pool.createXML(volume_xml(name, size_gb, self.pool.volume_format), 0)
            return vol.path()
        except libvirt.libvirtError as exc:
            raise PoolError(f"cannot create volume {name} in {self.pool.name}: {exc.get_error_message()}") from exc

    def _clone_sync(self, source: str, name: str, size_gb: int) -> str:
        pool = self._pool()
        try:
            src = pool.storageVolLookupByName(source)
            self._delete_sync(name)
            vol = pool.createXMLFrom(volume_xml(name, size_gb, self.pool.volume_format), src, 0)
            if vol.info()[1] < size_gb * GiB:
                try:
                    vol.resize(size_gb * GiB, 0)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # the test driver
                        raise
            return vol.path()
        except libvirt.libvirtError as exc:
            raise PoolError(f"cannot copy volume {source} to {name}: {exc.get_error_message()}") from exc

    def _delete_sync(self, name: str) -> bool:
        pool = self._pool()
        try:
            vol = pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise PoolError(f"cannot look up volume {name}: {exc.get_error_message()}") from exc
        try:
            vol.delete(0)
        except libvirt.libvirtError as exc:
            raise PoolError(f"cannot delete volume {name}: {exc.get_error_message()}") from exc
        return True

    def _names_sync(self) -> list[str]:
        pool = self._pool()
        pool.refresh(0)
        return [v.name() for v in pool.listAllVolumes(0)]

    def _refresh_sync(self) -> None:
        self._pool().refresh(0)

    def _close_sync(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except libvirt.libvirtError:
                log.warning("libvirt_close_failed", uri=self.uri)

    # -- the async API -------------------------------------------------------------
    async def ensure(self) -> None:
        """Define (once), build, start and autostart the pool."""
        await self._call(self._ensure_sync)

    async def create_volume(self, name: str, size_gb: int) -> str:
        """A new empty volume of ``size_gb``; returns its path."""
        return await self._call(self._create_sync, name, size_gb)

    async def clone_volume(self, source: str, name: str, size_gb: int) -> str:
        """A full copy of volume ``source`` (grown to ``size_gb`` where the pool can); returns its path."""
        return await self._call(self._clone_sync, source, name, size_gb)

    async def delete_volume(self, name: str) -> bool:
        """Remove a volume; False (not an error) when it does not exist."""
        return await self._call(self._delete_sync, name)

    async def volume_names(self) -> list[str]:
        return await self._call(self._names_sync)

    async def refresh(self) -> None:
        await self._call(self._refresh_sync)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._close_sync)

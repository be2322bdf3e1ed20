"""A domain's serial console as an asyncio reader and writer (``virDomainOpenConsole``).

libvirt relays the console's pty through a ``virStream``, so this works for
any host URI, remote ones included. The stream is non-blocking and watched
through libvirt's event loop (:mod:`novalite.virt.libvirt.eventloop`, on the
process's asyncio loop): when it is readable, the callback drains it into an
``asyncio.StreamReader`` on the loop's thread without waiting (a non-blocking
``recv`` answers at once, from what the connection already received). Writes
and the close run in the host's workers, as every other libvirt call does.
The domain's serial log is written by qemu beside this and keeps working.
"""

from __future__ import annotations

import asyncio
import time

import libvirt
import structlog

from novalite.virt.driver import ConsoleUnavailable, InstanceNotFound, VirtError
from novalite.virt.libvirt import eventloop
from novalite.virt.libvirt.host import LibvirtHost

__all__ = ["LibvirtConsole", "open_console"]

log = structlog.get_logger(__name__)

CHUNK = 64 * 1024  # bytes per non-blocking recv
_AGAIN = -2  # what a non-blocking stream's recv/send answer when they would block
_SEND_RETRY = 0.01  # seconds between two tries of a send the stream could not take yet
_EVENTS = (libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR
           | libvirt.VIR_STREAM_EVENT_HANGUP)


class LibvirtConsole:
    """The writer of one open console stream, and the feeder of its reader (see the module docstring)."""

    def __init__(self, host: LibvirtHost, stream: libvirt.virStream, reader: asyncio.StreamReader) -> None:
        self._host = host
        self._stream = stream
        self.reader = reader
        self._closed = False

    # -- output: libvirt's event dispatch, on the loop's thread ------------------------

    def on_event(self, _stream: libvirt.virStream, events: int, _opaque: object) -> None:
        """Stream event callback: drain what is readable; an error or hangup ends the output."""
        if events & libvirt.VIR_STREAM_EVENT_READABLE:
            self._drain()
        if events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._eof()

    def _drain(self) -> None:
        while not self.reader.at_eof():
            try:
                data = self._stream.recv(CHUNK)
            except libvirt.libvirtError:
                self._eof()  # aborted under us (a close, a newer session taking the console over)
                return
            if data == _AGAIN:
                return
            if not data:
                self._eof()
                return
            self.reader.feed_data(data)

    def _eof(self) -> None:
        """The output ended (the reader's owner then closes the writer, which lets go of the stream)."""
        if not self.reader.at_eof():
            self.reader.feed_eof()

    # -- input and close: the host's workers ------------------------------------------

    async def write(self, data: bytes) -> None:
        """Send all of ``data`` to the guest's serial port."""
        if self._closed:
            raise VirtError("the console is closed")
        await self._host.call(self._send_sync, data)

    def _send_sync(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = self._stream.send(bytes(view))
            except libvirt.libvirtError as exc:
                raise VirtError(f"console write failed: {exc.get_error_message()}") from exc
            if sent == _AGAIN:
                time.sleep(_SEND_RETRY)
                continue
            view = view[sent:]

    async def close(self) -> None:
        """Stop watching the stream and abort it (idempotent); the reader sees end of file."""
        if self._closed:
            return
        self._closed = True
        if not self.reader.at_eof():
            self.reader.feed_eof()
        await self._host.call(self._close_sync)

    def _close_sync(self) -> None:
        for step in (self._stream.eventRemoveCallback, self._stream.abort):
            try:
                step()
            except libvirt.libvirtError:
                pass  # already gone: the domain stopped or another session took over


def _open_sync(host: LibvirtHost, instance_uuid: str) -> libvirt.virStream:
    conn = host.connection()
    try:
        domain = conn.lookupByUUIDString(instance_uuid)
    except libvirt.libvirtError as exc:
        raise InstanceNotFound(f"no domain for instance {instance_uuid}", exc.get_error_code()) from exc
    if not domain.isActive():
        raise ConsoleUnavailable(f"instance {instance_uuid} is not running")
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        # FORCE: a new session takes the console over from one that was left open.
        domain.openConsole(None, stream, libvirt.VIR_DOMAIN_CONSOLE_FORCE)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT, libvirt.VIR_ERR_OPERATION_INVALID):
            raise ConsoleUnavailable(f"instance {instance_uuid} has no console to open: "
                                     f"{exc.get_error_message()}") from exc
        raise VirtError(f"cannot open the console of {instance_uuid}: {exc.get_error_message()}",
                        exc.get_error_code()) from exc
    return stream


async def open_console(host: LibvirtHost, instance_uuid: str) -> tuple[asyncio.StreamReader, LibvirtConsole]:
    """Open the serial console of a running domain on ``host``: its output and its input."""
    if not eventloop.ensure_registered():
        raise ConsoleUnavailable("libvirt's event loop serves another asyncio loop")
    stream = await host.call(_open_sync, host, instance_uuid)
    console = LibvirtConsole(host, stream, asyncio.StreamReader())
    try:
        await host.call(stream.eventAddCallback, _EVENTS, console.on_event, None)
    except libvirt.libvirtError as exc:
        await host.call(stream.abort)
        raise VirtError(f"cannot watch the console of {instance_uuid}: {exc.get_error_message()}") from exc
    log.info("console_opened", instance_uuid=instance_uuid)
    return console.reader, console

"""libvirt's event loop on the process's asyncio loop, through ``libvirtaio``.

libvirt delivers domain lifecycle events (and runs the remote driver's
keepalive and socket I/O) only through an event-loop implementation that is
registered once per process, before any connection is opened.  We register
libvirt-python's asyncio one, bound to the loop that serves novalite.

``libvirtaio`` assumes every libvirt call happens on the loop's thread, but the
driver makes all blocking libvirt calls from worker threads, and such a call
may add or re-arm a timer or watch (the test driver queues each event with
``virEventUpdateTimeout`` from the thread that changed the domain).  asyncio's
loop is not thread-safe, so :class:`ThreadSafeAsyncIOImpl` hands every such
change to the loop with ``call_soon_threadsafe``, in order; ids are allocated
at once, as libvirt expects them synchronously.  libvirt-python releases the
GIL while a timer or watch callback runs in C, so a callback waiting on a
libvirt lock held by a worker cannot deadlock on the GIL.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import libvirt
import libvirtaio
import structlog

__all__ = ["ThreadSafeAsyncIOImpl", "ensure_registered", "registered_loop"]

log = structlog.get_logger(__name__)

_lock = threading.Lock()
_impl: ThreadSafeAsyncIOImpl | None = None


class ThreadSafeAsyncIOImpl(libvirtaio.virEventAsyncIOImpl):
    """libvirtaio whose timers and watches may be changed from any thread."""

    def _later(self, fn: Any, *args: Any) -> None:
        if self.loop.is_closed():
            return  # the process is shutting down: a worker thread's last libvirt call needs no timer
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed between the check and the call
            pass

    # -- file handles -------------------------------------------------------
    def _add_handle(self, fd: int, event: int, cb: Any, opaque: Any) -> int:
        callback = libvirtaio.FDCallback(self, cb, opaque, descriptor=None, event=event)
        self.callbacks[callback.iden] = callback
        self._later(self._attach_handle, fd, callback)
        return callback.iden

    def _attach_handle(self, fd: int, callback: libvirtaio.FDCallback) -> None:
        self._pending_inc()
        if self.callbacks.get(callback.iden) is not callback:
            callback.descriptor = None
            self.schedule_ff_callback(callback.iden, callback.opaque)  # removed before it was attached
            return
        callback.descriptor = self.descriptors[fd]
        callback.descriptor.add_handle(callback)

    def _update_handle(self, watch: int, event: int) -> None:
        callback = self.callbacks.get(watch)
        if callback is not None:
            self._later(self._apply_handle, callback, event)

    def _apply_handle(self, callback: libvirtaio.FDCallback, event: int) -> None:
        if self.callbacks.get(callback.iden) is callback and callback.descriptor is not None:
            callback.update(event=event)
        else:
            callback.event = event

    def _remove_handle(self, watch: int) -> int:
        callback = self.callbacks.pop(watch, None)
        if callback is None:
            return -1
        self._later(self._detach_handle, callback)
        return 0

    def _detach_handle(self, callback: libvirtaio.FDCallback) -> None:
        descriptor = callback.descriptor
        if descriptor is None:
            return  # never attached: _attach_handle frees it
        descriptor.remove_handle(callback.iden)
        if not descriptor.callbacks:
            self.descriptors.pop(descriptor.fd, None)
        callback.close()

    # -- timers -------------------------------------------------------------
    def _add_timeout(self, timeout: int, cb: Any, opaque: Any) -> int:
        callback = libvirtaio.TimeoutCallback(self, cb, opaque)
        self.callbacks[callback.iden] = callback
        self._later(self._attach_timeout, callback, timeout)
        return callback.iden

    def _attach_timeout(self, callback: libvirtaio.TimeoutCallback, timeout: int) -> None:
        self._pending_inc()
        if self.callbacks.get(callback.iden) is callback:
            callback.update(timeout=timeout)

    def _update_timeout(self, timer: int, timeout: int) -> None:
        callback = self.callbacks.get(timer)
        if callback is not None:
            self._later(self._apply_timeout, callback, timeout)

    def _apply_timeout(self, callback: libvirtaio.TimeoutCallback, timeout: int) -> None:
        if self.callbacks.get(callback.iden) is callback:
            callback.update(timeout=timeout)

    def _remove_timeout(self, timer: int) -> int:
        callback = self.callbacks.pop(timer, None)
        if callback is None:
            return -1
        self._later(callback.close)
        return 0


def ensure_registered(loop: asyncio.AbstractEventLoop | None = None) -> bool:
    """Register the asyncio event implementation once per process; True if it serves ``loop``.

    Call it on the loop, before opening connections (the driver does so before
    its first call).  libvirt allows one implementation per process: a second
    loop (e.g. a second ``asyncio.run`` in the same process) gets no events and
    a warning; periodic power-state sync still covers it.
    """
    global _impl
    loop = loop or asyncio.get_running_loop()
    with _lock:
        if _impl is None:
            impl = ThreadSafeAsyncIOImpl(loop=loop)
            libvirt.virEventRegisterImpl(
                impl._add_handle, impl._update_handle, impl._remove_handle,
                impl._add_timeout, impl._update_timeout, impl._remove_timeout,
            )
            libvirtaio._current_impl = impl
            _impl = impl
            log.info("libvirt_event_loop_registered")
        elif _impl.loop is not loop:
            if _impl.loop.is_closed():
                log.warning("libvirt_event_loop_gone", detail="events stop; periodic sync remains")
            else:
                log.warning("libvirt_event_loop_other", detail="events are served on another loop")
            return False
    return True


def registered_loop() -> asyncio.AbstractEventLoop | None:
    return _impl.loop if _impl is not None else None

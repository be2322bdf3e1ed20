"""One hypervisor: its libvirt connection, its worker threads, its event registration.

Every libvirt call of a compute host -- domains, networks, storage -- goes
through the one :class:`LibvirtHost` of that host, so a host holds one
connection and one bounded set of worker threads whatever it is asked to do.

- libvirt-python calls block, and the process runs one asyncio loop: every
  call runs in the pool (:meth:`LibvirtHost.call`), carrying the caller's
  contextvars (structlog's request id and instance uuid) into the worker.
  libvirt connections are thread-safe, so the workers share the connection.
- The connection is opened lazily, in a worker, by the first call that needs
  it.  Remote connections get libvirt keepalive and are opened again when they
  die (libvirtd restarted, the network dropped): before each use when
  ``isAlive()`` says so, when libvirt's close callback said the connection
  closed, and after a call failed with VIR_ERR_NO_CONNECT or
  VIR_ERR_INVALID_CONN.  A failed reopen is not tried again before a backoff
  (1 s, doubling to 30 s) and only one worker reopens at a time: meanwhile
  calls fail at once with HypervisorUnavailable, so an unreachable host holds
  no worker threads and never the event loop.  A ``test:`` URI is never reopened: libvirt's test
  driver keeps the simulated host's state inside the connection object, and
  opening the same URI again gives a new, empty host.
- Lifecycle events: one registration per host, made again on a new connection.
"""

from __future__ import annotations

import _thread
import asyncio
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import libvirt
import structlog

from novalite import metrics
from novalite.virt.driver import HypervisorUnavailable, VirtError
from novalite.virt.libvirt import eventloop

__all__ = ["KEEPALIVE_COUNT", "KEEPALIVE_INTERVAL", "RECONNECT_BACKOFF", "LibvirtHost", "silence_libvirt_stderr"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

# libvirt keepalive for remote connections: a probe every 5 s, the connection is
# declared dead after 5 unanswered ones (libvirt's own client defaults).
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 5
# Seconds before the first retry of a failed (re)open, and the most it doubles to.
RECONNECT_BACKOFF = (1.0, 30.0)

# Error codes that mean the connection itself is gone, not the call.
_DEAD_CONNECTION = (libvirt.VIR_ERR_NO_CONNECT, libvirt.VIR_ERR_INVALID_CONN)

# Why libvirt closed a connection (virConnectCloseReason), for the log.
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "eof",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "client",
}

# Called in libvirt's event dispatch with (connection, domain, event, detail, opaque).
DomainEventHandler = Callable[[libvirt.virConnect, libvirt.virDomain, int, int, object], None]


def _log_libvirt_error(_ctx: object, err: tuple) -> None:
    """libvirt's error callback: each error as a debug line (code, domain, message), in the
    calling worker's context (request id, instance uuid); the call still raises libvirtError,
    which its caller handles or logs at the level it deserves."""
    log.debug("libvirt_error", code=err[0], domain=err[1], message=err[2])


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """On the loop: a worker's outcome into the caller's future (unless the caller gave up)."""
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class _Workers:
    """Up to ``max_threads`` threads taking calls from one queue, started as calls need them.

    What ``loop.run_in_executor`` on a ThreadPoolExecutor does, minus its per-call
    concurrent.futures.Future (a Condition and an RLock made, taken and notified for every
    call) chained to an asyncio future: a worker settles the caller's asyncio future through
    ``call_soon_threadsafe``. In a storm's builds those Futures and their chaining were a tenth
    of the event loop's time. A call whose caller was cancelled before it started is skipped,
    as the executor's would be.

    A worker is started with ``_thread.start_new_thread``, which returns once the thread exists:
    ``threading.Thread.start`` also waits until the new thread has run, and on a busy machine
    the event loop waited 0.25 ms a thread for that (up to 8 ms), a thousand times over when a
    storm first reached 1,000 hosts."""

    def __init__(self, max_threads: int) -> None:
        self._max = max_threads
        self._calls: queue.SimpleQueue = queue.SimpleQueue()
        self._running = 0  # workers started and not yet exited (each runs until shutdown)
        self._idle = 0  # workers that finished a call and wait for the next
        self._lock = threading.Lock()
        self._exited = threading.Condition(self._lock)

    def submit(self, loop: asyncio.AbstractEventLoop, ctx: contextvars.Context, fn: Callable[..., Any],
               *args: Any) -> asyncio.Future:
        future = loop.create_future()
        self._calls.put((loop, future, ctx, fn, args))
        with self._lock:
            if self._idle:
                self._idle -= 1
                return future
            if self._running >= self._max:
                return future
            self._running += 1
        try:
            _thread.start_new_thread(self._work, ())
        except BaseException:  # no thread (the process has run out of them)
            with self._lock:
                self._running -= 1
                alone = not self._running
            if alone:  # no worker would ever take the call: it is dropped (skipped if one starts later)
                future.cancel()
                raise
        return future

    def _work(self) -> None:
        try:
            while (call := self._calls.get()) is not None:
                loop, future, ctx, fn, args = call
                if not future.cancelled():
                    result, error = None, None
                    try:
                        result = ctx.run(fn, *args)
                    except BaseException as exc:  # the caller's to handle, as with an executor
                        error = exc
                    try:
                        loop.call_soon_threadsafe(_settle, future, result, error)
                    except RuntimeError:  # the loop is closed: nobody waits any more
                        pass
                with self._lock:
                    self._idle += 1
        finally:
            with self._lock:
                self._running -= 1
                self._exited.notify_all()

    def threads(self) -> int:
        """Worker threads started and not yet stopped."""
        with self._lock:
            return self._running

    def shutdown(self) -> None:
        """Let the queued and running calls finish, then stop every worker."""
        with self._lock:
            running = self._running
        for _ in range(running):
            self._calls.put(None)
        with self._exited:
            self._exited.wait_for(lambda: self._running == 0)


def silence_libvirt_stderr() -> None:
    """Stop libvirt printing every error to stderr: they go to the debug log instead
    (a process-wide setting; idempotent)."""
    libvirt.registerErrorHandler(_log_libvirt_error, None)


def call_name(fn: Callable[..., Any]) -> str:
    """A worker function's name as metrics label it: ``_spawn_sync`` is ``spawn``."""
    name = getattr(fn, "__name__", type(fn).__name__)
    return name.strip("_").removesuffix("_sync")


class LibvirtHost:
    """The connection and the worker pool of one libvirt URI; see the module docstring."""

    def __init__(self, uri: str, max_threads: int = 4, name: str | None = None) -> None:
        """``name``: the host as metrics label it (default: the URI)."""
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.uri = uri
        self.name = name or uri
        # The test driver opened in this process: the host lives in the connection.
        self.in_process = uri.startswith("test:")
        self._workers = _Workers(max_threads)
        self._conn: libvirt.virConnect | None = None
        self._stale = False  # a call saw the connection die: reopen before the next use
        self._lock = threading.Lock()
        self._reopen_lock = threading.Lock()  # one worker (re)opens; the others fail fast
        self._connected_once = False  # the first open is waited for by every caller
        self._retry_at = 0.0  # time.monotonic() before which no reopen is tried
        self._backoff = RECONNECT_BACKOFF[0]
        self._closed = False
        self._on_domain_event: DomainEventHandler | None = None
        self._event_callback_id: int | None = None
        silence_libvirt_stderr()

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------ calls in workers

    def worker_threads(self) -> int:
        """Threads this host's calls run in now (at most ``max_threads``)."""
        return self._workers.threads()

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Schedule ``fn(*args)`` on the pool, with the caller's contextvars; returns its future."""
        if self._closed:
            raise HypervisorUnavailable(f"host {self.uri} is closed")
        loop = asyncio.get_running_loop()
        eventloop.ensure_registered(loop)  # before the first connection opens
        return self._workers.submit(loop, contextvars.copy_context(), self._run, fn, args)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking libvirt code ``fn(*args)`` in a worker and return its result."""
        return await self.submit(fn, *args)

    def _run(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        started = time.perf_counter() if metrics.recording() else None
        try:
            return fn(*args)
        except (libvirt.libvirtError, VirtError) as exc:
            code = exc.get_error_code() if isinstance(exc, libvirt.libvirtError) else exc.code
            if code in _DEAD_CONNECTION and not self.in_process:
                self._stale = True
            raise
        finally:
            if started is not None:
                metrics.libvirt_call(self.name, call_name(fn), time.perf_counter() - started)

    # ------------------------------------------------------------ the connection

    def connection(self) -> libvirt.virConnect:
        """The host's connection, opened (or reopened when dead) on demand; worker threads only.

        Raises HypervisorUnavailable when it cannot be had now: the open failed, a reopen is
        in its backoff, or another worker is reopening it.
        """
        conn = self._conn
        if conn is not None and (self.in_process or (not self._stale and self._is_alive(conn))):
            return conn  # the usual case: no lock (isAlive is a local check, no round trip)
        if not self._reopen_lock.acquire(blocking=not self._connected_once):
            raise HypervisorUnavailable(f"host {self.uri} is being reconnected")
        try:
            with self._lock:
                if self._closed:
                    raise HypervisorUnavailable(f"host {self.uri} is closed")
                conn = self._conn
                if conn is not None and not self.in_process and (self._stale or not self._is_alive(conn)):
                    log.warning("libvirt_connection_lost", uri=self.uri)
                    self._forget(conn)
                    conn = None
            if conn is None:
                conn = self._open_with_backoff()
            return conn
        finally:
            self._reopen_lock.release()

    def _open_with_backoff(self) -> libvirt.virConnect:
        now = time.monotonic()
        if now < self._retry_at:
            raise HypervisorUnavailable(f"host {self.uri} is unreachable; next attempt in "
                                        f"{self._retry_at - now:.1f} s")
        try:
            conn = self._open()
        except HypervisorUnavailable:
            self._retry_at = time.monotonic() + self._backoff
            log.warning("libvirt_reconnect_failed", uri=self.uri, retry_in=self._backoff)
            self._backoff = min(self._backoff * 2, RECONNECT_BACKOFF[1])
            raise
        self._connected_once, self._retry_at, self._backoff = True, 0.0, RECONNECT_BACKOFF[0]
        return conn

    def _open(self) -> libvirt.virConnect:
        try:
            conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorUnavailable(
                f"cannot connect to {self.uri}: {exc.get_error_message()}", exc.get_error_code()
            ) from exc
        if not self.in_process:
            try:
                conn.setKeepAlive(KEEPALIVE_INTERVAL, KEEPALIVE_COUNT)
            except libvirt.libvirtError as exc:
                log.info("libvirt_keepalive_unavailable", uri=self.uri, error=exc.get_error_message())
            try:
                conn.registerCloseCallback(self._on_close, None)
            except libvirt.libvirtError as exc:
                log.info("libvirt_close_callback_unavailable", uri=self.uri, error=exc.get_error_message())
        with self._lock:
            self._conn, self._stale = conn, False
        if self._on_domain_event is not None:
            self._register(conn)
        log.info("libvirt_connected", uri=self.uri)
        return conn

    def _on_close(self, conn: libvirt.virConnect, reason: int, _opaque: object) -> None:
        """libvirt's close callback (its event loop): the connection is gone, reopen before the next use."""
        if conn is self._conn:
            self._stale = True
        log.warning("libvirt_connection_closed", uri=self.uri, reason=_CLOSE_REASONS.get(reason, reason))

    @staticmethod
    def _is_alive(conn: libvirt.virConnect) -> bool:
        try:
            return bool(conn.isAlive())
        except libvirt.libvirtError:
            return False

    def _forget(self, conn: libvirt.virConnect) -> None:
        """Drop a dead connection (its event registration died with it)."""
        self._conn, self._event_callback_id = None, None
        self._close_quietly(conn)

    def _close_quietly(self, conn: libvirt.virConnect) -> None:
        """Close a connection we are done with, its close callback first (it would only say "client")."""
        if not self.in_process:
            try:
                conn.unregisterCloseCallback()
            except libvirt.libvirtError:
                pass
        try:
            conn.close()
        except libvirt.libvirtError:
            pass

    async def is_alive(self) -> bool:
        """True while the connection answers (it is opened if it was not); never raises."""
        if self._closed:
            return False

        def probe() -> bool:
            conn = self.connection()
            try:
                conn.getLibVersion()  # one round trip on a remote connection
            except libvirt.libvirtError:
                self._stale = not self.in_process  # whatever the code: reopen before the next use
                raise
            return True

        try:
            return await self.call(probe)
        except (libvirt.libvirtError, VirtError):
            return False

    # ------------------------------------------------------------ lifecycle events

    async def watch_domain_events(self, handler: DomainEventHandler) -> None:
        """Deliver this host's domain lifecycle events to ``handler`` (one registration per host).

        ``handler`` runs in libvirt's event dispatch; a second call replaces the
        first handler.  A reopened connection is registered again.
        """
        def register() -> None:
            with self._lock:
                self._on_domain_event = handler
            conn = self.connection()
            with self._lock:
                if self._event_callback_id is None and conn is self._conn:
                    self._register(conn)

        await self.call(register)

    def _register(self, conn: libvirt.virConnect) -> None:
        def dispatch(c: libvirt.virConnect, dom: libvirt.virDomain, event: int, detail: int, opaque: object) -> None:
            handler = self._on_domain_event  # the latest one, should it have been replaced
            if handler is not None:
                handler(c, dom, event, detail, opaque)

        try:
            self._event_callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, dispatch, None
            )
        except libvirt.libvirtError as exc:
            raise VirtError(f"cannot subscribe to domain events of {self.uri}: {exc.get_error_message()}",
                            exc.get_error_code()) from exc

    # ------------------------------------------------------------ close

    async def close(self) -> None:
        """Refuse new calls, wait for in-flight ones, close the connection; idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._shutdown_sync)

    def _shutdown_sync(self) -> None:
        self._workers.shutdown()  # lets in-flight calls finish
        with self._lock:
            conn, self._conn = self._conn, None
            callback_id, self._event_callback_id = self._event_callback_id, None
        if conn is None:
            return
        try:
            if callback_id is not None:
                conn.domainEventDeregisterAny(callback_id)
        except libvirt.libvirtError:
            log.warning("libvirt_close_failed", uri=self.uri)
        self._close_quietly(conn)

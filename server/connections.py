"""Connection limits that uvicorn lacks: timeouts on reading a request, a header size, a connection cap.

uvicorn (0.54, httptools) times out a keep-alive connection only when it is idle after a response.
A request whose headers or body never finish holds its socket forever: about 21,000 sockets that
each sent half a request exhausted the process's file descriptors, and every normal request failed.
Headers had no size limit either: httptools concatenates a header's pieces as they arrive (quadratic),
and one 128 MB header held the event loop for 15 s.

`protocol_for(limits)` returns uvicorn's httptools protocol with these limits, for `uvicorn.run(http=...)`:

- header timeout: from the connection's start, or from a new request's first byte after a response,
  until its headers are complete -> 408 and close. An idle keep-alive connection keeps uvicorn's own
  keep-alive timeout.
- body timeout: from the headers until the body is complete -> 408 and close (only close, when a
  response has already started). Waits that are the server's own (the app has not asked for the
  body yet: `Expect: 100-continue`, reading paused) do not count.
- header size: the bytes read before the headers are complete (request line and headers) over
  `max_header_bytes`, or more than `max_headers` header lines -> 431 and close, reading no further.
  A pipelined request's first read is counted from its next one: it may exceed by one read.
- connection cap: past `max_connections`, the connection idle longest with no request in flight
  (partial headers, or idle between requests) is closed, with a 408 when it had begun a request.
  When every connection has a request in flight, the newcomer gets 503 and is closed.

Every reply here is the project's error shape (`server.errors.body`) with `connection: close`. Each
timeout, rejection, eviction and refusal is one log line, never a traceback.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections import OrderedDict
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
import msgspec
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from server.errors import Overloaded, body

if TYPE_CHECKING:
    from server.settings import Settings

log = logging.getLogger("kiln.server.connections")

BACKLOG = 2048  # uvicorn's default; asyncio accepts up to this many sockets at once, before any is counted
FD_RESERVE = 256  # descriptors left for the model's files, logs, pipes and what libraries open


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 1024

    def __post_init__(self) -> None:
        for field in fields(self):
            if not getattr(self, field.name) > 0:
                raise ValueError(f"{field.name} must be positive, not {getattr(self, field.name)!r}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(**{field.name: getattr(settings, field.name) for field in fields(cls)})


def raise_fd_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (often 1024 against 2**20), and return it.

    Every connection is a file descriptor; the soft limit, not the cap, would otherwise decide when
    accepting fails. Where the hard limit is unlimited, 65536 is asked for.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.info("could not raise the open file limit from %d to %d: %s", soft, target, exc)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def within_fd_limit(limits: ConnectionLimits, nofile: int) -> tuple[ConnectionLimits, int]:
    """The limits with `max_connections` clamped under the descriptor limit, and the listen backlog.

    At the peak, the process holds the capped connections, one accept batch (the backlog) not yet
    counted, and its own files: all three must fit under `nofile`. A small limit gets a smaller
    backlog rather than no room for connections.
    """
    backlog = min(BACKLOG, max(16, nofile // 8))
    room = max(1, nofile - FD_RESERVE - backlog)
    if limits.max_connections > room:
        log.warning(
            "max_connections %d does not fit under the open file limit %d: using %d",
            limits.max_connections,
            nofile,
            room,
        )
        limits = replace(limits, max_connections=room)
    return limits, backlog


class _TooManyHeaders(Exception):
    """Raised from a parser callback: it stops httptools in the middle of a read."""


class _Connections:
    """One server's open connections, and those with no request in flight, least recently active first."""

    def __init__(self) -> None:
        self.open: set[LimitedHttpProtocol] = set()
        self.idle: OrderedDict[LimitedHttpProtocol, None] = OrderedDict()
        self.trim_pending = False

    def forget(self, connection: LimitedHttpProtocol) -> None:
        self.open.discard(connection)
        self.idle.pop(connection, None)

    def trim_soon(self, loop: asyncio.AbstractEventLoop, cap: int) -> None:
        """Evict down to `cap` once the reads already waiting have run.

        asyncio accepts a whole batch of sockets before any of them is read; evicting at once would
        close a client whose request is already in the socket buffer just because it is not read
        yet. A zero-delay timer runs after this loop iteration's reads, so a newcomer's request is
        in flight (not evictable) by then, while those that sent half a request remain idle.
        """
        if not self.trim_pending:
            self.trim_pending = True
            loop.call_later(0, self._trim, cap)

    def _trim(self, cap: int) -> None:
        self.trim_pending = False
        while len(self.open) > cap and self.idle:
            victim, _ = self.idle.popitem(last=False)
            victim.evict()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with read timeouts, a header size limit and a connection cap."""

    # set by `protocol_for`, per server
    limits: ClassVar[ConnectionLimits]
    registry: ClassVar[_Connections]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timer: asyncio.TimerHandle | None = None
        self.body_timer: asyncio.TimerHandle | None = None
        self.awaiting_headers = True  # until the headers of the next request are complete
        self.reading_body = False
        self.header_bytes = 0
        self.header_lines = 0
        self.requests = 0  # headers completed so far
        self.done = False  # closed by us, or handed over: no longer tracked

    # connection life

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        registry, cap = self.registry, self.limits.max_connections
        if len(registry.open) >= cap and not registry.idle:
            self._log(logging.INFO, "503: all %d connections have a request in flight", cap)
            message = f"the server is at its limit of {cap} connections, all busy; retry shortly"
            self._shut(self._reply(503, message, Overloaded.error_type, (b"retry-after", b"1")))
            return
        registry.open.add(self)
        registry.idle[self] = None
        self._arm_header_timer()
        if len(registry.open) > cap:
            registry.trim_soon(self.loop, cap)

    def connection_lost(self, exc: Exception | None) -> None:
        self.done = True
        self._cancel_timers()
        self.registry.forget(self)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        self.done = True
        self._cancel_timers()
        self.registry.forget(self)
        super().handle_websocket_upgrade()

    def evict(self) -> None:
        """Make room for a newer connection: a begun request learns why, an idle connection just closes."""
        if self.awaiting_headers and self.header_bytes:
            self._log(
                logging.DEBUG, "evicted with a partial request (connection cap %d): 408", self.limits.max_connections
            )
            message = "the server needed this connection for another, and the request's headers were not complete"
            self._shut(self._reply(408, message, "request_timeout"))
        else:
            self._log(logging.DEBUG, "evicted while idle (connection cap %d)", self.limits.max_connections)
            self._shut(None)

    # reading

    def data_received(self, data: bytes) -> None:
        if self.done:
            return
        if self.awaiting_headers:
            if not self._in_flight():
                self._arm_header_timer()
            room = self.limits.max_header_bytes - self.header_bytes
            if len(data) > room:
                # read up to the limit: past it only the same request's headers are too large
                requests = self.requests
                self.header_bytes += room
                if not self._feed(data[:room]):
                    return
                if self.requests == requests:
                    self._too_large(
                        f"the request line and headers are larger than this server's limit of "
                        f"{self.limits.max_header_bytes} bytes"
                    )
                    return
                data = data[room:]
            else:
                self.header_bytes += len(data)
        if data and not self._feed(data):
            return
        self._settle()

    def _feed(self, data: bytes) -> bool:
        """uvicorn's `data_received`, with a 431 for too many headers; False when the connection is done."""
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.header_lines > self.limits.max_headers:
                self._too_large(
                    f"the request has more header lines than this server's limit of {self.limits.max_headers}"
                )
            else:
                self._log(logging.INFO, "400: invalid HTTP request")
                self.send_400_response("Invalid HTTP request received.")
            return False
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        return not self.done and not self.transport.is_closing()

    def on_message_begin(self) -> None:
        self.header_lines = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_lines += 1
        if self.header_lines > self.limits.max_headers:
            raise _TooManyHeaders
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.requests += 1
        self.awaiting_headers = False
        self.reading_body = True
        if self.header_timer is not None:
            self.header_timer.cancel()
            self.header_timer = None
        self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self.reading_body = False
        self.awaiting_headers = True
        self.header_bytes = 0
        if self.body_timer is not None:
            self.body_timer.cancel()
            self.body_timer = None
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.done or self.transport.is_closing():
            return
        if self.awaiting_headers and self.header_bytes and not self._in_flight():
            self._arm_header_timer()  # the next request had begun while this one was served
        self._settle()

    # timeouts and refusals

    def _arm_header_timer(self) -> None:
        if self.header_timer is None and not self.done:
            self.header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def _header_timeout(self) -> None:
        self.header_timer = None
        if self.done or not self.awaiting_headers or self._in_flight():
            return
        seconds = self.limits.header_timeout_s
        self._log(logging.INFO, "408: no complete request headers within %g s", seconds)
        self._shut(self._reply(408, f"the request's headers did not arrive within {seconds:g} s", "request_timeout"))

    def _body_timeout(self) -> None:
        self.body_timer = None
        if self.done or not self.reading_body:
            return
        cycle = self.cycle
        if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
            # the server has not asked for the body yet: the wait is not the client's
            self.body_timer = self.loop.call_later(self.limits.body_timeout_s, self._body_timeout)
            return
        seconds = self.limits.body_timeout_s
        self._log(logging.INFO, "408: request body incomplete after %g s", seconds)
        self._shut(self._reply(408, f"the request's body did not arrive within {seconds:g} s", "request_timeout"))

    def _too_large(self, message: str) -> None:
        self._log(logging.INFO, "431: %s", message)
        self._shut(self._reply(431, message, "headers_too_large"))

    def _reply(self, status: int, message: str, kind: str, *extra: tuple[bytes, bytes]) -> bytes:
        payload = msgspec.json.encode(body(message, kind))
        headers = [
            *self.server_state.default_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(payload)).encode()),
            (b"connection", b"close"),
            *extra,
        ]
        return b"".join(
            [STATUS_LINE[status], *(name + b": " + value + b"\r\n" for name, value in headers), b"\r\n", payload]
        )

    def _shut(self, reply: bytes | None) -> None:
        """Close now, after `reply` unless a response has begun, and release the descriptor at once.

        The reply is dropped when it would follow part of a response, or answer a request that has
        its answer already (a body still arriving after an early response). A request the app
        already holds sees a disconnect. A client that reads nothing (the reply still buffered) is
        aborted rather than waited for: closing would keep its descriptor open.
        """
        if self.done:
            return
        self.done = True
        self._cancel_timers()
        self.registry.forget(self)
        cycle = self.cycle
        if cycle is not None:
            # awaiting headers, a completed cycle is the previous request's: the reply is for the next
            if cycle.response_started and not (self.awaiting_headers and cycle.response_complete):
                reply = None
            if not cycle.response_complete:
                cycle.disconnected = True
                cycle.message_event.set()
        transport = self.transport
        if transport.is_closing():
            return
        if reply:
            transport.write(reply)
        if transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()

    # bookkeeping

    def _in_flight(self) -> bool:
        cycle = self.cycle
        return self.reading_body or bool(self.pipeline) or (cycle is not None and not cycle.response_complete)

    def _settle(self) -> None:
        """File the connection as busy, or as idle and most recently active (evicted last)."""
        if self.done:
            return
        idle = self.registry.idle
        if self._in_flight():
            idle.pop(self, None)
        else:
            idle[self] = None
            idle.move_to_end(self)

    def _cancel_timers(self) -> None:
        for timer in (self.header_timer, self.body_timer):
            if timer is not None:
                timer.cancel()
        self.header_timer = self.body_timer = None

    def _log(self, level: int, message: str, *args: object) -> None:
        if log.isEnabledFor(level):
            peer = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
            log.log(level, "%s " + message, peer, *args)


def protocol_for(limits: ConnectionLimits) -> type[LimitedHttpProtocol]:
    """A protocol class for `uvicorn.run(http=...)` with these limits and its own set of connections.

    uvicorn instantiates the class itself (`config=`, `server_state=`, `app_state=`), so the limits
    travel as class attributes; a class per call keeps two servers in one process apart.
    """

    class Limited(LimitedHttpProtocol):
        pass

    Limited.limits = limits
    Limited.registry = _Connections()
    return Limited

"""Connection limits, through real sockets against a real `kiln serve` on 127.0.0.1.

Before `server.connections`, each of these hung or starved: a half-sent request was never answered
and held its descriptor forever, a stalled body likewise, a huge header was read whole, and idle
sockets accumulated until the process ran out of descriptors.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from server.connections import ConnectionLimits, raise_fd_limit, within_fd_limit
from server.settings import Settings
from tests.conftest import Server
from tests.support.text import build

HOST = "127.0.0.1"
PARTIAL = b"GET /health HTTP/1.1\r\nHost: x\r\n"  # one header line, never the blank line that ends them
FLOOD = 1500
CAP = 200
SMALL_CAP = 20


@pytest.fixture(scope="module", autouse=True)
def client_fds() -> Iterator[None]:
    """Room for this process's side of the flood: the default soft limit is often 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 512
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard)
        )
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny model compiled (a few seconds), not the session's whole `artifacts` set."""
    from compile import CompileOptions, Precision, Progress, compile_model

    root = tmp_path_factory.mktemp("connections")
    model = build("text-classification", "bert", root / "model")
    return compile_model(
        model, root / "artifact", CompileOptions(precision=Precision.FP32), Progress(quiet=True)
    ).directory


@pytest.fixture(scope="module")
def capped(artifact: Path, start_server: Callable[..., Server]) -> Iterator[Server]:
    """The default timeouts, a cap of 200 connections."""
    server = start_server(str(artifact), KILN_MAX_CONNECTIONS=str(CAP))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def quick(artifact: Path, start_server: Callable[..., Server]) -> Iterator[Server]:
    """1 s timeouts and a cap of 20, so that each limit shows within a second."""
    server = start_server(
        str(artifact), KILN_MAX_CONNECTIONS=str(SMALL_CAP), KILN_HEADER_TIMEOUT="1", KILN_BODY_TIMEOUT="1"
    )
    yield server
    server.stop()


def connect(server: Server, data: bytes = b"") -> socket.socket:
    sock = socket.create_connection((HOST, server.port), timeout=5)
    if data:
        sock.sendall(data)
    return sock


def read_reply(sock: socket.socket, timeout: float = 8) -> tuple[int, dict[str, str], bool]:
    """Status, JSON body, and whether the server closed the connection after it."""
    sock.settimeout(timeout)
    raw = b""
    closed = False
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                closed = True
                break
            raw += chunk
            head, _, rest = raw.partition(b"\r\n\r\n")
            lengths = [line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
            if lengths and len(rest) >= int(lengths[0].split(b":")[1]):
                closed = sock.recv(1) == b""
                break
    except ConnectionResetError:
        closed = True  # a close with our unread bytes still in the server's buffer is a reset
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head, "no response at all"
    return int(head.split()[1]), json.loads(rest), closed


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_sockets_do_not_starve_normal_requests(capped: Server) -> None:
    pid = capped.process.pid
    baseline = fd_count(pid)
    opened: list[socket.socket] = []
    peak = baseline
    flooding = threading.Event()
    flooding.set()

    def flood() -> None:
        try:
            for i in range(FLOOD):
                opened.append(connect(capped, PARTIAL))
                if i % 10 == 9:
                    time.sleep(0.01)  # about 2 s of opening, with requests in between
        finally:
            flooding.clear()
            during.append(len(latencies))

    def sample() -> None:
        nonlocal peak
        while flooding.is_set():
            peak = max(peak, fd_count(pid))
            time.sleep(0.002)

    threads = [threading.Thread(target=flood), threading.Thread(target=sample)]
    latencies: list[float] = []
    during: list[int] = []  # requests made while sockets were still being opened
    try:
        for thread in threads:
            thread.start()
        # a fresh connection for each request: a kept-alive idle one may rightly be evicted
        with httpx.Client(base_url=capped.url, timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as client:
            while flooding.is_set() or len(latencies) < 40:
                for method, path, payload in (("GET", "/health", None), ("POST", "/", {"inputs": "I like it"})):
                    start = time.perf_counter()
                    response = client.request(method, path, json=payload)
                    latencies.append(time.perf_counter() - start)
                    assert response.status_code == 200, response.text
        for thread in threads:
            thread.join(30)
        held = fd_count(pid)
    finally:
        flooding.clear()
        for sock in opened:
            sock.close()
    latencies.sort()
    print(
        f"\n{len(opened)} idle sockets, cap {CAP}: server fds baseline {baseline}, peak {peak}, held {held}; "
        f"{len(latencies)} requests meanwhile ({during[0]} while opening), "
        f"p50 {latencies[len(latencies) // 2] * 1000:.1f} ms, max {latencies[-1] * 1000:.1f} ms"
    )
    assert len(opened) == FLOOD
    assert max(latencies) < 2
    assert held <= baseline + CAP + 8
    assert peak <= baseline + CAP + 64  # asyncio accepts a batch before the cap sees it


def test_a_partial_request_gets_408_after_the_header_timeout(quick: Server) -> None:
    with connect(quick, PARTIAL) as sock:
        start = time.monotonic()
        status, body, closed = read_reply(sock)
        elapsed = time.monotonic() - start
    print(f"\n408 after {elapsed:.2f} s (header timeout 1 s)")
    assert (status, body["error_type"], closed) == (408, "request_timeout", True)
    assert 0.8 <= elapsed <= 5
    assert "error" in body


def test_a_stalled_body_gets_408_after_the_body_timeout(quick: Server) -> None:
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with connect(quick, request + b'{"inputs":') as sock:
        start = time.monotonic()
        status, body, closed = read_reply(sock)
        elapsed = time.monotonic() - start
    print(f"\nstalled body: 408 after {elapsed:.2f} s (body timeout 1 s)")
    assert (status, body["error_type"], closed) == (408, "request_timeout", True)
    assert 0.8 <= elapsed <= 5


def test_a_huge_header_gets_431_at_once(quick: Server) -> None:
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
    with socket.create_connection((HOST, quick.port), timeout=5) as sock:
        start = time.monotonic()
        # send beside reading: the server stops reading at its limit, so a plain sendall may not finish
        sender = threading.Thread(target=lambda: _send_quietly(sock, request))
        sender.start()
        status, body, closed = read_reply(sock)
        elapsed = time.monotonic() - start
        sender.join(5)
    print(f"\n1 MiB header: 431 after {elapsed * 1000:.1f} ms")
    assert (status, body["error_type"], closed) == (431, "headers_too_large", True)
    assert elapsed < 2
    start = time.monotonic()
    assert httpx.get(f"{quick.url}/health", timeout=5).status_code == 200
    assert time.monotonic() - start < 1


def test_too_many_header_lines_get_431(quick: Server) -> None:
    lines = b"".join(b"X-Header-%d: v\r\n" % i for i in range(150))
    with connect(quick, b"GET /health HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n") as sock:
        status, body, closed = read_reply(sock)
    assert (status, body["error_type"], closed) == (431, "headers_too_large", True)
    assert httpx.get(f"{quick.url}/health", timeout=5, headers={f"X-Header-{i}": "v" for i in range(50)}).is_success


def test_at_the_cap_the_longest_idle_connection_makes_room(quick: Server) -> None:
    sockets: list[socket.socket] = []
    try:
        opened_at = time.monotonic()
        for _ in range(SMALL_CAP):
            sockets.append(connect(quick, PARTIAL))
        time.sleep(0.05)  # let the server read them: idle with a partial request each
        response = httpx.get(f"{quick.url}/health", timeout=5)
        assert response.status_code == 200
        status, body, closed = read_reply(sockets[0])
        evicted_after = time.monotonic() - opened_at
        newest_untouched = not select.select([sockets[-1]], [], [], 0)[0]
    finally:
        for sock in sockets:
            sock.close()
    print(f"\ncap {SMALL_CAP}: the oldest idle socket got {status} after {evicted_after:.2f} s")
    assert (status, body["error_type"], closed) == (408, "request_timeout", True)
    assert evicted_after < 0.7, "that was the header timeout, not an eviction"
    assert newest_untouched


def test_at_the_cap_with_every_request_in_flight_a_newcomer_gets_503(quick: Server) -> None:
    uploading = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"
    sockets: list[socket.socket] = []
    try:
        for _ in range(SMALL_CAP):
            sockets.append(connect(quick, uploading))
        time.sleep(0.1)  # read by the server: each is reading a body
        with connect(quick, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n") as newcomer:
            start = time.monotonic()
            status, body, closed = read_reply(newcomer)
            elapsed = time.monotonic() - start
    finally:
        for sock in sockets:
            sock.close()
    assert (status, body["error_type"], closed) == (503, "overloaded", True)
    assert elapsed < 0.7
    time.sleep(0.2)  # the uploads' sockets are closed: the next connection is served
    assert httpx.get(f"{quick.url}/health", timeout=5).status_code == 200


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closes after its 431, as it should
        sock.sendall(data)


def test_limits_come_from_the_environment_and_fit_under_the_fd_limit() -> None:
    env = {"KILN_HEADER_TIMEOUT": "2.5", "KILN_MAX_CONNECTIONS": "5000", "KILN_MAX_HEADERS": "7"}
    limits = ConnectionLimits.from_settings(Settings.from_env(env))
    assert (limits.header_timeout_s, limits.max_headers, limits.max_connections) == (2.5, 7, 5000)
    assert ConnectionLimits.from_settings(Settings()) == ConnectionLimits()
    with pytest.raises(ValueError, match="body_timeout_s must be positive"):
        ConnectionLimits(body_timeout_s=0)
    # 1024 descriptors: a smaller backlog, and the cap clamped under what is left
    clamped, backlog = within_fd_limit(limits, 1024)
    assert backlog == 128 and clamped.max_connections == 1024 - 256 - 128
    assert within_fd_limit(limits, 1 << 20) == (limits, 2048)


def test_the_soft_fd_limit_is_raised_to_the_hard_one() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.fail(f"the hard open file limit {hard} leaves nothing to test")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raised = raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised > 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

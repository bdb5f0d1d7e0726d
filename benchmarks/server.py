"""The server under load on 127.0.0.1: overhead over in-process calls, throughput and tail
latency by concurrency, cold start and resident memory; kiln against the PyTorch path.

Load is bounded in count and time: each level runs for a fixed time or a fixed number of
requests, whichever ends first, and every client stops by itself.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]

REQUEST_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Process:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    cold_start_s: float
    rss_mb: float

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start(
    name: str, command: list[str], env: dict[str, str], port: int, timeout: float = 300, log: Path | None = None
) -> Process:
    """Start a server and time it from process start to its first `/health` 200; its output goes
    to `log` when given, else nowhere."""
    url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    with open(log or os.devnull, "ab") as output:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=output, stderr=output)
    while time.monotonic() - began < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.02)
    else:
        process.kill()
        raise RuntimeError(f"{name} was not healthy after {timeout} s")
    cold = time.monotonic() - began
    return Process(name, process, url, cold, rss_mb(process.pid))


def kiln(
    artifact: Path, cache: Path, *extra: str, env: dict[str, str] | None = None, log: Path | None = None
) -> Process:
    """`kiln serve ARTIFACT` on a free port of 127.0.0.1, offline, with `env` over this process's."""
    port = free_port()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "KILN_CACHE": str(cache), **(env or {})}
    command = [sys.executable, "-m", "kiln", "serve", str(artifact), "--port", str(port), *extra]
    return start("kiln", command, environment, port, log=log)


def pytorch(model: Path, task: str) -> Process:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "benchmarks.baseline_server", str(model), task, str(port)]
    return start("pytorch", command, env, port)


@dataclass
class Level:
    server: str
    concurrency: int
    requests: int
    seconds: float
    throughput_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class _Sample:
    """What one stretch of load saw: each 200's latency (ms), every status, the seconds it took."""

    latencies: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    elapsed: float = 0.0

    def level(self, server: str, concurrency: int) -> Level:
        ok = self.latencies or [float("nan")]
        return Level(
            server,
            concurrency,
            self.statuses.total(),
            self.elapsed,
            len(self.latencies) / self.elapsed,
            statistics.median(ok),
            float(np.percentile(ok, 95)),
            float(np.percentile(ok, 99)),
            dict(self.statuses),
        )


def _request(url: str, body: dict[str, Any]) -> tuple[str, int, bytes]:
    """Host, port and the bytes of one keep-alive `POST /` of `body` as JSON, made once per run."""
    host, _, port = url.removeprefix("http://").partition(":")
    payload = json.dumps(body).encode()
    head = (
        f"POST / HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    )
    return host, int(port), head.encode() + payload


async def _response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response whole: its status, and whether the server keeps the connection open."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if "content-length" not in headers:  # both servers measured here answer with a length
        raise ValueError(f"an answer without Content-Length: {lines[0]}")
    await reader.readexactly(int(headers["content-length"]))
    return status, headers.get("connection", "").lower() != "close"


async def _load(
    url: str, body: dict[str, Any], concurrency: int, seconds: float, max_requests: int, into: _Sample
) -> None:
    """`concurrency` clients, each one keep-alive connection sending the same request again as soon
    as the answer is in. The client is a few lines over asyncio streams, made to cost the machine
    little: httpx's pool spent up to 10 ms of CPU per request at 64 connections here, on the two
    cores the server needed (and more when answers came in bursts, as batching makes them)."""
    latencies, statuses = into.latencies, into.statuses
    host, port, request = _request(url, body)
    deadline = time.monotonic() + seconds
    issued = 0

    async def client() -> None:
        nonlocal issued
        connection: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while time.monotonic() < deadline and issued < max_requests:
                issued += 1
                start = time.perf_counter()
                try:
                    if connection is None:
                        connection = await asyncio.open_connection(host, port)
                    reader, writer = connection
                    writer.write(request)
                    status, keep = await asyncio.wait_for(_response(reader), REQUEST_TIMEOUT_S)
                except TimeoutError:
                    statuses["timeout"] += 1
                    keep = False
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
                    statuses["connection error"] += 1
                    keep = False
                else:
                    statuses[str(status)] += 1
                    if status == 200:
                        latencies.append((time.perf_counter() - start) * 1000)
                if not keep and connection is not None:
                    connection[1].close()
                    connection = None
        finally:
            if connection is not None:
                connection[1].close()

    began = time.monotonic()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    into.elapsed += time.monotonic() - began


def load(server: Process, body: dict[str, Any], concurrency: int, seconds: float, max_requests: int = 5000) -> Level:
    sample = _Sample()
    asyncio.run(_load(server.url, body, concurrency, seconds, max_requests, sample))
    return sample.level(server.name, concurrency)


def alternate(
    servers: list[Process],
    body: dict[str, Any],
    concurrency: int,
    seconds: float,
    slices: int = 4,
    max_requests: int = 5000,
) -> list[Level]:
    """`load` on each server for `seconds` in all, cut into `slices` taken in turn (a, b, b, a, a,
    b, ...), so that what a busy machine does meanwhile falls on every server alike. Each slice
    ends by waiting for its requests in flight: where latency is a good part of a slice, that
    tail lowers the throughput measured, so cut only where requests are short against a slice."""
    samples = [_Sample() for _ in servers]
    order = list(range(len(servers)))
    for turn in range(slices):
        for i in order if turn % 2 == 0 else order[::-1]:
            run = _load(servers[i].url, body, concurrency, seconds / slices, max_requests // slices, samples[i])
            asyncio.run(run)
    return [sample.level(server.name, concurrency) for server, sample in zip(servers, samples)]


def metrics(server: Process) -> dict[str, float]:
    """The server's unlabelled Prometheus samples (`kiln_items_total`, `..._sum`, `..._count`),
    and labelled ones under their full line name (`kiln_requests_total{status="200",...}`)."""
    text = httpx.get(server.url + "/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def mean_per_call(before: dict[str, float], after: dict[str, float], histogram: str) -> float:
    """A histogram's mean over what happened between two readings of `metrics` (nan if nothing)."""
    calls = after.get(f"{histogram}_count", 0.0) - before.get(f"{histogram}_count", 0.0)
    total = after.get(f"{histogram}_sum", 0.0) - before.get(f"{histogram}_sum", 0.0)
    return total / calls if calls else float("nan")


def http_latency(server: Process, body: dict[str, Any], count: int) -> list[float]:
    """One client, keep-alive, sequential: what a request costs end to end."""
    with httpx.Client(timeout=30) as client:
        for _ in range(10):
            client.post(server.url + "/", json=body)
        times = []
        for _ in range(count):
            start = time.perf_counter()
            client.post(server.url + "/", json=body).raise_for_status()
            times.append((time.perf_counter() - start) * 1000)
    return times

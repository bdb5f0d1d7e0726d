"""The server under load on 127.0.0.1: overhead over in-process calls, throughput and tail
latency by concurrency, cold start and resident memory; kiln against the PyTorch path.

Load is bounded in count and time: each level runs for a fixed time or a fixed number of
requests, whichever ends first, and every client stops by itself.
"""

from __future__ import annotations

import asyncio
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


def start(name: str, command: list[str], env: dict[str, str], port: int, timeout: float = 300) -> Process:
    """Start a server and time it from process start to its first `/health` 200."""
    url = f"http://127.0.0.1:{port}"
    began = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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


def kiln(artifact: Path, cache: Path, *extra: str, env: dict[str, str] | None = None) -> Process:
    port = free_port()
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "KILN_CACHE": str(cache), **(env or {})}
    command = [sys.executable, "-m", "kiln", "serve", str(artifact), "--port", str(port), *extra]
    return start("kiln", command, environment, port)


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
    p99_ms: float
    statuses: dict[str, int] = field(default_factory=dict)


async def _load(url: str, body: dict[str, Any], concurrency: int, seconds: float, max_requests: int) -> Level:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + seconds
    issued = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal issued
            while time.monotonic() < deadline and issued < max_requests:
                issued += 1
                start = time.perf_counter()
                try:
                    response = await client.post(url + "/", json=body)
                    statuses[str(response.status_code)] += 1
                    if response.status_code == 200:
                        latencies.append((time.perf_counter() - start) * 1000)
                except httpx.TimeoutException:
                    statuses["timeout"] += 1
                except httpx.TransportError:
                    statuses["connection error"] += 1

        began = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - began
    ok = latencies or [float("nan")]
    return Level(
        "",
        concurrency,
        sum(statuses.values()),
        elapsed,
        len(latencies) / elapsed,
        statistics.median(ok),
        float(np.percentile(ok, 99)),
        dict(statuses),
    )


def load(server: Process, body: dict[str, Any], concurrency: int, seconds: float, max_requests: int = 5000) -> Level:
    level = asyncio.run(_load(server.url, body, concurrency, seconds, max_requests))
    level.server = server.name
    return level


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

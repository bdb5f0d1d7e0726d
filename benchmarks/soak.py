"""A soak run of a real `kiln serve`: many clients for minutes, valid, invalid and abandoned
requests mixed, then a verdict. Not part of CI or `kiln bench`.

    python -m benchmarks.soak [--minutes 10] [--clients 64] [--model DIR]

The server is started on a free port of 127.0.0.1 and serves MODEL (an artifact, or a model that
is compiled first into kiln's cache, as `kiln serve` would; default: the packaged
all-MiniLM-L6-v2, a sentence-embedding model). Client 0 stalls: it sends half a request and waits
for the server's 408 (header and body timeouts). The other clients loop over a weighted mix:

- valid: `POST /`, `/embed`, `/v1/embeddings` (floats, base64, `dimensions`), `/tokenize`,
  `/similarity`, `/health`; one text or lists of up to 8, from one word to past the model's
  window; each answer's vectors are checked against the text's vector computed alone before the
  run (batching must give every request its own answer);
- invalid: bad JSON, wrong types, unknown parameters, empty lists, a body over the size limit, a
  text too long for `/tokenize` or with truncation off, more inputs than a request may hold, a
  content type the task cannot take: each must get its own 4xx;
- abandoned: raw sockets that close mid-headers, mid-body, or after sending a whole request
  without reading the answer.

Bounded in time and count: every client stops at the deadline or after `--max-requests` in all;
every request has its own timeout, and one that runs past it counts as hung. The server's
resident memory (VmRSS) is read every `--sample` seconds; growth is measured from the end of the
warm-up (the first minute) to the end of the run, as medians of three samples.

Exit status 1 when the run fails: any 5xx (seen by a client or counted by the server), any hung
request (a client timeout, or work still in flight in the server after the run), RSS growth over
`--max-growth` percent, a wrong answer, a status other than the expected ones, or a server that
died. 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks import server

TOLERANCE = 1e-4  # max |difference| of a vector under load to the same text's vector alone
MARGIN_S = 10.0  # what a stalled request may take past the server's own timeout
WORDS = ["the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "while", "weather", "in", "London",
         "rainy", "and", "cold", "café", "naïve", "日本語の文", "emoji 🙂", "Zürich", "Ωmega", "x" * 40]  # fmt: skip


def texts() -> list[str]:
    """The texts requests are made of: one word to past the model's window (256 tokens; the
    longest stays under what `/tokenize` takes, 4 windows), some not ASCII."""
    pool = random.Random(7)
    lengths = [1, 2, 3, 5, 8, 12, 16, 24, 32, 48, 96, 300]
    return [" ".join(pool.choice(WORDS) for _ in range(n)) for n in lengths]


@dataclass
class Outcome:
    scenario: str
    status: str  # an HTTP status, "closed" (the client hung up on purpose), "hung", "no answer"
    seconds: float
    wrong: bool = False


@dataclass
class Context:
    url: str
    host: str
    port: int
    http: httpx.AsyncClient
    texts: list[str]
    reference: np.ndarray  # the vector of each text, asked alone before the run
    header_timeout_s: float
    body_timeout_s: float


Check = Callable[[Any], bool]


@dataclass(frozen=True)
class Request:
    """What one scenario sends: a route and a body, the statuses it may get, and how to check a 200."""

    route: str
    body: bytes
    expect: frozenset[str]
    check: Check | None = None
    content_type: str = "application/json"
    method: str = "POST"


@dataclass(frozen=True)
class Scenario:
    """A kind of request: an HTTP one (`make`), or one on a raw socket (`raw`, which returns the
    status it got, or "closed" when it hung up on purpose) with the statuses it may get."""

    name: str
    weight: float
    make: Callable[[Context, random.Random], Request] | None = None
    raw: Callable[[Context, random.Random], Awaitable[str]] | None = None
    expect: frozenset[str] = frozenset()


OK = frozenset({"200", "429"})  # a full queue may answer 429 at once: allowed, and counted


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def _pick(ctx: Context, rng: random.Random, most: int = 8) -> list[int]:
    return [rng.randrange(len(ctx.texts)) for _ in range(rng.randint(1, most))]


def _vectors_match(ctx: Context, picked: list[int]) -> Check:
    def check(vectors: Any) -> bool:
        got = np.asarray(vectors, dtype=np.float64)
        want = ctx.reference[picked]
        return bool(got.shape == want.shape and np.abs(got - want).max() <= TOLERANCE)

    return check


def predict(ctx: Context, rng: random.Random) -> Request:
    picked = _pick(ctx, rng)
    one = rng.random() < 0.5
    inputs: Any = ctx.texts[picked[0]] if one else [ctx.texts[i] for i in picked]
    return Request("/", _json({"inputs": inputs}), OK, _vectors_match(ctx, picked[:1] if one else picked))


def embed(ctx: Context, rng: random.Random) -> Request:
    picked = _pick(ctx, rng)
    body: dict[str, Any] = {"inputs": [ctx.texts[i] for i in picked]}
    if rng.random() < 0.25:
        body |= {"normalize": False, "dimensions": 128}
        return Request("/embed", _json(body), OK, lambda v: np.asarray(v).shape == (len(picked), 128))
    return Request("/embed", _json(body), OK, _vectors_match(ctx, picked))


def openai(ctx: Context, rng: random.Random) -> Request:
    picked = _pick(ctx, rng)
    if rng.random() < 0.3:
        body = {"input": [ctx.texts[i] for i in picked], "encoding_format": "base64", "dimensions": 64}

        def decoded(answer: Any) -> bool:
            data = answer["data"]
            return len(data) == len(picked) and all(len(base64.b64decode(d["embedding"])) == 64 * 4 for d in data)

        return Request("/v1/embeddings", _json(body), OK, decoded)
    match = _vectors_match(ctx, picked)
    body = {"input": [ctx.texts[i] for i in picked], "model": "soak"}
    return Request("/v1/embeddings", _json(body), OK, lambda a: match([d["embedding"] for d in a["data"]]))


def tokenize(ctx: Context, rng: random.Random) -> Request:
    picked = _pick(ctx, rng, 4)
    body: dict[str, Any] = {"inputs": [ctx.texts[i] for i in picked], "add_special_tokens": rng.random() < 0.5}
    return Request("/tokenize", _json(body), OK, lambda a: len(a) == len(picked))


def similarity(ctx: Context, rng: random.Random) -> Request:
    picked = _pick(ctx, rng, 8)
    inputs = {"source_sentence": ctx.texts[0], "sentences": [ctx.texts[i] for i in picked]}
    return Request("/similarity", _json({"inputs": inputs}), OK, lambda a: len(a) == len(picked))


def health(ctx: Context, rng: random.Random) -> Request:
    return Request("/health", b"", frozenset({"200"}), method="GET")


def refused(
    route: str, body: bytes | str, status: int, content_type: str = "application/json", weight: float = 1.0
) -> Scenario:
    """An invalid request and the status it must get."""
    data = body.encode() if isinstance(body, str) else body
    expect = frozenset({str(status)})
    label = data[:40].decode(errors="replace") if len(data) < 100 else f"{data[:14].decode()}... ({len(data):,} bytes)"
    if content_type != "application/json":
        label += f" as {content_type}"
    return Scenario(f"{route} {label}", weight, lambda ctx, rng: Request(route, data, expect, None, content_type))


async def _raw(ctx: Context, data: bytes, read: float = 0, linger: float = 0) -> str:
    """Send `data` on a new connection; then wait up to `read` s for a status line, or (`read` 0)
    hang up after `linger` s without reading."""
    reader, writer = await asyncio.open_connection(ctx.host, ctx.port)
    try:
        writer.write(data)
        await writer.drain()
        if not read:
            await asyncio.sleep(linger)
            return "closed"
        line = await asyncio.wait_for(reader.readline(), read)
        parts = line.split()
        return parts[1].decode() if len(parts) > 1 else "no answer"
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


def _head(route: str, length: int) -> bytes:
    return (
        f"POST {route} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def close_mid_headers(ctx: Context, rng: random.Random) -> str:
    return await _raw(ctx, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Ty")


async def close_mid_body(ctx: Context, rng: random.Random) -> str:
    body = _json({"inputs": [ctx.texts[i] for i in _pick(ctx, rng)]})
    return await _raw(ctx, _head("/", len(body)) + body[: len(body) // 2])


async def close_before_answer(ctx: Context, rng: random.Random) -> str:
    """A whole request, then a hang-up while the server works on it."""
    body = _json({"inputs": [ctx.texts[i] for i in _pick(ctx, rng)]})
    return await _raw(ctx, _head(rng.choice(["/", "/embed"]), len(body)) + body, linger=rng.uniform(0, 0.02))


async def stall_headers(ctx: Context, rng: random.Random) -> str:
    return await _raw(ctx, b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\n", ctx.header_timeout_s + MARGIN_S)


async def stall_body(ctx: Context, rng: random.Random) -> str:
    body = _json({"inputs": ctx.texts[3]})
    return await _raw(ctx, _head("/", len(body)) + body[:5], ctx.body_timeout_s + MARGIN_S)


def _raw_scenario(
    name: str, weight: float, run: Callable[[Context, random.Random], Awaitable[str]], expect: str
) -> Scenario:
    return Scenario(name, weight, raw=run, expect=frozenset({expect}))


LONG = " ".join(["word"] * 2000)
SCENARIOS = [
    Scenario("POST / (a text or a list)", 20, predict),
    Scenario("/embed", 15, embed),
    Scenario("/v1/embeddings", 15, openai),
    Scenario("/tokenize", 6, tokenize),
    Scenario("/similarity", 4, similarity),
    Scenario("GET /health", 2, health),
    refused("/", '{"inputs": "abc', 400),
    refused("/", '{"inputs": 5}', 400),
    refused("/", '{"inputs": ["a", 3]}', 400),
    refused("/", '{"inputs": []}', 400),
    refused("/", '{"inputs": "a", "parameters": {"bogus": 1}}', 400),
    refused("/", json.dumps({"inputs": LONG, "parameters": {"truncation": False}}), 422),
    refused("/", json.dumps({"inputs": ["a"] * 65}), 413),
    refused("/", b'{"inputs": "' + b"a" * (5 << 20) + b'"}', 413, weight=0.05),  # over the 4 MiB limit
    refused("/", '{"inputs": "a"}', 415, content_type="text/plain"),
    refused("/embed", '{"inputs": []}', 400),
    refused("/embed", '{"inputs": 5}', 400),
    refused("/embed", '{"inputs": "a", "bogus": 1}', 400),
    refused("/v1/embeddings", '{"input": []}', 400),
    refused("/v1/embeddings", '{"input": [1, 2, 3]}', 400),
    refused("/v1/embeddings", '{"input": "a", "encoding_format": "hex"}', 400),
    refused("/tokenize", '{"inputs": []}', 400),
    refused("/tokenize", json.dumps({"inputs": LONG}), 422),
    _raw_scenario("closes mid-headers", 3, close_mid_headers, "closed"),
    _raw_scenario("closes mid-body", 3, close_mid_body, "closed"),
    _raw_scenario("closes before the answer", 4, close_before_answer, "closed"),
]
STALLS = [
    _raw_scenario("stalls mid-headers, waits for 408", 1, stall_headers, "408"),
    _raw_scenario("stalls mid-body, waits for 408", 1, stall_body, "408"),
]


async def attempt(ctx: Context, scenario: Scenario, rng: random.Random, timeout: float) -> Outcome:
    """One request, bounded by `timeout`: its status, time, and whether a 200 held the right answer."""
    start = time.perf_counter()
    wrong = False
    try:
        if scenario.raw is not None:
            status = await asyncio.wait_for(scenario.raw(ctx, rng), timeout)
            if status not in scenario.expect:
                status = f"{status} (unexpected)"
        else:
            assert scenario.make is not None
            request = scenario.make(ctx, rng)
            answer = await asyncio.wait_for(
                ctx.http.request(
                    request.method,
                    ctx.url + request.route,
                    content=request.body or None,
                    headers={"content-type": request.content_type},
                ),
                timeout,
            )
            status = str(answer.status_code)
            if status not in request.expect:
                status = f"{status} (unexpected)"
            elif status == "200" and request.check is not None:
                try:
                    wrong = not request.check(answer.json())
                except (ValueError, KeyError, TypeError):  # not JSON, or not the answer's shape
                    wrong = True
    except (TimeoutError, httpx.TimeoutException):
        status = "hung"
    except (httpx.TransportError, OSError):
        status = "no answer"
    return Outcome(scenario.name, status, time.perf_counter() - start, wrong)


@dataclass
class Run:
    outcomes: list[Outcome] = field(default_factory=list)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, MB)


async def soak(
    ctx: Context, pid: int, *, clients: int, seconds: float, max_requests: int, timeout: float, sample: float, seed: int
) -> Run:
    run = Run()
    began = time.monotonic()
    deadline = began + seconds

    async def client(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        stalling = index == 0 and clients > 1
        scenarios = STALLS if stalling else SCENARIOS
        weights = [s.weight for s in scenarios]
        limit = ctx.body_timeout_s + MARGIN_S + timeout if stalling else timeout
        while time.monotonic() < deadline and len(run.outcomes) < max_requests:
            (scenario,) = rng.choices(scenarios, weights)
            run.outcomes.append(await attempt(ctx, scenario, rng, limit))

    async def sampler() -> None:
        while True:
            try:
                run.rss.append((time.monotonic() - began, server.rss_mb(pid)))
            except OSError:  # the server is gone: the verdict says so
                return
            if time.monotonic() >= deadline:
                return
            await asyncio.sleep(min(sample, max(0.0, deadline - time.monotonic())))

    tasks = [asyncio.create_task(client(i)) for i in range(clients)]
    watcher = asyncio.create_task(sampler())
    # every request is bounded by its own timeout: past the longest, a client still running is hung
    done, pending = await asyncio.wait(tasks, timeout=seconds + ctx.body_timeout_s + MARGIN_S + timeout + 30)
    for task in pending:
        task.cancel()
        run.outcomes.append(Outcome("client task", "hung", float("nan")))
    for task in done:
        task.result()
    await watcher
    return run


def reference(url: str, pool: list[str]) -> np.ndarray:
    """Each text's vector, asked alone through `/embed` before the load starts."""
    with httpx.Client(timeout=60) as http:
        rows = []
        for text in pool:
            answer = http.post(url + "/embed", json={"inputs": text})
            answer.raise_for_status()
            rows.append(answer.json()[0])
    return np.asarray(rows, dtype=np.float64)


async def settled(process: server.Process, wait: float = 30) -> dict[str, float]:
    """The server's metrics once nothing is in flight or queued any more (or after `wait` s)."""
    end = time.monotonic() + wait
    while True:
        samples = server.metrics(process)
        if (samples.get("kiln_in_flight", 0) == 0 and samples.get("kiln_queue_depth", 0) == 0) or (
            time.monotonic() > end
        ):
            return samples
        await asyncio.sleep(0.5)


def growth(rss: list[tuple[float, float]], warmup: float) -> tuple[float, float, float]:
    """RSS after warm-up and at the end (medians of three samples), and the growth in %."""
    after = [mb for t, mb in rss if t >= warmup]
    if len(after) < 6:
        return float("nan"), float("nan"), float("nan")
    start, end = statistics.median(after[:3]), statistics.median(after[-3:])
    return start, end, (end - start) / start * 100


def _p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summary(run: Run, server_5xx: float, left_in_flight: float, warmup: float, alive: bool) -> dict[str, Any]:
    statuses = Counter(o.status for o in run.outcomes)
    five = sum(n for s, n in statuses.items() if s.startswith("5"))
    hung = statuses["hung"] + int(left_in_flight)
    unexpected = sum(n for s, n in statuses.items() if "unexpected" in s or s == "no answer")
    wrong = sum(o.wrong for o in run.outcomes)
    start, end, grew = growth(run.rss, warmup)
    ok = [o.seconds for o in run.outcomes if o.status == "200"]
    by_scenario: dict[str, Counter[str]] = defaultdict(Counter)
    times: dict[str, list[float]] = defaultdict(list)
    for o in run.outcomes:
        by_scenario[o.scenario][o.status] += 1
        times[o.scenario].append(o.seconds)
    return {
        "requests": len(run.outcomes),
        "statuses": dict(statuses.most_common()),
        "by_scenario": {
            name: {"statuses": dict(counts), "p50_ms": _p(times[name], 50), "p95_ms": _p(times[name], 95)}
            for name, counts in sorted(by_scenario.items(), key=lambda kv: -kv[1].total())
        },
        "5xx_clients": five,
        "5xx_server": int(server_5xx),
        "hung": hung,
        "unexpected": unexpected,
        "wrong_answers": wrong,
        "p50_ms": _p(ok, 50),
        "p95_ms": _p(ok, 95),
        "rss_mb": [[round(t, 1), round(mb, 1)] for t, mb in run.rss],
        "rss_after_warmup_mb": start,
        "rss_end_mb": end,
        "rss_peak_mb": max((mb for _, mb in run.rss), default=float("nan")),
        "rss_growth_pct": grew,
        "server_alive": alive,
    }


def verdict(result: dict[str, Any], max_growth: float) -> list[str]:
    """Why the run failed: empty when it passed."""
    reasons = []
    if result["5xx_clients"] or result["5xx_server"]:
        reasons.append(f"5xx answers: {result['5xx_clients']} seen, {result['5xx_server']} counted by the server")
    if result["hung"]:
        reasons.append(f"{result['hung']} hung requests")
    if result["rss_growth_pct"] > max_growth:  # nan: a run too short to tell
        reasons.append(f"RSS grew {result['rss_growth_pct']:.1f}% after warm-up (limit {max_growth:g}%)")
    if result["wrong_answers"]:
        reasons.append(f"{result['wrong_answers']} answers differ from the text's answer alone")
    if result["unexpected"]:
        reasons.append(f"{result['unexpected']} requests got an unexpected status or no answer")
    if not result["server_alive"]:
        reasons.append("the server died")
    return reasons


def report(result: dict[str, Any], reasons: list[str], say: Callable[[str], None]) -> None:
    say(f"{'scenario':56} {'requests':>8} {'p50 ms':>8} {'p95 ms':>8}  statuses")
    for name, row in result["by_scenario"].items():
        counts = row["statuses"]
        say(
            f"{name:56} {sum(counts.values()):>8} {row['p50_ms']:>8.1f} {row['p95_ms']:>8.1f}  "
            + ", ".join(f"{s}: {n}" for s, n in counts.items())
        )
    say(f"requests: {result['requests']}, by status: " + ", ".join(f"{s}: {n}" for s, n in result["statuses"].items()))
    say(f"5xx: {result['5xx_clients']} seen by clients, {result['5xx_server']} counted by the server (/metrics)")
    say(f"hung: {result['hung']} (client timeouts, and requests still in the server after the run)")
    say(f"wrong answers: {result['wrong_answers']}; unexpected statuses or no answer: {result['unexpected']}")
    say(f"latency of 200 answers: p50 {result['p50_ms']:.1f} ms, p95 {result['p95_ms']:.1f} ms")
    say(
        f"RSS: after warm-up {result['rss_after_warmup_mb']:.1f} MB, end {result['rss_end_mb']:.1f} MB, peak "
        f"{result['rss_peak_mb']:.1f} MB, growth after warm-up {result['rss_growth_pct']:+.2f}%"
    )
    say("RSS samples (s: MB): " + ", ".join(f"{t:.0f}: {mb:.0f}" for t, mb in result["rss_mb"]))
    say("PASS" if not reasons else "FAIL: " + "; ".join(reasons))


def healthy(process: server.Process) -> bool:
    try:
        return process.process.poll() is None and httpx.get(process.url + "/health", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


def artifact_of(model: str | None) -> Path:
    """The artifact `kiln serve MODEL` would load: compiled first into kiln's cache when needed."""
    from server.model import prepare
    from server.settings import Settings

    return prepare(Settings.from_env(model=model), say=lambda line: print(f"soak: {line}", flush=True))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10, help="how long the clients run (default: 10)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients (default: 64)")
    parser.add_argument("--model", help="an artifact or a model directory (default: the packaged all-MiniLM-L6-v2)")
    parser.add_argument("--warmup", type=float, default=1, help="minutes before RSS growth counts (default: 1)")
    parser.add_argument("--max-growth", type=float, default=5, help="RSS growth allowed, in %% (default: 5)")
    parser.add_argument("--timeout", type=float, default=30, help="seconds one request may take (default: 30)")
    parser.add_argument("--sample", type=float, default=5, help="seconds between RSS samples (default: 5)")
    parser.add_argument("--max-requests", type=int, default=2_000_000, help="stop after this many in all")
    parser.add_argument("--seed", type=int, default=0, help="the clients' random choices (default: 0)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    from server.settings import Settings

    settings = Settings.from_env()
    artifact = artifact_of(args.model)
    with tempfile.TemporaryDirectory(prefix="kiln-soak-") as tmp:
        log = Path(tmp) / "server.log"
        process = server.kiln(artifact, settings.cache_dir, log=log)
        try:
            precision = httpx.get(process.url + "/info", timeout=10).json().get("precision")
            print(f"soak: {artifact} ({precision}), pid {process.process.pid}, {process.url}, {args.clients} clients, "
                  f"{args.minutes:g} min", flush=True)  # fmt: skip
            pool = texts()
            host, port = process.url.removeprefix("http://").split(":")
            limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)

            async def go() -> tuple[Run, dict[str, float]]:
                async with httpx.AsyncClient(limits=limits, timeout=args.timeout) as http:
                    ctx = Context(
                        process.url, host, int(port), http, pool, reference(process.url, pool),
                        settings.header_timeout_s, settings.body_timeout_s,
                    )  # fmt: skip
                    run = await soak(
                        ctx, process.process.pid, clients=args.clients, seconds=args.minutes * 60,
                        max_requests=args.max_requests, timeout=args.timeout, sample=args.sample, seed=args.seed,
                    )  # fmt: skip
                    return run, await settled(process)

            run, after = asyncio.run(go())
            alive = healthy(process)
            server_5xx = sum(v for k, v in after.items() if k.startswith("kiln_requests_total{") and 'status="5' in k)
            left = after.get("kiln_in_flight", 0) + after.get("kiln_queue_depth", 0)
            result = summary(run, server_5xx, left, args.warmup * 60, alive)
        finally:
            process.stop()
        reasons = verdict(result, args.max_growth)
        report(result, reasons, print)
        if reasons:
            errors = [line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line]
            print("server log, errors:" if errors else "server log: no errors", *errors[-20:], sep="\n")
    if args.json:
        args.json.write_text(json.dumps({**result, "failures": reasons}, indent=2) + "\n")
    return 1 if reasons else 0


if __name__ == "__main__":
    sys.exit(main())

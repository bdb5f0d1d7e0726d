"""Run the hostile and careless requests of the hardening issues against a running server, and
print what each got: `python -m benchmarks.hostile http://127.0.0.1:8080 [--load SECONDS]`.

Every case names its expected outcome; the last column says whether it got it. Cases that do not
fit the served task (an embedding route on a chat server) are skipped. `--load` then runs 64
keep-alive clients for that many seconds and counts requests that got no answer (connections the
server closed while a client was sending on them).
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlparse

import httpx

DEEP = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@dataclass(frozen=True)
class Case:
    name: str
    route: str
    body: bytes
    expect: int
    content_type: str = "application/json"


CASES = [
    Case("invalid UTF-8 in a JSON string", "/", b'{"inputs": "\xff\xfe"}', 400),
    Case("latin-1 body declared as such", "/", '{"inputs": "café"}'.encode("latin-1"), 200,
         "application/json; charset=latin-1"),
    Case("an unknown charset", "/", b'{"inputs": "x"}', 415, "application/json; charset=klingon"),
    Case("JSON nested 100,000 deep", "/", DEEP, 400),
    Case("/embed with an empty list", "/embed", b'{"inputs": []}', 400),
    Case("/tokenize, invalid UTF-8", "/tokenize", b'{"inputs": "\xff"}', 400),
    Case("temperature 5e-324 with sampling", "/", b'{"inputs": "Hi", "parameters": {"temperature": 5e-324, '
         b'"do_sample": true, "max_new_tokens": 2}}', 200),
    Case("seed -1", "/", b'{"inputs": "Hi", "parameters": {"seed": -1, "do_sample": true, "max_new_tokens": 2}}', 200),
    Case("top_k -1", "/", b'{"inputs": "Hi", "parameters": {"top_k": -1, "max_new_tokens": 2}}', 400),
    Case("repetition_penalty 0", "/", b'{"inputs": "Hi", "parameters": {"repetition_penalty": 0}}', 400),
    Case("chat content as text parts", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_tokens": 2}', 200),
    Case("chat content, an image part", "/v1/chat/completions",
         b'{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}', 422),
    Case("chat content []", "/v1/chat/completions", b'{"messages": [{"role": "user", "content": []}]}', 400),
    Case("num_beams 1500", "/", b'{"inputs": "Hi", "parameters": {"num_beams": 1500, "max_new_tokens": 2}}', 422),
]  # fmt: skip


def raw(host: str, port: int, request: bytes, wait: float) -> tuple[str, float]:
    """The status line a raw request gets (or "no answer"), and the seconds it took."""
    start = time.monotonic()
    with socket.create_connection((host, port)) as sock:
        sock.settimeout(wait)
        sock.sendall(request)
        try:
            data = sock.recv(4096)
        except TimeoutError:
            data = b""
    line = data.split(b"\r\n", 1)[0].decode(errors="replace") or "no answer"
    return line, time.monotonic() - start


def run_cases(url: str, say: Callable[[str], None] = print) -> None:
    task = httpx.get(f"{url}/health", timeout=10).json().get("task", "?")
    say(f"server {url}, task {task}")
    say(f"{'case':44} {'want':>4} {'got':>4}  {'error_type':24} ok")
    for case in CASES:
        answer = httpx.post(
            url + case.route, content=case.body, headers={"content-type": case.content_type}, timeout=60
        )
        kind = answer.json().get("error_type", "") if answer.status_code >= 400 else ""
        if kind == "not_served" or (kind == "invalid_input" and case.expect == 200):
            say(f"{case.name:44} {case.expect:>4} {answer.status_code:>4}  {kind:24} (not this task)")
            continue
        say(f"{case.name:44} {case.expect:>4} {answer.status_code:>4}  {kind:24} {answer.status_code == case.expect}")
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    for name, request in (
        ("partial headers", b"GET /health HTTP/1.1\r\nHost: x\r\n"),
        ("Content-Length larger than the body", head + b"Content-Length: 1000\r\n\r\n{}"),
        ("a chunked body that never ends", head + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"inp\r\n'),
        ("HTTP/1.0 without Host", b"GET /health HTTP/1.0\r\n\r\n"),
    ):
        line, seconds = raw(host, port, request, wait=60)
        say(f"{name:44} {line:28} after {seconds:.1f} s")


async def load(url: str, seconds: float, clients: int = 64) -> tuple[int, int]:
    """Requests answered and requests that got no answer, from `clients` keep-alive clients."""
    done = failed = 0
    deadline = time.monotonic() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal done, failed
        while time.monotonic() < deadline:
            try:
                await http.get(f"{url}/health")
                done += 1
            except httpx.TransportError:
                failed += 1
            await asyncio.sleep(0.001 * (done % 7))  # idle gaps of varied length, as real clients leave

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return done, failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--load", type=float, default=0, help="seconds of 64 keep-alive clients afterwards")
    args = parser.parse_args()
    run_cases(args.url.rstrip("/"))
    if args.load:
        done, failed = asyncio.run(load(args.url.rstrip("/"), args.load))
        print(f"64 keep-alive clients for {args.load:.0f} s: {done} answered, {failed} without an answer")


if __name__ == "__main__":
    main()

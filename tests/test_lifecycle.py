"""Shutdown and the edges of trust: SIGTERM drains and exits 0, the token is compared in constant
time and never trips on odd bytes, CORS is off unless configured, request ids travel with every
answer and every error's log line, and nothing tells an outsider which server software runs."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server


@pytest.fixture(scope="module")
def guarded(artifacts: dict, start_server: Callable[..., Server]) -> Server:
    return start_server(str(artifacts["text-classification", "bert"]), KILN_API_TOKEN="s3cret")


def _health_once_draining(server: Server, within_s: float = 5.0) -> httpx.Response:
    """/health from the moment the server has taken the signal: the stream in flight must still be
    generating when the new request arrives, so no fixed sleep sits between the two."""
    deadline = time.monotonic() + within_s
    while (health := httpx.get(f"{server.url}/health", timeout=5)).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
    return health


def test_sigterm_drains_work_in_flight_then_exits_0(artifacts: dict, start_server: Callable[..., Server]) -> None:
    server = start_server(str(artifacts["text-generation", "llama"]), KILN_MAX_NEW_TOKENS="3000")
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 1500, "details": True}, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", server.url, json=body) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        server.process.send_signal(signal.SIGTERM)
        health = _health_once_draining(server)
        assert health.status_code == 503 and "shutting down" in health.json()["error"]
        refused = httpx.post(server.url, json={"inputs": "Hi", "parameters": {"max_new_tokens": 1}}, timeout=5)
        assert refused.status_code == 503
        events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    assert events[-1]["details"]["generated_tokens"] == 1500, "the stream in flight was cut"
    assert server.process.wait(timeout=15) == 0


def test_a_second_signal_stops_at_once(artifacts: dict, start_server: Callable[..., Server]) -> None:
    server = start_server(str(artifacts["text-generation", "llama"]), KILN_MAX_NEW_TOKENS="3000")
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 3000}, "stream": True}
    with httpx.Client(timeout=60) as client, client.stream("POST", server.url, json=body) as response:
        next(response.iter_lines())
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        server.process.send_signal(signal.SIGINT)
        server.process.wait(timeout=10)
    assert time.monotonic() - start < 5


def test_the_token_is_checked_and_odd_bytes_are_a_401(guarded: Server) -> None:
    ok = {"authorization": "Bearer s3cret"}
    assert httpx.post(guarded.url, json={"inputs": "Hi"}, headers=ok).status_code == 200
    assert httpx.post(guarded.url, json={"inputs": "Hi"}, headers={"authorization": "Bearer nope"}).status_code == 401
    with socket.create_connection(("127.0.0.1", guarded.port)) as raw:
        raw.sendall(b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\xe9\r\n\r\n")
        assert raw.recv(4096).startswith(b"HTTP/1.1 401")
    assert httpx.get(f"{guarded.url}/health").status_code == 200  # health stays open for probes


def test_request_ids_travel_with_answers_and_error_logs(guarded: Server) -> None:
    mine = httpx.post(guarded.url, json={"inputs": "Hi"}, headers={"x-request-id": "trace-42"})
    assert mine.headers["x-request-id"] == "trace-42"
    fresh = httpx.post(guarded.url, json={"inputs": "Hi"}, headers={"x-request-id": "bad id\twith spaces"})
    assert len(fresh.headers["x-request-id"]) == 32 and " " not in fresh.headers["x-request-id"]
    failed = httpx.post(guarded.url, content=b"{", headers={"authorization": "Bearer s3cret", "x-request-id": "oops-7"})
    assert failed.status_code == 400 and failed.headers["x-request-id"] == "oops-7"
    time.sleep(0.2)
    assert "[request oops-7]" in guarded.log.read_text()


def test_cors_is_off_unless_configured(artifacts: dict, guarded: Server, start_server: Callable[..., Server]) -> None:
    preflight = {"origin": "http://elsewhere.example", "access-control-request-method": "POST"}
    answer = httpx.options(guarded.url, headers=preflight)
    assert "access-control-allow-origin" not in answer.headers
    open_to = start_server(str(artifacts["text-classification", "bert"]), KILN_CORS_ORIGINS="http://elsewhere.example")
    answer = httpx.options(open_to.url, headers=preflight)
    assert answer.headers.get("access-control-allow-origin") == "http://elsewhere.example"
    other = httpx.options(open_to.url, headers={**preflight, "origin": "http://evil.example"})
    assert other.headers.get("access-control-allow-origin") != "http://evil.example"


def test_no_answer_names_the_server_software_or_a_path(guarded: Server, tmp_path: Path) -> None:
    answers = [
        httpx.get(f"{guarded.url}/health"),
        httpx.post(guarded.url, content=b"{", headers={"authorization": "Bearer s3cret"}),
        httpx.get(f"{guarded.url}/nowhere"),
        httpx.get(f"{guarded.url}/info"),
    ]
    for answer in answers:
        assert "server" not in answer.headers
        assert "/tmp/" not in answer.text and "Traceback" not in answer.text

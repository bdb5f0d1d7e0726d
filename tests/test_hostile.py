"""Hostile or careless requests get a clear 4xx naming the problem, never a 500, and the server
answers the next request as before. Raw sockets where a client library would refuse to send."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server

DEEP = b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.fixture(scope="module")
def llama(artifacts: dict, start_server: Callable[..., Server]) -> Server:
    return start_server(str(artifacts["text-generation", "llama"]), KILN_BODY_TIMEOUT="1", KILN_MAX_NEW_TOKENS="3000")


@pytest.fixture(scope="module")
def embedder(minilm_artifact: Path, start_server: Callable[..., Server]) -> Server:
    return start_server(str(minilm_artifact))


def post(server: Server, route: str, body: bytes, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(server.url + route, content=body, headers={"content-type": content_type}, timeout=30)


def assert_error(answer: httpx.Response, status: int, words: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert words in answer.json()["error"] and answer.json()["error_type"]


def test_bodies_that_are_not_json_are_400s(embedder: Server, llama: Server) -> None:
    bad_utf8 = b'{"inputs": "caf\xe9 \xff"}'
    for route in ("/", "/embed", "/tokenize"):
        assert_error(post(embedder, route, bad_utf8), 400, "UTF-8")
    assert_error(post(embedder, "/v1/embeddings", b'{"input": "\xff\xfe"}'), 400, "UTF-8")
    chat = b'{"messages": [{"role": "user", "content": "\xff"}]}'
    assert_error(post(llama, "/v1/chat/completions", chat), 400, "UTF-8")
    for server in (embedder, llama):
        assert_error(post(server, "/", DEEP), 400, "nested too deeply")
    for server, route in ((embedder, "/embed"), (llama, "/v1/chat/completions")):  # typed: refused at the first level
        assert_error(post(server, route, DEEP), 400, "")
    assert httpx.post(embedder.url, json={"inputs": "still here"}).status_code == 200


def test_a_declared_charset_is_honoured(embedder: Server) -> None:
    latin1 = '{"inputs": "café"}'.encode("latin-1")
    answer = post(embedder, "/", latin1, "application/json; charset=latin-1")
    assert answer.status_code == 200
    assert answer.json() == httpx.post(embedder.url, json={"inputs": "café"}).json()
    assert_error(post(embedder, "/", latin1, "application/json; charset=klingon"), 415, "klingon")


def test_empty_lists_are_400s(embedder: Server) -> None:
    for route, body in (("/embed", {"inputs": []}), ("/tokenize", {"inputs": []}), ("/", {"inputs": []})):
        answer = httpx.post(embedder.url + route, json=body)
        assert answer.status_code == 400 and "empty" in answer.json()["error"], route


def generate(server: Server, parameters: dict[str, Any]) -> httpx.Response:
    return httpx.post(server.url, json={"inputs": "Hello", "parameters": {"max_new_tokens": 3, **parameters}})


def test_generation_parameters_at_their_edges(llama: Server) -> None:
    greedy = generate(llama, {}).json()
    for temperature in (1e-45, 5e-324):  # sampling that cold is argmax: greedy, not a crash
        answer = generate(llama, {"temperature": temperature, "do_sample": True})
        assert answer.status_code == 200 and answer.json() == greedy
    for seed in (-1, 2**63 - 1):  # any integer is a seed, as in transformers and OpenAI
        assert generate(llama, {"seed": seed, "do_sample": True}).status_code == 200
    assert (
        generate(llama, {"seed": -1, "do_sample": True}).json()
        == generate(llama, {"seed": -1, "do_sample": True}).json()
    )
    chat = {"messages": [{"role": "user", "content": "Hi"}], "seed": -1, "max_tokens": 2}
    assert httpx.post(f"{llama.url}/v1/chat/completions", json=chat).status_code == 200
    for name, value in (("top_k", -1), ("repetition_penalty", 0), ("repetition_penalty", -1.5), ("truncate", -3)):
        answer = generate(llama, {name: value})
        assert answer.status_code == 400 and name in answer.json()["error"], (name, value)


def test_chat_content_as_openai_parts(llama: Server) -> None:
    route = f"{llama.url}/v1/chat/completions"

    def chat(content: Any) -> httpx.Response:
        return httpx.post(route, json={"messages": [{"role": "user", "content": content}], "max_tokens": 4})

    plain = chat("Hello\nthere").json()["choices"][0]["message"]
    parts = chat([{"type": "text", "text": "Hello"}, {"type": "text", "text": "there"}])
    assert parts.status_code == 200 and parts.json()["choices"][0]["message"] == plain
    image = chat([{"type": "image_url", "image_url": {"url": "http://x/y.png"}}])
    assert image.status_code == 422 and "image_url" in image.json()["error"]
    assert chat([]).status_code == 400


def raw_exchange(server: Server, request: bytes, wait: float) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.settimeout(wait)
        raw.sendall(request)
        data = b""
        deadline = time.monotonic() + wait
        try:
            while time.monotonic() < deadline:
                chunk = raw.recv(65536)
                if not chunk:
                    break
                data += chunk
                if re.search(rb"\r\n\r\n.*\}", data.split(b"100 Continue\r\n\r\n")[-1], re.S):
                    break
        except TimeoutError:
            pass
    return data


def test_connections_that_never_end_get_answers(llama: Server) -> None:
    body = b'{"inputs": "Hi", "parameters": {"max_new_tokens": 1}}'
    head = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    start = time.monotonic()
    chunked = raw_exchange(llama, head + b'Transfer-Encoding: chunked\r\n\r\n5\r\n{"inp\r\n', wait=10)
    assert chunked.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 5
    start = time.monotonic()
    short = raw_exchange(llama, head + b"Content-Length: 1000\r\n\r\n" + body, wait=10)
    assert short.startswith(b"HTTP/1.1 408") and b"request_timeout" in short and time.monotonic() - start < 5
    with socket.create_connection(("127.0.0.1", llama.port)) as raw:  # Expect: 100-continue, then the body
        raw.settimeout(10)
        raw.sendall(head + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body))
        assert raw.recv(100).startswith(b"HTTP/1.1 100 Continue")
        raw.sendall(body)
        answer = b""
        while b"generated_text" not in answer:
            answer += raw.recv(65536)
        assert b"HTTP/1.1 200" in answer
    old = raw_exchange(llama, b"GET /health HTTP/1.0\r\n\r\n", wait=10)  # no Host, HTTP/1.0
    assert old.startswith(b"HTTP/1.1 200") and b'"status":"ok"' in old


def metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, name
    return float(match.group(1))


@pytest.mark.parametrize("parameters", [{}, {"do_sample": True, "seed": 1}, {"num_beams": 2}])
def test_a_stream_cut_after_its_first_chunk_frees_its_worker(llama: Server, parameters: dict[str, Any]) -> None:
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 3000, **parameters}, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", llama.url, json=body) as response:
        next(response.iter_lines())
    deadline = time.monotonic() + 3
    while metric(llama, "kiln_in_flight") != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert metric(llama, "kiln_in_flight") == 0
    assert generate(llama, {}).status_code == 200


def test_a_client_gone_mid_body_is_counted_as_499_not_500(embedder: Server) -> None:
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", embedder.port)) as raw:
            raw.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
    time.sleep(0.5)
    text = httpx.get(f"{embedder.url}/metrics").text
    counted = re.findall(r'kiln_requests_total\{status="(\d+)",task="[^"]+"\} ([0-9.]+)', text)
    assert ("499", "3.0") in counted and not any(status == "500" for status, _ in counted)
    assert json.loads(httpx.post(embedder.url, json={"inputs": "ok"}).text)

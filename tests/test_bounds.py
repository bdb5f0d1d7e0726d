"""No request takes the server away from the others, and none changes another's answer.

Each case was found by probing real servers; each test goes through real HTTP on 127.0.0.1:
parameters that size work or memory are bounded before anything is allocated, generation stops at
its deadline and when its client goes away, oversized texts are cut cheaply, answers are bounded,
and tokenizer settings never leak from one request into another.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server
from tests.test_embedding_server import rss_mb

HUGE_NO_SPACE = "a," * 1_500_000  # 3 MB without a whitespace


@pytest.fixture(scope="module")
def llama(artifacts: dict, start_server: Callable[..., Server]) -> Server:
    return start_server(
        str(artifacts["text-generation", "llama"]), KILN_MAX_NEW_TOKENS="3000", KILN_GENERATION_TIMEOUT="0.5"
    )


@pytest.fixture(scope="module")
def minilm(minilm_artifact: Path, start_server: Callable[..., Server]) -> Server:
    return start_server(str(minilm_artifact))


def raw_post(path: str, body: bytes, length: int | None = None) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body) if length is None else length}\r\n\r\n".encode() + body


def generate(server: Server, parameters: dict[str, Any], timeout: float = 30) -> httpx.Response:
    return httpx.post(server.url, json={"inputs": "Hello", "parameters": parameters}, timeout=timeout)


def test_beams_are_bounded_before_any_work(llama: Server) -> None:
    for beams in (1500, 803812776):
        start = time.monotonic()
        answer = generate(llama, {"max_new_tokens": 2, "num_beams": beams})
        assert answer.status_code == 422 and "at most 8" in answer.json()["error"]
        assert time.monotonic() - start < 1.0
    assert generate(llama, {"max_new_tokens": 2, "num_beams": 0}).status_code == 400
    assert generate(llama, {"max_new_tokens": 2, "num_beams": 8}).status_code == 200


def test_key_value_cache_of_beams_times_length_is_bounded(artifacts: dict, start_server: Callable[..., Server]) -> None:
    server = start_server(str(artifacts["text-generation", "llama"]), KILN_MAX_KV_CACHE_MB="1")
    answer = generate(server, {"max_new_tokens": 1000, "num_beams": 8})
    assert answer.status_code == 422 and "MiB of key/value cache" in answer.json()["error"]
    assert generate(server, {"max_new_tokens": 4, "num_beams": 2}).status_code == 200


def test_other_generation_parameters_are_checked(llama: Server) -> None:
    assert generate(llama, {"max_new_tokens": 2, "stop": ["x"] * 17}).status_code == 422
    assert generate(llama, {"max_new_tokens": 2, "stop": ["x" * 257]}).status_code == 422
    assert generate(llama, {"max_new_tokens": 2, "top_k": -1, "do_sample": True}).status_code == 400
    assert generate(llama, {"max_new_tokens": 2, "repetition_penalty": 0}).status_code == 400
    assert generate(llama, {"max_new_tokens": 2, "truncate": 0}).status_code == 400
    assert generate(llama, {"max_new_tokens": 3001}).status_code == 422


def test_beam_search_stops_at_the_time_limit(llama: Server) -> None:
    start = time.monotonic()
    answer = generate(llama, {"max_new_tokens": 3000, "num_beams": 4, "details": True}, timeout=20)
    assert answer.status_code == 200 and time.monotonic() - start < 3.0
    assert answer.json()[0]["details"]["generated_tokens"] < 3000


def test_a_client_that_goes_away_frees_its_worker(artifacts: dict, start_server: Callable[..., Server]) -> None:
    """Non-streamed, greedy and beam search: the generation stops at the client's disconnect."""
    server = start_server(str(artifacts["text-generation", "llama"]), KILN_MAX_NEW_TOKENS="3000")
    for beams in (1, 4):
        payload = {"inputs": "Hi", "parameters": {"max_new_tokens": 3000, "num_beams": beams}}
        with socket.create_connection(("127.0.0.1", server.port)) as raw:
            raw.sendall(raw_post("/", httpx.Request("POST", server.url, json=payload).content))
            time.sleep(0.5)
        start = time.monotonic()
        assert generate(server, {"max_new_tokens": 2}, timeout=30).status_code == 200
        assert time.monotonic() - start < 1.5, f"num_beams={beams}: the abandoned generation kept the worker"
    log = server.log.read_text()
    assert "Traceback" not in log


def test_huge_texts_are_cut_cheaply_and_memory_stays(minilm: Server) -> None:
    before = rss_mb(minilm.process.pid)
    for route, body in (
        ("/v1/embeddings", {"input": HUGE_NO_SPACE, "model": "m"}),
        ("/embed", {"inputs": HUGE_NO_SPACE, "truncation_direction": "left"}),
        ("/embed", {"inputs": HUGE_NO_SPACE}),
    ):
        start = time.monotonic()
        answer = httpx.post(minilm.url + route, json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        assert time.monotonic() - start < 1.0, route
    start = time.monotonic()
    refused = httpx.post(minilm.url + "/embed", json={"inputs": HUGE_NO_SPACE, "truncate": False}, timeout=30)
    assert refused.status_code == 422 and "over 256 tokens" in refused.json()["error"]
    assert time.monotonic() - start < 1.0
    assert rss_mb(minilm.process.pid) - before < 150


def test_tokenize_answers_are_bounded(minilm: Server) -> None:
    start = time.monotonic()
    answer = httpx.post(minilm.url + "/tokenize", json={"inputs": HUGE_NO_SPACE}, timeout=30)
    assert answer.status_code == 422 and "at most 1024 tokens" in answer.json()["error"]
    assert time.monotonic() - start < 1.0 and len(answer.content) < 1000


def test_no_request_changes_what_another_sees(minilm: Server) -> None:
    """Tokenizer settings per call: interleaved requests with different truncation, from many
    threads, each get the answer they get alone."""
    words = " ".join(["apple"] * 500 + ["river"] * 500)  # one token each: 1002 tokens with [CLS] and [SEP]
    requests = [
        ("/tokenize", {"inputs": words}),
        ("/embed", {"inputs": "hi", "truncate": False}),
        ("/embed", {"inputs": words}),
        ("/embed", {"inputs": words, "truncation_direction": "left"}),
        ("/tokenize", {"inputs": words, "add_special_tokens": False}),
    ]
    with httpx.Client(timeout=30) as client:
        alone = [client.post(minilm.url + route, json=body).json() for route, body in requests]
    assert len(alone[0][0]) == 1002 and len(alone[4][0]) == 1000
    assert alone[2] != alone[3]

    def call(i: int) -> bool:
        route, body = requests[i % len(requests)]
        with httpx.Client(timeout=60) as client:
            return bool(client.post(minilm.url + route, json=body).json() == alone[i % len(requests)])

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(call, range(80)))


def test_work_of_many_model_sequences_is_refused(servers: dict[str, Server]) -> None:
    context = " ".join(f"word{i}" for i in range(5000))
    qa = {
        "inputs": {"question": "Which word?", "context": context},
        "parameters": {"max_seq_len": 64, "doc_stride": 40},
    }
    answer = httpx.post(servers["question-answering"].url, json=qa, timeout=30)
    assert answer.status_code == 422 and "at most 256" in answer.json()["error"]
    labels = [f"label {i}" for i in range(300)]
    zero_shot = {"inputs": "Some text", "parameters": {"candidate_labels": labels}}
    answer = httpx.post(servers["zero-shot-classification"].url, json=zero_shot, timeout=30)
    assert answer.status_code == 422 and "300 labels" in answer.json()["error"]


def test_answers_are_bounded(artifacts: dict, start_server: Callable[..., Server]) -> None:
    server = start_server(str(artifacts["feature-extraction", "bert"]), KILN_MAX_RESPONSE_BYTES="200000")
    text = " ".join(["word"] * 400)
    assert httpx.post(server.url, json={"inputs": "short"}).status_code == 200
    answer = httpx.post(server.url, json={"inputs": [text] * 4}, timeout=30)
    assert answer.status_code == 422 and "at most" in answer.json()["error"]


def test_disconnects_are_one_line_each(minilm: Server) -> None:
    """Clients that leave mid-body or mid-stream: one INFO line each, never a traceback."""
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", minilm.port)) as raw:
            raw.sendall(raw_post("/embed", b"{", length=100))
        time.sleep(0.02)
    time.sleep(0.3)
    log = minilm.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log
    assert log.count("client went away") == 20


def test_streams_cut_by_the_client_do_not_log_tracebacks(llama: Server) -> None:
    for _ in range(5):
        body = {"inputs": "Hi", "parameters": {"max_new_tokens": 3000}, "stream": True}
        with httpx.Client(timeout=30) as client, client.stream("POST", llama.url, json=body) as response:
            next(response.iter_lines())
    time.sleep(0.3)
    log = llama.log.read_text()
    assert "Traceback" not in log and " ERROR " not in log
    assert generate(llama, {"max_new_tokens": 2}).status_code == 200


def test_a_huge_prompt_is_refused_or_cut_from_a_prefix(llama: Server) -> None:
    before = rss_mb(llama.process.pid)
    chat = {"messages": [{"role": "user", "content": HUGE_NO_SPACE}], "max_tokens": 2}
    for route, body in (
        ("/v1/chat/completions", chat),
        ("/", {"inputs": HUGE_NO_SPACE, "parameters": {"max_new_tokens": 2}}),
    ):
        start = time.monotonic()
        answer = httpx.post(llama.url + route, json=body, timeout=30)
        assert answer.status_code == 422 and "tokens long" in answer.json()["error"], answer.text
        assert time.monotonic() - start < 1.0, route
    start = time.monotonic()
    cut = generate(llama, {"max_new_tokens": 2, "truncate": 16, "details": True})
    assert cut.status_code == 200
    kept = httpx.post(llama.url, json={"inputs": HUGE_NO_SPACE, "parameters": {"max_new_tokens": 2, "truncate": 16}})
    assert kept.status_code == 200 and time.monotonic() - start < 1.5
    assert rss_mb(llama.process.pid) - before < 150

"""A real `kiln serve` on 127.0.0.1: the official client, raw HTTP, errors, limits, health, metrics."""

from __future__ import annotations

import concurrent.futures
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from huggingface_hub import InferenceClient

import runtime
from tests.cases import CASES, MASK, TRANSFORMERS_TASKS
from tests.compare import assert_same
from tests.conftest import Server
from tests.support.models import ARCHS

RAW_UA = {"user-agent": "curl/8"}


def post(server: Server, payload: Any, **headers: str) -> httpx.Response:
    return httpx.post(f"{server.url}/", json=payload, headers={**RAW_UA, **headers}, timeout=60)


def test_inference_client_against_every_encoder_task(servers: dict[str, Server], artifacts: dict) -> None:
    pipes = {task: runtime.load(artifacts[task, "bert"]) for task in TRANSFORMERS_TASKS}
    c = {task: InferenceClient(model=servers[task].url) for task in TRANSFORMERS_TASKS}

    text = "This sound track was beautiful!"
    got = c["text-classification"].text_classification(text, top_k=3)
    assert [(e.label, pytest.approx(e.score, abs=1e-5)) for e in got] == [
        (e["label"], e["score"]) for e in pipes["text-classification"](text, top_k=3)
    ]

    labels = ["refund", "legal", "faq"]
    got = c["zero-shot-classification"].zero_shot_classification("I want my money back.", candidate_labels=labels)
    want = pipes["zero-shot-classification"]("I want my money back.", candidate_labels=labels)
    assert [e.label for e in got] == want["labels"]
    assert [e.score for e in got] == pytest.approx(want["scores"], abs=1e-5)

    sentence = "Sarah works at Hugging Face in New York City."
    got = c["token-classification"].token_classification(sentence, aggregation_strategy="simple")
    want = pipes["token-classification"](sentence, aggregation_strategy="simple")
    assert [(e.entity_group, e.word, e.start, e.end) for e in got] == [
        (e["entity_group"], e["word"], e["start"], e["end"]) for e in want
    ]

    question, context = "Where do I live?", "My name is Sarah and I live in London."
    got = c["question-answering"].question_answering(question=question, context=context)
    want = pipes["question-answering"]({"question": question, "context": context})
    assert (got.answer, got.start, got.end) == (want["answer"], want["start"], want["end"])

    masked = "The capital of France is [MASK]."
    got = c["fill-mask"].fill_mask(masked, top_k=3)
    assert [(e.token, e.token_str, e.sequence) for e in got] == [
        (e["token"], e["token_str"], e["sequence"]) for e in pipes["fill-mask"](masked, top_k=3)
    ]

    vectors = c["feature-extraction"].feature_extraction("Hello world.")
    np.testing.assert_allclose(vectors, np.array(pipes["feature-extraction"]("Hello world.")), atol=1e-5)


@pytest.mark.parametrize("task", list(CASES))
def test_raw_http_matches_the_runtime_for_every_case(task: str, servers: dict[str, Server], artifacts: dict) -> None:
    pipe = runtime.load(artifacts[task, ARCHS[task][0]])
    for inputs, params in CASES[task]:
        if task == "fill-mask":
            inputs = inputs.replace(MASK, "[MASK]")
        for route in ("/", "/predict"):
            response = httpx.post(
                f"{servers[task].url}{route}", json={"inputs": inputs, "parameters": params}, timeout=60
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"].startswith("application/json")
            assert_same(response.json(), pipe(inputs, **params), atol=1e-5)


JSON = {"content-type": "application/json"}

BAD_REQUESTS: list[tuple[str, dict[str, str], bytes | str, int, str]] = [
    ("malformed JSON", JSON, b'{"inputs": "x"', 400, "bad_request"),
    ("not an object", JSON, b"[1, 2]", 400, "bad_request"),
    ("empty body", JSON, b"", 400, "bad_request"),
    ("missing inputs", JSON, b'{"parameters": {}}', 400, "bad_request"),
    ("mistyped inputs", JSON, b'{"inputs": 42}', 400, "invalid_input"),
    ("list of mixed inputs", JSON, b'{"inputs": ["a", 1]}', 400, "invalid_input"),
    ("unknown parameter", JSON, b'{"inputs": "x", "parameters": {"temp": 1}}', 400, "invalid_parameter"),
    ("mistyped parameter", JSON, b'{"inputs": "x", "parameters": {"top_k": "3"}}', 400, "invalid_parameter"),
    ("bad parameter value", JSON, b'{"inputs": "x", "parameters": {"top_k": 0}}', 400, "invalid_parameter"),
    ("parameters not an object", JSON, b'{"inputs": "x", "parameters": [1]}', 400, "bad_request"),
    ("unsupported content type", {"content-type": "text/html"}, b'{"inputs": "x"}', 415, "unsupported_media_type"),
    ("image body", {"content-type": "image/png"}, b"\x89PNG\r\n", 415, "unsupported_media_type"),
    ("oversized body", JSON, json.dumps({"inputs": "word " * 1_000_000}), 413, "payload_too_large"),
    ("too long without truncation", {"content-type": "application/json"},
     json.dumps({"inputs": "word " * 2000, "parameters": {"truncation": False}}), 422, "unprocessable"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "headers", "data", "status", "kind"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_request_then_the_same_good_answer(
    name: str, headers: dict[str, str], data: bytes | str, status: int, kind: str, servers: dict[str, Server]
) -> None:
    server = servers["text-classification"]
    good = {"inputs": "This sound track was beautiful!", "parameters": {"top_k": None}}
    before = post(server, good)
    response = httpx.post(f"{server.url}/", content=data, headers=headers, timeout=60)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error_type"] == kind and body["error"] and "Traceback" not in body["error"]
    after = post(server, good)
    assert after.status_code == 200 and after.json() == before.json()


def test_task_specific_errors(servers: dict[str, Server]) -> None:
    missing = post(servers["zero-shot-classification"], {"inputs": "Hello"})
    assert missing.status_code == 422 and "candidate_labels" in missing.json()["error"]
    no_mask = post(servers["fill-mask"], {"inputs": "There is no mask here."})
    assert no_mask.status_code == 400 and "[MASK]" in no_mask.json()["error"]
    no_context = post(servers["question-answering"], {"inputs": {"question": "Who?"}})
    assert no_context.status_code == 400 and "context" in no_context.json()["error"]
    strategy = post(servers["token-classification"], {"inputs": "Hi", "parameters": {"aggregation_strategy": "most"}})
    assert strategy.status_code == 400 and "aggregation_strategy" in strategy.json()["error"]


def test_media_types_are_parsed_case_insensitively(servers: dict[str, Server]) -> None:
    response = httpx.post(
        f"{servers['text-classification'].url}/",
        content=b'{"inputs": "Hi"}',
        headers={"Content-Type": "Application/JSON; charset=UTF-8"},
        timeout=30,
    )
    assert response.status_code == 200


def test_question_answering_takes_the_older_null_inputs_form(servers: dict[str, Server]) -> None:
    server = servers["question-answering"]
    fields = {"question": "Where do I live?", "context": "My name is Sarah and I live in London."}
    assert post(server, {"inputs": None, **fields}).json() == post(server, {"inputs": fields}).json()


def test_response_shapes_follow_the_client(servers: dict[str, Server]) -> None:
    labels = {"inputs": "Hi", "parameters": {"candidate_labels": ["a", "b"]}}
    container = post(servers["zero-shot-classification"], labels).json()
    assert set(container) == {"sequence", "labels", "scores"}
    new_client = post(servers["zero-shot-classification"], labels, **{"user-agent": "hf_hub/1.1.0; python/3.12"}).json()
    assert [e["label"] for e in new_client] == container["labels"]
    flat = post(servers["text-classification"], {"inputs": "Hi", "parameters": {"top_k": 2}}).json()
    nested = post(
        servers["text-classification"], {"inputs": "Hi", "parameters": {"top_k": 2}}, **{"user-agent": "hf_hub/0.36.2"}
    ).json()
    assert len(flat) == 2 and nested == [flat]


def test_health_info_metrics_and_openapi(servers: dict[str, Server]) -> None:
    server = servers["fill-mask"]
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "task": "fill-mask"}
    info = httpx.get(f"{server.url}/info").json()
    assert info["task"] == "fill-mask" and info["backend"] == "onnxruntime" and info["precision"] == "fp32"
    assert info["provider"] == "CPUExecutionProvider" and info["limits"]["max_input_tokens"] == 512
    assert info["validation"]["passed"] and "onnxruntime" in info["versions"]
    post(server, {"inputs": "no mask"})
    metrics = httpx.get(f"{server.url}/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'kiln_requests_total{status="400",task="fill-mask"}' in metrics.text
    assert "kiln_request_duration_seconds_bucket" in metrics.text and "kiln_queue_depth" in metrics.text
    schema = httpx.get(f"{server.url}/docs/openapi.json").json()
    assert {"/", "/predict", "/health", "/info", "/metrics"} <= set(schema["paths"])
    assert "200" in schema["paths"]["/"]["post"]["responses"]
    missing = httpx.get(f"{server.url}/nowhere")
    assert missing.status_code == 404 and missing.json()["error_type"] == "not_found"


def test_token_is_required_when_configured(artifacts: dict, start_server: Callable[..., Server]) -> None:
    server = start_server(str(artifacts["text-classification", "bert"]), "--api-token", "s3cret")
    assert httpx.post(f"{server.url}/", json={"inputs": "Hi"}).status_code == 401
    wrong = httpx.post(f"{server.url}/", json={"inputs": "Hi"}, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error_type"] == "unauthorized"
    assert (
        httpx.post(f"{server.url}/", json={"inputs": "Hi"}, headers={"authorization": "Bearer s3cret"}).status_code
        == 200
    )
    client = InferenceClient(model=server.url, token="s3cret")
    assert client.text_classification("Hi")[0].label


@pytest.mark.parametrize("env", [{"KILN_BATCHING": "0"}, {"KILN_MAX_BATCH_ITEMS": "2"}], ids=["unbatched", "batched"])
def test_full_queue_answers_429_at_once(
    env: dict[str, str], minilm_artifact: Path, start_server: Callable[..., Server]
) -> None:
    """Admitted: the workers (max concurrency; with batching, a batch's worth) and the queue."""
    server = start_server(str(minilm_artifact), "--max-concurrency", "1", "--max-queue", "1", **env)
    payload = {"inputs": ["A long sentence about the weather in London and Paris today. " * 8] * 32}

    def call(_: int) -> int:
        return httpx.post(f"{server.url}/", json=payload, timeout=120).status_code

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(call, range(8)))
    assert set(statuses) == {200, 429} and statuses.count(200) >= 2
    assert httpx.post(f"{server.url}/", json={"inputs": "still fine"}, timeout=60).status_code == 200
    assert "kiln_rejected_total" in httpx.get(f"{server.url}/metrics").text


def test_uncompiled_model_is_compiled_on_start_with_503_until_ready(
    tiny_models: dict, start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(str(tiny_models["question-answering", "roberta"]), wait=False, KILN_CACHE=str(tmp_path))
    seen, compiling = set(), False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert server.process.poll() is None, server.log.read_text()
        try:
            response = httpx.get(f"{server.url}/health", timeout=5)
        except httpx.TransportError:
            continue
        seen.add(response.status_code)
        if response.status_code == 503:
            assert response.json()["error_type"] == "not_ready"
            compiling = compiling or "compiling" in response.json()["error"]
        if response.status_code == 200:
            break
    assert seen == {503, 200} and compiling
    assert list(tmp_path.glob("*/manifest.json")), "the compiled artifact is cached"
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libtorch" not in maps, "the compile ran inside the server: torch stays loaded for its whole life"
    answer = post(server, {"inputs": {"question": "Who?", "context": "Sarah lives in London."}})
    assert answer.status_code == 200 and set(answer.json()) == {"answer", "score", "start", "end"}


def test_hf_environment_variables_configure_the_server(artifacts: dict, start_server: Callable[..., Server]) -> None:
    server = start_server(HF_MODEL_DIR=str(artifacts["fill-mask", "roberta"]))
    assert httpx.get(f"{server.url}/info").json()["task"] == "fill-mask"
    assert post(server, {"inputs": "Hello <mask>."}).status_code == 200


def test_a_model_that_cannot_load_exits_3_and_says_why(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import KILN, ROOT, free_port, offline_env

    result = subprocess.run(
        [*KILN, "serve", str(tmp_path / "missing"), "--port", str(free_port())], cwd=ROOT, env=offline_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 3
    assert "the model failed to load" in result.stderr and "missing" in result.stderr

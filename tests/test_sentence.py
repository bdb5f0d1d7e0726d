"""Sentence-transformers tasks against sentence-transformers on PyTorch: tiny models and the real one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

import runtime
from compile import CompileOptions, Precision, Progress, compile_model
from runtime.artifact import read_manifest, write_manifest
from tests.sentences import GRADED_PAIRS, SENTENCES
from tests.support.text import ARCHITECTURES

_MODELS: dict[tuple[str, Path], Any] = {}


def sentence_transformer(path: Path) -> Any:
    from sentence_transformers import SentenceTransformer

    return _MODELS.setdefault(("st", path), SentenceTransformer(str(path), device="cpu"))


def cross_encoder(path: Path) -> Any:
    from sentence_transformers import CrossEncoder

    return _MODELS.setdefault(("ce", path), CrossEncoder(str(path), device="cpu"))


def cosines(a: Any, b: Any) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))  # type: ignore[no-any-return]


def spearman(a: list[float], b: list[float]) -> float:
    ranks = [np.argsort(np.argsort(x)) for x in (a, b)]
    return float(np.corrcoef(*ranks)[0, 1])


@pytest.fixture(scope="session")
def minilm_sentence(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> runtime.Pipeline:
    out = tmp_path_factory.mktemp("minilm") / "sentence-embeddings"
    options = CompileOptions(task="sentence-embeddings", precision=Precision.FP32)
    compile_model(minilm_dir, out, options, Progress(quiet=True))
    return runtime.load(out)


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("task", ["sentence-embeddings", "sentence-similarity"])
def test_tiny_sentence_models_match_sentence_transformers(
    task: str, arch: str, tiny_models: dict, artifacts: dict
) -> None:
    compiled, st = runtime.load(artifacts[task, arch]), sentence_transformer(tiny_models[task, arch])
    ours, theirs = np.array(compiled(SENTENCES)), st.encode(SENTENCES)
    assert cosines(ours, theirs).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(theirs, axis=1), rtol=1e-4)
    assert compiled("Hello") == pytest.approx(compiled(["Hello"])[0], abs=1e-6)
    query = compiled("Where is it?", prompt_name="query")
    assert cosines(query, st.encode("Where is it?", prompt_name="query")) >= 0.9999
    source, others = SENTENCES[0], SENTENCES[1:12]
    want = st.similarity(st.encode([source]), st.encode(others))[0].tolist()
    assert compiled({"source_sentence": source, "sentences": others}) == pytest.approx(want, abs=1e-4)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_cross_encoder_matches_sentence_transformers(arch: str, tiny_models: dict, artifacts: dict) -> None:
    compiled, ce = runtime.load(artifacts["ranking", arch]), cross_encoder(tiny_models["ranking", arch])
    query, texts = "Where do I live?", SENTENCES[:12]
    want = ce.predict([[query, t] for t in texts]).tolist()
    assert compiled([[query, t] for t in texts]) == pytest.approx(want, abs=1e-5)
    assert compiled([query, texts[0]]) == pytest.approx(want[0], abs=1e-5)
    ranked = compiled({"query": query, "texts": texts}, return_text=True)
    assert [r["index"] for r in ranked] == list(np.argsort(-np.array(want), kind="stable"))
    assert all(r["text"] == texts[r["index"]] for r in ranked)
    raw = compiled([[query, t] for t in texts], raw_scores=True)
    assert 1 / (1 + np.exp(-np.array(raw))) == pytest.approx(want, abs=1e-5)


def test_real_minilm_matches_sentence_transformers(minilm_sentence: runtime.Pipeline, minilm_dir: Path) -> None:
    assert minilm_sentence.manifest.pooling is not None and minilm_sentence.tokenizer.max_length == 256
    ours, theirs = np.array(minilm_sentence(SENTENCES)), sentence_transformer(minilm_dir).encode(SENTENCES)
    assert len(SENTENCES) >= 50
    assert cosines(ours, theirs).min() >= 0.9999


def test_real_minilm_ranks_similarity_like_pytorch(minilm_sentence: runtime.Pipeline, minilm_dir: Path) -> None:
    st = sentence_transformer(minilm_dir)
    ours, theirs = [], []
    for a, b, _ in GRADED_PAIRS:
        ours += minilm_sentence({"source_sentence": a, "sentences": [b]})
        theirs.append(float(st.similarity(st.encode([a]), st.encode([b]))[0, 0]))
    assert len(GRADED_PAIRS) >= 30
    assert spearman(ours, theirs) >= 0.99
    assert spearman(ours, [grade for _, _, grade in GRADED_PAIRS]) >= 0.8, "the real model agrees with the grades"


def test_real_minilm_int8_holds_its_gate(minilm_dir: Path, minilm_sentence: runtime.Pipeline, tmp_path: Path) -> None:
    out = tmp_path / "int8"
    result = compile_model(
        minilm_dir, out, CompileOptions(task="sentence-embeddings", precision=Precision.INT8), Progress(quiet=True)
    )
    assert result.manifest.precision == "int8" and result.manifest.validation.min_cosine >= 0.99
    int8 = runtime.load(out)
    batch = np.array(int8(SENTENCES))
    assert cosines(batch, minilm_sentence(SENTENCES)).min() >= 0.99
    assert int8.batch_size > 1, "int8 scales activations per row: it batches like fp32"
    np.testing.assert_array_equal(batch, [int8(text) for text in SENTENCES])  # the batch never moves a result
    # An int8 artifact from before (no `activation_scales`: per tensor) runs one row per graph run.
    write_manifest(out, msgspec.structs.replace(read_manifest(out), activation_scales=None))
    assert runtime.load(out).batch_size == 1
    similarities = [int8({"source_sentence": a, "sentences": [b]})[0] for a, b, _ in GRADED_PAIRS]
    reference = [minilm_sentence({"source_sentence": a, "sentences": [b]})[0] for a, b, _ in GRADED_PAIRS]
    assert spearman(similarities, reference) >= 0.99

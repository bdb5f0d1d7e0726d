"""TAPEX (BART generating the answer from a linearized table), served through kiln's text2text path:
the runtime's `TapexEncoder` against transformers' `TapexTokenizer` (the same ids, on tables of
numbers, empty and blank cells, long cells cut at `max_cell_length`, Greek capitals, special-token
text, long tables cut to the window), and the compiled pipeline's answers against transformers'
`table-question-answering` pipeline on a tiny random BART with a `TapexTokenizer` written here:
exactly the same answer strings (greedy decoding), for single questions, lists and truncation.

The artifact is compiled by `compile_model` from the TAPEX directory as it is (its card names
table-question-answering; compile writes the BART fast tokenizer that `TapexTokenizer`'s vocab.json
and merges.txt make, and validates greedy decoding on tables against PyTorch) and loaded by
`runtime.load`, which serves it with `TapexPipeline`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import runtime
from runtime.artifact import TokenizerInfo, read_manifest
from runtime.errors import InvalidInput, InvalidParameter, Unprocessable
from runtime.tables.tapex import TapexEncoder, Truncation
from runtime.tasks.tapex import TapexPipeline
from runtime.text import TextTokenizer

SPECIAL = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
WINDOW = 256
NEW_TOKENS = 24
LONG = "The weather today is sunny with a chance of rain in the evening, and Compiling models to ONNX"
TABLES: list[dict[str, list[str]]] = [
    {"City": ["Paris", "Berlin", "Rome"], "Population": ["2,148,000", "3,645,000", "2,873,000"]},
    {
        "Name": ["Sarah", "Philipp", "", "  "],
        "Joined": ["May 9, 2016", "2019", "n/a", ""],
        "Score": ["-12.5", "1e5", "0", "3"],
        "Notes": [LONG, "short", LONG.upper(), "ΟΔΟΣ ΣΑΣ " * 4],
    },
    {"Word": ["<mask> token", "NEW\nLINE", "tab\there", "ΟΔΟΣ"], "Count": ["١٢٣", "½", "²", ""]},
    {"Id": [str(i) for i in range(60)], "City": ["Nuremberg", "London", "New York City"] * 20},
]
QUESTIONS = ["Which city has the largest population?", "How many people live in Berlin?", "WHAT IS <mask>?"]


def _vocabulary(directory: Path) -> None:
    """vocab.json and merges.txt of a byte-level BPE learnt on the tests' corpus (BART's special tokens first)."""
    from tests.support.text import _byte_level_bpe

    _byte_level_bpe(SPECIAL, 400, unk="<unk>").model.save(str(directory))


def _tapex_tokenizer(directory: Path, **settings: Any) -> Any:
    import transformers

    return transformers.TapexTokenizer(
        str(directory / "vocab.json"), str(directory / "merges.txt"), **{"model_max_length": WINDOW, **settings}
    )


def bart_fast(model_dir: Path) -> Any:
    """What compile is to save as `tokenizer.json` for a `TapexTokenizer`: BART's fast tokenizer
    from the same vocab.json and merges.txt."""
    import transformers

    return transformers.BartTokenizerFast(
        vocab_file=str(model_dir / "vocab.json"), merges_file=str(model_dir / "merges.txt"), model_max_length=WINDOW
    )


@pytest.fixture(scope="module")
def tapex_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BART with a `TapexTokenizer`, as a TAPEX checkpoint on the Hub is laid out."""
    import torch
    import transformers

    out = tmp_path_factory.mktemp("tapex") / "model"
    out.mkdir()
    _vocabulary(out)
    tokenizer = _tapex_tokenizer(out)
    config = transformers.BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=512,
        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=None,
        init_std=0.5,  # spread logits: greedy answers that differ from table to table (0.02 answers "")
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BartForConditionalGeneration(config).eval()
    model.generation_config.max_length = NEW_TOKENS + 1  # the pipeline's length: its start token and 24 more
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "README.md").write_text("---\npipeline_tag: table-question-answering\n---\n# tiny tapex\n")
    return out


@pytest.fixture(scope="module")
def tapex_artifact(tapex_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TAPEX directory compiled as `kiln compile` compiles it (its card names the task)."""
    from compile import CompileOptions, Precision, Progress, compile_model

    out = tmp_path_factory.mktemp("artifacts") / "tapex"
    return compile_model(tapex_model, out, CompileOptions(precision=Precision.FP32), Progress(quiet=True)).directory


def _load(artifact: Path) -> TapexPipeline:
    pipe = runtime.load(artifact)
    assert isinstance(pipe, TapexPipeline) and read_manifest(artifact).task == "table-question-answering"
    return pipe


def _encoder(directory: Path, reference: Any) -> TapexEncoder:
    from compile.exporters import tokenizer_info

    info: TokenizerInfo = tokenizer_info(reference, SimpleNamespace())
    return TapexEncoder(
        TextTokenizer(directory / "tokenizer.json", info),
        do_lower_case=reference.do_lower_case,
        max_cell_length=reference.max_cell_length,
    )


@pytest.fixture(scope="module")
def vocabulary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("vocabulary")
    _vocabulary(directory)
    bart_fast(directory).backend_tokenizer.save(str(directory / "tokenizer.json"))
    return directory


@pytest.mark.parametrize(
    "settings",
    [{}, {"max_cell_length": 5}, {"do_lower_case": False}, {"model_max_length": 100}],
    ids=["default", "short-cells", "cased", "window-100"],
)
def test_encodings_equal_tapex_tokenizer(vocabulary: Path, settings: dict[str, Any]) -> None:
    import pandas as pd

    reference = _tapex_tokenizer(vocabulary, **settings)
    ours = _encoder(vocabulary, reference)
    window = reference.model_max_length
    cut = fitted = 0
    for table in TABLES:
        frame = pd.DataFrame(table)
        for question in QUESTIONS:
            whole = reference(table=frame, query=question)["input_ids"]
            if len(whole) <= window:
                assert ours.encode(table, question)[1] == whole
                fitted += 1
            else:
                with pytest.raises(Unprocessable, match="truncation"):
                    ours.encode(table, question)
            for truncation in (True, "only_first"):
                want = reference(table=frame, query=question, truncation=truncation)["input_ids"]
                assert ours.encode(table, question, Truncation.TOKENS)[1] == want
                assert len(want) <= window
            cut += len(whole) > window
    assert cut and fitted  # both sides of the window were compared


def test_trimmed_cells_and_case(vocabulary: Path) -> None:
    """The cases where trimming and lowering could go wrong are really met by `TABLES`."""
    reference = _tapex_tokenizer(vocabulary)
    text = _encoder(vocabulary, reference).text(TABLES[1], QUESTIONS[0])
    assert LONG.lower() not in text and LONG.lower()[:20] in text  # long cells are cut
    assert "οδοσ" in text and "ς" not in text  # a cut cell is lowered character by character
    last = _encoder(vocabulary, reference).text(TABLES[2], QUESTIONS[0])
    assert last.endswith("row 4 : οδος |")  # a whole cell lowered by `str.lower`; the text stripped at its end


def test_dropped_rows_equal_prepare_table_query(vocabulary: Path) -> None:
    """drop_rows_to_fit keeps the rows `TapexTokenizer.prepare_table_query` keeps when every row
    relates to the question (transformers then drops no row at random), and fits the window."""
    import pandas as pd

    reference = _tapex_tokenizer(vocabulary, model_max_length=96)
    ours = _encoder(vocabulary, reference)
    table = {"City": ["paris", "berlin", "rome"] * 20, "Rank": [str(i) for i in range(60)]}
    for question in ("population of paris berlin rome", "rome"):
        want = reference.prepare_table_query(
            pd.DataFrame(table), question, truncation_strategy="drop_rows_to_fit", max_length=96
        ).lower()
        assert ours.text(table, question, Truncation.ROWS) == want
        assert "row 3 :" in want and "row 60 :" not in want
        _, ids = ours.encode(table, question, Truncation.ROWS)
        assert len(ids) <= 96 and ids[0] == 0 and ids[-1] == 2


def test_answers_equal_the_pipeline(tapex_model: Path, tapex_artifact: Path) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    theirs = transformers.pipeline("table-question-answering", model=str(tapex_model), device="cpu")
    ours = _load(tapex_artifact)
    seen = set()
    for table in TABLES[:3]:
        for question in QUESTIONS:
            want = theirs(table=table, query=question)
            assert ours({"table": table, "query": question}) == want
            seen.add(want["answer"])
        want_all = theirs(table=table, query=QUESTIONS)
        assert ours({"table": table, "query": QUESTIONS}) == want_all
    assert len(seen) > 3, seen  # the table and the question move the answer
    long = TABLES[3]
    assert ours({"table": long, "query": QUESTIONS[0]}, truncation=True) == theirs(
        table=long, query=QUESTIONS[0], truncation=True
    )
    with pytest.raises(Unprocessable, match="truncation"):
        ours({"table": long, "query": QUESTIONS[0]})


def test_default_length_is_the_pipeline_s(tapex_model: Path, tapex_artifact: Path, tmp_path: Path) -> None:
    """Without `max_length` in the model's generation config, the pipeline generates 256 new tokens,
    even where that config names another `max_new_tokens`."""
    import transformers

    model, artifact = tmp_path / "model", tmp_path / "artifact"
    shutil.copytree(tapex_model, model)
    shutil.copytree(tapex_artifact, artifact)
    settings = {
        "decoder_start_token_id": 2,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "bos_token_id": 0,
        "max_new_tokens": 5,
    }
    for directory in (model, artifact):
        (directory / "generation_config.json").write_text(json.dumps(settings))
    transformers.logging.set_verbosity_error()
    theirs = transformers.pipeline("table-question-answering", model=str(model), device="cpu")
    question = {"table": TABLES[0], "query": QUESTIONS[0]}
    want = theirs(**question)
    assert _load(artifact)(question) == want
    assert len(want["answer"]) > len(_load(tapex_artifact)(question)["answer"])  # longer than 24 tokens


def test_inputs_in_every_form_the_pipeline_takes(tapex_artifact: Path) -> None:
    ours = _load(tapex_artifact)
    table = TABLES[0]
    one = ours({"table": table, "question": QUESTIONS[0]}, max_new_tokens=4)
    assert set(one) == {"answer"}
    assert ours({"table": table, "query": [QUESTIONS[0]]}, max_new_tokens=4) == one
    both = ours([{"table": table, "query": QUESTIONS[0]}, {"table": table, "query": QUESTIONS[1]}], max_new_tokens=4)
    assert both == [one, ours({"table": table, "query": QUESTIONS[1]}, max_new_tokens=4)]
    assert ours({"table": table, "query": QUESTIONS[0]}, padding=False, sequential=True, max_new_tokens=4) == one
    numbers = ours({"table": {"a": [1, 2.5], "b": ["x", None]}, "query": "what is a ?"}, max_new_tokens=2)
    assert set(numbers) == {"answer"}
    for bad in (
        {"query": "x"}, {"table": table}, {"table": table, "query": ""}, {"table": {"a": ["1", "2"], "b": ["3"]},
        "query": "x"}, {"table": {"a": []}, "query": "x"}, {"table": {"a": [["nested"]]}, "query": "x"}, "text",
    ):  # fmt: skip
        with pytest.raises(InvalidInput):
            ours(bad)
    for parameters in ({"truncation": "only_second"}, {"truncation": 3}, {"truncate": 8}, {"top_n": 2}):
        with pytest.raises(InvalidParameter):
            ours({"table": table, "query": QUESTIONS[0]}, **parameters)
    ours.warmup()
    assert ours.describe()["model_kind"] == "tapex"


def test_inference_client_gets_the_answer_over_http(tapex_artifact: Path, start_server: Any) -> None:
    import httpx
    from huggingface_hub import InferenceClient

    server = start_server(str(tapex_artifact))
    got = InferenceClient(model=server.url).table_question_answering(table=TABLES[0], query=QUESTIONS[0])
    assert got.answer == _load(tapex_artifact)({"table": TABLES[0], "query": QUESTIONS[0]})["answer"]
    chat = httpx.post(f"{server.url}/v1/completions", json={"model": "m", "prompt": QUESTIONS[0]})
    assert chat.status_code == 404 and "generation needs" in chat.json()["error"]  # for text models, not tables

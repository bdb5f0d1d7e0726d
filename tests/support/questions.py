"""The tests' tiny question models over images and tables: ViLT (visual-question-answering) and
TAPAS with and without an aggregation head (table-question-answering). Random weights drawn wide
enough that answers differ by far more than float error (the selected TAPAS column is an argmax;
ViLT's position embeddings, left at zero by transformers, are drawn so their interpolation
counts), and WordPiece vocabularies written here. No Hub, no download.
"""

from __future__ import annotations

from pathlib import Path

QUESTION_ARCHS: dict[str, tuple[str, ...]] = {
    "visual-question-answering": ("vilt",),
    "table-question-answering": ("tapas", "tapas-aggregation"),
}
WORDS = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[EMPTY]", "what", "which", "how", "many", "is", "are", "the",
    "of", "in", "a", "there", "picture", "color", "red", "blue", "sky", "city", "population", "country", "name",
    "year", "total", "average", "sum", "largest", "people", "live", "when", "was", "founded", "paris", "berlin",
    "rome", "madrid", "lisbon", "france", "germany", "italy", "spain", "portugal", "cat", "dog", "circles",
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "0", ",", ".", "?", "##s", "##0", "##5", "##e", "##n",
]  # fmt: skip
AGGREGATION_LABELS = {0: "NONE", 1: "SUM", 2: "AVERAGE", 3: "COUNT"}
VQA_ANSWERS = ["yes", "no", "2", "red", "a cat", "blue", "3"]


def build_question_model(task: str, arch: str, out: Path) -> Path:
    """Write the tiny `arch` model for `task` into `out` (once: an existing one is reused)."""
    if (out / "config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    if arch == "vilt":
        return _vilt(out)
    if arch in ("tapas", "tapas-aggregation"):
        return _tapas(out, aggregation=arch == "tapas-aggregation")
    raise KeyError(f"no tiny question model {task}/{arch}")


def _vilt(out: Path) -> Path:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ViltConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        image_size=64, patch_size=16, max_position_embeddings=40, num_images=1, initializer_range=0.2,
        id2label=dict(enumerate(VQA_ANSWERS)), label2id={label: i for i, label in enumerate(VQA_ANSWERS)},
    )  # fmt: skip
    model = transformers.ViltForQuestionAnswering(config).eval()
    with torch.no_grad():
        model.vilt.embeddings.position_embeddings.normal_(std=0.5)
        model.vilt.embeddings.cls_token.normal_(std=0.5)
    model.save_pretrained(out)
    tokenizer = transformers.BertTokenizerFast(str(out / "vocab.txt"), model_max_length=40)
    tokenizer.save_pretrained(out)
    # ViLT's own processor settings, at a size that keeps the tests fast: short side 96, sides of 32
    transformers.ViltImageProcessor(size={"shortest_edge": 96}, size_divisor=32).save_pretrained(out)
    return out


def _tapas(out: Path, *, aggregation: bool) -> Path:
    import torch
    import transformers

    torch.manual_seed(2)  # the tests' questions then select different columns (and aggregators)
    heads = {
        "num_aggregation_labels": len(AGGREGATION_LABELS), "aggregation_labels": AGGREGATION_LABELS,
        "no_aggregation_label_index": 0, "use_answer_as_supervision": True, "temperature": 0.2,
    }  # fmt: skip
    config = transformers.TapasConfig(
        vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=256, initializer_range=0.3, **(heads if aggregation else {}),
    )  # fmt: skip
    transformers.TapasForQuestionAnswering(config).eval().save_pretrained(out)
    transformers.TapasTokenizer(str(out / "vocab.txt"), model_max_length=128).save_pretrained(out)
    return out

"""Tiny random models with locally trained tokenizers, saved as ordinary model directories.

Nothing here reaches the Hub: the tokenizers are learnt on a few sentences (reproducibly, in
plain Python, then assembled with `tokenizers`), the models are random `transformers` configs
with seeded weights. Each directory looks exactly like a downloaded model (config, weights,
tokenizer files, a README with `pipeline_tag`), so the code under test loads it the way it loads
any local model. The same call writes the same bytes in every process: the `tokenizers` trainers
break ties in hash order, so their vocabularies (and with them the models) change from run to
run, and a borderline test outcome with them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "My name is Philipp and I live in Nuremberg.",
    "This model is used with sagemaker for inference.",
    "What is used for inference?",
    "This sound track was beautiful! It paints the scenery in your mind so well.",
    "I would recommend it even to people who hate video game music!",
    "Hi, I recently bought a device from your company but it is not working as advertised.",
    "I would like to get reimbursed for the refund, the legal team said so.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "Sarah works at Hugging Face in New York City since 2019.",
    "The weather today is sunny with a chance of rain in the evening.",
    "Compiling models to ONNX makes inference faster on small machines.",
    "This example is about sports, politics, science or music.",
    "Who wrote the book? The book was written by an unknown author in London.",
]

NLI_LABELS = ["contradiction", "neutral", "entailment"]
NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]
SENTIMENT_LABELS = ["negative", "neutral", "positive"]


def _learnt_vocab(base: list[str], learnt: list[str], size: int) -> tuple[dict[str, int], int]:
    """`base` (ids in that order) grown by the `learnt` tokens, in their order, until it holds `size`
    tokens, as the `tokenizers` trainers grow theirs; and how many learnt tokens that took (a
    repeated one takes its turn but no new id)."""
    vocab = {token: i for i, token in enumerate(dict.fromkeys(base))}
    used = 0
    for token in learnt:
        if len(vocab) >= size:
            break
        vocab.setdefault(token, len(vocab))
        used += 1
    return vocab, used


def _bert_tokenizer() -> object:
    """WordPiece as `WordPieceTrainer` makes it (vocabulary size 300), learnt reproducibly: the
    special tokens, every character of the corpus with and without `##`, then the tokens of BPE
    merges over words split into a first character and `##` continuations."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertTokenizerFast

    from tests.support.vision import _bpe_merges

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = [word for text in CORPUS for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))]
    # A merged symbol keeps the `##` of each piece ("t" + "##h" -> "t##h"); its token drops the inner ones.
    merges = _bpe_merges([[word[0], *("##" + c for c in word[1:])] for word in words], 300)
    tokens = [
        ("##" if symbol.startswith("##") else "") + symbol.replace("##", "") for symbol in (a + b for a, b in merges)
    ]
    alphabet = sorted({c for word in words for c in word})
    vocab, _ = _learnt_vocab([*special, *alphabet, *("##" + c for c in alphabet)], tokens, 300)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(special)
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return BertTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        unk_token="[UNK]",
        sep_token="[SEP]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        mask_token="[MASK]",
        model_max_length=512,
    )


def _byte_level_bpe(special: list[str], size: int, unk: str | None = None) -> Any:
    """Byte-level BPE as `BpeTrainer` makes it with the byte alphabet, learnt reproducibly
    (`tests.support.vision._bpe_merges`): the special tokens, the 256 byte symbols, then merges
    until the vocabulary holds `size` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from tests.support.vision import _bpe_merges

    pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    words = [list(word) for text in CORPUS for word, _ in pre_tokenizer.pre_tokenize_str(text)]
    merges = _bpe_merges(words, size)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab, used = _learnt_vocab([*special, *alphabet], [a + b for a, b in merges], size)
    tok = Tokenizer(models.BPE(vocab, merges[:used], unk_token=unk))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(special)
    return tok


def _roberta_tokenizer() -> object:
    from tokenizers import processors
    from transformers import RobertaTokenizerFast

    tok = _byte_level_bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], 400, unk="<unk>")
    tok.post_processor = processors.RobertaProcessing(
        sep=("</s>", tok.token_to_id("</s>")), cls=("<s>", tok.token_to_id("<s>")), trim_offsets=True
    )
    return RobertaTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        sep_token="</s>",
        cls_token="<s>",
        unk_token="<unk>",
        pad_token="<pad>",
        mask_token="<mask>",
        model_max_length=512,
    )


def _generative_tokenizer(arch: str) -> object:
    """Byte-level BPE: GPT-2 style for decoders (Llama's with a BOS and a chat template), and
    with </s> appended for the encoder-decoders."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    seq2seq = arch in ("t5", "bart")
    special = ["<pad>", "</s>", "<unk>"] if seq2seq else ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]
    tok = _byte_level_bpe(special, 400)
    if seq2seq:
        eos = tok.token_to_id("</s>")
        tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", eos)])
        return PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
            tokenizer_object=tok,
            pad_token="<pad>",
            eos_token="</s>",
            unk_token="<unk>",
            model_max_length=256,
            model_input_names=["input_ids", "attention_mask"],
        )
    if arch == "llama":
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(  # type: ignore[no-untyped-call]
        tokenizer_object=tok,
        bos_token="<s>" if arch == "llama" else "<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=4096 if arch == "llama" else 256,
        model_input_names=["input_ids", "attention_mask"],
    )
    if arch == "llama":
        fast.chat_template = CHAT_TEMPLATE
    return fast


def _generative_config(arch: str, vocab: int, tokenizer: Any) -> object:
    import transformers

    eos = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=eos, eos_token_id=eos
        )
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=eos,
        )  # fmt: skip
    pad = tokenizer.pad_token_id
    if arch == "t5":
        return transformers.T5Config(
            vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
            decoder_start_token_id=pad, pad_token_id=pad, eos_token_id=eos,
        )  # fmt: skip
    return transformers.BartConfig(
        vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
        pad_token_id=pad, eos_token_id=eos, bos_token_id=eos, decoder_start_token_id=eos, forced_eos_token_id=None,
    )  # fmt: skip


def _config(arch: str, vocab_size: int, labels: list[str] | None) -> object:
    from transformers import BertConfig, RobertaConfig

    common: dict[str, object] = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        initializer_range=0.2,
    )
    if labels is not None:
        common["id2label"] = dict(enumerate(labels))
        common["label2id"] = {label: i for i, label in enumerate(labels)}
    if arch == "bert":
        return BertConfig(max_position_embeddings=512, **common)  # type: ignore[no-untyped-call]
    return RobertaConfig(  # type: ignore[no-untyped-call]
        max_position_embeddings=514, pad_token_id=1, bos_token_id=0, eos_token_id=2, **common
    )


@dataclass(frozen=True)
class Spec:
    """One tiny model: which head, which labels, which pipeline tag its card declares.

    `sentence` makes it a sentence-transformers directory (Transformer, Pooling, Normalize);
    `cross_encoder` a one-score sentence-transformers CrossEncoder.
    """

    task: str
    head: str
    labels: list[str] | None = None
    sentence: bool = False
    cross_encoder: bool = False
    archs: tuple[str, ...] = ("bert", "roberta")


SPECS: dict[str, Spec] = {
    "text-classification": Spec("text-classification", "AutoModelForSequenceClassification", SENTIMENT_LABELS),
    "zero-shot-classification": Spec("zero-shot-classification", "AutoModelForSequenceClassification", NLI_LABELS),
    "token-classification": Spec("token-classification", "AutoModelForTokenClassification", NER_LABELS),
    "question-answering": Spec("question-answering", "AutoModelForQuestionAnswering"),
    "fill-mask": Spec("fill-mask", "AutoModelForMaskedLM"),
    "feature-extraction": Spec("feature-extraction", "AutoModel"),
    "sentence-embeddings": Spec("sentence-embeddings", "AutoModel", sentence=True),
    "sentence-similarity": Spec("sentence-similarity", "AutoModel", sentence=True),
    "ranking": Spec("ranking", "AutoModelForSequenceClassification", ["score"], cross_encoder=True),
    "text-generation": Spec("text-generation", "AutoModelForCausalLM", archs=("llama", "gpt2")),
    "text2text-generation": Spec("text2text-generation", "AutoModelForSeq2SeqLM", archs=("t5", "bart")),
    "summarization": Spec("summarization", "AutoModelForSeq2SeqLM", archs=("t5", "bart")),
    "translation": Spec("translation", "AutoModelForSeq2SeqLM", archs=("t5", "bart")),
}
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The pooling of each architecture's sentence-transformers models: two different set-ups.
SENTENCE_POOLING = {"bert": ("mean", True), "roberta": ("cls", False)}
CARD_TAGS = {"ranking": "text-ranking"}
ARCHITECTURES = ("bert", "roberta")
TOKENIZERS: dict[str, Callable[[], object]] = {"bert": _bert_tokenizer, "roberta": _roberta_tokenizer}


def build(task: str, arch: str, out: Path, seed: int = 0) -> Path:
    """Write a tiny random `arch` model for `task` into `out` and return `out`."""
    import torch
    import transformers

    spec = SPECS[task]
    if arch in ("gpt2", "llama", "t5", "bart"):
        tokenizer = _generative_tokenizer(arch)
        config = _generative_config(arch, len(tokenizer), tokenizer)  # type: ignore[arg-type]
    else:
        tokenizer = TOKENIZERS[arch]()
        config = _config(arch, len(tokenizer), spec.labels)  # type: ignore[arg-type]
    torch.manual_seed(seed)
    model = getattr(transformers, spec.head).from_config(config)
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    if spec.cross_encoder:
        model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)  # type: ignore[attr-defined]
    if spec.sentence:
        _sentence_files(out, arch, config.hidden_size)  # type: ignore[attr-defined]
    tag = CARD_TAGS.get(task, task)
    (out / "README.md").write_text(f"---\npipeline_tag: {tag}\nlibrary_name: transformers\n---\n# tiny {arch} {task}\n")
    return out


def _sentence_files(out: Path, arch: str, dimension: int) -> None:
    """The files that make a model directory a sentence-transformers model, as v5 writes them."""
    mode, normalized = SENTENCE_POOLING[arch]
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalized:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir(exist_ok=True)
    (out / "modules.json").write_text(json.dumps(modules, indent=2))
    (out / "1_Pooling").mkdir(exist_ok=True)
    (out / "1_Pooling" / "config.json").write_text(
        json.dumps({"embedding_dimension": dimension, "pooling_mode": mode, "include_prompt": True})
    )
    (out / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128, "do_lower_case": False}))
    settings = {
        "prompts": {"query": "query: ", "document": ""},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine",
    }
    (out / "config_sentence_transformers.json").write_text(json.dumps(settings))


def build_all(root: Path) -> dict[tuple[str, str], Path]:
    """Every task in every architecture, under `root/<arch>-<task>`."""
    return {
        (task, arch): build(task, arch, root / f"{arch}-{task}") for task, spec in SPECS.items() for arch in spec.archs
    }

"""The compile layer's task registry: how each task is exported and checked.

`ExportSpec` says which optimum export task and transformers head a task uses, and which outputs
the validation compares (and which of them carry a "top label"). A task has one spec, and may
have others for the model types whose head differs: image-segmentation is per-pixel class logits
by default (Segformer, MobileViT), per-query class and mask logits for DETR panoptic and
MaskFormer. `export_spec(task, model_type)` is the one place that chooses.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

from compile.errors import TaskUnknown
from runtime.tasks import canonical


@dataclass(frozen=True)
class ExportSpec:
    """How a task is exported and validated.

    `token_level`: the outputs have a token axis (validated per token); `pooled`: the runtime pools
    hidden states into sentence embeddings, and validation compares those; `labelled`: each output
    vector's argmax is a decision the int8/fp16 gate keeps.
    """

    task: str
    optimum_task: str
    auto_class: str
    outputs: tuple[str, ...]
    labelled: bool
    pairs: bool = False
    token_level: bool = False
    pooled: bool = False
    generative: bool = False
    unlabelled: tuple[str, ...] = ()  # outputs whose argmax is no decision (detection boxes)
    diffusion: bool = False  # a diffusers pipeline of several graphs (compile.diffusion)


_EXPORTS: dict[str, ExportSpec] = {}
_BY_MODEL_TYPE: dict[tuple[str, str], ExportSpec] = {}


def register_export(spec: ExportSpec, *model_types: str) -> ExportSpec:
    """The task's spec; with `model_types`, the spec of those model types only (`config.model_type`)."""
    for model_type in model_types:
        _BY_MODEL_TYPE[spec.task, model_type] = spec
    if not model_types:
        _EXPORTS[spec.task] = spec
    return spec


_SEQ, _TOK, _QA, _MLM, _BASE = (
    "AutoModelForSequenceClassification",
    "AutoModelForTokenClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForMaskedLM",
    "AutoModel",
)
_HIDDEN = ("last_hidden_state",)
# optimum's "image-segmentation" exports every segmentation head it knows; per-pixel class logits by default
_SEMANTIC = ExportSpec(
    "image-segmentation", "image-segmentation", "AutoModelForSemanticSegmentation", ("logits",), True, token_level=True
)
for _spec in (
    ExportSpec("text-classification", "text-classification", _SEQ, ("logits",), True, pairs=True),
    ExportSpec("zero-shot-classification", "text-classification", _SEQ, ("logits",), True, pairs=True),
    ExportSpec("token-classification", "token-classification", _TOK, ("logits",), True, token_level=True),
    ExportSpec("question-answering", "question-answering", _QA, ("start_logits", "end_logits"), True, True, True),
    ExportSpec("fill-mask", "fill-mask", _MLM, ("logits",), True, token_level=True),
    ExportSpec("feature-extraction", "feature-extraction", _BASE, _HIDDEN, False, token_level=True),
    ExportSpec("sentence-embeddings", "feature-extraction", _BASE, _HIDDEN, False, token_level=True, pooled=True),
    ExportSpec("sentence-similarity", "feature-extraction", _BASE, _HIDDEN, False, token_level=True, pooled=True),
    ExportSpec("ranking", "text-classification", _SEQ, ("logits",), False, pairs=True),
    ExportSpec(
        "text-generation", "text-generation-with-past", "AutoModelForCausalLM", ("logits",), True, generative=True
    ),
    *(
        ExportSpec(task, "text2text-generation-with-past", "AutoModelForSeq2SeqLM", ("logits",), True, generative=True)
        for task in ("text2text-generation", "summarization", "translation")
    ),
    ExportSpec("image-classification", "image-classification", "AutoModelForImageClassification", ("logits",), True),
    ExportSpec(
        "zero-shot-image-classification", "zero-shot-image-classification", "AutoModel", ("logits_per_image",), True
    ),
    ExportSpec(
        "object-detection",
        "object-detection",
        "AutoModelForObjectDetection",
        ("logits", "pred_boxes"),
        True,
        token_level=True,
        unlabelled=("pred_boxes",),
    ),
    _SEMANTIC,
    ExportSpec("audio-classification", "audio-classification", "AutoModelForAudioClassification", ("logits",), True),
    ExportSpec("text-to-image", "text-to-image", "StableDiffusionPipeline", ("out_sample",), False, diffusion=True),
    # exported by kiln's own configs (compile.custom_configs): optimum has none for TAPAS or ViLT
    ExportSpec(
        "visual-question-answering",
        "visual-question-answering",
        "AutoModelForVisualQuestionAnswering",
        ("logits",),
        True,
    ),
    ExportSpec(
        "table-question-answering",
        "table-question-answering",
        "AutoModelForTableQuestionAnswering",
        ("logits",),
        False,
        token_level=True,
    ),
    # CTC models (wav2vec2, HuBERT): per-frame character logits; Whisper has its own spec below
    ExportSpec(
        "automatic-speech-recognition",
        "automatic-speech-recognition",
        "AutoModelForCTC",
        ("logits",),
        True,
        token_level=True,
    ),
):
    register_export(_spec)
# image-segmentation heads of their own, by model type
for _spec, _model_types in (
    # "semantic-segmentation" keeps the logits' height and width dynamic ("image-segmentation" fixes them)
    (dataclasses.replace(_SEMANTIC, optimum_task="semantic-segmentation"), ("segformer",)),
    # per query: class logits (the last class is "no object"); mask logits, compared per query as one vector
    (
        ExportSpec(
            "image-segmentation",
            "image-segmentation",
            "AutoModelForImageSegmentation",
            ("logits", "pred_masks"),
            True,
            token_level=True,
            unlabelled=("pred_masks",),
        ),
        ("detr",),
    ),
    (
        ExportSpec(
            "image-segmentation",
            "image-segmentation",
            "AutoModelForInstanceSegmentation",
            ("class_queries_logits", "masks_queries_logits"),
            True,
            token_level=True,
            unlabelled=("masks_queries_logits",),
        ),
        ("maskformer",),
    ),
    # TAPEX: BART generating the answer from a linearized table (runtime.tasks.tapex)
    (
        ExportSpec(
            "table-question-answering",
            "text2text-generation-with-past",
            "AutoModelForSeq2SeqLM",
            ("logits",),
            True,
            generative=True,
        ),
        ("bart",),
    ),
    # an encoder and a decoder with its key/value cache, validated by decoding like the text generative tasks
    (
        ExportSpec(
            "automatic-speech-recognition",
            "automatic-speech-recognition-with-past",
            "AutoModelForSpeechSeq2Seq",
            ("logits",),
            True,
            generative=True,
        ),
        ("whisper",),
    ),
):
    register_export(_spec, *_model_types)


def export_spec(task: str, model_type: str | None = None) -> ExportSpec:
    """How `task` is exported: for `model_type` (a model's `config.model_type`) where it has its own
    spec, else the task's."""
    task = canonical(task)
    spec = _EXPORTS.get(task)
    if spec is None:
        raise TaskUnknown(f"kiln cannot compile task {task!r}; it compiles: {', '.join(compilable())}")
    return _BY_MODEL_TYPE.get((task, model_type or ""), spec)


def model_type(model_dir: Path) -> str | None:
    """The `model_type` of a model directory's config.json, if it has one."""
    config = model_dir / "config.json"
    value = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    return value if isinstance(value, str) else None


DIFFUSION_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
"""The diffusers pipeline classes (`model_index.json`'s `_class_name`) that kiln compiles."""


def diffusion_pipeline(model_dir: Path) -> str | None:
    """The class of a diffusers pipeline directory, if `model_dir` is one."""
    index = model_dir / "model_index.json"
    name = json.loads(index.read_text()).get("_class_name") if index.is_file() else None
    return name if isinstance(name, str) else None


def compilable() -> list[str]:
    return sorted(_EXPORTS)


_HEADS = (
    ("ForCTC", "automatic-speech-recognition"),
    ("ForAudioClassification", "audio-classification"),
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSemanticSegmentation", "image-segmentation"),
    ("ForInstanceSegmentation", "image-segmentation"),
    ("ForSegmentation", "image-segmentation"),  # DETR panoptic
    ("ForSequenceClassification", "text-classification"),
    ("ForTokenClassification", "token-classification"),
    ("ForQuestionAnswering", "question-answering"),
    ("ForMaskedLM", "fill-mask"),
    ("ForCausalLM", "text-generation"),
    ("LMHeadModel", "text-generation"),
    ("ForConditionalGeneration", "text2text-generation"),
    ("Model", "feature-extraction"),
)


_QUESTION_TASKS = {"tapas": "table-question-answering", "vilt": "visual-question-answering"}


def infer_task(model_dir: Path) -> str:
    """The task a model directory declares: its card's `pipeline_tag`, else what the files say.

    A sentence-transformers directory (modules.json) without a tag serves sentence-embeddings; a
    CrossEncoder (a one-label classifier with a `sentence_transformers` config) serves ranking; a
    sequence classifier whose labels include "entailment" is an NLI model, served as
    zero-shot-classification. Raises `TaskUnknown`, listing the choices, when nothing fits.
    """
    sentence_transformer = (model_dir / "modules.json").is_file()
    readme = model_dir / "README.md"
    if readme.is_file():
        front = re.match(r"^---\s*\n(.*?)\n---", readme.read_text(errors="replace"), re.S)
        tag = re.search(r"^pipeline_tag:\s*['\"]?([\w-]+)", front.group(1), re.M) if front else None
        if tag and canonical(tag.group(1)) in _EXPORTS:
            return canonical(tag.group(1))
    if diffusion_pipeline(model_dir) in DIFFUSION_PIPELINES:
        return "text-to-image"
    config_path = model_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if sentence_transformer:
        return "sentence-embeddings"
    if not config and any(model_dir.glob("*.gguf")):
        return "text-generation"  # GGUF files hold language models
    if "sentence_transformers" in config and config.get("num_labels", len(config.get("id2label") or {})) == 1:
        return "ranking"  # a sentence-transformers CrossEncoder
    if config.get("model_type") in ("clip", "siglip"):
        return "zero-shot-image-classification"
    if config.get("model_type") in _QUESTION_TASKS:  # their heads' names say question-answering
        return _QUESTION_TASKS[str(config["model_type"])]
    if "BlipForQuestionAnswering" in (config.get("architectures") or []):
        return "visual-question-answering"
    if config.get("model_type") == "whisper" and any(
        a.endswith("ForConditionalGeneration") for a in config.get("architectures") or []
    ):
        return "automatic-speech-recognition"
    audio = "sampling_rate" in _preprocessor_config(model_dir)  # a feature extractor of sound
    for architecture in config.get("architectures") or []:
        for suffix, task in _HEADS:
            if architecture.endswith(suffix):
                labels = [str(label).lower() for label in (config.get("label2id") or {})]
                if task == "text-classification" and audio:
                    return "audio-classification"  # Wav2Vec2ForSequenceClassification and kin
                if task == "text-classification" and any(label.startswith("entail") for label in labels):
                    return "zero-shot-classification"
                return task
    raise TaskUnknown(f"cannot tell the task of {model_dir.name}: pass --task, one of: {', '.join(compilable())}")


def _preprocessor_config(model_dir: Path) -> dict[str, object]:
    path = model_dir / "preprocessor_config.json"
    config = json.loads(path.read_text()) if path.is_file() else {}
    return config if isinstance(config, dict) else {}

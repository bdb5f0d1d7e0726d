"""Compiling BLIP visual question answering (`BlipForQuestionAnswering`) to three ONNX graphs, and
checking them against PyTorch.

optimum 2.1 has no BLIP export config, so the graphs are traced here with `torch.onnx.export`
(TorchScript, opset `DEFAULT_OPSET` unless asked) from wrappers of the model's three modules, in the
layout `runtime.tasks.blip_vqa` serves (`GRAPHS`):
- "vision": `vision_model`, `pixel_values` -> `last_hidden_state` (the image embeddings);
- "encoder": `text_encoder` on the question (`input_ids`, `attention_mask`), cross-attending to
  every image embedding (`encoder_hidden_states`; upstream's image mask is all ones) ->
  `last_hidden_state` (the question embeddings);
- "decoder": `text_decoder` with its self-attention cache as tensors, the layout of optimum's
  decoder-only `model.onnx` that `runtime.generation.Generator` drives: `input_ids`,
  `attention_mask`, `position_ids`, `encoder_hidden_states` (the question embeddings) and
  `past_key_values.{i}.key/value` (length 0 on the first step) in; `logits` and
  `present.{i}.key/value` out. Cross-attention is recomputed every step from the question
  embeddings (tens of tokens), over every question token, as upstream's all-ones mask has it.

The gates, fp32 only, on synthetic images through the model's `BlipImageProcessor` and several
questions (one padded batch of two among them):
- each graph against its PyTorch module on the same inputs (the decoder on its first step and with
  PyTorch's cache): max abs difference over the largest reference value where that is above 1, at
  most `GRAPH_MAX_ABS`;
- the runtime's image processor against transformers' on the same images, within `GRAPH_MAX_ABS`;
- greedy decoding by the runtime's loop (`BlipAnswerer`) against `model.generate`: the same tokens.
"""

from __future__ import annotations

import functools
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers.cache_utils import DynamicCache

from compile import validate
from compile.errors import CompileFailed, UnsupportedModel, ValidationFailed
from compile.exporters import fast_tokenizer, synthetic_images, tokenizer_info
from compile.options import CompileOptions, Optimization, Precision, Progress
from compile.questions import QUESTIONS
from compile.tasks import model_type
from runtime.artifact import Manifest, Source
from runtime.errors import ArtifactError
from runtime.generation import Sampling
from runtime.images import ImageProcessor
from runtime.session import SessionOptions
from runtime.tasks.blip_vqa import BlipAnswerer, BlipDecoding

TASK = "visual-question-answering"
HEAD = "BlipForQuestionAnswering"
GRAPHS = {"vision": "vision_model.onnx", "encoder": "question_encoder.onnx", "decoder": "decoder_model.onnx"}
DEFAULT_OPSET = 17
GRAPH_MAX_ABS = 1e-4  # scaled by the largest reference value where that is above 1
NEW_TOKENS = 12
IMAGES = 4
CHOICE_RULE = "fp32 graphs without fusions: the one candidate for BLIP"
COPIED = ("config.json", "preprocessor_config.json")


def compiles(model_dir: Path, task: str) -> bool:
    """Whether this module compiles `model_dir` for `task`: BLIP for visual-question-answering."""
    return task == TASK and model_type(model_dir) == "blip"


def build(
    model_dir: Path,
    artifact: Path,
    *,
    source: Source,
    options: CompileOptions,
    key: str,
    started: float,
    progress: Progress,
) -> tuple[Manifest, list[str]]:
    """Export, validate and write a complete artifact (manifest last) into `artifact` (new or empty);
    the figures' lines come back for the report. Raises `UnsupportedModel` for BLIP checkpoints of
    other heads or generation settings the runtime does not reproduce, `ValidationFailed` past a gate."""
    from compile.build import write_artifact

    if options.precision not in (Precision.AUTO, Precision.FP32) or options.optimize not in (None, Optimization.NONE):
        raise CompileFailed("BLIP compiles to fp32 without graph optimization for now; drop --precision/--optimize")
    config = json.loads((model_dir / "config.json").read_text())
    if HEAD not in (config.get("architectures") or []):
        raise UnsupportedModel(f"{model_dir.name} is not a {HEAD} checkpoint; kiln compiles BLIP for {TASK} only")
    if not (model_dir / "preprocessor_config.json").is_file():
        raise CompileFailed(f"{model_dir.name} has no preprocessor_config.json: kiln needs BLIP's image processor")
    with progress.step("loading the PyTorch model"):
        model, tokenizer, images_processor = load_torch(model_dir)
    try:
        BlipDecoding.from_config(model.generation_config.to_diff_dict())
    except ArtifactError as exc:
        raise UnsupportedModel(str(exc)) from None
    artifact.mkdir(parents=True, exist_ok=True)
    with progress.step(f"exporting BLIP to {', '.join(GRAPHS.values())}"):
        export(model, artifact, options.opset or DEFAULT_OPSET)
    for name in COPIED:
        shutil.copy(model_dir / name, artifact / name)
    tokenizer.save_pretrained(artifact)
    model.generation_config.save_pretrained(artifact)
    with progress.step("validating each graph and greedy decoding against PyTorch"):
        lines, figures = measure(model, tokenizer, images_processor, artifact, GRAPHS, str(options.device))
    if not figures.passed:
        raise ValidationFailed("the compiled BLIP does not match PyTorch:\n  " + "\n  ".join(lines))
    manifest = write_artifact(
        artifact, task=TASK, source=source, device=options.device, precision=Precision.FP32,
        optimization=Optimization.NONE, info=tokenizer_info(tokenizer, model.config), figures=figures,
        key=key, started=started, image_processor=_served(artifact).describe(), graphs=dict(GRAPHS),
        model_file=GRAPHS["decoder"],
        choice={"rule": CHOICE_RULE, "order": ["fp32-none"], "tried": {"fp32-none": {"passed": True}}},
    )  # fmt: skip
    return manifest, lines


def recheck(artifact: Path, manifest: Manifest, model_dir: Path) -> tuple[validate.Figures, list[str]]:
    """`kiln compile --check` of a BLIP artifact: every gate again, against the model in `model_dir`."""
    model, tokenizer, images_processor = load_torch(model_dir)
    lines, figures = measure(model, tokenizer, images_processor, artifact, manifest.graphs, manifest.device)
    return figures, lines


def measure(
    model: Any, tokenizer: Any, images_processor: Any, artifact: Path, graphs: dict[str, str], device: str
) -> tuple[list[str], validate.Figures]:
    """`check` on the graphs and the image processor of the artifact directory `artifact`."""
    config = json.loads((artifact / "config.json").read_text())
    answerer = BlipAnswerer(artifact, graphs, config, SessionOptions(device=device))
    return check(model, tokenizer, images_processor, _served(artifact), answerer)


def _served(artifact: Path) -> ImageProcessor:
    return ImageProcessor.from_config(json.loads((artifact / "preprocessor_config.json").read_text()))


def load_torch(model_dir: Path) -> tuple[Any, Any, Any]:
    """The PyTorch model, its fast tokenizer and its image processor, as transformers loads them."""
    import transformers

    model = transformers.BlipForQuestionAnswering.from_pretrained(model_dir).eval()
    processor = transformers.AutoImageProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    return model, fast_tokenizer(model_dir), processor


def export(model: Any, artifact: Path, opset: int) -> None:
    """The three graphs of `GRAPHS` into `artifact`, traced on dummy inputs of batch 2 (the decoder
    with a cache of 3 positions and 2 new ones, so no size is taken for a constant)."""
    text, vision = model.config.text_config, model.config.vision_config
    layers, heads, side = text.num_hidden_layers, text.num_attention_heads, vision.image_size
    question = torch.randint(1, text.vocab_size, (2, 5))
    image_embeds = torch.randn(2, (side // vision.patch_size) ** 2 + 1, vision.hidden_size)
    past = [torch.randn(2, heads, 3, text.hidden_size // heads) for _ in range(2 * layers)]
    past_names = [f"past_key_values.{i}.{kind}" for i in range(layers) for kind in ("key", "value")]
    batch, tokens = {0: "batch_size"}, {0: "batch_size", 1: "sequence_length"}
    trace = functools.partial(_trace, artifact=artifact, opset=opset)
    trace(
        _Vision(model),
        (torch.randn(2, 3, side, side),),
        GRAPHS["vision"],
        {"pixel_values": batch},
        {"last_hidden_state": batch},
    )
    trace(
        _QuestionEncoder(model), (question, torch.ones_like(question), image_embeds), GRAPHS["encoder"],
        {"input_ids": tokens, "attention_mask": tokens, "encoder_hidden_states": {0: "batch_size", 1: "image_length"}},
        {"last_hidden_state": tokens},
    )  # fmt: skip
    decoder_args = (
        question[:, :2], torch.ones(2, 5, dtype=torch.int64), torch.tensor([[3, 4]] * 2),
        torch.randn(2, 5, text.hidden_size), *past,
    )  # fmt: skip
    inputs = {
        "input_ids": tokens, "attention_mask": {0: "batch_size", 1: "total_length"}, "position_ids": tokens,
        "encoder_hidden_states": {0: "batch_size", 1: "question_length"},
        **{name: {0: "batch_size", 2: "past_length"} for name in past_names},
    }  # fmt: skip
    outputs = {
        "logits": tokens,
        **{name.replace("past_key_values", "present"): {0: "batch_size", 2: "total_length"} for name in past_names},
    }
    trace(_Decoder(model), decoder_args, GRAPHS["decoder"], inputs, outputs)


def _trace(
    module: torch.nn.Module,
    args: tuple[torch.Tensor, ...],
    name: str,
    inputs: dict[str, dict[int, str]],
    outputs: dict[str, dict[int, str]],
    *,
    artifact: Path,
    opset: int,
) -> None:
    """One graph, its inputs and outputs named in order, with their dynamic axes."""
    with torch.no_grad():
        torch.onnx.export(
            module.eval(), args, str(artifact / name), input_names=list(inputs), output_names=list(outputs),
            dynamic_axes={**inputs, **outputs}, opset_version=opset, dynamo=False,
        )  # fmt: skip


class _Vision(torch.nn.Module):
    """`vision_model`: the image embeddings."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.vision = model.vision_model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.vision(pixel_values=pixel_values).last_hidden_state  # type: ignore[no-any-return]


class _QuestionEncoder(torch.nn.Module):
    """`text_encoder` on the question, cross-attending to every image embedding."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.encoder = model.text_encoder

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        outputs = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=encoder_hidden_states
        )
        return outputs.last_hidden_state  # type: ignore[no-any-return]


class _Decoder(torch.nn.Module):
    """`text_decoder` with its self-attention cache as tensors in and out (`DynamicCache` inside);
    the cross-attention cache it builds is dropped, and recomputed on every call."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.decoder = model.text_decoder
        self.layers = model.config.text_config.num_hidden_layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        pairs = tuple((past[2 * i], past[2 * i + 1]) for i in range(self.layers))
        cache = DynamicCache.from_legacy_cache(pairs)  # type: ignore[arg-type]
        outputs = self.decoder(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            encoder_hidden_states=encoder_hidden_states, past_key_values=cache, use_cache=True, return_dict=True,
        )  # fmt: skip
        present = outputs.past_key_values.self_attention_cache.layers
        return (outputs.logits, *(tensor for layer in present for tensor in (layer.keys, layer.values)))


class _Figures:
    """Per graph, the worst scaled difference and cosine over every output compared."""

    def __init__(self) -> None:
        self.worst: dict[str, tuple[float, float]] = {}

    def add(self, graph: str, reference: np.ndarray, got: np.ndarray) -> None:
        a, b = reference.astype(np.float64).ravel(), got.astype(np.float64).ravel()
        diff = float(np.abs(a - b).max()) / max(1.0, float(np.abs(a).max()))
        denominator = float(np.linalg.norm(a) * np.linalg.norm(b))
        cosine = float(a @ b) / denominator if denominator else 1.0
        old = self.worst.get(graph, (0.0, 1.0))
        self.worst[graph] = max(old[0], diff), min(old[1], cosine)


def check(
    model: Any, tokenizer: Any, images_processor: Any, served: ImageProcessor, answerer: BlipAnswerer
) -> tuple[list[str], validate.Figures]:
    """Every gate of the module docstring, on `IMAGES` synthetic images with a question each and
    one padded batch of two; the report's lines and the figures for the manifest."""
    images = synthetic_images(IMAGES, seed=0)
    figures = _Figures()
    for image in images:
        figures.add(
            "image processor",
            images_processor(images=image, return_tensors="np")["pixel_values"],
            served([image])["pixel_values"],
        )
    cases = [([image], [QUESTIONS[i % len(QUESTIONS)]]) for i, image in enumerate(images)]
    cases.append((images[:2], QUESTIONS[2:4]))
    same, lines = 0, []
    with torch.inference_mode():
        for index, (batch, questions) in enumerate(cases):
            text = tokenizer(questions, padding=True, return_tensors="pt", return_token_type_ids=False)
            pixels = images_processor(images=batch, return_tensors="pt")["pixel_values"]
            _compare_graphs(model, answerer, figures, pixels, text["input_ids"], text["attention_mask"])
            if len(batch) > 1:
                continue
            want = model.generate(
                input_ids=text["input_ids"], attention_mask=text["attention_mask"], pixel_values=pixels,
                max_new_tokens=NEW_TOKENS, do_sample=False, num_beams=1, repetition_penalty=1.0,
            )[0, 1:].tolist()  # fmt: skip
            context = answerer.encode(pixels.numpy(), text["input_ids"].numpy(), text["attention_mask"].numpy())
            sampling = Sampling(max_new_tokens=NEW_TOKENS, eos_token_ids=(answerer.eos_id,))
            got = answerer.answer(context, sampling, BlipDecoding())
            same += int(got == want)
            if got != want:
                lines.append(
                    f"greedy decoding of image {index} with {questions[0]!r} differs: PyTorch {want}, compiled {got}"
                )
    decoded = len(cases) - 1
    for graph, (diff, cosine) in figures.worst.items():
        lines.append(f"{graph}: max abs diff {diff:.3g} (scaled), min cosine {cosine:.6f}")
    max_abs = max(diff for diff, _ in figures.worst.values())
    passed = same == decoded and max_abs <= GRAPH_MAX_ABS
    gate = (
        f"each graph and the image processor max abs diff <= {GRAPH_MAX_ABS:g} (scaled); "
        f"same greedy tokens as PyTorch generate ({NEW_TOKENS} new tokens)"
    )
    result = validate.Figures(
        gate, passed, len(cases), max_abs, min(cosine for _, cosine in figures.worst.values()), same / decoded
    )
    lines.insert(0, validate.report("fp32-none", result))
    return lines, result


def _compare_graphs(
    model: Any, answerer: BlipAnswerer, figures: _Figures, pixels: Any, input_ids: Any, attention_mask: Any
) -> None:
    """Each graph on the inputs PyTorch's module had: the vision encoder, the question encoder, the
    decoder's first step from [DEC] and its next step with PyTorch's cache."""
    image = model.vision_model(pixel_values=pixels).last_hidden_state
    figures.add("vision", image.numpy(), answerer.vision.run({"pixel_values": pixels.numpy()})["last_hidden_state"])
    question = model.text_encoder(
        input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image
    ).last_hidden_state
    feeds = {
        "input_ids": input_ids.numpy(),
        "attention_mask": attention_mask.numpy(),
        "encoder_hidden_states": image.numpy(),
    }
    figures.add("question encoder", question.numpy(), answerer.encoder.run(feeds)["last_hidden_state"])
    rows = len(input_ids)
    ids = torch.full((rows, 1), answerer.start_id)
    first = model.text_decoder(input_ids=ids, encoder_hidden_states=question, use_cache=True, return_dict=True)
    empty = {
        name: np.zeros((rows, *shape[1:2], 0, *shape[3:]), dtype=np.float32)
        for name, shape in answerer.generator.past_shapes.items()
    }
    feeds = {
        "input_ids": ids.numpy(), "attention_mask": np.ones((rows, 1), dtype=np.int64),
        "position_ids": np.zeros((rows, 1), dtype=np.int64), "encoder_hidden_states": question.numpy(), **empty,
    }  # fmt: skip
    got = answerer.decoder.run(feeds)
    figures.add("decoder (first step)", first.logits.numpy(), got["logits"])
    cache = first.past_key_values.self_attention_cache.layers
    past = {}
    for i, layer in enumerate(cache):
        figures.add("decoder (first step)", layer.keys.numpy(), got[f"present.{i}.key"])
        figures.add("decoder (first step)", layer.values.numpy(), got[f"present.{i}.value"])
        past[f"past_key_values.{i}.key"], past[f"past_key_values.{i}.value"] = layer.keys.numpy(), layer.values.numpy()
    following = first.logits[:, -1].argmax(-1, keepdim=True)
    feeds = {
        "input_ids": following.numpy(), "attention_mask": np.ones((rows, 2), dtype=np.int64),
        "position_ids": np.ones((rows, 1), dtype=np.int64), "encoder_hidden_states": question.numpy(), **past,
    }  # fmt: skip
    second = model.text_decoder(
        input_ids=following, encoder_hidden_states=question, past_key_values=first.past_key_values, use_cache=True,
        return_dict=True,
    )  # fmt: skip
    figures.add("decoder (with past)", second.logits.numpy(), answerer.decoder.run(feeds)["logits"])

"""Reference inputs for the question tasks over images and tables: visual-question-answering
(ViLT) and table-question-answering (TAPAS), exported by kiln's own ONNX configs
(`compile.custom_configs`).

- image+text: synthetic images of several sizes with questions, through transformers' processor
  (the tokenizer and `ViltImageProcessor`), one at a time and two of one size with questions of
  different lengths as a padded batch; the answer logits compared per input.
- table: a table of numbers, dates, words and an empty cell with several questions, encoded by the
  runtime's own TAPAS port (`runtime.tables.tapas`, equal to `TapasTokenizer`, and free of
  pandas); the cell logits compared per token, `logits_aggregation` per question for models with
  an aggregation head. Tokens outside the column TAPAS selects carry -10000 (its mask), where one
  float32 step is already 1e-3: those are compared as the mask they are (clipped at -100).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np

from compile.errors import CompileFailed
from compile.exporters import (
    TOKENIZER_FILES,
    BuildContext,
    Outputs,
    Reference,
    exporter,
    fast_tokenizer,
    load_torch_model,
    run_torch,
    synthetic_images,
    tokenizer_info,
)
from runtime.tasks.base import InputKind

QUESTIONS = ["What is in the picture?", "How many circles are there?", "Is it red?", "What color is the sky here?"]
TABLE = {
    "City": ["Paris", "London", "Berlin", "Madrid", "Rome"],
    "Population": ["2,148,000", "8,982,000", "3,645,000", "3,223,000", "2,873,000"],
    "Founded": ["3rd century BC", "47 AD", "1237", "9th century", ""],
    "Mayor since": ["July 5, 2014", "May 9, 2016", "December 21, 2023", "June 15, 2019", "October 21, 2021"],
}
TABLE_QUESTIONS = [
    "Which city has the largest population?",
    "How many people live in Berlin and Madrid?",
    "When was Berlin founded?",
    "What is the average population?",
    "Which mayors started after 2018?",
]
MASKED_CELL = -100.0  # TAPAS logits below this are its -10000 column mask, compared as such


@exporter(InputKind.IMAGE_TEXT)
def image_text_reference(context: BuildContext) -> Reference:
    import transformers

    from runtime.images import ImageProcessor

    model_dir = context.model_dir
    if not (model_dir / "preprocessor_config.json").is_file():
        raise CompileFailed(f"{model_dir.name} has no preprocessor_config.json: kiln needs the model's image processor")
    served = ImageProcessor.from_config(json.loads((model_dir / "preprocessor_config.json").read_text()))
    images_processor = transformers.AutoImageProcessor.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    tokenizer = fast_tokenizer(model_dir)
    names = context.graph_inputs()

    def encode(images: list[Any], questions: list[str]) -> Outputs:
        text = tokenizer(questions, padding=True, return_tensors="np")
        pixels = images_processor(images=images, return_tensors="np")
        return {k: np.asarray(v) for k, v in {**text, **pixels}.items() if k in names}

    with context.progress.step("running the PyTorch model for reference outputs"):
        images = synthetic_images(6, seed=0)
        feeds = [encode([image], [QUESTIONS[i % len(QUESTIONS)]]) for i, image in enumerate(images)]
        feeds.append(encode([images[0], images[0].transpose(0)], QUESTIONS[:2]))
        torch_model = load_torch_model(context)
        outputs = run_torch(torch_model, feeds, context.spec.outputs)
    calibration = [encode([image], [QUESTIONS[1]]) for image in synthetic_images(4, seed=1)]
    return Reference(
        spec=context.spec, feeds=feeds, outputs=outputs,
        masks=[np.ones(len(out["logits"]), dtype=np.int64) for out in outputs], calibration=calibration,
        timing=[feeds[0]], model_type=torch_model.config.model_type,
        files=("preprocessor_config.json", *TOKENIZER_FILES, "config.json"),
        tokenizer=tokenizer_info(tokenizer, torch_model.config), image_processor=served.describe(),
    )  # fmt: skip


def _masked(outputs: Outputs, mask: np.ndarray) -> Outputs:
    return {name: np.maximum(value, MASKED_CELL) if name == "logits" else value for name, value in outputs.items()}


@exporter(InputKind.TABLE)
def table_reference(context: BuildContext) -> Reference:
    from runtime.tables.tapas import TapasEncoder

    model_dir = context.model_dir
    if not (model_dir / "vocab.txt").is_file():
        raise CompileFailed(f"{model_dir.name} has no vocab.txt: kiln needs TAPAS's WordPiece vocabulary")
    encoder = TapasEncoder.from_directory(model_dir)

    def encode(questions: list[str]) -> Outputs:
        return dict(encoder.encode(TABLE, questions).model_inputs())

    with context.progress.step("running the PyTorch model for reference outputs"):
        torch_model = load_torch_model(context)
        aggregation = int(getattr(torch_model.config, "num_aggregation_labels", 0) or 0)
        spec = dataclasses.replace(
            context.spec, outputs=("logits", "logits_aggregation") if aggregation else ("logits",)
        )
        feeds = [encode([question]) for question in TABLE_QUESTIONS] + [encode(TABLE_QUESTIONS[:3])]
        outputs = [_masked(out, np.empty(0)) for out in run_torch(torch_model, feeds, spec.outputs)]
        tokenizer = _slow_tokenizer_info(model_dir, torch_model.config)
    return Reference(
        spec=spec, feeds=feeds, outputs=outputs, masks=[feed["attention_mask"] for feed in feeds],
        calibration=[encode([question]) for question in TABLE_QUESTIONS[::-1]], timing=[feeds[0]],
        model_type=torch_model.config.model_type,
        files=("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"),
        tokenizer=tokenizer, view=_masked,
    )  # fmt: skip


def _slow_tokenizer_info(model_dir: Any, config: Any) -> Any:
    """TAPAS's tokenizer has no fast form: its facts come from the slow one, which the runtime's
    port (`runtime.tables.tapas`) replaces at serving time."""
    import transformers

    tokenizer = transformers.TapasTokenizer.from_pretrained(model_dir)  # type: ignore[no-untyped-call]
    return tokenizer_info(tokenizer, config)

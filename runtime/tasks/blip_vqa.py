"""visual-question-answering for BLIP (`BlipForQuestionAnswering`): an image and a question ->
`[{"answer"}]`, as transformers' `VisualQuestionAnsweringPipeline` answers for a generative model
(the decoded text without special tokens, stripped; one list per input for a list of inputs).

The artifact has three graphs (`manifest.graphs`, written by `compile.blip`), which is how
`VisualQuestionAnsweringPipeline.variant` tells it from a ViLT artifact (no graphs named):
- "vision": `pixel_values` -> the image embeddings;
- "encoder": the question (`input_ids`, `attention_mask`) cross-attending to every image
  embedding (`encoder_hidden_states`) -> the question embeddings;
- "decoder": the text decoder with its self-attention key/value cache, in the layout of a
  decoder-only `model.onnx` that `runtime.generation.Generator` drives (a cache of length 0 on the
  first step); it cross-attends to every question token, as upstream's all-ones mask makes it.
Per (image, question) the vision graph and the question encoder run once (`core`), then the
decoder generates from `text_config.bos_token_id` ([DEC]) until `text_config.sep_token_id`
([SEP]), as `BlipForQuestionAnswering.generate` runs `text_decoder.generate`.

Decoding is the pipeline's generation config (`BlipDecoding`): the model's `generation_config.json`
under the pipeline's default of 256 new tokens, which only a model `max_length` other than 20
replaces (a model's own `max_new_tokens` does not: transformers 4.57 keeps the pipeline's); greedy
unless it samples or searches beams. A request may set `max_new_tokens`, within `Limits`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from runtime.artifact import Manifest
from runtime.errors import ArtifactError, InvalidParameter, Unprocessable
from runtime.generation import Generator, Sampling, beam_search
from runtime.session import OnnxModel, SessionOptions
from runtime.tasks.vision import WHITE_PIXEL_PNG
from runtime.tasks.visual_question_answering import VisualQuestionAnsweringParameters, VisualQuestionAnsweringPipeline

PIPELINE_NEW_TOKENS = 256  # `VisualQuestionAnsweringPipeline._default_generation_config`
GLOBAL_MAX_LENGTH = 20  # `GenerationConfig().max_length`: a model's max_length equal to it is no choice
UNSUPPORTED = {
    "min_length": 0, "min_new_tokens": None, "no_repeat_ngram_size": 0, "bad_words_ids": None,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "num_beam_groups": 1, "diversity_penalty": 0.0,
    "typical_p": 1.0, "min_p": None, "epsilon_cutoff": 0.0, "eta_cutoff": 0.0, "penalty_alpha": None,
    "exponential_decay_length_penalty": None, "sequence_bias": None, "guidance_scale": None,
    "renormalize_logits": False, "num_return_sequences": 1, "constraints": None, "force_words_ids": None,
    "stop_strings": None, "watermarking_config": None,
}  # fmt: skip
"""Generation settings kiln's loop does not reproduce, with the value that leaves decoding as is."""


@dataclass(frozen=True)
class BlipDecoding:
    """The generation config the pipeline decodes with, read from `generation_config.json` (what
    is missing has `GenerationConfig`'s default)."""

    max_new_tokens: int = PIPELINE_NEW_TOKENS
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    suppress_tokens: tuple[int, ...] = ()
    begin_suppress_tokens: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> BlipDecoding:
        """Raises `ArtifactError` for a setting in `UNSUPPORTED` away from its neutral value."""
        for name, neutral in UNSUPPORTED.items():
            if config.get(name, neutral) not in (neutral, None):
                raise ArtifactError(f"generation setting {name}={config[name]!r} is not supported for BLIP here")
        max_length = config.get("max_length")
        new = PIPELINE_NEW_TOKENS
        if isinstance(max_length, int) and max_length != GLOBAL_MAX_LENGTH:
            new = max_length - 1  # the decoder's prompt is its start token
        if new < 1:
            raise ArtifactError(f"generation max_length {max_length} leaves no token to generate after [DEC]")
        return cls(
            max_new_tokens=new,
            num_beams=int(config.get("num_beams") or 1),
            do_sample=bool(config.get("do_sample", False)),
            temperature=float(config.get("temperature", 1.0)),
            top_k=int(config.get("top_k", 50) or 0),
            top_p=float(config.get("top_p", 1.0)),
            repetition_penalty=float(config.get("repetition_penalty", 1.0)),
            length_penalty=float(config.get("length_penalty", 1.0)),
            early_stopping=config.get("early_stopping", False),
            suppress_tokens=tuple(config.get("suppress_tokens") or ()),
            begin_suppress_tokens=tuple(config.get("begin_suppress_tokens") or ()),
        )


class BlipAnswerer:
    """BLIP's three graphs: the question's context (`encode`), then its answer's token ids
    (`answer`). Shared by the pipeline and by `compile.blip`'s validation."""

    def __init__(
        self, directory: Path, graphs: Mapping[str, str], config: Mapping[str, Any], options: SessionOptions
    ) -> None:
        self.vision = OnnxModel(directory / graphs["vision"], options)
        self.encoder = OnnxModel(directory / graphs["encoder"], options)
        self.decoder = OnnxModel(directory / graphs["decoder"], options)
        self.generator = Generator(self.decoder, self.encoder, dict(config))
        text = config.get("text_config") or {}
        self.start_id = int(text.get("bos_token_id", 30522))  # BlipTextConfig's defaults
        self.eos_id = int(text.get("sep_token_id", 102))
        self.max_positions = int(text.get("max_position_embeddings", 512))

    def encode(self, pixel_values: np.ndarray, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The question embeddings (one row per row of the inputs)."""
        image = self.vision.run({"pixel_values": pixel_values})["last_hidden_state"]
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "encoder_hidden_states": image}
        return self.encoder.run(feeds)["last_hidden_state"]

    def answer(self, question: np.ndarray, sampling: Sampling, decoding: BlipDecoding) -> list[int]:
        """The generated ids after [DEC] (with [SEP] when it came) for one question's embeddings
        (1, length, hidden)."""
        context = {"encoder_hidden_states": question}
        if decoding.num_beams > 1:
            ids, _ = beam_search(
                self.generator, [self.start_id], sampling, decoding.num_beams, decoding.length_penalty,
                decoding.early_stopping, context=context,
            )  # fmt: skip
            return ids
        return [step.token_id for step in self.generator.run([self.start_id], sampling, context=context)]


class BlipQuestionParameters(VisualQuestionAnsweringParameters, forbid_unknown_fields=True):
    """The pipeline's parameters (`top_k` is taken and, as for every generative model, changes
    nothing), and `max_new_tokens`."""

    max_new_tokens: int | None = None


class BlipVisualQuestionAnswering(VisualQuestionAnsweringPipeline):
    """BLIP behind the visual-question-answering pipeline: one decoding loop per (image, question)."""

    Parameters = BlipQuestionParameters
    batchable: ClassVar[bool] = False
    example = ({"image": WHITE_PIXEL_PNG, "question": "What is in the picture?"}, {"max_new_tokens": 2})

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        missing = {"vision", "encoder", "decoder"} - set(manifest.graphs)
        if missing:
            raise ArtifactError(f"{directory} is a BLIP artifact without its {', '.join(sorted(missing))} graph(s)")
        self.answerer = BlipAnswerer(directory, manifest.graphs, self.config, options)
        path = directory / "generation_config.json"
        self.decoding = BlipDecoding.from_config(json.loads(path.read_text()) if path.is_file() else {})

    def sampling(self, params: BlipQuestionParameters) -> Sampling:
        """The request's decoding, every bound checked before any work: new tokens (the limit, and
        the decoder's positions after [DEC]), beams, and their key/value cache."""
        limits, decoding = self.limits, self.decoding
        window = self.answerer.max_positions - 1
        new = params.max_new_tokens
        if new is None:
            new = min(decoding.max_new_tokens, limits.max_new_tokens, window)
        elif new < 1:
            raise InvalidParameter(f"`max_new_tokens` must be at least 1; got {new}")
        elif new > min(limits.max_new_tokens, window):
            raise Unprocessable(
                f"`max_new_tokens` is at most {min(limits.max_new_tokens, window)} here (the server's limit and the "
                f"decoder's {self.answerer.max_positions} positions); got {new}"
            )
        if decoding.num_beams > limits.max_beams:
            raise Unprocessable(f"the model searches {decoding.num_beams} beams; this server allows {limits.max_beams}")
        cache = decoding.num_beams * self.answerer.generator.cache_bytes(1 + new)
        if cache > limits.max_kv_cache_bytes:
            raise Unprocessable(
                f"{new} new tokens need {cache >> 20} MiB of key/value cache; this server allows "
                f"{limits.max_kv_cache_bytes >> 20} MiB per request: ask for fewer"
            )
        return Sampling(
            max_new_tokens=new, do_sample=decoding.do_sample, temperature=decoding.temperature,
            top_k=decoding.top_k if decoding.do_sample else 0, top_p=decoding.top_p,
            repetition_penalty=decoding.repetition_penalty, eos_token_ids=(self.answerer.eos_id,),
            time_limit_s=limits.time_limit_s, suppress_tokens=decoding.suppress_tokens,
            begin_suppress_tokens=decoding.begin_suppress_tokens,
        )  # fmt: skip

    def preprocess(
        self, inputs: Any, params: VisualQuestionAnsweringParameters
    ) -> tuple[list[dict[str, np.ndarray]], Any]:
        encoded, single = self.encoded_pairs(inputs, params)
        items = []
        for image, encoding in encoded:
            ids = np.asarray(encoding.ids, dtype=np.int64)
            pixels = self.processor([image])["pixel_values"][0]
            items.append({"pixel_values": pixels, "input_ids": ids, "attention_mask": np.ones_like(ids)})
        return items, single

    def core(self, items: Sequence[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
        """Each item's question embeddings: the vision graph and the question encoder, once."""
        encode = self.answerer.encode
        return [
            {
                "question_embeds": encode(
                    item["pixel_values"][None], item["input_ids"][None], item["attention_mask"][None]
                )
            }
            for item in items
        ]

    def predict(self, inputs: Any, params: BlipQuestionParameters) -> Any:
        sampling = self.sampling(params)
        items, single = self.preprocess(inputs, params)
        answers = []
        for encoded in self.core(items):
            ids = self.answerer.answer(encoded["question_embeds"], sampling, self.decoding)
            assert self.tokenizer is not None
            answers.append([{"answer": self.tokenizer.decode(ids, skip_special_tokens=True).strip()}])
        return answers[0] if single else answers

"""What Whisper's `generate` decides before and after decoding, from `generation_config.json`:
the decoder's first tokens (start, language, task, no-timestamps), which tokens are suppressed,
and the text of the tokens it produced. transformers 4.57 (`WhisperGenerationMixin`), short-form.

The first tokens follow `_retrieve_init_tokens`: the config's forced ids when the request names
neither a language nor a task; the language asked for, else (a model with `lang_to_id` whose
prompt has none) the one the model detects on its first step; the task's token; and
`<|notimestamps|>` unless timestamps are asked for. An English-only model refuses `language` and
`task`, as transformers does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from runtime.audio.languages import LANGUAGES, TO_CODE
from runtime.audio.whisper_timestamps import TimestampRules, merge_overlapping
from runtime.errors import ArtifactError, InvalidParameter
from runtime.generation import Generator, Sampling, beam_search
from runtime.text import TextTokenizer

TASKS = ("transcribe", "translate")
PIPELINE_BEAMS = 5  # the ASR pipeline's default `num_beams` where the model's config leaves it at 1


@dataclass(frozen=True)
class WhisperGeneration:
    start: int
    eos: tuple[int, ...]
    no_timestamps: int | None
    languages: dict[str, int]  # "<|en|>" -> its token id; empty for English-only configs without it
    tasks: dict[str, int]
    forced: tuple[tuple[int, int | None], ...]
    suppress: tuple[int, ...]
    begin_suppress: tuple[int, ...]
    max_length: int
    multilingual: bool | None
    num_beams: int  # transformers' ASR pipeline: 5 (openai's whisper) unless the config sets another
    language: str | None = None  # the config's own defaults (fine-tuned checkpoints set them)
    task: str | None = None
    return_timestamps: bool = False
    max_initial_timestamp_index: int | None = None

    @classmethod
    def from_config(cls, generation: dict[str, Any], config: dict[str, Any]) -> WhisperGeneration:
        start = generation.get("decoder_start_token_id", config.get("decoder_start_token_id"))
        if start is None:
            raise ArtifactError("generation_config.json names no decoder_start_token_id")
        eos = generation.get("eos_token_id", config.get("eos_token_id"))
        forced = generation.get("forced_decoder_ids") or config.get("forced_decoder_ids") or []
        vocab = int(config.get("vocab_size") or 1 << 31)

        def in_vocabulary(ids: Any) -> tuple[int, ...]:  # transformers' processors skip ids past the logits
            return tuple(int(i) for i in ids or () if 0 <= int(i) < vocab)

        beams = int(generation.get("num_beams") or 1)
        return cls(
            start=int(start),
            eos=tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),)),
            no_timestamps=generation.get("no_timestamps_token_id"),
            languages={str(k): int(v) for k, v in (generation.get("lang_to_id") or {}).items()},
            tasks={str(k): int(v) for k, v in (generation.get("task_to_id") or {}).items()},
            forced=tuple((int(i), None if t is None else int(t)) for i, t in forced),
            suppress=in_vocabulary(generation.get("suppress_tokens")),
            begin_suppress=in_vocabulary(generation.get("begin_suppress_tokens")),
            max_length=int(generation.get("max_length") or config.get("max_target_positions") or 448),
            multilingual=generation.get("is_multilingual"),
            num_beams=beams if beams != 1 else PIPELINE_BEAMS,
            language=generation.get("language"),
            task=generation.get("task"),
            return_timestamps=bool(generation.get("return_timestamps")),
            max_initial_timestamp_index=generation.get("max_initial_timestamp_index"),
        )

    @property
    def timestamp_begin(self) -> int | None:
        return None if self.no_timestamps is None else self.no_timestamps + 1

    def language_id(self, language: str) -> int:
        """`language` as a code ("fr"), a name ("french") or a token ("<|fr|>") -> its token id."""
        name = language.lower()
        if name in self.languages:
            token = name
        elif name in TO_CODE:
            token = f"<|{TO_CODE[name]}|>"
        elif name in LANGUAGES:
            token = f"<|{name}|>"
        else:
            raise InvalidParameter(f"unknown `language` {language!r}; use a code such as en, fr, de, or a name")
        if token not in self.languages:
            raise InvalidParameter(f"this model does not know the language {token}")
        return self.languages[token]

    def init_tokens(
        self, language: str | None, task: str | None, timestamps: bool, detect: Callable[[], int]
    ) -> list[int]:
        """The decoder's prompt; `detect` runs the model's language detection when it is needed."""
        if self.multilingual is False and (language is not None or task is not None):
            raise InvalidParameter("this model is English-only: it takes no `language` or `task`")
        tokens: list[int | None] = [self.start]
        if task is None and language is None and self.forced and self.forced[0][0] == 1:
            forced = list(self.forced)
            while forced and forced[0][0] == len(tokens):
                tokens.append(forced.pop(0)[1])
            if forced:
                raise ArtifactError(f"forced_decoder_ids {self.forced} do not follow Whisper's prompt pattern")
        undefined = len(tokens) <= 1 or tokens[1] is None
        language_id = None
        if language is not None:
            language_id = self.language_id(language)
        elif self.languages and undefined:
            language_id = detect()
        if language_id is not None:
            if len(tokens) > 1:
                tokens[1] = language_id
            else:
                tokens.append(language_id)
        if task is not None:
            if task not in TASKS or task not in self.tasks:
                raise InvalidParameter(f"`task` must be one of {', '.join(TASKS)}; got {task!r}")
            tokens.append(self.tasks[task])
        elif language is not None and self.tasks and not any(t in tokens for t in self.tasks.values()):
            tokens.append(self.tasks["transcribe"])
        if not timestamps and self.no_timestamps is not None and tokens[-1] != self.no_timestamps:
            tokens.append(self.no_timestamps)
        elif timestamps and tokens[-1] == self.no_timestamps:
            tokens.pop()
        if any(t is None for t in tokens):
            raise ArtifactError(f"forced_decoder_ids {self.forced} leave a prompt position empty")
        return [int(t) for t in tokens if t is not None]

    def transcript(self, pieces: list[list[int]], special: set[int], tokenizer: TextTokenizer) -> str:
        """The text of the tokens `generate` produced for each chunk of one input, as the ASR
        pipeline's `_decode_asr` makes it without timestamps: special tokens are not text, and
        a language token other than the last one seen closes a stretch; each stretch's chunks are
        joined where they overlap (`merge_overlapping`), decoded, and the stretches concatenated.
        (Timestamp tokens, which a model may emit unasked, are dropped.)"""
        begin = self.timestamp_begin
        stretches: list[list[list[int]]] = [[]]
        language = None
        for tokens in pieces:
            current: list[int] = []
            for token in tokens:
                if token in special:
                    spoken = tokenizer.id_to_token(token)[2:-2]
                    if spoken in LANGUAGES:
                        if language is not None and spoken != language:
                            stretches[-1].append(current)
                            stretches.append([])
                            current = []
                        language = spoken
                elif begin is None or token < begin:
                    current.append(token)
            if current:
                stretches[-1].append(current)
            elif not any(stretches[-1]):
                stretches[-1] = []
        texts = [tokenizer.decode(merge_overlapping(s), skip_special_tokens=False) for s in stretches if s]
        return "".join(texts)


@dataclass(frozen=True)
class Decoding:
    """What a request asks of Whisper's decoding (the `generate_kwargs` transformers takes), with
    the model's defaults filled in: `max_new_tokens` is known, `time_limit_s` is what is left of
    the request's time."""

    language: str | None
    task: str | None
    num_beams: int
    max_new_tokens: int
    time_limit_s: float | None = None
    timestamps: bool = False


def detect_language(generator: Generator, generation: WhisperGeneration, context: dict[str, np.ndarray]) -> int:
    """The language token the model scores best after its start token (`detect_language`)."""
    logits = generator.next_logits([generation.start], context)
    ids = sorted(generation.languages.values())
    return ids[int(np.argmax(logits[ids]))]


def generate(
    generator: Generator,
    generation: WhisperGeneration,
    features: np.ndarray,
    decoding: Decoding,
    cancelled: Callable[[], bool] = lambda: False,
    prompt: list[int] | None = None,
) -> tuple[list[int], list[int], str | None]:
    """Whisper's `generate` on one window's log-mel features `(1, mels, 3000)`: its prompt (made
    here unless given: the later windows of one input keep the first one's), the tokens it produced
    after it (greedy, or beam search; with the timestamp rules when `decoding.timestamps`) without
    the end token, as transformers' Whisper `generate` returns them, and why it stopped early
    ("time_limit", "cancelled") or None. The encoder runs once; language detection reads its context too."""
    context = generator.encode({"input_features": features})
    if prompt is None:
        prompt = generation.init_tokens(
            decoding.language, decoding.task, decoding.timestamps,
            lambda: detect_language(generator, generation, context),
        )  # fmt: skip
    rules = None
    if decoding.timestamps:
        assert generation.no_timestamps is not None  # `WhisperPipeline.decoding` refuses timestamps otherwise
        rules = TimestampRules(
            generation.no_timestamps, generation.eos[0], len(prompt), generation.max_initial_timestamp_index
        )
    sampling = Sampling(
        max_new_tokens=min(decoding.max_new_tokens, generation.max_length - len(prompt)),
        eos_token_ids=generation.eos, time_limit_s=decoding.time_limit_s,
        suppress_tokens=generation.suppress, begin_suppress_tokens=generation.begin_suppress, rules=rules,
    )  # fmt: skip
    reason: str | None
    if decoding.num_beams > 1:
        tokens, reason = beam_search(
            generator, prompt, sampling, decoding.num_beams, cancelled=cancelled, context=context
        )
    else:
        steps = list(generator.run(prompt, sampling, cancelled, context=context))
        tokens, reason = [step.token_id for step in steps], steps[-1].finish_reason if steps else None
    if tokens and tokens[-1] in generation.eos:
        tokens = tokens[:-1]
    return prompt, tokens, reason if reason in ("time_limit", "cancelled") else None

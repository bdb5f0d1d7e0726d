"""Generative tasks: text-generation (and chat, the conversational task), text2text-generation,
summarization and translation, over the KV-cache graphs of `runtime.generation`.

Every pipeline answers whole results like transformers (`pipe(inputs, **parameters)`) and
streams with `pipe.stream(...)`: `Token` events whose text deltas never split a character,
then the finish reason. The parameters are transformers' and text-generation-inference's names
(what `InferenceClient.text_generation` sends), also nested under `generation_parameters` or
`generate_kwargs`. `num_beams` > 1 is transformers' beam search (answered at the end, also when
streamed). Options kiln does not implement (grammars, watermarks, ...) are refused
with a 422 that names them, never silently ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import msgspec

from runtime import chat
from runtime.errors import InvalidInput, InvalidParameter, Unprocessable
from runtime.generation import Generator, Sampling, beam_search
from runtime.session import OnnxModel
from runtime.tasks import register
from runtime.tasks.base import TextPipeline, type_name


class GenerationParameters(msgspec.Struct, forbid_unknown_fields=True):
    max_new_tokens: int | None = None
    max_length: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    do_sample: bool | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: list[str] | None = None
    stop_sequences: list[str] | None = None
    return_full_text: bool | None = None
    num_beams: int | None = None
    num_return_sequences: int | None = None
    truncate: int | None = None
    details: bool = False
    decoder_input_details: bool = False
    watermark: bool = False
    best_of: int | None = None
    typical_p: float | None = None
    frequency_penalty: float | None = None
    top_n_tokens: int | None = None
    grammar: Any = None
    adapter_id: str | None = None
    src_lang: str | None = None
    tgt_lang: str | None = None
    generation_parameters: dict[str, Any] | None = None
    generate_kwargs: dict[str, Any] | None = None


MAX_STOP_CHARS = 256
# Below this a temperature makes sampling an argmax in all but name, and divides logits into
# overflow (5e-324 gives inf and NaN probabilities): such requests decode greedily.
MIN_TEMPERATURE = 1e-3
UNSUPPORTED = {
    "num_return_sequences": 1, "best_of": 1, "watermark": False, "typical_p": None,
    "frequency_penalty": None, "top_n_tokens": None, "grammar": None, "adapter_id": None,
}  # fmt: skip


@dataclass
class Token:
    id: int
    text: str
    logprob: float
    special: bool


@dataclass(frozen=True)
class Prepared:
    """A request checked and tokenized, ready to generate: errors surface before any streaming."""

    prompt: str
    ids: list[int]
    params: GenerationParameters
    sampling: Sampling
    num_beams: int = 1


@dataclass
class Finished:
    text: str
    reason: str
    generated_tokens: int
    prompt_tokens: int
    seed: int | None


class GenerativePipeline(TextPipeline):
    """Shared by every generative task: parameters, sampling, streaming, stop sequences."""

    output_key: ClassVar[str] = "generated_text"
    batchable: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        encoder = self.manifest.graphs.get("encoder")
        self.encoder = OnnxModel(self.directory / encoder, self.options) if encoder else None
        self.generator = Generator(self.model, self.encoder, self.config)
        path = self.directory / "generation_config.json"
        self.defaults: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
        config_path = self.directory / "tokenizer_config.json"
        self.tokenizer_config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.is_file() else {}

    @property
    def example(self) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        return "Hello", {"max_new_tokens": 2}

    def parameters(self, parameters: dict[str, Any]) -> GenerationParameters:
        merged = dict(parameters)
        for key in ("generation_parameters", "generate_kwargs"):
            nested = merged.pop(key, None)
            if nested is not None:
                if not isinstance(nested, dict):
                    raise InvalidParameter(f"`{key}` must be an object")
                merged.update(nested)
        from runtime.tasks.base import parse_parameters

        params = parse_parameters(GenerationParameters, merged)
        for name, neutral in UNSUPPORTED.items():
            value = getattr(params, name)
            if value is not None and value != neutral:
                raise Unprocessable(f"`{name}` is not supported by this server yet (got {value!r})")
        if params.src_lang or params.tgt_lang:
            raise Unprocessable("this model takes no `src_lang` / `tgt_lang`: its languages are fixed by training")
        return params

    def eos_ids(self) -> tuple[int, ...]:
        eos = self.defaults.get("eos_token_id", self.config.get("eos_token_id"))
        return tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))

    def sampling(self, params: GenerationParameters, prompt_tokens: int) -> Sampling:
        d = self.defaults
        new = params.max_new_tokens
        if new is None and params.max_length is not None:
            new = params.max_length - (0 if self.encoder else prompt_tokens)
        window = self.tokenizer.max_length - (0 if self.encoder else prompt_tokens)
        if new is None:
            asked = int(d.get("max_new_tokens") or self.limits.default_new_tokens)
            new = max(1, min(asked, self.limits.max_new_tokens, window))
        if new < 1:
            which = "`max_new_tokens`" if params.max_new_tokens is not None else f"`max_length` {params.max_length}"
            raise InvalidParameter(f"nothing to generate: {which} leaves {new} new tokens")
        if new > self.limits.max_new_tokens:
            raise Unprocessable(f"`max_new_tokens` is {new}; this server allows at most {self.limits.max_new_tokens}")
        if new > window:
            raise Unprocessable(
                f"the prompt ({prompt_tokens} tokens) and `max_new_tokens` ({new}) exceed the model's window of "
                f"{self.tokenizer.max_length} tokens"
            )
        do_sample = params.do_sample if params.do_sample is not None else bool(d.get("do_sample", False))
        temperature = params.temperature if params.temperature is not None else float(d.get("temperature") or 1.0)
        if params.do_sample is None and params.temperature is not None and params.temperature > 0:
            do_sample = True  # text-generation-inference samples when a temperature is given
        if temperature < 0:
            raise InvalidParameter(f"`temperature` must be at least 0 (0: greedy); got {temperature}")
        if temperature < MIN_TEMPERATURE:  # 0, or so small that sampling is argmax (and overflows)
            do_sample, temperature = False, 1.0
        if params.top_k is not None and params.top_k < 0:
            raise InvalidParameter(f"`top_k` must be at least 0 (0: no top-k); got {params.top_k}")
        if params.repetition_penalty is not None and params.repetition_penalty <= 0:
            raise InvalidParameter(f"`repetition_penalty` must be positive; got {params.repetition_penalty}")
        top_p = params.top_p if params.top_p is not None else float(d.get("top_p") or 1.0)
        if not 0 < top_p <= 1:
            raise InvalidParameter(f"`top_p` must be in (0, 1]; got {top_p}")
        return Sampling(
            max_new_tokens=new, do_sample=do_sample, temperature=temperature,
            top_k=params.top_k if params.top_k is not None else int(d.get("top_k", 50) if do_sample else 0),
            top_p=top_p,
            repetition_penalty=params.repetition_penalty or float(d.get("repetition_penalty") or 1.0),
            seed=params.seed, eos_token_ids=self.eos_ids(), time_limit_s=self.limits.time_limit_s,
        )  # fmt: skip

    def prompt_ids(self, inputs: Any, params: GenerationParameters) -> tuple[str, list[int]]:
        if not isinstance(inputs, str) or not inputs:
            got = "an empty string" if inputs == "" else type_name(inputs)
            raise InvalidInput(f"`inputs` must be a non-empty string; got {got}")
        return inputs, self.encode_prompt(inputs, params)

    def encode_prompt(self, prompt: str, params: GenerationParameters, *, add_special_tokens: bool = True) -> list[int]:
        """The prompt's ids: its last `truncate` tokens when asked (text-generation-inference's
        `truncate`), else all of them, refused past the model's window. Both are decided from a cut
        of the text, so a multi-megabyte prompt costs milliseconds."""
        window = self.tokenizer.max_length
        if params.truncate is not None:
            if not 1 <= params.truncate <= window:
                raise InvalidParameter(f"`truncate` must be between 1 and {window} tokens; got {params.truncate}")
            encoded = self.tokenizer.encode(
                [prompt], max_length=params.truncate, direction="left", add_special_tokens=add_special_tokens
            )
        else:
            encoded = self.tokenizer.encode(
                [prompt],
                truncation=False,
                add_special_tokens=add_special_tokens,
                too_long="shorten it or pass `truncate`",
            )
        return list(encoded[0].ids)

    def prepare(self, inputs: Any, parameters: dict[str, Any]) -> Prepared:
        params = self.parameters(parameters)
        prompt, ids = self.prompt_ids(inputs, params)
        sampling = self.sampling(params, len(ids))
        beams = params.num_beams if params.num_beams is not None else int(self.defaults.get("num_beams") or 1)
        if beams > 1 and sampling.do_sample:
            raise Unprocessable("beam search with sampling is not supported: set `do_sample` false or `num_beams` 1")
        self.check_cost(params, beams, len(ids), sampling.max_new_tokens)
        return Prepared(prompt, ids, params, sampling, beams)

    def check_cost(self, params: GenerationParameters, beams: int, prompt_tokens: int, new_tokens: int) -> None:
        """Refuse, before anything is allocated, what would size work or memory past the limits:
        beams, stop sequences, and the key/value cache that beams x (prompt + new tokens) need."""
        limits = self.limits
        if beams < 1:
            raise InvalidParameter(f"`num_beams` must be at least 1; got {beams}")
        if beams > limits.max_beams:
            raise Unprocessable(f"`num_beams` is {beams}; this server allows at most {limits.max_beams}")
        stops = params.stop or params.stop_sequences or []
        if len(stops) > limits.max_stop_sequences or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise Unprocessable(
                f"at most {limits.max_stop_sequences} stop sequences of at most {MAX_STOP_CHARS} characters each"
            )
        length = (0 if self.encoder else prompt_tokens) + new_tokens
        cache = beams * self.generator.cache_bytes(length, prompt_tokens if self.encoder else 0)
        if cache > limits.max_kv_cache_bytes:
            mib = 1 << 20
            raise Unprocessable(
                f"{beams} beam(s) of {length} tokens need {cache // mib} MiB of key/value cache; this server allows "
                f"{limits.max_kv_cache_bytes // mib} MiB per request: ask for fewer beams or new tokens"
            )

    def stream(
        self, inputs: Any, cancelled: Callable[[], bool] = lambda: False, **parameters: Any
    ) -> Iterator[Token | Finished]:
        """Tokens as they are generated, then one `Finished` with the whole text and the reason."""
        yield from self.events(self.prepare(inputs, parameters), cancelled)

    def events(self, prepared: Prepared, cancelled: Callable[[], bool] = lambda: False) -> Iterator[Token | Finished]:
        ids, params, sampling = prepared.ids, prepared.params, prepared.sampling
        if prepared.num_beams > 1:
            yield from self._beam_events(prepared, cancelled)
            return
        stops = [s for s in (params.stop or params.stop_sequences or []) if s]
        special = set(self.tokenizer.info.special_ids)
        generated: list[int] = []
        emitted = ""
        reason = "length"
        for step in self.generator.run(ids, sampling, cancelled):
            generated.append(step.token_id)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                text, step.finish_reason = text[:cut], "stop_sequence"
            delta = "" if text.endswith("\ufffd") and step.finish_reason is None else text[len(emitted) :]
            emitted += delta
            yield Token(step.token_id, delta, step.logprob, step.token_id in special)
            if step.finish_reason is not None:
                reason = "eos_token" if step.finish_reason == "stop" else step.finish_reason
                break
        yield Finished(emitted, reason, len(generated), len(ids), sampling.seed)

    def _beam_events(self, prepared: Prepared, cancelled: Callable[[], bool]) -> Iterator[Token | Finished]:
        """Beam search knows its answer only at the end: every token comes then, in order."""
        lengths = self.defaults.get("length_penalty", 1.0), self.defaults.get("early_stopping", False)
        ids, stopped = beam_search(
            self.generator, prepared.ids, prepared.sampling, prepared.num_beams, *lengths, cancelled=cancelled
        )
        special = set(self.tokenizer.info.special_ids)
        emitted = ""
        for count in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:count], skip_special_tokens=True)
            yield Token(ids[count - 1], text[len(emitted) :], 0.0, ids[count - 1] in special)
            emitted = text
        reason = stopped or ("eos_token" if ids and ids[-1] in prepared.sampling.eos_token_ids else "length")
        yield Finished(emitted, reason, len(ids), len(prepared.ids), None)

    def complete(self, inputs: Any, parameters: dict[str, Any]) -> tuple[str, Finished]:
        prepared = self.prepare(inputs, parameters)
        return prepared.prompt, self.finish(prepared)[1]

    def finish(self, prepared: Prepared, cancelled: Callable[[], bool] = lambda: False) -> tuple[list[Token], Finished]:
        """Generate to the end (or the time limit, or `cancelled`): the tokens and the outcome."""
        tokens: list[Token] = []
        for event in self.events(prepared, cancelled):
            if isinstance(event, Finished):
                return tokens, event
            tokens.append(event)
        raise AssertionError("generation ended without a Finished event")

    def __call__(self, inputs: Any, **parameters: Any) -> Any:
        _, finished = self.complete(inputs, parameters)
        return [{self.output_key: finished.text}]


@register("text-generation")
class TextGenerationPipeline(GenerativePipeline):
    """A prompt string -> `[{"generated_text"}]` (the prompt included unless `return_full_text`
    is false); chat messages -> `[{"generated_text": [...messages, assistant reply]}]`."""

    def prompt_ids(self, inputs: Any, params: GenerationParameters) -> tuple[str, list[int]]:
        if isinstance(inputs, list):
            messages = chat.messages_of(inputs)
            special = {k: self._token(k) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
            prompt = chat.render(self.chat_template, messages, special)
            return prompt, self.encode_prompt(prompt, params, add_special_tokens=False)
        return super().prompt_ids(inputs, params)

    @property
    def chat_template(self) -> str | None:
        """The model's template: `chat_template.jinja` (transformers >= 4.43 saves it there), else
        `tokenizer_config.json`'s, where a list of named templates means its "default"."""
        path = self.directory / "chat_template.jinja"
        if path.is_file():
            return path.read_text()
        template = self.tokenizer_config.get("chat_template")
        if isinstance(template, list):
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    def _token(self, name: str) -> str | None:
        value = self.tokenizer_config.get(name)
        return value.get("content") if isinstance(value, dict) else value

    def __call__(self, inputs: Any, **parameters: Any) -> Any:
        prompt, finished = self.complete(inputs, parameters)
        if isinstance(inputs, list):
            return [{"generated_text": [*inputs, {"role": "assistant", "content": finished.text}]}]
        full = parameters.get("return_full_text", True)
        return [{"generated_text": (prompt + finished.text) if full is not False else finished.text}]


@register("text2text-generation")
class Text2TextGenerationPipeline(GenerativePipeline):
    """An encoder-decoder model: the input string -> `[{"generated_text"}]`."""


@register("summarization")
class SummarizationPipeline(Text2TextGenerationPipeline):
    output_key = "summary_text"


@register("translation")
class TranslationPipeline(Text2TextGenerationPipeline):
    """`src_lang` / `tgt_lang` are refused: kiln serves models whose languages are fixed (T5-style
    prefixes go in the input, as "translate English to German: ...")."""

    output_key = "translation_text"

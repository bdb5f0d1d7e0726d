"""text-to-image: a prompt -> a PIL image, from Stable Diffusion 1.x/2.x and SDXL graphs, in numpy.

The loop is diffusers' `StableDiffusionPipeline.__call__` step for step: the prompt and the negative
prompt (`""` when none) tokenized and padded to the text encoder's 77 tokens, the text encoder, the
initial latents times the scheduler's `init_noise_sigma`, then for each timestep one UNet call with
both halves of classifier-free guidance in one batch (`[negative, prompt]`; a guidance scale of 1 or
less runs the prompt alone, as diffusers does), `noise_uncond + scale * (noise_text - noise_uncond)`,
the scheduler's step; then the VAE decoder on `latents / scaling_factor`, and diffusers'
`postprocess` and `numpy_to_pil`: `(x / 2 + 0.5).clip(0, 1)`, times 255, rounded, to uint8.

SDXL (`StableDiffusionXLPipeline.__call__`) differs in the conditioning only: two text encoders,
each with its own tokenizer, whose penultimate hidden states are joined on the feature axis; the
second one's projected, pooled embedding (`text_embeds`) and the size ids `(height, width, 0, 0,
height, width)` (`original_size`, `crops_coords_top_left`, `target_size` at their defaults) go to
the UNet beside them; without a negative prompt, the unconditional half is zeros when the
pipeline says `force_zeros_for_empty_prompt`; and a VAE with `latents_mean`/`latents_std` is fed
`latents * std / scaling_factor + mean`.

Where it differs from diffusers, on purpose:
- the seed draws the initial latents (and an ancestral scheduler's noise) from numpy's PCG64, not
  torch's generator: a seed gives the same image on every kiln, not the image diffusers gives for
  that seed (given the same latents, the images agree: `StableDiffusion.generate(latents=...)`);
- one image per request (`num_images_per_prompt` 1), no `guidance_rescale`, `clip_skip`, LoRA or
  IP-adapter, and no safety checker (the artifact carries none);
- width and height must be multiples of the artifact's `size_multiple`: 8 as diffusers asks (and
  the VAE's factor). The UNet graph upsamples to its skip connections' sizes, as diffusers' UNet
  does at sizes that are not multiples of its whole down factor, so any such size runs; artifacts
  compiled before that traced exact factors of two and carry 64 (SD 1.x/2.x) here.

The artifact (written by `compile.diffusion`): `text_encoder/model.onnx`, `unet/model.onnx` (the
manifest's `model_file`), `vae_decoder/model.onnx`, `tokenizer/tokenizer.json` (SDXL adds
`text_encoder_2/` and `tokenizer_2/`), `scheduler/scheduler_config.json`, and `config.json`: the
`DiffusionInfo` below, which names the text encoders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import numpy as np
from PIL import Image

from runtime.artifact import Manifest, TokenizerInfo
from runtime.diffusion.schedulers import Scheduler, scheduler_from_config
from runtime.errors import ArtifactError, InvalidInput, InvalidParameter, Stopped, Unprocessable
from runtime.session import OnnxModel, SessionOptions
from runtime.tasks import register
from runtime.tasks.base import InputKind, Pipeline, parse_parameters, type_name
from runtime.text import TextTokenizer

GRAPHS = {"unet": "unet/model.onnx", "vae_decoder": "vae_decoder/model.onnx"}  # and the text encoders'
SCHEDULER = "scheduler/scheduler_config.json"


class TextEncoderInfo(msgspec.Struct, frozen=True):
    """One text encoder: its graph, its tokenizer, and the outputs the loop takes from it.

    `tokenizer_info`: the padding facts of this encoder's tokenizer (None: the manifest's, which
    describe the first); `hidden_states`: the output joined into the UNet's `encoder_hidden_states`
    (SDXL: the penultimate layer's, `hidden_states.{layers - 1}`); `pooled`: the output given to the
    UNet as `text_embeds` (SDXL's second encoder: `text_embeds`).
    """

    graph: str
    tokenizer: str
    tokenizer_info: TokenizerInfo | None = None
    hidden_states: str = "last_hidden_state"
    pooled: str | None = None


SD_TEXT_ENCODER = TextEncoderInfo("text_encoder/model.onnx", "tokenizer/tokenizer.json")


class DiffusionInfo(msgspec.Struct, frozen=True):
    """What the loop needs to know of the diffusers pipeline it replaces (the artifact's `config.json`).

    `vae_scale_factor`: pixels per latent, `2 ** (len(vae.block_out_channels) - 1)` as diffusers;
    `vae_scaling_factor`: the VAE's `scaling_factor` (0.18215 for SD 1.x/2.x); `size_multiple`: what
    width and height must be multiples of; the default size is the UNet's `sample_size` in pixels.
    """

    pipeline: str = msgspec.field(name="_class_name")
    latent_channels: int
    vae_scaling_factor: float
    vae_scale_factor: int
    size_multiple: int
    default_height: int
    default_width: int
    default_steps: int
    default_guidance_scale: float = 7.5  # the pipeline's `__call__` default: SDXL's is 5.0
    text_encoders: list[TextEncoderInfo] = msgspec.field(default_factory=lambda: [SD_TEXT_ENCODER])
    time_ids: bool = False  # SDXL's UNet: pooled text embedding and size ids as added conditioning
    force_zeros_for_empty_prompt: bool = False
    vae_latents_mean: list[float] | None = None
    vae_latents_std: list[float] | None = None

    def graphs(self) -> dict[str, str]:
        """Every graph of the artifact by component name (`text_encoder`, `text_encoder_2`, ...)."""
        return {**{Path(e.graph).parent.name: e.graph for e in self.text_encoders}, **GRAPHS}


@dataclass(frozen=True)
class TextEncoder:
    """A tokenizer and its text encoder graph: prompts -> (hidden states, pooled embedding or None)."""

    tokenizer: TextTokenizer
    graph: OnnxModel
    info: TextEncoderInfo

    @classmethod
    def load(
        cls, directory: Path, info: TextEncoderInfo, tokenizer: TokenizerInfo, options: SessionOptions
    ) -> TextEncoder:
        tokenizer_info = info.tokenizer_info or tokenizer
        return cls(
            TextTokenizer(directory / info.tokenizer, tokenizer_info), OnnxModel(directory / info.graph, options), info
        )

    def encode(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Each prompt padded to the encoder's length, as diffusers pads (`padding="max_length"`)."""
        encodings = self.tokenizer.encode(prompts, truncation=True)
        ids = self.tokenizer.batch(encodings, width=self.tokenizer.max_length)["input_ids"]
        out = self.graph.run({"input_ids": ids})
        return out[self.info.hidden_states], None if self.info.pooled is None else out[self.info.pooled]


def text_encoders(
    directory: Path, info: DiffusionInfo, tokenizer: TokenizerInfo, options: SessionOptions
) -> list[TextEncoder]:
    return [TextEncoder.load(directory, encoder, tokenizer, options) for encoder in info.text_encoders]


def _never() -> bool:
    return False


def _ignore(step: int, total: int) -> None:
    return None


class StableDiffusion:
    """The text encoders, the UNet and the VAE decoder, the scheduler's config, and diffusers' loop
    over them."""

    def __init__(
        self,
        text_encoders: list[TextEncoder],
        unet: OnnxModel,
        vae_decoder: OnnxModel,
        scheduler_config: dict[str, Any],
        info: DiffusionInfo,
    ) -> None:
        self.text_encoders, self.unet, self.vae_decoder = text_encoders, unet, vae_decoder
        self.scheduler_config, self.info = scheduler_config, info

    @classmethod
    def load(cls, directory: Path, tokenizer: TokenizerInfo, options: SessionOptions) -> StableDiffusion:
        """The artifact in `directory`; `tokenizer`: the manifest's facts (the first tokenizer's)."""
        info = read_info(directory)
        unet, vae_decoder = (OnnxModel(directory / GRAPHS[name], options) for name in ("unet", "vae_decoder"))
        encoders = text_encoders(directory, info, tokenizer, options)
        return cls(encoders, unet, vae_decoder, read_scheduler_config(directory), info)

    def scheduler(self, name: str | None = None) -> Scheduler:
        """A fresh scheduler (they keep per-generation state): the artifact's, or the class `name`
        built from the same config, as diffusers' `SomeScheduler.from_config(pipe.scheduler.config)`."""
        config = self.scheduler_config if name is None else {**self.scheduler_config, "_class_name": name}
        return scheduler_from_config(config)

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int, int]:
        factor = self.info.vae_scale_factor
        return (1, self.info.latent_channels, height // factor, width // factor)

    def encode_prompt(self, prompts: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """Each prompt's hidden states (every encoder's, joined on the feature axis) and the first
        pooled embedding an encoder gives (SDXL's second; None for SD 1.x/2.x)."""
        hidden, pooled = [], None
        for encoder in self.text_encoders:
            states, pool = encoder.encode(prompts)
            hidden.append(states)
            pooled = pool if pooled is None else pooled
        return np.concatenate(hidden, axis=-1), pooled

    def conditioning(
        self, prompt: str, negative_prompt: str | None, guided: bool, height: int, width: int
    ) -> dict[str, np.ndarray]:
        """The UNet's text inputs, `[negative, prompt]` when `guided`: `encoder_hidden_states`, and
        for SDXL `text_embeds` and `time_ids`."""
        zeros = guided and negative_prompt is None and self.info.force_zeros_for_empty_prompt
        embeddings, pooled = self.encode_prompt([negative_prompt or "", prompt] if guided and not zeros else [prompt])
        if zeros:
            embeddings = np.concatenate([np.zeros_like(embeddings), embeddings])
            pooled = None if pooled is None else np.concatenate([np.zeros_like(pooled), pooled])
        feeds = {"encoder_hidden_states": embeddings}
        if self.info.time_ids:
            if pooled is None:
                raise ArtifactError("this SDXL artifact's text encoders give no pooled embedding for the UNet")
            sizes = np.asarray([[height, width, 0, 0, height, width]], dtype=np.float32)
            feeds |= {"text_embeds": pooled, "time_ids": np.repeat(sizes, len(embeddings), axis=0)}
        return feeds

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """The VAE decoder on the final latents, unscaled as diffusers does: `(height, width, 3)` in [0, 1]."""
        info = self.info
        if info.vae_latents_mean is not None and info.vae_latents_std is not None:
            mean, std = (
                np.asarray(v, dtype=np.float32).reshape(1, -1, 1, 1)
                for v in (info.vae_latents_mean, info.vae_latents_std)
            )
            scaled = latents * std / np.float32(info.vae_scaling_factor) + mean
        else:
            scaled = latents / np.float32(info.vae_scaling_factor)
        image = self.vae_decoder.run({"latent_sample": scaled.astype(np.float32)})["sample"][0]
        return np.clip(image / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)  # type: ignore[no-any-return]

    def generate(
        self,
        prompt: str,
        *,
        negative_prompt: str | None,
        guidance_scale: float,
        steps: int,
        latents: np.ndarray,
        scheduler: Scheduler,
        rng: np.random.Generator,
        should_stop: Callable[[], bool] = _never,
        on_step: Callable[[int, int], None] = _ignore,
    ) -> np.ndarray:
        """The decoded image, `(height, width, 3)` float32 in [0, 1]; `latents` is the initial
        noise, before the scheduler's `init_noise_sigma` (diffusers' `latents=` argument)."""
        guided = guidance_scale > 1.0
        factor = self.info.vae_scale_factor
        conditioning = self.conditioning(
            prompt, negative_prompt, guided, latents.shape[2] * factor, latents.shape[3] * factor
        )
        scheduler.set_timesteps(steps)
        sample = latents.astype(np.float32) * np.float32(scheduler.init_noise_sigma)
        total = len(scheduler.timesteps)
        for index, timestep in enumerate(scheduler.timesteps):
            if should_stop():
                raise Stopped(f"generation stopped after {index} of {total} steps")
            batch = np.concatenate([sample, sample]) if guided else sample
            batch = scheduler.scale_model_input(batch, timestep)
            feeds = {"sample": batch.astype(np.float32), "timestep": np.asarray(timestep, dtype=np.float32)}
            noise = self.unet.run(feeds | conditioning)["out_sample"]
            if guided:
                uncond, text = noise[:1], noise[1:]
                noise = uncond + np.float32(guidance_scale) * (text - uncond)
            sample = scheduler.step(noise, timestep, sample, rng=rng).astype(np.float32)
            on_step(index + 1, total)
        return self.decode(sample)


def to_pil(image: np.ndarray) -> Image.Image:
    """diffusers' `numpy_to_pil`: times 255, rounded, to uint8."""
    return Image.fromarray((image * 255).round().astype(np.uint8))


def read_info(directory: Path) -> DiffusionInfo:
    path = directory / "config.json"
    try:
        return msgspec.json.decode(path.read_bytes(), type=DiffusionInfo)
    except (OSError, msgspec.DecodeError) as exc:
        raise ArtifactError(f"{path} does not describe a Stable Diffusion artifact: {exc}") from None


def read_scheduler_config(directory: Path) -> dict[str, Any]:
    path = directory / SCHEDULER
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {SCHEDULER}, which text-to-image needs")
    config: dict[str, Any] = json.loads(path.read_text())
    return config


class TextToImageParameters(msgspec.Struct, forbid_unknown_fields=True):
    """`huggingface_hub`'s `TextToImageParameters`; `scheduler` names a diffusers scheduler class."""

    negative_prompt: str | None = None
    guidance_scale: float | None = None
    num_inference_steps: int | None = None
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    scheduler: str | None = None


@dataclass(frozen=True)
class Request:
    """A checked request: every size and count is known before any graph runs."""

    prompt: str
    negative_prompt: str | None
    guidance_scale: float
    steps: int
    height: int
    width: int
    seed: int | None
    scheduler: Scheduler


@register("text-to-image")
class TextToImagePipeline(Pipeline):
    """A prompt -> a `PIL.Image` (what diffusers' pipeline returns in `.images[0]`).

    Refused before anything runs: an empty prompt (`InvalidInput`), a width or height that is not a
    positive multiple of `size_multiple`, fewer than 1 step, a negative guidance scale, an unknown
    scheduler (`InvalidParameter`); more steps or pixels than `limits` allow (`Unprocessable`). A
    generation past `limits.time_limit_s` stops at the next step (`Unprocessable`).
    """

    input_kind: ClassVar[InputKind] = InputKind.TEXT
    Parameters: ClassVar[type[msgspec.Struct]] = TextToImageParameters
    batchable: ClassVar[bool] = False

    def __init__(self, directory: Path, manifest: Manifest, options: SessionOptions) -> None:
        super().__init__(directory, manifest, options)
        if manifest.tokenizer is None:
            raise ArtifactError(f"{directory} has no tokenizer facts in its manifest, which text-to-image needs")
        self.info = read_info(directory)
        self.engine = StableDiffusion(
            text_encoders(directory, self.info, manifest.tokenizer, options), self.model,
            OnnxModel(directory / GRAPHS["vae_decoder"], options), read_scheduler_config(directory), self.info,
        )  # fmt: skip

    @property
    def example(self) -> tuple[Any, dict[str, Any]]:  # type: ignore[override]
        return "a photograph of a lighthouse", {"num_inference_steps": 1, "seed": 0}

    def __call__(
        self,
        inputs: Any,
        *,
        should_stop: Callable[[], bool] = _never,
        on_step: Callable[[int, int], None] = _ignore,
        **parameters: Any,
    ) -> Image.Image:
        """Generate one image. `should_stop` is asked before each step (`Stopped` when it
        says so); `on_step(done, total)` is called after each, counting the scheduler's timesteps as
        diffusers' progress bar does (PNDM runs its first one twice: `num_inference_steps` + 1)."""
        request = self.prepare(inputs, parse_parameters(TextToImageParameters, parameters))
        return self.run(request, should_stop=should_stop, on_step=on_step)

    def prepare(self, inputs: Any, params: TextToImageParameters) -> Request:
        if not isinstance(inputs, str) or not inputs.strip():
            got = "an empty string" if isinstance(inputs, str) else type_name(inputs)
            raise InvalidInput(f"`inputs` must be a non-empty prompt string; got {got}")
        info, limits = self.info, self.limits
        steps = info.default_steps if params.num_inference_steps is None else params.num_inference_steps
        if steps < 1:
            raise InvalidParameter(f"`num_inference_steps` must be at least 1; got {steps}")
        if steps > limits.max_inference_steps:
            raise Unprocessable(
                f"`num_inference_steps` is {steps}; this server runs at most {limits.max_inference_steps} steps "
                "(KILN_MAX_INFERENCE_STEPS)"
            )
        height = info.default_height if params.height is None else params.height
        width = info.default_width if params.width is None else params.width
        for name, value in (("height", height), ("width", width)):
            if value < info.size_multiple or value % info.size_multiple:
                raise InvalidParameter(
                    f"`{name}` must be a positive multiple of {info.size_multiple} pixels for this model; got {value}"
                )
        if width * height > limits.max_generated_pixels:
            raise Unprocessable(
                f"{width}x{height} is {width * height} pixels; this server generates at most "
                f"{limits.max_generated_pixels} (KILN_MAX_GENERATED_PIXELS)"
            )
        guidance = info.default_guidance_scale if params.guidance_scale is None else params.guidance_scale
        if not np.isfinite(guidance) or guidance < 0:
            raise InvalidParameter(f"`guidance_scale` must be a finite number >= 0; got {guidance}")
        try:
            scheduler = self.engine.scheduler(params.scheduler)
        except (KeyError, ValueError) as exc:
            raise InvalidParameter(f"`scheduler` {params.scheduler!r} is not one this server has: {exc}") from None
        return Request(inputs, params.negative_prompt, guidance, steps, height, width, params.seed, scheduler)

    def run(
        self,
        request: Request,
        *,
        should_stop: Callable[[], bool] = _never,
        on_step: Callable[[int, int], None] = _ignore,
    ) -> Image.Image:
        limit = self.limits.time_limit_s
        deadline = None if limit is None else time.monotonic() + limit

        def stop() -> bool:
            if deadline is not None and time.monotonic() > deadline:
                raise Unprocessable(
                    f"the image took longer than the {limit:g} s a request may take (KILN_GENERATION_TIMEOUT): "
                    "ask for fewer steps or pixels"
                )
            return should_stop()

        rng = np.random.default_rng(request.seed)
        latents = rng.standard_normal(self.engine.latent_shape(request.height, request.width), dtype=np.float32)
        image = self.engine.generate(
            request.prompt, negative_prompt=request.negative_prompt, guidance_scale=request.guidance_scale,
            steps=request.steps, latents=latents, scheduler=request.scheduler, rng=rng,
            should_stop=stop, on_step=on_step,
        )  # fmt: skip
        return to_pil(image)

    def describe(self) -> dict[str, Any]:
        info = self.info
        return {
            **super().describe(),
            "pipeline": info.pipeline,
            "default_size": [info.default_width, info.default_height],
            "size_multiple": info.size_multiple,
            "default_steps": info.default_steps,
            "scheduler": self.engine.scheduler_config.get("_class_name"),
            "max_inference_steps": self.limits.max_inference_steps,
            "max_generated_pixels": self.limits.max_generated_pixels,
        }

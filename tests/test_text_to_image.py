"""text-to-image: a tiny random Stable Diffusion pipeline compiled by `compile.diffusion` and served
by `runtime.tasks.text_to_image`, against diffusers' `StableDiffusionPipeline` on the same latents.

The pipeline is the one diffusers' own tests build (`tests/pipelines/stable_diffusion`), with a CLIP
tokenizer written here (byte-level alphabet, merges learned from a few words). Tolerances: each
graph within 1e-4 of PyTorch (max abs; the compile gate is 1e-3, scaled), and the served images
within `IMAGE_MIN_PSNR` (35 dB) of diffusers' on uint8 pixels, for four schedulers. A second
pipeline, the same with a UNet of four levels, checks sizes that are multiples of 8 pixels but not
of the UNet's whole down factor: graph and image against diffusers, same tolerances. A third, the
SDXL pipeline of diffusers' tests (two text encoders, the second tokenizer padding with "!", a UNet
with pooled-text and size conditioning), compiled with its task inferred, against
`StableDiffusionXLPipeline` on the same latents.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import diffusers
import httpx
import msgspec
import numpy as np
import pytest
import torch
from PIL import Image

import runtime
from compile.diffusion import IMAGE_MIN_PSNR, build, psnr
from compile.options import CompileOptions
from runtime.artifact import Source, read_manifest, verify_files
from runtime.errors import InvalidInput, InvalidParameter, Stopped, Unprocessable
from runtime.tasks.base import Limits
from runtime.tasks.text_to_image import TextToImagePipeline
from tests.conftest import Lazy, Server
from tests.support.diffusion import PROMPT

GRAPH_MAX_ABS = 1e-4
STEPS = 5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tiny_models: Lazy[tuple[str, str], Path]) -> Path:
    return tiny_models["text-to-image", "stable-diffusion"]


@pytest.fixture(scope="module")
def compiled(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str]]:
    """The artifact, what `build` logged as it went, and the report lines it returned."""
    artifact = tmp_path_factory.mktemp("tiny-sd-artifact") / "text-to-image"
    artifact.mkdir()
    logged: list[str] = []
    source = Source(model=str(model_dir), local=True)
    options = CompileOptions(task="text-to-image")
    _, lines = build(
        model_dir, artifact, source=source, options=options, key="test", started=time.perf_counter(), log=logged.append
    )
    return artifact, logged, lines


@pytest.fixture(scope="module")
def served(compiled: tuple[Path, list[str], list[str]]) -> TextToImagePipeline:
    pipe = runtime.load(compiled[0], threads=1, spinning=False)
    assert isinstance(pipe, TextToImagePipeline)
    return pipe


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> Any:
    pipe = diffusers.StableDiffusionPipeline.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def latents_for(seed: int, height: int, width: int) -> np.ndarray:
    """The initial latents the served pipeline draws for `seed` (vae_scale_factor 2, 4 channels)."""
    return np.random.default_rng(seed).standard_normal((1, 4, height // 2, width // 2), dtype=np.float32)


def diffusers_image(reference: Any, scheduler: str, seed: int, height: int = 64, width: int = 64, **kwargs: Any) -> Any:
    original = reference.scheduler
    reference.scheduler = getattr(diffusers, scheduler).from_config(original.config)
    try:
        with torch.inference_mode():
            return reference(
                PROMPT, latents=torch.from_numpy(latents_for(seed, height, width)), height=height, width=width,
                num_inference_steps=STEPS, output_type="pil", **kwargs,
            ).images[0]  # fmt: skip
    finally:
        reference.scheduler = original


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


@pytest.fixture
def unet_batches(served: TextToImagePipeline, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The batch size of every UNet call the served pipeline makes during a test."""
    batches: list[int] = []
    run = served.engine.unet.run

    def counting(feeds: dict[str, np.ndarray], **kwargs: Any) -> dict[str, np.ndarray]:
        batches.append(int(feeds["sample"].shape[0]))
        return run(feeds, **kwargs)

    monkeypatch.setattr(served.engine.unet, "run", counting)
    yield batches


def test_artifact_layout_and_manifest(compiled: tuple[Path, list[str], list[str]]) -> None:
    artifact, logged, _ = compiled
    manifest = read_manifest(artifact)
    assert manifest.task == "text-to-image"
    assert manifest.model_file == "unet/model.onnx"
    assert set(manifest.graphs) == {"text_encoder", "unet", "vae_decoder"}
    assert not (artifact / "vae_encoder").exists()
    for name in (
        "tokenizer/tokenizer.json",
        "scheduler/scheduler_config.json",
        "config.json",
        *manifest.graphs.values(),
    ):
        assert name in manifest.files
    assert verify_files(artifact, manifest) == []
    assert manifest.tokenizer is not None and manifest.tokenizer.max_length == 77
    description = json.loads((artifact / "config.json").read_text())
    assert description["default_height"] == description["default_width"] == 64  # sample_size 32 x vae factor 2
    assert description["vae_scale_factor"] == 2 and description["size_multiple"] == 8
    # the scheduler config diffusers' pipeline runs with, its class name included
    scheduler = json.loads((artifact / "scheduler/scheduler_config.json").read_text())
    assert scheduler["_class_name"] == "PNDMScheduler" and scheduler["steps_offset"] == 1
    for graph in ("text_encoder", "unet", "vae_decoder"):  # progress per graph, export then validation
        assert any(line.startswith(f"{graph}: exported") for line in logged)
        assert any(line.startswith(f"{graph}: passed") for line in logged)
    assert any(line.startswith("unet: attention fused (12 MultiHeadAttention)") for line in logged), logged


def test_unet_attention_is_fused_for_cpu(compiled: tuple[Path, list[str], list[str]]) -> None:
    """Every attention of the UNet (6 transformer blocks: self and cross) is ONNX Runtime's
    MultiHeadAttention (flash attention on CPU): no Softmax over a whole score matrix, no
    `Attention` op, no packed QKV (refused on CPU)."""
    import onnx

    artifact = compiled[0]
    manifest = read_manifest(artifact)
    assert manifest.optimization == "O2" and manifest.choice["order"] == ["fp32-O2"]
    unet = onnx.load(str(artifact / manifest.graphs["unet"]), load_external_data=False)
    ops = Counter(node.op_type for node in unet.graph.node)
    assert ops["MultiHeadAttention"] == 12 and ops["Attention"] == ops["Softmax"] == 0, ops
    for node in unet.graph.node:
        if node.op_type == "MultiHeadAttention":
            assert len(node.input) in (3, 4), node.input  # q, k, v (and bias): separate, not packed


def test_graphs_match_pytorch(compiled: tuple[Path, list[str], list[str]]) -> None:
    artifact, _, lines = compiled
    choice = read_manifest(artifact).choice
    measured = choice["tried"][choice["order"][0]]
    print("\n" + "\n".join(lines))
    for graph, figures in measured["graphs"].items():
        assert figures["max_abs_diff"] <= GRAPH_MAX_ABS, graph
        assert figures["min_cosine"] >= 0.99999, graph
    for case, value in measured["psnr_db"].items():  # None: identical images
        assert value is None or value >= IMAGE_MIN_PSNR, case


def test_tokenizer_and_text_encoder_match_transformers(served: TextToImagePipeline, reference: Any) -> None:
    """The served tokenizer pads and truncates as diffusers' `encode_prompt` calls CLIPTokenizer."""
    texts = [PROMPT, "", "THE Cat, sat!", " ".join([PROMPT] * 12)]
    want = reference.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="np")
    engine = served.engine
    (encoder,) = engine.text_encoders
    got = encoder.tokenizer.batch(encoder.tokenizer.encode(texts), width=77)["input_ids"]
    np.testing.assert_array_equal(got, want["input_ids"])
    with torch.inference_mode():
        hidden = reference.text_encoder(torch.from_numpy(want["input_ids"]))[0].numpy()
    embeddings, pooled = engine.encode_prompt(texts)
    np.testing.assert_allclose(embeddings, hidden, atol=GRAPH_MAX_ABS, rtol=0)
    assert pooled is None


@pytest.mark.parametrize(
    "scheduler", ["PNDMScheduler", "EulerDiscreteScheduler", "DDIMScheduler", "DPMSolverMultistepScheduler"]
)
def test_image_matches_diffusers(served: TextToImagePipeline, reference: Any, scheduler: str) -> None:
    """Same prompt, latents and scheduler: the served image is diffusers' image to >= 35 dB."""
    want = diffusers_image(reference, scheduler, seed=3)
    override = None if scheduler == "PNDMScheduler" else scheduler
    got = served(PROMPT, seed=3, num_inference_steps=STEPS, scheduler=override)
    assert isinstance(got, Image.Image) and got.mode == "RGB" and got.size == (64, 64)
    value = psnr(pixels(want), pixels(got))
    print(f"\n{scheduler}: PSNR {value:.1f} dB")
    assert value >= IMAGE_MIN_PSNR
    # the figure discriminates: another seed's image is far from diffusers' image
    other = served(PROMPT, seed=4, num_inference_steps=STEPS, scheduler=override)
    assert psnr(pixels(want), pixels(other)) < IMAGE_MIN_PSNR


def test_non_square_negative_prompt_and_no_guidance(
    served: TextToImagePipeline, reference: Any, unet_batches: list[int]
) -> None:
    """Non-square (72 wide, 64 high) with a negative prompt; guidance 1.0 runs the prompt alone."""
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        ({"width": 72, "height": 64}, {"width": 72, "height": 64}),
        ({"negative_prompt": "red, blurry"}, {"negative_prompt": "red, blurry"}),
        ({"guidance_scale": 1.0}, {"guidance_scale": 1.0}),
    ]
    schedule = diffusers.PNDMScheduler.from_config(reference.scheduler.config)
    schedule.set_timesteps(STEPS)
    calls = len(schedule.timesteps)  # PNDM without Runge-Kutta steps runs its first timestep twice
    for ours, theirs in cases:
        unet_batches.clear()
        want = diffusers_image(reference, "PNDMScheduler", seed=5, **theirs)
        got = served(PROMPT, seed=5, num_inference_steps=STEPS, **ours)
        assert got.size == want.size
        value = psnr(pixels(want), pixels(got))
        print(f"\n{ours}: PSNR {value:.1f} dB")
        assert value >= IMAGE_MIN_PSNR, ours
        assert unet_batches == [1 if ours.get("guidance_scale") == 1.0 else 2] * calls
    # the negative prompt is used: without it the image differs
    with_negative = served(PROMPT, seed=5, num_inference_steps=STEPS, negative_prompt="red, blurry")
    without = served(PROMPT, seed=5, num_inference_steps=STEPS)
    assert not np.array_equal(pixels(with_negative), pixels(without))


def test_same_seed_same_image(served: TextToImagePipeline) -> None:
    first = served(PROMPT, seed=11, num_inference_steps=2)
    again = served(PROMPT, seed=11, num_inference_steps=2)
    other = served(PROMPT, seed=12, num_inference_steps=2)
    np.testing.assert_array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))


def test_ancestral_scheduler_is_reproducible(served: TextToImagePipeline) -> None:
    """An ancestral scheduler draws its step noise from the request's seed too."""
    kwargs: dict[str, Any] = {"seed": 2, "num_inference_steps": 3, "scheduler": "EulerAncestralDiscreteScheduler"}
    np.testing.assert_array_equal(pixels(served(PROMPT, **kwargs)), pixels(served(PROMPT, **kwargs)))


def test_limits_refused_before_any_work(
    served: TextToImagePipeline, monkeypatch: pytest.MonkeyPatch, unet_batches: list[int]
) -> None:
    monkeypatch.setattr(served, "limits", Limits(max_inference_steps=10, max_generated_pixels=64 * 72))
    with pytest.raises(Unprocessable, match=r"num_inference_steps.*at most 10"):
        served(PROMPT, num_inference_steps=11)
    with pytest.raises(Unprocessable, match="at most 4608"):
        served(PROMPT, width=80, height=64, num_inference_steps=2)
    with pytest.raises(InvalidParameter, match="multiple of 8"):
        served(PROMPT, width=60, num_inference_steps=2)
    with pytest.raises(InvalidParameter, match="num_inference_steps"):
        served(PROMPT, num_inference_steps=0)
    with pytest.raises(InvalidParameter, match="guidance_scale"):
        served(PROMPT, guidance_scale=-1.0, num_inference_steps=2)
    with pytest.raises(InvalidParameter, match="scheduler"):
        served(PROMPT, scheduler="KarrasVeScheduler", num_inference_steps=2)
    with pytest.raises(InvalidParameter, match="unknown parameter"):
        served(PROMPT, num_images_per_prompt=2)
    with pytest.raises(InvalidInput):
        served("", num_inference_steps=2)
    assert unet_batches == []
    assert served(PROMPT, num_inference_steps=10, width=72, height=64).size == (72, 64)  # at the limits: served


def test_should_stop_and_on_step(served: TextToImagePipeline) -> None:
    """`on_step(done, total)` after each UNet call, over the scheduler's timesteps (as diffusers'
    progress bar: PNDM runs its first timestep twice); `should_stop` is asked before each."""
    steps: list[tuple[int, int]] = []
    image = served(PROMPT, seed=0, num_inference_steps=4, on_step=lambda done, total: steps.append((done, total)))
    assert isinstance(image, Image.Image)
    assert steps == [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]
    steps.clear()
    euler: dict[str, Any] = {"seed": 0, "num_inference_steps": 4, "scheduler": "EulerDiscreteScheduler"}
    with pytest.raises(Stopped, match="after 2 of 4 steps"):
        served(
            PROMPT, should_stop=lambda: len(steps) >= 2, on_step=lambda done, total: steps.append((done, total)),
            **euler,
        )  # fmt: skip
    assert steps == [(1, 4), (2, 4)]


@pytest.fixture(scope="module")
def deep(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[TextToImagePipeline, Any]:
    """The tiny pipeline with a UNet of four levels (whole down factor 8: 16 pixels with the VAE's
    2, where the old export needed multiples of 16), compiled and served; and diffusers' pipeline."""
    components = diffusers.StableDiffusionPipeline.from_pretrained(model_dir).components
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=16, cross_attention_dim=32,
        down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D", "UpBlock2D"),
    )  # fmt: skip
    work = tmp_path_factory.mktemp("deep-sd")
    diffusers.StableDiffusionPipeline(**{**components, "unet": unet}).save_pretrained(work / "model")
    reference = diffusers.StableDiffusionPipeline.from_pretrained(work / "model")
    reference.set_progress_bar_config(disable=True)
    artifact = work / "artifact"
    options = CompileOptions(task="text-to-image")
    source = Source(model=str(work / "model"), local=True)
    build(work / "model", artifact, source=source, options=options, key="test", started=0.0, log=lambda line: None)
    pipe = runtime.load(artifact, threads=1, spinning=False)
    assert isinstance(pipe, TextToImagePipeline)
    return pipe, reference


@pytest.mark.parametrize("latent", [(32, 32), (16, 48), (36, 20), (4, 12), (20, 28)])
def test_unet_graph_follows_the_skip_sizes(deep: tuple[TextToImagePipeline, Any], latent: tuple[int, int]) -> None:
    """Latent sizes of multiples of 8 pixels, of the UNet's down factor (32 x 32, 16 x 48) or not
    (36 x 20 rounds 9 x 5 up to 5 x 3 at the bottom): the graph is PyTorch's within 1e-4."""
    served, reference = deep
    rng = np.random.default_rng(sum(latent))
    sample = rng.standard_normal((2, 4, *latent), dtype=np.float32)
    hidden = rng.standard_normal((2, 77, 32), dtype=np.float32)
    with torch.inference_mode():
        want = reference.unet(
            torch.from_numpy(sample), torch.tensor(500.5), encoder_hidden_states=torch.from_numpy(hidden)
        ).sample.numpy()
    feeds = {"sample": sample, "timestep": np.asarray(500.5, dtype=np.float32), "encoder_hidden_states": hidden}
    got = served.engine.unet.run(feeds)["out_sample"]
    print(f"\nlatent {latent}: max abs diff {np.abs(got - want).max():.2e}")
    np.testing.assert_allclose(got, want, atol=GRAPH_MAX_ABS, rtol=0)


def test_a_multiple_of_8_below_the_unets_down_factor_is_served(deep: tuple[TextToImagePipeline, Any]) -> None:
    """72 x 40 is a multiple of 8 and of neither 16 nor 64: served, and diffusers' image to >= 35 dB."""
    served, reference = deep
    assert served.describe()["size_multiple"] == 8
    want = diffusers_image(reference, "PNDMScheduler", seed=6, width=72, height=40)
    got = served(PROMPT, seed=6, num_inference_steps=STEPS, width=72, height=40)
    assert got.size == want.size == (72, 40)
    value = psnr(pixels(want), pixels(got))
    print(f"\n72x40: PSNR {value:.1f} dB")
    assert value >= IMAGE_MIN_PSNR
    other = served(PROMPT, seed=7, num_inference_steps=STEPS, width=72, height=40)
    assert psnr(pixels(want), pixels(other)) < IMAGE_MIN_PSNR
    with pytest.raises(InvalidParameter, match="multiple of 8"):
        served(PROMPT, width=76, height=40, num_inference_steps=1)


def test_warmup_and_describe(served: TextToImagePipeline) -> None:
    served.warmup()
    described = served.describe()
    assert described["task"] == "text-to-image" and described["default_size"] == [64, 64]
    assert described["scheduler"] == "PNDMScheduler"


def test_a_generation_past_the_time_limit_stops_between_steps(
    served: TextToImagePipeline, monkeypatch: pytest.MonkeyPatch, unet_batches: list[int]
) -> None:
    monkeypatch.setattr(served, "limits", Limits(time_limit_s=0.0))
    with pytest.raises(Unprocessable, match="KILN_GENERATION_TIMEOUT"):
        served(PROMPT, num_inference_steps=4)
    assert unet_batches == []


@pytest.fixture(scope="module")
def server(artifacts: Lazy[tuple[str, str], Path], start_server: Callable[..., Server]) -> Server:
    """A real `kiln serve` of the tiny pipeline, compiled through `kiln compile`'s own routing."""
    return start_server(str(artifacts["text-to-image", "stable-diffusion"]), KILN_MAX_INFERENCE_STEPS="5000")


def test_inference_client_gets_the_image_of_the_asked_size(
    server: Server, artifacts: Lazy[tuple[str, str], Path]
) -> None:
    from huggingface_hub import InferenceClient

    image = InferenceClient(model=server.url).text_to_image(
        PROMPT, width=72, height=64, num_inference_steps=2, seed=3, negative_prompt="blurry"
    )
    assert image.size == (72, 64)
    local = runtime.load(artifacts["text-to-image", "stable-diffusion"])
    want = local(PROMPT, width=72, height=64, num_inference_steps=2, seed=3, negative_prompt="blurry")
    np.testing.assert_array_equal(pixels(image), pixels(want))


def test_accept_chooses_png_jpeg_or_base64_json(server: Server) -> None:
    body = {"inputs": PROMPT, "parameters": {"num_inference_steps": 1, "seed": 1}}
    png = httpx.post(server.url, json=body, timeout=60)
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG")
    jpeg = httpx.post(server.url, json=body, headers={"accept": "image/jpeg"}, timeout=60)
    assert jpeg.headers["content-type"] == "image/jpeg" and Image.open(io.BytesIO(jpeg.content)).format == "JPEG"
    answer = httpx.post(server.url, json=body, headers={"accept": "application/json"}, timeout=60)
    assert answer.headers["content-type"].startswith("application/json")
    assert base64.b64decode(answer.json()) == png.content
    preferred = httpx.post(server.url, json=body, headers={"accept": "image/png;q=0.5, image/jpeg"}, timeout=60)
    assert preferred.headers["content-type"] == "image/jpeg"


def test_limits_are_422s_that_name_them(server: Server) -> None:
    steps = httpx.post(server.url, json={"inputs": PROMPT, "parameters": {"num_inference_steps": 5001}})
    assert steps.status_code == 422 and "KILN_MAX_INFERENCE_STEPS" in steps.json()["error"]
    pixels_ = httpx.post(server.url, json={"inputs": PROMPT, "parameters": {"width": 2048, "height": 1024}})
    assert pixels_.status_code == 422 and "KILN_MAX_GENERATED_PIXELS" in pixels_.json()["error"]
    size = httpx.post(server.url, json={"inputs": PROMPT, "parameters": {"width": 70}})
    assert size.status_code == 400 and "multiple of 8" in size.json()["error"]


def test_a_client_that_goes_away_stops_its_generation_and_frees_the_worker(server: Server) -> None:
    """One worker: a 4000-step generation abandoned after half a second must not hold it."""

    def steps_done() -> float:
        lines = httpx.get(f"{server.url}/metrics").text.splitlines()
        line = next(x for x in lines if x.startswith("kiln_denoising_steps_total"))
        return float(line.split()[-1])

    before = steps_done()
    body = {"inputs": PROMPT, "parameters": {"num_inference_steps": 4000, "guidance_scale": 1.0}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url, json=body, timeout=0.5)
    start = time.monotonic()
    quick = httpx.post(server.url, json={"inputs": PROMPT, "parameters": {"num_inference_steps": 1}}, timeout=60)
    assert quick.status_code == 200 and time.monotonic() - start < 10
    done = steps_done() - before
    assert 0 < done < 4000, done  # the abandoned one stopped early; the quick one ran
    time.sleep(1)
    assert steps_done() - before == done  # and nothing runs on


@pytest.fixture(scope="module")
def xl(
    artifacts: Lazy[tuple[str, str], Path], tiny_models: Lazy[tuple[str, str], Path]
) -> tuple[Path, TextToImagePipeline, Any]:
    """The tiny SDXL pipeline compiled as `kiln compile` does (task inferred), served; and diffusers' pipeline."""
    artifact = artifacts["text-to-image", "stable-diffusion-xl"]
    pipe = runtime.load(artifact, threads=1, spinning=False)
    assert isinstance(pipe, TextToImagePipeline)
    reference = diffusers.StableDiffusionXLPipeline.from_pretrained(
        tiny_models["text-to-image", "stable-diffusion-xl"], add_watermarker=False
    )
    reference.set_progress_bar_config(disable=True)
    return artifact, pipe, reference


def test_sdxl_artifact_and_graphs(xl: tuple[Path, TextToImagePipeline, Any]) -> None:
    artifact, served, reference = xl
    manifest = read_manifest(artifact)
    assert set(manifest.graphs) == {"text_encoder", "text_encoder_2", "unet", "vae_decoder"}
    assert {"tokenizer/tokenizer.json", "tokenizer_2/tokenizer.json"} <= set(manifest.files)
    assert verify_files(artifact, manifest) == []
    assert {i.name for i in served.engine.unet.session.get_inputs()} >= {"text_embeds", "time_ids"}
    first, second = json.loads((artifact / "config.json").read_text())["text_encoders"]
    assert first["hidden_states"] == second["hidden_states"] == "hidden_states.4"  # 5 layers: diffusers' [-2]
    assert first["pooled"] is None and second["pooled"] == "text_embeds"
    pad = second["tokenizer_info"]["pad_token_id"]
    assert (
        manifest.tokenizer is not None and pad == reference.tokenizer_2.pad_token_id != manifest.tokenizer.pad_token_id
    )
    assert served.info.default_guidance_scale == 5.0  # StableDiffusionXLPipeline.__call__'s, not SD's 7.5
    measured = manifest.choice["tried"][manifest.choice["order"][0]]
    print(json.dumps(measured, indent=1))
    assert set(measured["graphs"]) == {
        "text_encoder",
        "text_encoder_2",
        "text_encoder_2 (pooled)",
        "unet",
        "vae_decoder",
    }
    for graph, figures in measured["graphs"].items():
        assert figures["max_abs_diff"] <= GRAPH_MAX_ABS, graph
    for case, value in measured["psnr_db"].items():
        assert value is None or value >= IMAGE_MIN_PSNR, case


def test_sdxl_conditioning_matches_diffusers(xl: tuple[Path, TextToImagePipeline, Any]) -> None:
    """Both encoders' penultimate states joined, the second's pooled embedding, as `encode_prompt`."""
    _, served, reference = xl
    texts = [PROMPT, "THE Cat, sat!"]
    with torch.inference_mode():
        want, _, pooled, _ = reference.encode_prompt(texts, do_classifier_free_guidance=False)
    embeddings, got_pooled = served.engine.encode_prompt(texts)
    assert embeddings.shape == (2, 77, 64)
    np.testing.assert_allclose(embeddings, want.numpy(), atol=GRAPH_MAX_ABS, rtol=0)
    assert got_pooled is not None
    np.testing.assert_allclose(got_pooled, pooled.numpy(), atol=GRAPH_MAX_ABS, rtol=0)


@pytest.mark.parametrize(
    ("scheduler", "kwargs"),
    [
        ("EulerDiscreteScheduler", {}),  # no negative prompt: the unconditional half is zeros
        ("EulerDiscreteScheduler", {"negative_prompt": "red, blurry", "width": 72}),
        ("DPMSolverMultistepScheduler", {"height": 48}),
        ("DDIMScheduler", {"guidance_scale": 1.0}),
    ],
)
def test_sdxl_image_matches_diffusers(
    xl: tuple[Path, TextToImagePipeline, Any], scheduler: str, kwargs: dict[str, Any]
) -> None:
    """Same prompt, latents and scheduler: the served SDXL image is diffusers' to >= 35 dB, and
    another seed's is not."""
    _, served, reference = xl
    override = None if scheduler == "EulerDiscreteScheduler" else scheduler
    want = diffusers_image(reference, scheduler, seed=3, **{"height": 64, "width": 64, **kwargs})
    got = served(PROMPT, seed=3, num_inference_steps=STEPS, scheduler=override, **kwargs)
    assert got.size == want.size
    value = psnr(pixels(want), pixels(got))
    print(f"\nSDXL {scheduler} {kwargs}: PSNR {value:.1f} dB")
    assert value >= IMAGE_MIN_PSNR
    other = served(PROMPT, seed=4, num_inference_steps=STEPS, scheduler=override, **kwargs)
    assert psnr(pixels(want), pixels(other)) < IMAGE_MIN_PSNR


def test_sdxl_empty_negative_prompt_is_not_zeros(xl: tuple[Path, TextToImagePipeline, Any]) -> None:
    """`force_zeros_for_empty_prompt`: no negative prompt means zeros, unlike an encoded ""."""
    _, served, reference = xl
    assert served.info.force_zeros_for_empty_prompt
    zeros = served(PROMPT, seed=8, num_inference_steps=2)
    empty = served(PROMPT, seed=8, num_inference_steps=2, negative_prompt="")
    assert not np.array_equal(pixels(zeros), pixels(empty))
    want = diffusers_image(reference, "EulerDiscreteScheduler", seed=8, negative_prompt="")
    got = served(PROMPT, seed=8, num_inference_steps=STEPS, negative_prompt="")
    assert psnr(pixels(want), pixels(got)) >= IMAGE_MIN_PSNR


def test_optimize_none_keeps_the_unfused_unet_and_other_levels_are_refused(model_dir: Path, tmp_path: Path) -> None:
    import onnx

    from compile.errors import CompileFailed
    from compile.options import Optimization

    source = Source(model=str(model_dir), local=True)
    plain = CompileOptions(task="text-to-image", optimize=Optimization.NONE)
    manifest, _ = build(model_dir, tmp_path / "plain", source=source, options=plain, key="t", started=0.0, log=print)
    assert manifest.optimization == "none"
    unet = onnx.load(str(tmp_path / "plain" / manifest.graphs["unet"]), load_external_data=False)
    assert not {"MultiHeadAttention", "Attention"} & {node.op_type for node in unet.graph.node}
    with pytest.raises(CompileFailed, match="--optimize none"):
        o3 = CompileOptions(task="text-to-image", optimize=Optimization.O3)
        build(model_dir, tmp_path / "o3", source=source, options=o3, key="t", started=0.0, log=print)


def test_sdxl_vae_latents_mean_and_std_unscale_as_diffusers(
    xl: tuple[Path, TextToImagePipeline, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A VAE whose config has `latents_mean`/`latents_std` (none of the tiny ones does) is fed
    `latents * std / scaling_factor + mean`, channel by channel, as `StableDiffusionXLPipeline`."""
    _, served, _ = xl
    engine = served.engine
    assert served.describe()["pipeline"] == "StableDiffusionXLPipeline"
    mean, std = [0.1, -0.2, 0.3, 0.0], [1.5, 0.5, 2.0, 1.0]
    monkeypatch.setattr(
        engine, "info", msgspec.structs.replace(engine.info, vae_latents_mean=mean, vae_latents_std=std)
    )
    fed: list[np.ndarray] = []
    monkeypatch.setattr(
        engine.vae_decoder,
        "run",
        lambda feeds: fed.append(feeds["latent_sample"]) or {"sample": np.zeros((1, 3, 8, 8))},
    )
    latents = np.random.default_rng(0).standard_normal((1, 4, 4, 4), dtype=np.float32)
    engine.decode(latents)
    scale = engine.info.vae_scaling_factor
    want = latents * np.asarray(std, np.float32).reshape(1, 4, 1, 1) / scale + np.asarray(mean, np.float32).reshape(
        1, 4, 1, 1
    )
    np.testing.assert_allclose(fed[0], want, rtol=1e-6)

"""The tests' tiny text-to-image pipelines: the ones diffusers' own tests build
(`tests/pipelines/stable_diffusion` and `stable_diffusion_xl`, `get_dummy_components`), random
weights, with CLIP tokenizers written here (the byte-level alphabet and merges learned from a few
words). No Hub, no download.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

DIFFUSION_ARCHS: dict[str, tuple[str, ...]] = {"text-to-image": ("stable-diffusion", "stable-diffusion-xl")}
PROMPT = "a photo of an astronaut riding a horse on the moon"
WORDS = (PROMPT + " the cat sat on a red mat painting of mountains").split(" ")


def clip_tokenizer(out: Path, pad_token: str = "<|endoftext|>") -> Any:
    """A CLIP tokenizer (vocab.json + merges.txt, as `CLIPTokenizer` reads them): the 256 byte
    symbols alone and at a word's end (`</w>`), up to 60 merges learned from `WORDS`, the specials;
    `pad_token` as `CLIPTokenizer`'s (SDXL's second tokenizer pads with "!")."""
    from transformers import CLIPTokenizer
    from transformers.models.clip.tokenization_clip import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    words = Counter((*word[:-1], word[-1] + "</w>") for word in WORDS)
    merges: list[tuple[str, str]] = []
    for _ in range(60):
        pairs: Counter[tuple[str, str]] = Counter()
        for word, count in words.items():
            for pair in itertools.pairwise(word):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        vocab.append("".join(best))
        merged: Counter[tuple[str, ...]] = Counter()
        for word, count in words.items():
            parts, i = [], 0
            while i < len(word):
                if word[i : i + 2] == best:
                    parts.append(word[i] + word[i + 1])
                    i += 2
                else:
                    parts.append(word[i])
                    i += 1
            merged[tuple(parts)] += count
        words = merged
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out.mkdir(parents=True)
    (out / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return CLIPTokenizer(str(out / "vocab.json"), str(out / "merges.txt"), model_max_length=77, pad_token=pad_token)  # type: ignore[no-untyped-call]


def tiny_pipeline(out: Path) -> Path:
    """diffusers' test pipeline (its `get_dummy_components`), random weights, saved with `save_pretrained`."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )  # fmt: skip
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4,
    )  # fmt: skip
    text_encoder = CLIPTextModel(
        CLIPTextConfig(  # type: ignore[no-untyped-call]
            bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
            num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000,
        )
    )  # fmt: skip
    pipe = diffusers.StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(out / "slow-tokenizer"), unet=unet,
        scheduler=diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(out / "model")  # type: ignore[attr-defined]
    return out / "model"


def tiny_xl_pipeline(out: Path) -> Path:
    """diffusers' SDXL test pipeline (`StableDiffusionXLPipelineFastTests.get_dummy_components`):
    two CLIP text encoders (the second with projection), a UNet with `text_time` added conditioning,
    Euler with "leading" spacing; random weights, saved with `save_pretrained`."""
    import diffusers
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 size ids x 8 + the pooled text embedding's 32
        cross_attention_dim=64, norm_num_groups=1,
    )  # fmt: skip
    scheduler = diffusers.EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, steps_offset=1, beta_schedule="scaled_linear", timestep_spacing="leading"
    )
    vae = diffusers.AutoencoderKL(
        block_out_channels=[32, 64], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2, latent_channels=4, sample_size=128,
    )  # fmt: skip
    config = CLIPTextConfig(  # type: ignore[no-untyped-call]
        bos_token_id=0, eos_token_id=2, hidden_size=32, intermediate_size=37, layer_norm_eps=1e-05,
        num_attention_heads=4, num_hidden_layers=5, pad_token_id=1, vocab_size=1000, hidden_act="gelu",
        projection_dim=32,
    )  # fmt: skip
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(config)
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(out / "slow-tokenizer"),
        text_encoder_2=text_encoder_2, tokenizer_2=clip_tokenizer(out / "slow-tokenizer-2", pad_token="!"),
        unet=unet, scheduler=scheduler, add_watermarker=False,
    )  # fmt: skip
    pipe.save_pretrained(out / "model")  # type: ignore[attr-defined]
    return out / "model"


BUILDERS = {"stable-diffusion": tiny_pipeline, "stable-diffusion-xl": tiny_xl_pipeline}


def build_diffusion(task: str, arch: str, out: Path) -> Path:
    """The tiny `arch` pipeline for `task` in `out/model` (once: an existing one is reused)."""
    if task != "text-to-image" or arch not in BUILDERS:
        raise KeyError(f"no tiny diffusion model for {task}/{arch}")
    model = out / "model"
    return model if (model / "model_index.json").is_file() else BUILDERS[arch](out)

"""The tests' tiny models, keyed by task: `build(task, arch, out)` and `ARCHS[task]`.

Text models come from `tests.support.text`, vision models from `tests.support.vision`, audio
models from `tests.support.audio`, the text-to-image pipeline from `tests.support.diffusion`, the
ViLT and TAPAS models from `tests.support.questions`; a new kind of input adds its module and its
tasks here.
Everything is random weights and tokenizers made on the spot: no Hub, no download.
"""

from __future__ import annotations

from pathlib import Path

from tests.support import audio, diffusion, questions, text, vision

ARCHS: dict[str, tuple[str, ...]] = {
    **{task: spec.archs for task, spec in text.SPECS.items()},
    **{task: archs for task, archs in vision.VISION_ARCHS.items()},
    **{task: archs for task, archs in audio.AUDIO_ARCHS.items()},
    **diffusion.DIFFUSION_ARCHS,
    **questions.QUESTION_ARCHS,
}


def build(task: str, arch: str, out: Path) -> Path:
    """Write the tiny `arch` model for `task` into `out` (once: an existing directory is reused)."""
    if task in vision.VISION_ARCHS:
        return out if (out / "config.json").is_file() else vision.build_vision(task, arch, out)
    if task in audio.AUDIO_ARCHS:
        return out if (out / "config.json").is_file() else audio.build_audio(task, arch, out)
    if task in diffusion.DIFFUSION_ARCHS:
        return diffusion.build_diffusion(task, arch, out)
    if task in questions.QUESTION_ARCHS:
        return questions.build_question_model(task, arch, out)
    return text.build(task, arch, out)

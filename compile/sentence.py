"""Reading a sentence-transformers model directory: its pooling, normalization, prompts, length.

Only the modules kiln reproduces are accepted (Transformer, Pooling, Normalize); a model with
others (Dense, ...) fails to compile with a message that says so, rather than serving vectors
that differ from the model's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compile.errors import UnsupportedModel
from runtime.artifact import SentencePooling

SUPPORTED = ("Transformer", "Pooling", "Normalize")
_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}  # type: ignore[no-any-return]


def is_sentence_transformer(model_dir: Path) -> bool:
    return (model_dir / "modules.json").is_file()


def read_pooling(model_dir: Path) -> SentencePooling | None:
    """The model's pooling, or None for a model that is not a sentence-transformers model."""
    modules = json.loads((model_dir / "modules.json").read_text()) if is_sentence_transformer(model_dir) else None
    if modules is None:
        return None
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in SUPPORTED]
    if unsupported:
        raise UnsupportedModel(
            f"{model_dir.name} has sentence-transformers modules kiln does not compile yet: {', '.join(unsupported)}"
        )
    config: dict[str, Any] = {}
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            config = _json(model_dir / module["path"] / "config.json")
    mode = config.get("pooling_mode")
    modes = [mode] if isinstance(mode, str) else list(mode or [])
    modes += [name for flag, name in _FLAGS.items() if config.get(flag)]
    settings = _json(model_dir / "config_sentence_transformers.json")
    return SentencePooling(
        modes=modes or ["mean"],
        normalize="Normalize" in kinds,
        include_prompt=bool(config.get("include_prompt", True)),
        prompts={k: str(v) for k, v in (settings.get("prompts") or {}).items()},
        default_prompt_name=settings.get("default_prompt_name"),
        similarity=str(settings.get("similarity_fn_name") or "cosine"),
    )


def max_seq_length(model_dir: Path) -> int | None:
    value = _json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    return int(value) if value else None

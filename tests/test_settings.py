"""Settings: the Hugging Face container's variables, kiln's own, and flags over both."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.settings import Settings


def test_environment_then_flags() -> None:
    env = {
        "HF_MODEL_DIR": "/repository", "HF_MODEL_ID": "ignored/because-dir-wins", "HF_TASK": "fill-mask",
        "HF_REVISION": "v1", "HF_TRUST_REMOTE_CODE": "true", "HF_HUB_TOKEN": "hf_x", "PORT": "9000",
        "KILN_MAX_QUEUE": "3", "KILN_CACHE": "/tmp/cache", "KILN_SPINNING": "0",
    }  # fmt: skip
    settings = Settings.from_env(env)
    assert (settings.model, settings.task, settings.revision) == ("/repository", "fill-mask", "v1")
    assert settings.trust_remote_code and settings.hub_token == "hf_x" and settings.port == 9000
    assert settings.max_queue == 3 and settings.cache_dir == Path("/tmp/cache") and not settings.spinning
    flagged = Settings.from_env(env, port=8081, task=None, max_queue=7)
    assert flagged.port == 8081 and flagged.task == "fill-mask" and flagged.max_queue == 7
    assert Settings.from_env({}) == Settings()


def test_a_bad_value_names_its_variable() -> None:
    with pytest.raises(ValueError, match="PORT='eighty' is not a valid int"):
        Settings.from_env({"PORT": "eighty"})

"""Custom handlers (a directory's handler.py with `EndpointHandler`), served as the Inference
Endpoints container serves them, over real HTTP on 127.0.0.1: the whole body reaches the handler,
binary bodies arrive as the container hands them over, answers carry numpy values, a raising
handler is a 500 whose detail stays in the log, a handler that cannot import (or that the
operator forbids) stops the server, and a handler compiled with its model wraps the compiled
artifact. Calls are serialized unless the handler says it is thread-safe."""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from textwrap import dedent

import httpx
import numpy as np
import pytest
import soundfile
from PIL import Image

import runtime
from runtime.handler import load_handler
from tests.conftest import KILN, ROOT, Server, free_port, offline_env

SEED = {"inputs": "I am quite excited how this will turn out", "moreData": 1, "customTask": True}

ECHO = """
import numpy as np
from PIL import Image


class EndpointHandler:
    def __init__(self, path):
        self.path = path

    def __call__(self, data):
        inputs = data.get("inputs")
        if inputs == "raise":
            raise RuntimeError("a secret detail at /srv/handler")
        if isinstance(inputs, Image.Image):
            seen = {"image": [inputs.mode, *inputs.size]}
        elif isinstance(inputs, bytes):
            seen = {"bytes": len(inputs)}
        else:
            seen = {"data": data}
        return {**seen, "parameters": data.get("parameters"), "array": np.arange(3), "score": np.float32(0.5)}
"""


def write_handler(directory: Path, code: str, requirements: str | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "handler.py").write_text(dedent(code))
    if requirements is not None:
        (directory / "requirements.txt").write_text(requirements)
    return directory


def serve_and_fail(directory: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KILN, "serve", str(directory), "--port", str(free_port())], cwd=ROOT, env=offline_env(**env),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def echo(tmp_path_factory: pytest.TempPathFactory, start_server: Callable[..., Server]) -> Server:
    directory = write_handler(tmp_path_factory.mktemp("echo"), ECHO, "numpy\nnot-a-real-package-kiln>=1\n")
    return start_server(str(directory))


def test_the_seed_payload_reaches_the_handler_whole_and_numpy_answers_encode(echo: Server) -> None:
    response = httpx.post(echo.url, json=SEED)
    assert response.status_code == 200
    assert response.json() == {"data": SEED, "parameters": None, "array": [0, 1, 2], "score": 0.5}
    info = httpx.get(f"{echo.url}/info").json()
    assert (info["task"], info["handler_class"], info["thread_safe"]) == ("custom", "EndpointHandler", False)
    assert httpx.get(f"{echo.url}/health").json() == {"status": "ok", "task": "custom"}
    log = echo.log.read_text()
    assert "loading custom code" in log and "not-a-real-package-kiln>=1" in log  # reported, not installed


def test_binary_bodies_arrive_as_the_container_hands_them_over(echo: Server) -> None:
    png = io.BytesIO()
    Image.new("L", (7, 5)).save(png, format="PNG")
    image = httpx.post(
        f"{echo.url}/?top_k=3&flag=true&name=x", content=png.getvalue(), headers={"content-type": "image/png"}
    )
    assert image.json()["image"] == ["RGB", 7, 5]
    assert image.json()["parameters"] == {"top_k": 3, "flag": True, "name": "x"}
    wav = io.BytesIO()
    soundfile.write(wav, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
    sound = httpx.post(echo.url, content=wav.getvalue(), headers={"content-type": "audio/wav"})
    assert sound.json()["bytes"] == len(wav.getvalue())
    assert httpx.post(echo.url, json={"moreData": 1}).status_code == 400  # the container wants `inputs`


def test_a_raising_handler_is_a_500_with_the_detail_in_the_log_only(echo: Server) -> None:
    response = httpx.post(echo.url, json={"inputs": "raise"})
    assert response.status_code == 500
    assert "secret" not in response.text and "/srv" not in response.text
    assert "a secret detail at /srv/handler" in echo.log.read_text()
    assert httpx.post(echo.url, json=SEED).status_code == 200  # and the server goes on


def test_a_handler_that_fails_to_import_stops_the_server(tmp_path: Path) -> None:
    directory = write_handler(tmp_path / "broken", "import kiln_no_such_module\n")
    result = serve_and_fail(directory)
    assert result.returncode == 3
    assert "the model failed to load" in result.stderr and "kiln_no_such_module" in result.stderr


def test_the_operator_can_refuse_custom_code(tmp_path: Path) -> None:
    directory = write_handler(tmp_path / "refused", ECHO)
    result = serve_and_fail(directory, KILN_ALLOW_HANDLERS="0")
    assert result.returncode == 3 and "KILN_ALLOW_HANDLERS=0" in result.stderr
    assert "loading custom code" not in result.stderr


def test_a_handler_compiled_with_its_model_wraps_the_compiled_artifact(
    tiny_models: dict, tmp_path: Path, start_server: Callable[..., Server]
) -> None:
    from kiln.cli import main

    model = tmp_path / "model"
    shutil.copytree(tiny_models["text-classification", "bert"], model)
    write_handler(model, "import nothing_needed\n")  # never imported by compile: it reads TASK only
    assert main(["compile", str(model), "--out", str(tmp_path / "x"), "--quiet"]) == 1  # names no TASK
    write_handler(
        model,
        """
        import runtime

        TASK = "text-classification"


        class EndpointHandler:
            thread_safe = True

            def __init__(self, path):
                self.pipe = runtime.load(path)

            def __call__(self, data):
                return {"labels": self.pipe(data["inputs"], **data.get("parameters", {})), "wrapped": True}
        """,
    )
    artifact = tmp_path / "artifact"
    assert main(["compile", str(model), "--out", str(artifact), "--precision", "fp32", "--quiet"]) == 0
    assert (artifact / "handler.py").is_file() and runtime.read_manifest(artifact).task == "text-classification"
    server = start_server(str(artifact))
    text = "This sound track was beautiful!"
    answer = httpx.post(server.url, json={"inputs": text, "parameters": {"top_k": 2}}).json()
    assert answer == {"labels": runtime.load(artifact)(text, top_k=2), "wrapped": True}
    assert httpx.get(f"{server.url}/info").json()["thread_safe"] is True


@pytest.mark.parametrize("thread_safe", [False, True])
def test_calls_are_serialized_unless_the_handler_is_thread_safe(tmp_path: Path, thread_safe: bool) -> None:
    directory = write_handler(
        tmp_path / "slow",
        f"""
        import threading
        import time

        class EndpointHandler:
            thread_safe = {thread_safe}

            def __init__(self, path):
                self.lock, self.now, self.most = threading.Lock(), 0, 0

            def __call__(self, data):
                with self.lock:
                    self.now += 1
                    self.most = max(self.most, self.now)
                time.sleep(0.05)
                with self.lock:
                    self.now -= 1
                return self.most
        """,
    )
    handler = load_handler(directory)
    with ThreadPoolExecutor(4) as pool:
        most = max(pool.map(lambda _: handler({"inputs": 1}), range(8)))
    assert (most > 1) is thread_safe

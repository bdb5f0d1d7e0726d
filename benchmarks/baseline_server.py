"""The PyTorch path, for the server comparison: the pipeline the stock container runs, over HTTP.

A minimal stand-in for huggingface-inference-toolkit: it loads the model with transformers or
sentence-transformers, runs one inference at a time off the event loop, and queues without
bound, as the toolkit does. Run: `python -m benchmarks.baseline_server MODEL_DIR TASK PORT`.
"""

from __future__ import annotations

import sys
from typing import Any

import anyio
import anyio.to_thread
import uvicorn
from litestar import Litestar, Request, get, post


def load(model: str, task: str) -> Any:
    if task in ("sentence-embeddings", "sentence-similarity", "feature-extraction"):
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(model, device="cpu")
        return lambda inputs, **_: st.encode(inputs).tolist()
    from transformers import pipeline

    return pipeline(task, model=model, device="cpu")


def main() -> None:
    model, task, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pipe = load(model, task)
    limiter = anyio.CapacityLimiter(1)

    @post("/", status_code=200)
    async def predict(request: Request[Any, Any, Any]) -> Any:
        body = await request.json()
        return await anyio.to_thread.run_sync(
            lambda: pipe(body["inputs"], **body.get("parameters", {})), limiter=limiter
        )

    @get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(Litestar([predict, health]), host="127.0.0.1", port=port, log_level="warning")


if __name__ == "__main__":
    main()

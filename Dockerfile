# An image that serves one compiled artifact with the serving dependencies only: onnxruntime (CPU),
# tokenizers, numpy, Pillow, Litestar and uvicorn. No torch, transformers, optimum or onnx: the
# model was compiled and checked before the build (see "In a build pipeline" in README.md).
#
#   kiln compile MODEL --out artifact && kiln compile --check artifact
#   docker build -t my-model .                        # or --build-arg ARTIFACT=build/sst2
#   docker run --rm -p 8080:8080 my-model
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# kiln itself, from this checkout: the extra `cpu` only (`compile` would bring torch)
WORKDIR /tmp/kiln
COPY pyproject.toml README.md ./
COPY kiln kiln
COPY compile compile
COPY runtime runtime
COPY server server
RUN pip install '.[cpu]' && cd / && rm -rf /tmp/kiln && useradd --create-home --system kiln

ARG ARTIFACT=artifact
COPY ${ARTIFACT} /artifact

USER kiln
WORKDIR /home/kiln
# Nothing is fetched at run time. `docker stop` waits 10 s before SIGKILL: drain within that.
ENV HF_HUB_OFFLINE=1 \
    KILN_SHUTDOWN_GRACE=8
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('PORT', '8080')}/health\", timeout=2)"]
# exec form: kiln is PID 1 and gets SIGTERM itself (it drains, then exits 0)
CMD ["kiln", "serve", "/artifact", "--host", "0.0.0.0"]

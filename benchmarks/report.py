"""The suite's results as people read them: a Markdown report and PNG charts."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks import diffusion
from benchmarks.batching import artifact_name, pair

CHARTS = ("latency_by_shape.png", "speedup_by_task.png", "throughput_by_concurrency.png")


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _quality(row: dict[str, Any]) -> str:
    """A row's quality figures (differences in scientific notation), or its note."""
    figures = [f"{k} {v:.1e}" if k.endswith("diff") else f"{k} {v:.4f}" for k, v in row["quality"].items()]
    return ", ".join(figures) or row["note"]


def _speed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}x"


def _share(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.0%}"


def _vision(results: dict[str, Any]) -> list[str]:
    """The image-classification tables: end to end, then preprocessing alone."""
    vision = results.get("vision")
    if not vision:
        return []
    return [
        "",
        "## Image classification, end to end with preprocessing, one process (ms)",
        "",
        'Baseline `pytorch` is `transformers.pipeline("image-classification")`, called as the stock',
        "container calls it (a PIL image, or a list of 8: one forward per image); kiln is",
        "`runtime.load(artifact)` called the same way (fp32 runs the 8 as one batch, int8 one by one).",
        "Payloads: the cat of scikit-image (b1); the cat, coffee, astronaut and Grace Hopper photographs,",
        "twice (b8).",
        "Quality against the baseline's answer: top-1 agreement and the largest |score difference|.",
        "",
        "| model | shape | contestant | p50 | p95 | speed-up | quality |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['shape']} | {r['contestant']} | {_ms(r['p50_ms'])} | {_ms(r['p95_ms'])} | "
            f"{_speed(r['speedup'])} | {_quality(r)} |"
            for r in vision["inprocess"]
        ],
        "",
        'Preprocessing alone, same images: transformers\' `AutoImageProcessor(images=..., return_tensors="np")`',
        "against kiln's numpy + Pillow `pipe.processor(...)`; share is kiln's `pipe.preprocess` (RGB",
        "images and processor) over kiln fp32's end-to-end p50.",
        "",
        "| model | shape | transformers processor | transformers p50 | kiln p50 | speed-up | kiln share of e2e |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['shape']} | {r['transformers_processor']} | {_ms(r['transformers_p50_ms'])} | "
            f"{_ms(r['kiln_p50_ms'])} | {_speed(r['speedup'])} | "
            f"{_share(r['share_of_end_to_end'])} |"
            for r in vision["preprocessing"]
        ],
    ]


def _speech(results: dict[str, Any]) -> list[str]:
    rows = results.get("speech")
    if not rows:
        return []
    return [
        "",
        "## Speech recognition, one process (seconds per call)",
        "",
        'Baseline `pytorch` is `transformers.pipeline("automatic-speech-recognition")` with its defaults',
        "(beam search, 5 beams), called with a 16 kHz float32 waveform; kiln is `runtime.load(artifact)`",
        "called the same way. Clips: Beckett's recording from `useful-moonshine-onnx` (~10 s), and six",
        "of it with 0.7 s silences between (~60 s, `chunk_length_s=30`). RTF is seconds of compute per",
        "second of audio; WER is against the known text.",
        "",
        "| model | clip | contestant | p50 (s) | RTF | speed-up | same text | WER |",
        "|---|---|---|---|---|---|---|---|",
        *[
            f"| {r['model']} | {r['clip']} ({r['audio_s']:.1f} s) | {r['contestant']} | "
            + (
                f"{r['p50_s']:.2f} | {r['real_time_factor']:.3f} | {_speed(r['speedup'])} | "
                f"{'yes' if r['quality']['same_text'] == 1.0 else 'no'} | {r['quality']['wer']:.3f} |"
                if not r["note"]
                else f"- | - | - | - | {r['note']} |"
            )
            for r in rows
        ],
    ]


def _ratio(on: float, off: float) -> str:
    return f"{on / off:.2f}x" if off else "-"


def _batching(results: dict[str, Any]) -> list[str]:
    """Batching on against off, cell by cell: artifact, sentence length, clients."""
    batching = results["server"].get("batching")
    if not batching:
        return []
    rows = batching["rows"]
    cells = dict.fromkeys((r["artifact"], r["precision"], r["sentence"], r["tokens"], r["concurrency"]) for r in rows)
    lines = [
        "",
        "Dynamic batching (`KILN_BATCHING` on / off): one server per setting, side by side, loaded by the "
        f"same clients as above for {batching['seconds_per_level']:g} s per row (one client: in four slices "
        "taken in turn on one and the other); one sentence per request, short ~16 tokens, "
        "long ~128. Items per call: the mean inputs per model call during the batched run, from the "
        "server's `/metrics` (`kiln_model_batch_items`). int8 scales activations per row, so its "
        "batches share the matrix work like fp32's and never move an answer.",
        "",
        "| artifact | sentence | clients | req/s off | req/s on | on / off | p50 off | p50 on | p95 off | p95 on "
        "| items/call |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for artifact, precision, sentence, tokens, concurrency in cells:
        found = pair(rows, artifact, sentence, concurrency)
        if found is None:
            continue
        on, off = found
        lines.append(
            f"| {artifact_name(artifact, precision)} | {sentence} (~{tokens} tok) | {concurrency} | "
            f"{off['throughput_rps']:.0f} | {on['throughput_rps']:.0f} | "
            f"{_ratio(on['throughput_rps'], off['throughput_rps'])} | {_ms(off['p50_ms'])} | {_ms(on['p50_ms'])} | "
            f"{_ms(off['p95_ms'])} | {_ms(on['p95_ms'])} | {_ms(on['items_per_call'])} |"
        )
    return lines


def _ray(results: dict[str, Any]) -> list[str]:
    """Plain `kiln serve` against `kiln serve --replicas N` on Ray Serve, same run and payload."""
    rows = results.get("ray")
    if not rows:
        return []
    plain = rows[0]["sequential_p50_ms"]
    lines = [
        "",
        "Ray Serve (`kiln serve --replicas N`, a local cluster on this machine) against plain `kiln serve`, "
        "all-MiniLM-L6-v2 fp32, one short sentence: one client's p50 and its overhead over plain serving, "
        "then 16 and 64 clients; resident memory of each replica and of the whole process tree (Ray's own "
        "processes included).",
        "",
        "| server | p50 1 client | over plain | x16 req/s | x16 p50 / p95 | x64 req/s | x64 p50 / p95 "
        "| replica RSS MB | tree RSS MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        x16, x64 = row["levels"]
        lines.append(
            f"| {row['server']} | {_ms(row['sequential_p50_ms'])} | {row['sequential_p50_ms'] - plain:+.2f} | "
            f"{x16['throughput_rps']:.0f} | {_ms(x16['p50_ms'])} / {_ms(x16['p95_ms'])} | "
            f"{x64['throughput_rps']:.0f} | {_ms(x64['p50_ms'])} / {_ms(x64['p95_ms'])} | "
            f"{' / '.join(f'{mb:.0f}' for mb in row['replica_rss_mb'])} | {row['tree_rss_mb']:.0f} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        "# kiln benchmarks",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, device {m['device']}{', ' + m['gpu'] if m.get('gpu') else ''}; "
        f"onnxruntime {m['versions'].get('onnxruntime') or m['versions'].get('onnxruntime-gpu')}, "
        f"torch {m['versions'].get('torch')}, transformers {m['versions'].get('transformers')}. "
        f"{'Quick run' if results['quick'] else 'Full run'}, {results.get('seconds', '?')} s.",
        "",
        "## Goals",
        "",
        "| goal | target | measured | met |",
        "|---|---|---|---|",
        *[
            f"| {g['goal']} | {g['target']} | {g['measured']} | {'yes' if g['met'] else 'no'} |"
            for g in results["goals_measured"]
        ],
        "",
        "## In-process latency, same payloads, one process (ms)",
        "",
        "Baseline `pytorch` is the transformers pipeline (sentence-transformers for embeddings and",
        "ranking), as the stock container runs it. Speed-up is baseline p50 / candidate p50. Quality is",
        "the candidate against the baseline's answer: cosine for vectors and scores, top-label agreement",
        "for labels, spans and tokens.",
        "",
        "| model | task | shape | contestant | p50 | p95 | speed-up | quality |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results["inprocess"]:
        lines.append(
            f"| {r['model']} | {r['task']} | {r['shape']} | {r['contestant']} | {_ms(r['p50_ms'])} | "
            f"{_ms(r['p95_ms'])} | {_speed(r['speedup'])} | {_quality(r)} |"
        )
    lines += _vision(results)
    lines += _speech(results)
    lines += diffusion.markdown(results.get("diffusion", {}))
    if results.get("generation"):
        lines += [
            "",
            "## Generation: greedy, 128 new tokens, compiled vs PyTorch `generate`",
            "",
            "| model | contestant | tokens/s | time to first token (ms) | speed-up |",
            "|---|---|---|---|---|",
            *[
                f"| {r['model']} | {r['contestant']} | {r['tokens_per_s']:.1f} | {r['ttft_ms']:.1f} | "
                f"{r['speedup']:.2f}x |"
                for r in results["generation"]
            ],
        ]
    s = results["server"]
    o = s["overhead"]
    lines += [
        "",
        f"## Server (all-MiniLM-L6-v2, kiln's default artifact: {s['artifact_precision']})",
        "",
        f"One client, keep-alive, one short sentence: in-process p50 {o['in_process_p50_ms']:.2f} ms, "
        f"HTTP p50 {o['http_p50_ms']:.2f} ms, server overhead {o['overhead_p50_ms']:.2f} ms.",
        "",
        "| server | cold start (s, process start to /health 200) | resident memory (MB) |",
        "|---|---|---|",
        *[f"| {x['server']} | {x['cold_start_s']:.2f} | {x['rss_mb']:.0f} |" for x in s["startup"]],
        "",
        "| server | clients | requests | req/s | p50 ms | p99 ms | statuses |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {x['server']} | {x['concurrency']} | {x['requests']} | {x['throughput_rps']:.0f} | "
            f"{_ms(x['p50_ms'])} | {_ms(x['p99_ms'])} | {', '.join(f'{k}: {v}' for k, v in x['statuses'].items())} |"
            for x in s["load"]
        ],
        "",
        "ONNX Runtime thread spinning (`KILN_SPINNING`), kiln server:",
        "",
        "| spinning | HTTP p50 ms (1 client) | req/s (16 clients) | p99 ms (16 clients) |",
        "|---|---|---|---|",
        *[
            f"| {'on' if x['spinning'] else 'off'} | {x['http_p50_ms']:.2f} | {x['x16_throughput_rps']:.0f} | "
            f"{x['x16_p99_ms']:.1f} |"
            for x in s["spinning"]
        ],
        *_batching(results),
        *_ray(results),
        "",
        "Charts: `latency_by_shape.png`, `speedup_by_task.png`, `throughput_by_concurrency.png`.",
        "",
    ]
    return "\n".join(lines)


def charts(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in results["inprocess"] if r["model"] == "all-MiniLM-L6-v2"]
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    contestants = list(dict.fromkeys(r["contestant"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / len(contestants)
    for i, name in enumerate(contestants):
        values = [next((r["p50_ms"] for r in rows if r["shape"] == s and r["contestant"] == name), 0) for s in shapes]
        ax.bar([x + i * width for x in range(len(shapes))], values, width, label=name)
    ax.set_xticks([x + width * (len(contestants) - 1) / 2 for x in range(len(shapes))], shapes)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title("all-MiniLM-L6-v2: latency by shape")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency_by_shape.png", dpi=110)
    plt.close(fig)

    best: dict[str, float] = {}
    vision = results.get("vision", {}).get("inprocess", [])
    for r in [*results["inprocess"], *vision]:
        if r["shape"] in ("b1-128", "b1") and r["contestant"] != "pytorch" and not math.isnan(r["speedup"]):
            key = f"{r['model']}\n{r['task']}"
            best[key] = max(best.get(key, 0.0), r["speedup"])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(best)), list(best.values()), color="tab:green")
    ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(best)), list(best), fontsize=7)
    ax.set_ylabel("speed-up vs PyTorch (b1: ~128 tokens or a photograph)")
    ax.set_title("Best compiled candidate per task")
    fig.tight_layout()
    fig.savefig(out / "speedup_by_task.png", dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(x["server"] for x in results["server"]["load"]):
        levels = [x for x in results["server"]["load"] if x["server"] == name]
        ax.plot([x["concurrency"] for x in levels], [x["throughput_rps"] for x in levels], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent clients")
    ax.set_ylabel("requests / s (200s only)")
    ax.set_title("all-MiniLM-L6-v2 over HTTP: throughput")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput_by_concurrency.png", dpi=110)
    plt.close(fig)

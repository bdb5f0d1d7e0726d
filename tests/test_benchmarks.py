"""The benchmark suite's machinery works end to end on a tiny model (no timing is asserted)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from benchmarks import inprocess, report, server
from tests.conftest import Server


def test_inprocess_comparison_and_report(tiny_models: dict, tmp_path: Path) -> None:
    lines: list[str] = []
    rows = inprocess.compare(
        "tiny-bert", "question-answering", tiny_models["question-answering", "bert"], tmp_path, device="cpu",
        rounds=1, block=1, shapes=[inprocess.SHAPES[0], inprocess.SHAPES[3]], log=lines.append,
    )  # fmt: skip
    contestants = {r.contestant for r in rows}
    assert {"pytorch", "fp32", "fp32-O2", "int8"} == contestants and len(lines) == 2
    for row in rows:
        if row.contestant != "pytorch" and not row.note:
            assert row.p50_ms > 0 and row.speedup > 0
            assert row.quality == {"label_agreement": 1.0} or row.contestant == "int8"
    level = {"server": "kiln", "concurrency": 1, "requests": 3, "seconds": 1.0, "throughput_rps": 3.0,
             "p50_ms": 1.0, "p99_ms": 2.0, "statuses": {"200": 3}}  # fmt: skip
    results = {
        "machine": {"cpu": "cpu", "cores": 2, "device": "cpu", "versions": {"onnxruntime": "1"}},
        "quick": True,
        "inprocess": [dataclasses.asdict(r) for r in rows],
        "server": {
            "artifact_precision": "int8",
            "overhead": {"in_process_p50_ms": 1.0, "http_p50_ms": 1.5, "overhead_p50_ms": 0.5},
            "startup": [{"server": "kiln", "cold_start_s": 0.5, "rss_mb": 180.0}],
            "load": [level],
            "spinning": [{"spinning": True, "http_p50_ms": 1.5, "x16_throughput_rps": 9.0, "x16_p99_ms": 3.0}],
        },
        "goals_measured": [{"goal": "g", "target": "t", "measured": "m", "met": True}],
    }
    text = report.markdown(json.loads(json.dumps(results, default=str)))
    assert "| tiny-bert | question-answering | b1-16 | fp32 |" in text and "server overhead 0.50 ms" in text
    results["inprocess"] = [dict(r, model="all-MiniLM-L6-v2") for r in results["inprocess"]]
    report.charts(results, tmp_path)
    assert all((tmp_path / name).stat().st_size > 1000 for name in report.CHARTS)


def test_load_generator_counts_every_answer(servers: dict[str, Server]) -> None:
    """The benchmarks' HTTP client against a real server: every request it sends is answered and
    counted once, by status, and the server's own count agrees."""
    kiln = servers["text-classification"]
    target = server.Process("kiln", None, kiln.url, 0.0, 0.0)  # type: ignore[arg-type]
    before = server.metrics(target)
    ok = server.load(target, {"inputs": "a fine day"}, concurrency=4, seconds=30, max_requests=40)
    refused = server.load(target, {"inputs": "a fine day", "parameters": {"top_k": 0}}, 3, 30, max_requests=9)
    after = server.metrics(target)
    assert (ok.requests, ok.statuses) == (40, {"200": 40}) and ok.p50_ms > 0
    assert (refused.requests, refused.statuses) == (9, {"400": 9})
    served = sum(v - before.get(k, 0.0) for k, v in after.items() if k.startswith("kiln_requests_total{"))
    assert served == 49

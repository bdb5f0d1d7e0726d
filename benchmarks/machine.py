"""What a result was measured on: CPU, cores, library versions, execution providers."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from runtime.versions import installed


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def describe(device: str) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "onnxruntime_providers": ort.get_available_providers(),
        "torch_threads": torch.get_num_threads(),
        "versions": installed(
            "onnxruntime", "onnxruntime-gpu", "torch", "transformers", "sentence-transformers", "optimum", "tokenizers"
        ),
    }
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info

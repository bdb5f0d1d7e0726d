"""ONNX Runtime sessions: provider choice, threads, and a typed `run`."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionOptions:
    """How to run a session: `threads` 0 lets ONNX Runtime use every core."""

    device: str = "cpu"
    threads: int = 0
    spinning: bool = True


def providers_for(device: str) -> list[str]:
    """CUDA when asked and present; otherwise CPU, with a warning if CUDA was asked for."""
    available = ort.get_available_providers()
    if device == "cuda":
        if "CUDAExecutionProvider" in available:
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        log.warning("CUDA was asked for but onnxruntime has no CUDA provider here: running on CPU")
    return ["CPUExecutionProvider"]


class OnnxModel:
    """One ONNX graph behind a session; `run` feeds only the inputs the graph declares."""

    def __init__(self, path: Path, options: SessionOptions) -> None:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if options.threads:
            so.intra_op_num_threads = options.threads
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if options.spinning else "0")
        so.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), so, providers=providers_for(options.device))
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    @property
    def provider(self) -> str:
        return str(self.session.get_providers()[0])

    def run(self, feeds: dict[str, np.ndarray], *, as_float32: bool = True) -> dict[str, np.ndarray]:
        """Outputs by name; float32 unless `as_float32` is off (a fp16 cache goes back in as fp16)."""
        outputs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        if not as_float32:
            return dict(zip(self.output_names, outputs))
        return {name: np.asarray(value, dtype=np.float32) for name, value in zip(self.output_names, outputs)}

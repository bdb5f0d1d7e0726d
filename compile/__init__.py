"""The compile step: a Hub id or model directory in, a validated ONNX artifact directory out."""

from compile.build import (
    CompileFailed,
    CompileOptions,
    Device,
    Optimization,
    Precision,
    Progress,
    Result,
    ValidationFailed,
    compile_model,
)
from compile.tasks import TaskUnknown, compilable, infer_task

__all__ = [
    "CompileFailed",
    "CompileOptions",
    "Device",
    "Optimization",
    "Precision",
    "Progress",
    "Result",
    "TaskUnknown",
    "ValidationFailed",
    "compilable",
    "compile_model",
    "infer_task",
]

"""The compile step: a Hub id or model directory in, a validated ONNX artifact directory out."""

from compile.build import compile_model
from compile.errors import CompileFailed, TaskUnknown, UnsupportedModel, ValidationFailed
from compile.options import CompileOptions, Device, Optimization, Precision, Progress, Result
from compile.tasks import compilable, infer_task

__all__ = [
    "CompileFailed",
    "CompileOptions",
    "Device",
    "Optimization",
    "Precision",
    "Progress",
    "Result",
    "TaskUnknown",
    "UnsupportedModel",
    "ValidationFailed",
    "compilable",
    "compile_model",
    "infer_task",
]

"""The compile step: a Hub id or model directory in, a validated ONNX artifact directory out."""

from compile.build import compile_model
from compile.errors import CompileFailed, TaskUnknown, UnsupportedModel, ValidationFailed
from compile.inspect import Check, Inspection, SourceMissing, check_artifact, inspect_artifact
from compile.options import CompileOptions, Device, Optimization, Precision, Progress, Result
from compile.tasks import compilable, infer_task

__all__ = [
    "Check",
    "CompileFailed",
    "CompileOptions",
    "Device",
    "Inspection",
    "Optimization",
    "Precision",
    "Progress",
    "Result",
    "SourceMissing",
    "TaskUnknown",
    "UnsupportedModel",
    "ValidationFailed",
    "check_artifact",
    "compilable",
    "compile_model",
    "infer_task",
    "inspect_artifact",
]

"""The compile step's typed failures; `kiln compile` maps them to exit statuses."""

from __future__ import annotations

from runtime.errors import KilnError


class CompileFailed(KilnError):
    """The model could not be compiled (exit status 1)."""

    error_type = "compile_failed"


class UnsupportedModel(CompileFailed):
    """The model has parts kiln does not reproduce yet."""

    error_type = "unsupported_model"


class ValidationFailed(CompileFailed):
    """No candidate held its gate against PyTorch (exit status 3)."""

    error_type = "validation_failed"


class TaskUnknown(KilnError):
    """The task is not one kiln compiles, or cannot be told from the model (exit status 2)."""

    error_type = "task_unknown"

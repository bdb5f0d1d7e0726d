"""Typed errors of the runtime: what went wrong, in words a caller can act on.

Each error names its kind (`error_type`); the server maps kinds to HTTP statuses in one table,
and a notebook user gets the same message from the exception.
"""

from __future__ import annotations


class KilnError(Exception):
    """Base of every error this project raises on purpose."""

    error_type = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(KilnError):
    """`inputs` is missing, of the wrong type, or not what the task takes."""

    error_type = "invalid_input"


class InvalidParameter(KilnError):
    """A parameter the task does not know, or one of the wrong type or value."""

    error_type = "invalid_parameter"


class Unprocessable(KilnError):
    """Well-formed but impossible: input longer than the model takes, labels missing, ..."""

    error_type = "unprocessable"


class ArtifactError(KilnError):
    """An artifact directory that is missing, incomplete, or from an incompatible version."""

    error_type = "artifact_error"


class Stopped(KilnError):
    """The caller asked a long generation to stop between two steps (its client went away)."""

    error_type = "stopped"

"""Custom handlers: a model directory's `handler.py`, served as the Inference Endpoints container
serves it (huggingface-inference-toolkit: `check_and_register_custom_pipeline_from_directory`).

The module is imported with its directory first on `sys.path` (so it can import its own helper
modules), `EndpointHandler(path)` is made once, and each request calls it with the whole decoded
body. Beyond the container: the handler can load compiled artifacts with `runtime.load` (a
directory compiled by `kiln compile` with `TASK = "..."` in handler.py holds the compiled model
and the handler together), and an `EndpointHandler` with `thread_safe = True` is called
concurrently; any other is called one request at a time.

`requirements.txt` beside the handler is read, not installed: what is missing is reported.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import re
import shutil
import sys
import threading
from contextlib import nullcontext
from pathlib import Path
from typing import Any, ClassVar

from runtime.errors import ArtifactError
from runtime.tasks.base import InputKind, Limits

HANDLER_FILE = "handler.py"
REQUIREMENTS_FILE = "requirements.txt"
MODULE_NAME = "handler"  # the container imports it as `handler.EndpointHandler`
TASK = "custom"


def has_handler(directory: str | Path) -> bool:
    return (Path(directory) / HANDLER_FILE).is_file()


def named_task(directory: Path) -> str | None:
    """The task a handler names with a top-level `TASK = "..."`, read without running its code."""
    tree = ast.parse((directory / HANDLER_FILE).read_text(), filename=str(directory / HANDLER_FILE))
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and [getattr(target, "id", None) for target in node.targets] == ["TASK"]
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            return node.value.value
    return None


def missing_requirements(directory: Path) -> list[str]:
    """The lines of `requirements.txt` whose distribution is not installed (versions unchecked)."""
    path = directory / REQUIREMENTS_FILE
    if not path.is_file():
        return []
    missing = []
    for line in path.read_text().splitlines():
        requirement = line.split("#", 1)[0].strip()
        if not requirement or requirement.startswith("-"):
            continue
        name = re.split(r"[\s\[<>=!~;@]", requirement, maxsplit=1)[0]
        try:
            importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    return missing


def copy_handler(source: Path, artifact: Path) -> None:
    """Put the handler, its sibling modules and its requirements into a compiled artifact."""
    if not has_handler(source):
        return
    for path in [*sorted(source.glob("*.py")), source / REQUIREMENTS_FILE]:
        if path.is_file():
            shutil.copy(path, artifact / path.name)


class CustomHandler:
    """A loaded `EndpointHandler`, called with the decoded request body (a dict)."""

    task: ClassVar[str] = TASK
    input_kind: ClassVar[InputKind] = InputKind.ANY
    batchable: ClassVar[bool] = False
    limits = Limits()

    def __init__(self, directory: Path, handler: Any) -> None:
        self.directory = directory
        self.handler = handler
        self.thread_safe = getattr(handler, "thread_safe", False) is True
        self._one_at_a_time = nullcontext() if self.thread_safe else threading.Lock()

    def __call__(self, data: dict[str, Any]) -> Any:
        with self._one_at_a_time:
            return self.handler(data)

    def warmup(self) -> None:
        """Nothing to warm: the handler's constructor did whatever loading it needed."""

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "input_kind": str(self.input_kind),
            "handler": str(self.directory / HANDLER_FILE),
            "handler_class": type(self.handler).__qualname__,
            "thread_safe": self.thread_safe,
        }


def load_handler(directory: str | Path) -> CustomHandler:
    """Import `directory/handler.py` and make its `EndpointHandler(str(directory))`."""
    path = Path(directory)
    spec = importlib.util.spec_from_file_location(MODULE_NAME, path / HANDLER_FILE)
    if spec is None or spec.loader is None:
        raise ArtifactError(f"cannot import {path / HANDLER_FILE}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path))
    sys.modules[MODULE_NAME] = module
    spec.loader.exec_module(module)
    cls = getattr(module, "EndpointHandler", None)
    if cls is None:
        raise ArtifactError(f"{path / HANDLER_FILE} defines no EndpointHandler class")
    return CustomHandler(path, cls(str(path)))

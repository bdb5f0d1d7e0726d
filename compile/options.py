"""What a compile is asked for (device, precision, optimization) and how it reports progress."""

from __future__ import annotations

import io
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from runtime.artifact import Manifest


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class Precision(StrEnum):
    AUTO = "auto"
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Optimization(StrEnum):
    NONE = "none"
    O1 = "O1"
    O2 = "O2"
    O3 = "O3"
    O4 = "O4"


@dataclass(frozen=True)
class CompileOptions:
    task: str | None = None
    device: Device = Device.CPU
    precision: Precision = Precision.AUTO
    optimize: Optimization | None = None
    revision: str | None = None
    opset: int | None = None
    trust_remote_code: bool = False
    force: bool = False
    token: str | None = None


@dataclass
class Result:
    directory: Path
    manifest: Manifest
    skipped: bool
    report: list[str] = field(default_factory=list)


class Progress:
    """One line on stderr per step of a compile, with its time; the libraries' own output (ONNX
    Runtime's and torch's warnings, transformers' notices, optimum's logs) is captured and shown
    only with `verbose`, or when the step fails."""

    def __init__(self, quiet: bool = False, verbose: bool = False) -> None:
        self.quiet, self.verbose = quiet, verbose

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"kiln: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        start = time.perf_counter()
        if self.verbose:
            self.say(f"{message} ...")
            yield
        else:
            with captured() as output:
                try:
                    yield
                except BaseException:
                    self.say(f"{message}: failed; what the libraries said:\n{output.read()}")
                    raise
        self.say(f"{message} ({time.perf_counter() - start:.1f} s)")


class _Captured:
    def __init__(self, file: Any) -> None:
        self.file = file

    def read(self) -> str:
        self.file.flush()
        self.file.seek(0)
        return str(self.file.read().decode(errors="replace")).rstrip() or "(nothing)"


def _write(handler: logging.StreamHandler[Any], category: type[Warning], message: Warning | str) -> None:
    handler.stream.write(f"{category.__name__}: {message}\n")


@contextmanager
def captured() -> Iterator[_Captured]:
    """Everything written to the process's stdout and stderr (C++ libraries included: the file
    descriptors are redirected), Python warnings and library log records, into a temporary file."""
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        handler = logging.StreamHandler(io.TextIOWrapper(os.fdopen(os.dup(sink.fileno()), "wb"), write_through=True))
        root = logging.getLogger()
        old_level, old_handlers = root.level, root.handlers[:]
        root.handlers, root.level = [handler], logging.INFO
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always")
                warnings.showwarning = lambda message, category, *_, **__: _write(handler, category, message)
                yield _Captured(sink)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            root.handlers, root.level = old_handlers, old_level
            handler.close()


@dataclass(frozen=True)
class Candidate:
    precision: Precision
    optimization: Optimization

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.optimization}"

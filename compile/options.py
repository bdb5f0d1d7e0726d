"""What a compile is asked for (device, precision, optimization) and how it reports progress."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

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
    """Progress lines on stderr: each long step says what it does and how long it took."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def say(self, message: str) -> None:
        if not self.quiet:
            print(f"kiln: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, message: str) -> Iterator[None]:
        start = time.perf_counter()
        self.say(f"{message} ...")
        yield
        self.say(f"{message}: done in {time.perf_counter() - start:.1f} s")


@dataclass(frozen=True)
class Candidate:
    precision: Precision
    optimization: Optimization

    @property
    def name(self) -> str:
        return f"{self.precision}-{self.optimization}"

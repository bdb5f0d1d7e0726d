"""Installed versions of the packages that matter, for manifests and `/info`."""

from __future__ import annotations

from contextlib import suppress
from importlib.metadata import PackageNotFoundError, version


def installed(*names: str) -> dict[str, str]:
    """`{"kiln": ..., name: version}` for each named package that is installed."""
    from runtime import __version__

    found = {"kiln": __version__}
    for name in names:
        with suppress(PackageNotFoundError):
            found[name] = version(name)
    return found

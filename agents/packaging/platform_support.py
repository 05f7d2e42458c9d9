"""Which Agent Factory versions a pack runs on: its ``platform`` range against this
platform's version (the installed distribution's, ``agent-factory``)."""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

from agents.packaging.errors import PlatformMismatch
from agents.packaging.spec import PackSpec
from agents.packaging.versions import VersionRange, parse_version, sort_key

__all__ = ["DISTRIBUTION", "admits_platform", "check_platform", "platform_version"]

DISTRIBUTION = "agent-factory"


@functools.cache
def platform_version() -> str:
    """This platform's version, as its package metadata says (``0.0.0`` when it runs
    from a tree that was never installed)."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "0.0.0"


def admits_platform(needs: str | None, platform: str | None = None) -> bool:
    """Whether the range ``needs`` (None: any) admits ``platform`` (default: this one)."""
    if needs is None:
        return True
    return VersionRange.parse(needs).admits(sort_key(parse_version(platform or platform_version())))


def check_platform(spec: PackSpec, platform: str | None = None) -> None:
    """:class:`PlatformMismatch` when ``spec``'s platform range excludes ``platform``."""
    if not admits_platform(spec.platform, platform):
        assert spec.platform is not None
        raise PlatformMismatch(spec.name, spec.version, spec.platform, platform or platform_version())

"""Versions (SemVer 2.0, the ``semver`` package) and the ranges agents depend on.

A range is one or more comparators joined by commas (all must hold):

======================  =========================================================
``*`` (or empty)        any release
``1.2.3`` / ``=1.2.3``  exactly that version (``1.2``: any 1.2.x; ``1``: any 1.x.y)
``^1.2.3``              ``>=1.2.3,<2.0.0``; ``^0.2.3``: ``<0.3.0``; ``^0.0.3``: ``<0.0.4``
``~1.2.3``              ``>=1.2.3,<1.3.0`` (``~1``: ``<2.0.0``)
``>=1.2,<2``            comparisons: ``>=``, ``>``, ``<=``, ``<``, ``!=``
======================  =========================================================

Prereleases (``2.0.0-rc.1``) never satisfy a range unless one of its comparators
names a prerelease of the same ``major.minor.patch`` (npm's rule): ``>=2.0.0-rc.1``
admits ``2.0.0-rc.2`` but not ``2.1.0-beta``. Build metadata (``+abc``) is ignored.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from semver import Version

from agents.packaging.errors import PackagingError

__all__ = ["InvalidVersion", "SortKey", "VersionRange", "parse_version", "sort_key"]


class InvalidVersion(PackagingError):
    """A version or a range that does not parse."""


_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
_COMPARATOR: Final = re.compile(r"(\^|~|>=|<=|>|<|==|=|!=)?\s*v?([0-9][0-9A-Za-z.+-]*)")
_PARTIAL: Final = re.compile(r"(0|[1-9][0-9]*)(?:\.(0|[1-9][0-9]*))?")


def parse_version(text: str) -> Version:
    """A full SemVer version (``1.2.3``, ``1.2.3-rc.1+build``), or :class:`InvalidVersion`."""
    try:
        return Version.parse(text.strip())
    except (ValueError, TypeError):
        raise InvalidVersion(
            f"{text!r} is not a SemVer version: expected MAJOR.MINOR.PATCH, e.g. '1.4.0' or '2.0.0-rc.1'"
        ) from None


SortKey = tuple[int, int, int, int, tuple[tuple[int, int | str], ...]]


def sort_key(version: Version) -> SortKey:
    """SemVer precedence as a plain tuple: compared far faster than ``Version`` objects
    (the resolver compares versions tens of thousands of times)."""
    pre = version.prerelease
    parts = tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".")) if pre else ()
    return (version.major, version.minor, version.patch, 0 if pre else 1, parts)


@dataclass(frozen=True)
class _Comparator:
    op: str
    version: Version
    key: SortKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", sort_key(self.version))

    def holds(self, key: SortKey) -> bool:
        return _OPS[self.op](key, self.key)

    def __str__(self) -> str:
        return f"{self.op}{self.version}"


@dataclass(frozen=True)
class VersionRange:
    """A parsed range: ``VersionRange.parse("^1.2").contains("1.9.0")``."""

    text: str
    comparators: tuple[_Comparator, ...]

    @classmethod
    def parse(cls, text: str) -> VersionRange:
        text = text.strip()
        if text in ("", "*"):
            return cls("*", ())
        comparators: list[_Comparator] = []
        for part in text.split(","):
            comparators.extend(_expand(part.strip(), text))
        return cls(text, tuple(comparators))

    def contains(self, version: Version | str) -> bool:
        if isinstance(version, str):
            version = parse_version(version)
        return self.admits(sort_key(version))

    def admits(self, key: SortKey) -> bool:
        """:meth:`contains` for a version's :func:`sort_key`."""
        if not key[3] and not any(not c.key[3] and c.key[:3] == key[:3] for c in self.comparators):
            return False  # a prerelease, and no comparator names one of the same version
        return all(c.holds(key) for c in self.comparators)

    @property
    def names_prerelease(self) -> bool:
        return any(c.version.prerelease for c in self.comparators)

    def __str__(self) -> str:
        return self.text


def _expand(part: str, whole: str) -> list[_Comparator]:
    match = _COMPARATOR.fullmatch(part)
    if not match:
        raise InvalidVersion(
            f"range {whole!r}: {part!r} is not a comparator: expected e.g. '^1.2.0', '~1.2', "
            "'>=1.2,<2', '1.4.0' or '*'"
        )
    op, raw = match.group(1) or "=", match.group(2)
    partial = _PARTIAL.fullmatch(raw)
    if partial:  # 1 or 1.2: a partial version
        major, minor = int(partial.group(1)), partial.group(2)
        low = Version(major, int(minor or 0), 0)
        if op in ("=", "==", "~", "^"):
            if op == "^" and major == 0 and minor is not None:
                return [_Comparator(">=", low), _Comparator("<", low.bump_minor())]
            upper = low.bump_major() if minor is None or op == "^" else low.bump_minor()
            return [_Comparator(">=", low), _Comparator("<", upper)]
        return [_Comparator(op, low)]
    version = parse_version(raw)
    if op in ("=", "=="):
        return [_Comparator("==", version)]
    if op == "~":
        return [_Comparator(">=", version), _Comparator("<", version.finalize_version().bump_minor())]
    if op == "^":
        base = version.finalize_version()
        if base.major > 0:
            upper = base.bump_major()
        elif base.minor > 0:
            upper = base.bump_minor()
        else:
            upper = base.bump_patch()
        return [_Comparator(">=", version), _Comparator("<", upper)]
    return [_Comparator(op, version)]

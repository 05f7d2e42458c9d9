"""Errors of agent packaging: one family, each message enough to act on.

The CLI prints ``str(error)`` on one line (no traceback); the gateway maps them
by ``status`` like every other :class:`~agents.errors.AgentError`.
"""

from __future__ import annotations

from dataclasses import dataclass

from agents.errors import AgentError

__all__ = [
    "ArchiveRefused",
    "BreakingChangeWithoutMajorBump",
    "DependencyConflict",
    "DependencyCycle",
    "PackSpecError",
    "PackTooLarge",
    "PackagingError",
    "PlatformMismatch",
    "SignatureRefused",
    "SpecProblem",
    "VersionExists",
]


class PackagingError(AgentError):
    """Base of every packaging error."""

    status = 422


@dataclass(frozen=True)
class SpecProblem:
    """One problem of a pack file: where it is and what was expected there."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field}: {self.message}" if self.field else f"{where}: {self.message}"


class PackSpecError(PackagingError):
    """``agent.pack.yaml`` cannot be read or does not fit the spec: each problem with its line."""

    def __init__(self, problems: list[SpecProblem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


class PackTooLarge(PackagingError):
    """The tree (or a file of it) is over the archive's size cap."""

    status = 413


class ArchiveRefused(PackagingError):
    """An archive failed a check (checksum, member kind, path, size, ratio): nothing was extracted."""


class SignatureRefused(ArchiveRefused):
    """The signature is missing while required, from an untrusted key, or does not match."""


class VersionExists(PackagingError):
    """``<name>/<version>`` is already installed with other content (versions are immutable)."""

    status = 409


class DependencyConflict(PackagingError):
    """No set of versions satisfies every requirement; ``chains`` are the requirement
    paths that collide (``["app 1.0.0 → a ^1.2", "a 1.2.0 → c ^2.0", ...]``)."""

    status = 409

    def __init__(self, message: str, chains: list[list[str]] | None = None) -> None:
        super().__init__(message)
        self.chains = chains or []

    @property
    def details(self) -> dict[str, list[list[str]]]:
        """What the gateway's problem carries beside the message: the chains."""
        return {"chains": self.chains}


class DependencyCycle(PackagingError):
    """Agents depend on each other in a loop; ``cycle`` is the path, first name repeated last."""

    def __init__(self, cycle: list[str]) -> None:
        self.cycle = cycle
        super().__init__("dependency cycle: " + " → ".join(cycle))

    @property
    def details(self) -> dict[str, list[str]]:
        return {"cycle": self.cycle}


class PlatformMismatch(PackagingError):
    """The pack's ``platform`` range does not admit the version of this platform."""

    def __init__(self, name: str, version: str, needs: str, platform: str) -> None:
        super().__init__(
            f"{name} {version} needs Agent Factory {needs}; this platform is {platform}: "
            "not compatible (publish a version whose platform range admits it)"
        )
        self.needs, self.platform = needs, platform

    @property
    def details(self) -> dict[str, str]:
        return {"needs": self.needs, "platform": self.platform}


class BreakingChangeWithoutMajorBump(PackagingError):
    """The new version breaks its schemas but its number does not say so."""

    def __init__(self, message: str, breaks: list[str]) -> None:
        super().__init__(message)
        self.breaks = breaks

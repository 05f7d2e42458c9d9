"""Agents as packages: the pack file, reproducible signed archives, dependency resolution.

Pack an agent's directory and check what comes back::

    from agents.packaging import TrustPolicy, load_spec, pack, verify_and_extract

    spec = load_spec(Path("scope2"))                 # agent.pack.yaml, validated
    archive = pack(Path("scope2"), Path("dist"))     # dist/scope2-electricity-1.4.0.glpack
    verify_and_extract(archive, Path("/srv/agents"), TrustPolicy())

The same tree always gives the same bytes; an archive is extracted only once
its manifest, every checksum and (when present or required) its signature hold.
docs/packaging.md says what each check refuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from agents.packaging.errors import (
        ArchiveRefused,
        BreakingChangeWithoutMajorBump,
        DependencyConflict,
        DependencyCycle,
        PackagingError,
        PackSpecError,
        PackTooLarge,
        SignatureRefused,
        VersionExists,
    )
    from agents.packaging.spec import PackSpec, load_spec, parse_spec
    from agents.packaging.versions import InvalidVersion, VersionRange, parse_version

__all__ = [
    "ArchiveRefused",
    "BreakingChangeWithoutMajorBump",
    "DependencyConflict",
    "DependencyCycle",
    "InvalidVersion",
    "PackSpec",
    "PackSpecError",
    "PackTooLarge",
    "PackagingError",
    "SignatureRefused",
    "VersionExists",
    "VersionRange",
    "load_spec",
    "parse_spec",
    "parse_version",
]

_WHERE = {
    "ArchiveRefused": "agents.packaging.errors",
    "BreakingChangeWithoutMajorBump": "agents.packaging.errors",
    "DependencyConflict": "agents.packaging.errors",
    "DependencyCycle": "agents.packaging.errors",
    "PackagingError": "agents.packaging.errors",
    "PackSpecError": "agents.packaging.errors",
    "PackTooLarge": "agents.packaging.errors",
    "SignatureRefused": "agents.packaging.errors",
    "VersionExists": "agents.packaging.errors",
    "PackSpec": "agents.packaging.spec",
    "load_spec": "agents.packaging.spec",
    "parse_spec": "agents.packaging.spec",
    "InvalidVersion": "agents.packaging.versions",
    "VersionRange": "agents.packaging.versions",
    "parse_version": "agents.packaging.versions",
}

__getattr__ = lazy_exports(__name__, _WHERE)

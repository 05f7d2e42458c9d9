"""Agents as packages: the pack file, reproducible signed archives, dependency resolution.

Pack an agent's directory and check what comes back::

    from agents.packaging import TrustPolicy, load_spec, pack, verify_and_extract

    spec = load_spec(Path("scope2"))                 # agent.pack.yaml, validated
    archive = pack(Path("scope2"), Path("dist"))     # dist/scope2-electricity-1.4.0.glpack
    verify_and_extract(archive, Path("/srv/agents"), TrustPolicy())

The same tree always gives the same bytes; an archive is extracted only once
its manifest, every checksum and (when present or required) its signature hold.
Dependencies between agents are resolved (:func:`resolve`), ordered
(:class:`DependencyGraph`), and a new version's schemas are checked against
the old one's (:func:`schema_breaks`, :func:`check_bump`).
docs/packaging.md says what each check refuses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mesh.lazy import lazy_exports

if TYPE_CHECKING:
    from agents.packaging.archive import pack, pack_bytes
    from agents.packaging.compat import Break, check_bump, input_breaks, output_breaks, schema_breaks
    from agents.packaging.errors import (
        ArchiveRefused,
        BreakingChangeWithoutMajorBump,
        DependencyConflict,
        DependencyCycle,
        PackagingError,
        PackSpecError,
        PackTooLarge,
        PlatformMismatch,
        SignatureRefused,
        VersionExists,
    )
    from agents.packaging.extract import ExtractLimits, InstalledPack, verify, verify_and_extract
    from agents.packaging.graph import DependencyGraph
    from agents.packaging.resolver import Resolution, resolve
    from agents.packaging.signing import TrustPolicies, TrustPolicy, keygen, load_private_key, load_public_key
    from agents.packaging.spec import PackSpec, load_spec, parse_spec
    from agents.packaging.versions import InvalidVersion, VersionRange, parse_version

__all__ = [
    "ArchiveRefused",
    "Break",
    "BreakingChangeWithoutMajorBump",
    "DependencyConflict",
    "DependencyCycle",
    "DependencyGraph",
    "ExtractLimits",
    "InstalledPack",
    "InvalidVersion",
    "PackSpec",
    "PackSpecError",
    "PackTooLarge",
    "PackagingError",
    "PlatformMismatch",
    "Resolution",
    "SignatureRefused",
    "TrustPolicies",
    "TrustPolicy",
    "VersionExists",
    "VersionRange",
    "check_bump",
    "input_breaks",
    "keygen",
    "load_private_key",
    "load_public_key",
    "load_spec",
    "output_breaks",
    "pack",
    "pack_bytes",
    "parse_spec",
    "parse_version",
    "resolve",
    "schema_breaks",
    "verify",
    "verify_and_extract",
]

_WHERE = {
    "Break": "agents.packaging.compat",
    "check_bump": "agents.packaging.compat",
    "input_breaks": "agents.packaging.compat",
    "output_breaks": "agents.packaging.compat",
    "schema_breaks": "agents.packaging.compat",
    "DependencyGraph": "agents.packaging.graph",
    "Resolution": "agents.packaging.resolver",
    "resolve": "agents.packaging.resolver",
    "pack": "agents.packaging.archive",
    "pack_bytes": "agents.packaging.archive",
    "ExtractLimits": "agents.packaging.extract",
    "InstalledPack": "agents.packaging.extract",
    "verify": "agents.packaging.extract",
    "verify_and_extract": "agents.packaging.extract",
    "TrustPolicies": "agents.packaging.signing",
    "TrustPolicy": "agents.packaging.signing",
    "keygen": "agents.packaging.signing",
    "load_private_key": "agents.packaging.signing",
    "load_public_key": "agents.packaging.signing",
    "ArchiveRefused": "agents.packaging.errors",
    "BreakingChangeWithoutMajorBump": "agents.packaging.errors",
    "DependencyConflict": "agents.packaging.errors",
    "DependencyCycle": "agents.packaging.errors",
    "PackagingError": "agents.packaging.errors",
    "PackSpecError": "agents.packaging.errors",
    "PackTooLarge": "agents.packaging.errors",
    "PlatformMismatch": "agents.packaging.errors",
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

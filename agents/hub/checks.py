"""What a package must pass before the hub accepts it (``hub.publish``).

In order, each refusal a :class:`~agents.packaging.PackagingError` that says why:

1. the archive: its manifest, every checksum, its signature as the trust policy asks,
   every hostile shape (:func:`agents.packaging.verify_and_extract`), its
   ``agent.pack.yaml``, whose ``platform`` range (if any) must admit this platform;
2. the version: higher than every earlier version it follows, and a break of the
   input or output schema against the newest earlier version only with a major bump
   (:func:`agents.packaging.check_bump`);
3. its own tests, run confined (:mod:`agents.hub.testrun`).
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.hub.catalog import Published
from agents.hub.testrun import TestRun, run_pack_tests
from agents.packaging import (
    PackSpec,
    TrustPolicy,
    check_bump,
    parse_version,
    schema_breaks,
    verify_and_extract,
)
from agents.packaging.environment import build_environment, env_dir
from agents.packaging.platform_support import check_platform
from agents.packaging.spec import read_schema
from agents.store.hub_index import HubPackage

__all__ = ["Checked", "check_package"]


@dataclass(frozen=True)
class Checked:
    published: Published  # what the index keeps of it
    tests: TestRun


async def check_package(
    archive: bytes,
    *,
    policy: TrustPolicy,
    earlier: Callable[[str], Awaitable[list[HubPackage]]],
    test_timeout_s: float = 120.0,
) -> Checked:
    """Check ``archive`` (see the module docstring); ``earlier(name)``: the versions of
    its name its publisher sees, asked once the archive is known to be one."""
    with tempfile.TemporaryDirectory(prefix="af-publish-") as scratch:
        path = Path(scratch) / "package.glpack"
        path.write_bytes(archive)
        installed = await asyncio.to_thread(verify_and_extract, path, Path(scratch) / "pack", policy)
        spec = installed.spec
        check_platform(spec)  # a pack that does not run on this platform is no use here
        schemas = {"input": read_schema(installed.path, spec.input_schema),
                   "output": read_schema(installed.path, spec.output_schema)}  # fmt: skip
        _follows(spec, schemas, await earlier(spec.name))
        extra: list[Path] = []
        if spec.requirements:  # installed (checked against the platform's packages) for its tests
            extra.append(await build_environment(spec.requirements, env_dir(installed.path)))
        tests = await run_pack_tests(installed.path, timeout_s=test_timeout_s, extra_path=extra)
        manifest: dict[str, Any] = {
            "spec": spec.model_dump(mode="json"),
            "files": installed.manifest.model_dump(mode="json")["files"],
            "schemas": schemas,
            "tests": {"summary": tests.summary, "duration_s": tests.duration_s, "network": tests.network},
        }
        signer = installed.signer
        published = Published(
            name=spec.name, version=spec.version, description=spec.description, tags=list(spec.metadata.tags),
            signature_key=signer.key_id if signer is not None else None, manifest=manifest,
        )  # fmt: skip
        return Checked(published, tests)


def _follows(spec: PackSpec, schemas: dict[str, dict[str, Any] | None], earlier: list[HubPackage]) -> None:
    """The newest earlier version below ``spec``'s: the one whose callers a break would hurt."""
    new = parse_version(spec.version)
    below = [p for p in earlier if parse_version(p.version) < new]
    if not below:
        return
    previous = max(below, key=lambda p: parse_version(p.version))
    old = previous.manifest.get("schemas") or {}
    breaks = schema_breaks(
        old.get("input") or {}, schemas["input"] or {}, old.get("output") or {}, schemas["output"] or {}
    )
    check_bump(previous.version, spec.version, breaks)

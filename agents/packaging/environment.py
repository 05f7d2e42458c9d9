"""Per-agent-version Python environments: a pack's ``requirements`` installed with
pip into a directory of their own (``pip install --target``), never into the
platform's environment.

* **Checked before anything is installed.** A requirement naming a package the
  platform runs on must admit the version the platform has (else it is refused
  at once, naming both). pip then resolves every requirement under constraints
  that pin each distribution of the platform's environment to its installed
  version, so a dependency further down that needs another version of one of
  them is refused too, with pip's explanation, and nothing is written.
* **Wheels only** (``--only-binary :all:``): installing never runs a package's
  own build code in the process that installs it.
* **All or nothing.** pip installs into a staging directory beside the target,
  which is renamed into place once pip succeeded; a reader never sees half an
  environment, and a failed install leaves none.
* **At import** the environment comes after the platform's ``site-packages``
  (:func:`agents.registry.load_package` appends it): the platform's own copies
  of shared packages win, and they are the versions the requirements were
  resolved against.
* Where pip downloads from is pip's own configuration (``PIP_INDEX_URL``,
  ``PIP_FIND_LINKS``, ``pip.conf``): the package registry, or a mirror of it.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from agents.packaging.errors import PackagingError

__all__ = ["EnvironmentRefused", "build_environment", "env_dir", "platform_conflicts"]

_COMPLETE: Final = ".complete"  # written last: an environment without it is not one
_TAIL_LINES: Final = 12


class EnvironmentRefused(PackagingError):
    """A pack's requirements cannot be installed beside this platform: why."""

    status = 422


def env_dir(package_dir: Path) -> Path:
    """Where the environment of the pack installed at ``package_dir`` lives
    (``<root>/<name>/<version>.env``: no SemVer version ends in ``.env``)."""
    return package_dir.with_name(package_dir.name + ".env")


def _platform() -> dict[str, str]:
    """Every distribution of this interpreter's environment: ``{canonical name: version}``."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(canonicalize_name(name), dist.version)
    return found


def platform_conflicts(requirements: Sequence[str]) -> list[str]:
    """The requirements that name a package of the platform's and exclude its version."""
    platform = _platform()
    conflicts = []
    for text in requirements:
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            conflicts.append(f"{text}: {exc}")
            continue
        have = platform.get(canonicalize_name(req.name))
        if have is not None and not req.specifier.contains(have, prereleases=True):
            conflicts.append(f"{text} (the platform runs {req.name} {have})")
    return conflicts


async def build_environment(requirements: Sequence[str], target: Path, *, timeout_s: float = 600.0) -> Path:
    """Install ``requirements`` into ``target`` (see the module docstring); ``target``
    as it is when an environment is complete there already."""
    if (target / _COMPLETE).is_file():
        return target
    conflicts = platform_conflicts(requirements)
    if conflicts:
        raise EnvironmentRefused(
            "requirements that conflict with the platform, refused before installing anything: "
            + "; ".join(conflicts)
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".env-staging-"))
    try:
        constraints = staging / "platform-constraints.txt"
        constraints.write_text("".join(f"{name}=={ver}\n" for name, ver in sorted(_platform().items())))
        env_path = staging / "env"
        await _pip(["install", "--disable-pip-version-check", "--no-input", "--only-binary", ":all:",
                    "--target", str(env_path), "--constraint", str(constraints), *requirements],
                   timeout_s)  # fmt: skip
        (env_path / _COMPLETE).write_text("\n".join(requirements) + "\n")
        env_path.chmod(0o755)
        try:
            os.rename(env_path, target)
        except OSError:  # built meanwhile by another install of the same version: keep that one
            if not (target / _COMPLETE).is_file():
                raise
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


async def _pip(args: list[str], timeout_s: float) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pip", *args, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EnvironmentRefused(f"installing the requirements took over {timeout_s:g} s") from None
    if proc.returncode != 0:
        said = [line for line in out.decode(errors="replace").splitlines() if line.strip()]
        raise EnvironmentRefused(
            "pip could not install the requirements beside the platform's packages: "
            + " | ".join(said[-_TAIL_LINES:])
        )

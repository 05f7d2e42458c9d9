"""Installing a hub package into the platform: its version registered, its code
on disk where its workers start.

An install takes a package version from the hub (checked against the index's
digest on the way, :meth:`Hub.archive`), checks it in full again with the
installation's trust policy (:func:`~agents.packaging.extract.verify_and_extract`:
signature, every checksum, every hostile archive shape) and extracts it,
atomically, into ``<data dir>/packages/<name>/<version>``. Then, in one
PostgreSQL transaction, the version's lifecycle record (CREATED, dedicated
mode) and its ``installed_packages`` row are written. A deploy of that version
then starts its dedicated workers in that directory
(:class:`~agents.lifecycle.Operator`).

Installing is idempotent: the same package again changes nothing. A version is
immutable: another package under an installed version, or a version that the
platform runs from code it loaded itself, is refused. A host that lacks the
directory (another gateway's, or a wiped data dir) extracts it again from the
hub by the recorded digest (:meth:`Installer.local_dir`).

A pack's Python ``requirements`` are installed into an environment of its own
beside its directory (:mod:`agents.packaging.environment`), checked against the
platform's packages first.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Final

import asyncpg

from agents.errors import AgentError
from agents.hub.catalog import Hub
from agents.hub.dependencies import package_graph
from agents.hub.packaged import ANY_OBJECT, is_packaged, packaged_agent
from agents.packaging.environment import build_environment, env_dir
from agents.packaging.errors import VersionExists
from agents.packaging.extract import InstalledPack, verify_and_extract
from agents.packaging.platform_support import check_platform
from agents.packaging.signing import TrustPolicies
from agents.packaging.spec import SPEC_FILE, read_schema
from agents.packaging.versions import parse_version, sort_key
from agents.registry import Registry
from agents.store.hub_index import HubPackage, PackageNotFound
from agents.store.installs import InstalledVersion, get_installed, insert_installed, list_installed
from agents.store.tenancy import ALL_TENANTS

__all__ = ["PACKAGES_DIR", "InstallRefused", "Installer", "know_installed"]

PACKAGES_DIR: Final = "packages"  # under the data dir

Progress = Callable[[float, str], Awaitable[None]]


async def _quiet(percent: float, message: str) -> None:
    return None


class InstallRefused(AgentError):
    status = 409


class Installer:
    """Installs hub packages into ``root`` (``<data dir>/packages``) and the database."""

    def __init__(self, hub: Hub, root: Path, policies: TrustPolicies) -> None:
        self.hub, self.root, self.policies = hub, root, policies

    async def install(
        self,
        name: str,
        version: str | None,
        *,
        hub_tenant: str | None,
        actor: str,
        progress: Progress = _quiet,
    ) -> list[InstalledVersion]:
        """Install ``name`` ``version`` (None: its highest version not yanked) of the hub's
        public packages (``hub_tenant`` None) or of that tenant's own, and first the
        versions its agent dependencies resolve to (among the public versions and that
        tenant's) that the platform does not have yet: what was installed, the package
        asked for last."""
        package, pack = await self._fetch(name, version, hub_tenant, progress)
        installed = []
        if pack.spec.dependencies:
            await progress(50, f"resolving {len(pack.spec.dependencies)} agent dependencies against the hub")
            graph = await package_graph(self.hub, name, package.version, pack.spec.dependencies,
                                        tenant=ALL_TENANTS, scope=hub_tenant)  # fmt: skip
            versions = {node["name"]: node["version"] for node in graph["nodes"]}
            for dep in graph["order"]:
                if dep == name or await _registered(self.hub.pool, dep, versions[dep]):
                    continue
                await progress(60, f"installing dependency {dep} {versions[dep]}")
                installed.append(
                    await self._register(*await self._fetch(dep, versions[dep], hub_tenant), actor)
                )
        await progress(80, f"registering {name} {package.version}")
        installed.append(await self._register(package, pack, actor))
        return installed

    async def _fetch(
        self, name: str, version: str | None, hub_tenant: str | None, progress: Progress = _quiet
    ) -> tuple[HubPackage, InstalledPack]:
        """The package chosen, downloaded, checked in full and extracted."""
        package = await self._choose(name, version, hub_tenant)
        await progress(10, f"downloading {name} {package.version} ({package.size_bytes} bytes)")
        data = await self.hub.archive(package)
        await progress(30, "checking the archive in full and extracting it")
        pack = await self._extract(data, package)
        check_platform(pack.spec)
        return package, pack

    async def _register(self, package: HubPackage, pack: InstalledPack, actor: str) -> InstalledVersion:
        """The version's lifecycle record and its ``installed_packages`` row, together."""
        row = _row(pack, package, actor)
        async with self.hub.pool.acquire() as conn, conn.transaction():
            await self._check_registrable(conn, row)
            await conn.execute(
                "INSERT INTO agent_versions (agent_key, version, mode) VALUES ($1, $2, 'dedicated')"
                " ON CONFLICT (agent_key, version) DO NOTHING",
                row.agent, row.version,
            )  # fmt: skip
            return await insert_installed(conn, row)

    async def local_dir(self, row: InstalledVersion) -> Path:
        """Where ``row``'s code is on this host, extracted again from the hub if it is not."""
        target = self.root / row.agent / row.version
        if (target / SPEC_FILE).is_file():
            requirements = row.spec.get("requirements") or []
            if requirements:  # built again where it is missing (it is complete, or absent)
                await build_environment(requirements, env_dir(target))
            return target
        try:
            package = await self.hub.get(row.agent, row.version, tenant=row.hub_tenant)
        except PackageNotFound:
            raise InstallRefused(
                f"{row.agent} {row.version} is no longer in the hub: install another"
            ) from None
        if package.digest != row.digest:
            raise InstallRefused(
                f"the hub's {row.agent} {row.version} is not the package installed "
                f"(sha256 {row.digest[:12]}…)"
            )
        return (await self._extract(await self.hub.archive(package), package)).path

    async def _choose(self, name: str, version: str | None, hub_tenant: str | None) -> HubPackage:
        every = await self.hub.versions(name, tenant=hub_tenant)
        seen = [p for p in every if p.tenant == hub_tenant]
        where = "the public hub" if hub_tenant is None else f"tenant {hub_tenant}'s packages"
        if version is not None:  # a tenant's own build first, else the public one (a dependency)
            found = next((p for p in seen if p.version == version), None) or next(
                (p for p in every if p.version == version and p.tenant is None), None
            )
            if found is None:
                raise PackageNotFound(f"no package {name} {version} in {where}")
            return found
        live = [p for p in seen if p.yanked_at is None]
        if not live:
            raise PackageNotFound(f"no version of {name} that is not yanked in {where}")
        return max(live, key=lambda p: sort_key(parse_version(p.version)))

    async def _extract(self, data: bytes, package: HubPackage) -> InstalledPack:
        policy = self.policies.for_tenant(package.tenant) if package.tenant else self.policies.default

        def extract() -> InstalledPack:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, prefix=".download-", suffix=".glpack") as f:
                f.write(data)
                f.flush()
                return verify_and_extract(Path(f.name), self.root, policy)

        pack = await asyncio.to_thread(extract)
        if (pack.spec.name, pack.spec.version) != (package.name, package.version):
            raise InstallRefused(
                f"the hub's {package.name} {package.version} holds {pack.spec.name} {pack.spec.version}"
            )
        if pack.spec.requirements:  # its own environment, beside its directory
            await build_environment(pack.spec.requirements, env_dir(pack.path))
        return pack

    async def _check_registrable(self, conn: asyncpg.Connection, row: InstalledVersion) -> None:
        earlier = await get_installed(conn, row.agent, row.version)
        if earlier is not None and earlier.digest != row.digest:
            raise VersionExists(
                f"{row.agent} {row.version} is installed from another package "
                f"(sha256 {earlier.digest[:12]}…): a version is immutable, install a new one"
            )
        registered = await _registered(conn, row.agent, row.version)
        if earlier is None and registered:
            raise InstallRefused(
                f"{row.agent} {row.version} is registered from code this platform loads, not from a package: "
                "install a version it does not run"
            )


async def _registered(conn: asyncpg.Connection | asyncpg.Pool, agent: str, version: str) -> bool:
    """Whether the platform has ``agent`` ``version`` (installed, or its own code)."""
    found = await conn.fetchval(
        "SELECT 1 FROM agent_versions WHERE agent_key = $1 AND version = $2", agent, version
    )
    return found is not None


async def know_installed(pool: asyncpg.Pool, registry: Registry) -> None:
    """Put in ``registry`` the stand-in of each installed agent's newest version, for
    the agents it does not load itself: the API then takes their runs, checked
    against that version's input schema."""
    newest: dict[str, InstalledVersion] = {}
    for row in await list_installed(pool):
        seen = newest.get(row.agent)
        if seen is None or sort_key(parse_version(row.version)) > sort_key(parse_version(seen.version)):
            newest[row.agent] = row
    for key, row in newest.items():
        if key not in registry or is_packaged(registry.get(key)):
            registry.add(packaged_agent(row), replace=True)


def _row(pack: InstalledPack, package: HubPackage, actor: str) -> InstalledVersion:
    spec = pack.spec
    return InstalledVersion(
        agent=spec.name, version=spec.version, digest=package.digest, hub_tenant=package.tenant,
        entry_point=spec.entry_point, description=spec.description, spec=spec.model_dump(mode="json"),
        input_schema=read_schema(pack.path, spec.input_schema) or ANY_OBJECT,
        output_schema=read_schema(pack.path, spec.output_schema) or ANY_OBJECT, installed_by=actor,
    )  # fmt: skip

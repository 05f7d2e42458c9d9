"""A package's agent dependencies against the hub: the graph a version resolves to,
and the compatibility matrix of every version of a package.

Both read the versions the tenant sees (public ones and its own; its own build
of a version wins), following dependencies transitively, one query per level.
Yanked versions are left out of resolution, except the version asked about.
The resolution is :func:`agents.packaging.resolve`'s (a conflict is a
:class:`~agents.packaging.DependencyConflict` with the chains that collide),
the graph :class:`~agents.packaging.DependencyGraph`'s (a cycle is a
:class:`~agents.packaging.DependencyCycle` with its path).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from agents.hub.catalog import Hub
from agents.packaging import DependencyConflict, DependencyGraph, PackagingError, VersionRange, resolve
from agents.packaging.platform_support import admits_platform, platform_version
from agents.packaging.versions import parse_version, sort_key
from agents.store.hub_index import IndexedVersion, dependency_rows
from agents.store.tenancy import tenant_scope

__all__ = ["MAX_AGENTS", "compat_matrix", "hub_index", "package_graph"]

MAX_AGENTS: Final = 1000  # agents one resolution may reach: past it, the graph is refused

Found = dict[str, dict[str, IndexedVersion]]
Index = dict[str, dict[str, dict[str, str]]]


async def hub_index(hub: Hub, names: list[str], *, tenant: str | None) -> Found:
    """Every version ``tenant`` sees of ``names`` and of what they depend on, transitively:
    ``{name: {version: IndexedVersion}}`` (a name the hub lacks maps to ``{}``)."""
    found: Found = {}
    wanted = set(names)
    while wanted:
        if len(found) + len(wanted) > MAX_AGENTS:
            raise PackagingError(f"the dependencies reach more than {MAX_AGENTS} agents: not resolved")
        async with tenant_scope(hub.pool, tenant) as conn:
            rows = await dependency_rows(conn, sorted(wanted))
        for name in wanted:
            found[name] = {}
        for row in rows:
            current = found[row.name].get(row.version)
            if current is None or (current.tenant is None and row.tenant is not None):  # its own wins
                found[row.name][row.version] = row
        reached = {dep for versions in found.values() for v in versions.values() for dep in v.dependencies}
        wanted = reached - set(found)
    return found


def _resolver_index(found: Found) -> Index:
    return {
        name: {v: row.dependencies for v, row in versions.items() if not row.yanked}
        for name, versions in found.items()
    }


async def package_graph(
    hub: Hub, name: str, version: str, dependencies: Mapping[str, str], *, tenant: str | None
) -> dict[str, Any]:
    """``name`` ``version`` (which depends on ``dependencies``) with the versions its
    dependencies resolve to: ``{package, version, nodes, edges, order, levels}``."""
    index = _resolver_index(await hub_index(hub, sorted(dependencies), tenant=tenant))
    index[name] = {version: dict(dependencies)}  # the root as asked (yanked or local, it is the one)
    resolution = resolve(index, dependencies, root=f"{name} {version}")
    versions = {**resolution.versions, name: version}
    edges = {**resolution.dependencies, name: tuple(sorted(dependencies))}
    graph = DependencyGraph.of(edges, versions)
    shape = graph.to_json()  # DependencyCycle, with its path, on a cycle
    for edge in shape["edges"]:
        edge["range"] = index[edge["from"]][versions[edge["from"]]][edge["to"]]
    return {"package": name, "version": version, **shape, "order": graph.order()}


async def compat_matrix(hub: Hub, name: str, *, tenant: str | None) -> dict[str, Any]:
    """For each version of ``name`` the tenant sees (newest first): whether this platform
    is in its range, which versions of each dependency satisfy its range, and whether
    it resolves as a whole (and why not)."""
    found = await hub_index(hub, [name], tenant=tenant)
    index = _resolver_index(found)
    rows = sorted(found[name].values(), key=lambda r: sort_key(parse_version(r.version)), reverse=True)
    return {
        "package": name,
        "platform": platform_version(),
        "versions": [_compat_row(row, found, index) for row in rows],
    }


def _compat_row(row: IndexedVersion, found: Found, index: Index) -> dict[str, Any]:
    deps = {}
    for dep, text in sorted(row.dependencies.items()):
        rng = VersionRange.parse(text)
        live = [v for v, r in found.get(dep, {}).items() if not r.yanked]
        fits = [v for v in live if rng.admits(sort_key(parse_version(v)))]
        deps[dep] = {"range": text, "satisfied_by": sorted(fits, key=lambda v: sort_key(parse_version(v)),
                                                              reverse=True)}  # fmt: skip
    problem = None
    try:
        resolve({**index, row.name: {row.version: row.dependencies}}, row.dependencies,
                root=f"{row.name} {row.version}")  # fmt: skip
    except DependencyConflict as exc:
        problem = str(exc)
    platform_ok = admits_platform(row.platform)
    return {
        "version": row.version,
        "scope": row.tenant or "public",
        "yanked": row.yanked,
        "platform": row.platform,
        "platform_compatible": platform_ok,
        "dependencies": deps,
        "resolves": problem is None,
        "problem": problem,
        "compatible": platform_ok and problem is None,
    }

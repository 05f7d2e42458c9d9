"""A package's agent dependencies against the hub: the graph a version resolves to,
and the compatibility matrix of every version of a package.

Both read the versions the caller sees, following dependencies transitively, one
query per level, and resolve within one scope: the public versions and one
tenant's own, its own build of a version before the public one
(:func:`in_scope`). A tenant's token resolves in its tenant's scope; a token of
every tenant in the scope of the package asked about (a public one: public only).
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

__all__ = ["MAX_AGENTS", "compat_matrix", "hub_index", "in_scope", "package_graph"]

MAX_AGENTS: Final = 1000  # agents one resolution may reach: past it, the graph is refused

Rows = dict[str, list[IndexedVersion]]
Found = dict[str, dict[str, IndexedVersion]]
Index = dict[str, dict[str, dict[str, str]]]


async def hub_index(hub: Hub, names: list[str], *, tenant: str | None) -> Rows:
    """Every version ``tenant`` sees (None: every tenant) of ``names`` and of what they
    depend on, transitively: ``{name: [IndexedVersion]}`` (``[]``: the hub lacks it)."""
    rows: Rows = {}
    wanted = set(names)
    while wanted:
        if len(rows) + len(wanted) > MAX_AGENTS:
            raise PackagingError(f"the dependencies reach more than {MAX_AGENTS} agents: not resolved")
        async with tenant_scope(hub.pool, tenant) as conn:
            fetched = await dependency_rows(conn, sorted(wanted))
        for name in wanted:
            rows[name] = []
        for row in fetched:
            rows[row.name].append(row)
        reached = {dep for versions in rows.values() for v in versions for dep in v.dependencies}
        wanted = reached - set(rows)
    return rows


def in_scope(rows: Rows, scope: str | None) -> Found:
    """What a resolution for ``scope`` may pick: public versions and ``scope``'s own
    (None: public only), its own build of a version before the public one."""
    found: Found = {name: {} for name in rows}
    for name, versions in rows.items():
        for row in versions:
            if row.tenant is not None and row.tenant != scope:
                continue
            current = found[name].get(row.version)
            if current is None or current.tenant is None:
                found[name][row.version] = row
    return found


def _resolver_index(found: Found) -> Index:
    return {
        name: {v: row.dependencies for v, row in versions.items() if not row.yanked}
        for name, versions in found.items()
    }


async def package_graph(
    hub: Hub, name: str, version: str, dependencies: Mapping[str, str], *, tenant: str | None,
    scope: str | None,
) -> dict[str, Any]:  # fmt: skip
    """``name`` ``version`` (which depends on ``dependencies``) with the versions its
    dependencies resolve to, among what ``tenant`` sees and :func:`in_scope` of ``scope``:
    ``{package, version, nodes, edges, order, levels}``."""
    rows = await hub_index(hub, sorted(dependencies), tenant=tenant)
    index = _resolver_index(in_scope(rows, scope))
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
    """For each version of ``name`` the tenant sees (newest first; a tenant's own build
    and the public one of a version are two rows): whether this platform is in its
    range, which versions of each dependency satisfy its range, and whether it
    resolves as a whole (and why not), among the public versions and its tenant's."""
    rows = await hub_index(hub, [name], tenant=tenant)
    ordered = sorted(
        rows[name], key=lambda r: (sort_key(parse_version(r.version)), r.tenant or ""), reverse=True
    )
    scopes = {row.tenant: in_scope(rows, row.tenant) for row in ordered}
    indexes = {tenant: _resolver_index(found) for tenant, found in scopes.items()}
    return {
        "package": name,
        "platform": platform_version(),
        "versions": [_compat_row(row, scopes[row.tenant], indexes[row.tenant]) for row in ordered],
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

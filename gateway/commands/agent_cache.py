"""``agent-factory agent cache ls | clear``: the packages `agent fetch` keeps on this machine.

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module); the cache itself is :mod:`gateway.package_cache`.
"""

from __future__ import annotations

import click

from gateway.commands.agent import agent
from gateway.commands.common import _emit, output_option
from gateway.package_cache import PackageCache

__all__ = ["cache"]


@agent.group("cache")
def cache() -> None:
    """The local cache of fetched packages, one file per SHA-256: $AF_CACHE_DIR, else
    $XDG_CACHE_HOME/agent-factory/packages, else ~/.cache/agent-factory/packages.

    \b
    agent-factory agent cache ls
    agent-factory agent cache clear
    """


@cache.command("ls")
@output_option
def cache_ls(output: str) -> None:
    """Every cached package: name, version, SHA-256, size, when it was fetched."""
    store = PackageCache()
    entries = store.entries()
    if output == "json":
        _emit(output, {"dir": str(store.root), "packages": [e.model_dump(mode="json") for e in entries]})
        return
    click.echo(f"{store.root}: {len(entries)} packages")
    for e in entries:
        click.echo(f"  {e.name:<32}{e.version:<12}{e.sha256[:16]}  {e.size_bytes:>10}  "
                   f"{e.fetched_at:%Y-%m-%d %H:%M}")  # fmt: skip


@cache.command("clear")
@output_option
def cache_clear(output: str) -> None:
    """Delete every cached package (the next fetch downloads again)."""
    store = PackageCache()
    removed = store.clear()
    _emit(output, {"dir": str(store.root), "removed": removed}, [("dir", store.root), ("removed", removed)])

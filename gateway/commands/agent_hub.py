"""``agent-factory agent publish | search | versions | fetch``: packages in the Agent Hub.

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module). They talk to the gateway: publish uploads a ``.glpack`` and follows the
``hub.publish`` operation that checks it (docs/hub.md); fetch downloads one and
checks it against the digest the hub gave before writing it.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click

from agents.packaging import parse_version
from gateway.client import ApiClient
from gateway.commands.agent import agent
from gateway.commands.common import CliError, Ctx, _call, _emit, _run, output_option
from gateway.commands.ops import failed, follow
from gateway.package_cache import PackageCache

__all__ = ["fetch", "publish", "search", "versions"]


@agent.command("publish")
@click.argument("archive", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--public", is_flag=True, help="Every tenant sees it (needs a token of every tenant).")
@click.option(
    "--timeout", type=float, default=600.0, show_default=True, help="Seconds to wait for the checks."
)
@output_option
@click.pass_obj
def publish(obj: Ctx, archive: Path, public: bool, timeout: float, output: str) -> None:
    """Publish ARCHIVE (a .glpack from `agent pack`) to the hub.

    \b
    The hub accepts it once its checks pass, shown as they run:
      the archive (manifest, every checksum, no hostile member), its signature
      as the installation's trust policy asks, its version (higher than the
      one before, and a major bump for a breaking change of its schemas),
      and its own tests, run confined. A refusal says why (exit 1).

    \b
    agent-factory agent publish scope2-electricity-1.4.0.glpack
    agent-factory agent publish scope2-electricity-1.4.0.glpack --public -o json
    """
    data = archive.read_bytes()

    async def upload() -> dict[str, Any]:
        async with obj.client(timeout=120.0) as api:
            query = "?public=true" if public else ""
            accepted: dict[str, Any] = await api.request(
                "POST", f"/api/v1/hub/packages{query}", data=data, content_type="application/gzip",
                headers={"Idempotency-Key": f"publish-{uuid.uuid4().hex}"},  # retried, it is one publish
            )  # fmt: skip
            return accepted

    op = follow(obj, _run(upload()), timeout, show=output != "json")
    if op["status"] != "succeeded":
        raise failed(op)
    package = op["result"]
    _emit(output, package, _rows(package))


@agent.command("search")
@click.argument("query", default="")
@click.option("--tag", "tags", multiple=True, help="Only packages with this tag (repeat: all of them).")
@click.option("--limit", type=click.IntRange(1, 200), default=20, show_default=True)
@output_option
@click.pass_obj
def search(obj: Ctx, query: str, tags: tuple[str, ...], limit: int, output: str) -> None:
    """Packages whose name or description matches QUERY (words, or a name prefix):
    each one's newest version, best match first.

    \b
    agent-factory agent search electricity
    agent-factory agent search --tag ghg --tag scope-2 -o json
    """
    params = {"q": query, "limit": str(limit), **({"tags": ",".join(tags)} if tags else {})}
    _show_packages(obj, f"/api/v1/hub/packages?{urlencode(params)}", output)


@agent.command("versions")
@click.argument("name")
@output_option
@click.pass_obj
def versions(obj: Ctx, name: str, output: str) -> None:
    """Every published version of package NAME, newest first (yanked ones marked)."""
    _show_packages(obj, f"/api/v1/hub/packages/{name}", output)


@agent.command("fetch")
@click.argument("ref", metavar="NAME[@VERSION]")
@click.option("-f", "--file", "target", type=click.Path(dir_okay=False, path_type=Path),
              help="Write it here [default: ./<name>-<version>.glpack].")  # fmt: skip
@click.option("--no-cache", is_flag=True, help="Download it even if the local cache has it.")
@output_option
@click.pass_obj
def fetch(obj: Ctx, ref: str, target: Path | None, no_cache: bool, output: str) -> None:
    """Download a package from the hub (the highest version without @VERSION), checked
    against the SHA-256 the hub gave before it is written. A copy in the local cache
    with that SHA-256 is used instead (see `agent cache`). Check it in full, and
    install it on this machine, with `agent verify`."""
    name, _, version = ref.partition("@")
    cache = PackageCache()

    async def download() -> tuple[dict[str, Any], bytes, bool]:
        async with obj.client(timeout=300.0) as api:
            chosen = version or await _newest(api, name)
            package: dict[str, Any] = await api.request("GET", f"/api/v1/hub/packages/{name}/{chosen}")
            cached = None if no_cache else cache.get(package["digest"])  # checked against the digest
            if cached is not None:
                return package, cached, True
            data, headers = await api.download(f"/api/v1/hub/packages/{name}/{chosen}/archive")
            return package, _checked(data, headers.get("X-Package-Sha256", ""), package), False

    package, data, from_cache = _run(download())
    if not from_cache:
        try:
            cache.put(package["name"], package["version"], data)
        except OSError as exc:  # a cache that cannot be written costs the next download, not this one
            click.echo(f"warning: not cached in {cache.root}: {exc}", err=True)
    path = target or Path(f"{package['name']}-{package['version']}.glpack")
    path.write_bytes(data)
    shown = {**package, "file": str(path), "from_cache": from_cache}
    _emit(output, shown, [*_rows(package), ("file", path), ("from cache", from_cache)])


def _show_packages(obj: Ctx, path: str, output: str) -> None:
    """GET a list of packages: as JSON, or a table."""
    found = _run(_call(obj, "GET", path))
    if output == "json":
        _emit(output, found)
        return
    _table(found["packages"])


async def _newest(api: ApiClient, name: str) -> str:
    """The highest version that is not yanked (not the last published: a backport is not newer)."""
    found = (await api.request("GET", f"/api/v1/hub/packages/{name}"))["packages"]
    live = [p for p in found if not p["yanked_at"]]
    if not live:
        raise CliError(f"{name} has no version that is not yanked: name one with {name}@VERSION")
    return str(max(live, key=lambda p: parse_version(p["version"]))["version"])


def _checked(data: bytes, said: str, package: dict[str, Any]) -> bytes:
    got = hashlib.sha256(data).hexdigest()
    if got != package["digest"] or (said and said != got):
        raise CliError(f"the download of {package['name']} {package['version']} has SHA-256 {got}, not the "
                       f"hub's {package['digest']}: not written")  # fmt: skip
    return data


def _rows(package: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("name", package["name"]), ("version", package["version"]),
        ("scope", package["tenant"] or "public"), ("sha256", package["digest"]),
        ("size_bytes", package["size_bytes"]), ("signed_by", package["signature_key"] or "unsigned"),
        ("tests", (package.get("manifest") or {}).get("tests", {}).get("summary", "")),
    ]  # fmt: skip


def _table(packages: list[dict[str, Any]]) -> None:
    if not packages:
        click.echo("no packages")
        return
    click.echo(f"{'NAME':<32}{'VERSION':<12}{'SCOPE':<14}{'DOWNLOADS':>10}  DESCRIPTION")
    for p in packages:
        version = p["version"] + (" (yanked)" if p["yanked_at"] else "")
        click.echo(f"{p['name']:<32}{version:<12}{(p['tenant'] or 'public'):<14}{p['downloads']:>10}  "
                   f"{p['description'][:60]}")  # fmt: skip

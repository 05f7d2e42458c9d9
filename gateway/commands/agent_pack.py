"""``agent-factory agent pack | keygen | verify | inspect-pack``: agent packages on this machine.

Registered on the ``agent`` group (:mod:`gateway.commands.agent` imports this
module). None of them needs a gateway: they read and write local files
(agents/packaging; docs/packaging.md). ``-o`` is the CLI-wide output format
(``-o json``), so the archive's path is ``-f/--file``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from agents.packaging.archive import pack as pack_tree
from agents.packaging.errors import PackagingError
from agents.packaging.extract import InstalledPack, verify
from agents.packaging.graph import DependencyGraph
from agents.packaging.signing import TrustPolicy, key_id, keygen, load_private_key, load_public_key
from gateway.commands.agent import agent
from gateway.commands.common import CliError, _emit, output_option

__all__ = ["inspect_pack", "keygen_command", "pack", "verify_command"]

_EXISTING_FILE = click.Path(exists=True, dir_okay=False, path_type=Path)


@contextmanager
def _one_line_errors() -> Iterator[None]:
    """A packaging error is the command's one-line message (exit 1), never a traceback."""
    try:
        yield
    except PackagingError as exc:
        raise CliError(str(exc)) from None


@agent.command("pack")
@click.argument("directory", default=".", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option(
    "--sign", "key", type=_EXISTING_FILE, help="Sign the manifest with this private key (see keygen)."
)
@click.option(
    "-f", "--file", "target", type=click.Path(dir_okay=False, path_type=Path),
    help="Write the archive here [default: ./<name>-<version>.glpack].",
)  # fmt: skip
@click.option(
    "--derive-schemas", is_flag=True,
    help="Render the schemas agent.pack.yaml does not name from the entry point's Input/Output models "
    "(imports the agent's module in a child Python) as schemas/input.json and schemas/output.json.",
)  # fmt: skip
@output_option
def pack(directory: Path, key: Path | None, target: Path | None, derive_schemas: bool, output: str) -> None:
    """Pack DIRECTORY (default: .), which holds agent.pack.yaml, into a .glpack.

    \b
    The same files always give the same bytes (sorted members, fixed times and
    owners, 0644/0755 modes); MANIFEST.json lists every file's SHA-256.
    Caches, VCS folders, virtualenvs and *.key files are left out; a symlink
    is refused. Example:
      agent-factory agent pack ./scope2 --sign release.key -f dist/scope2.glpack
    """
    with _one_line_errors():
        signing_key = load_private_key(key) if key is not None else None
        written = pack_tree(directory, signing_key=signing_key, output=target, derive_schemas=derive_schemas)
        result = verify(written, TrustPolicy())
    data = {
        "file": str(written),
        "name": result.manifest.name,
        "version": result.manifest.version,
        "files": len(result.manifest.files),
        "bytes": written.stat().st_size,
        "signed_by": result.signer.key_id if result.signer else None,
    }
    if output == "json":
        _emit(output, data)
        return
    signed = f", signed by {data['signed_by']}" if data["signed_by"] else ", unsigned"
    click.echo(
        f"{written}: {data['name']} {data['version']}, {data['files']} files, {data['bytes']} bytes{signed}"
    )


@agent.command("keygen")
@click.argument("key_file", default="signing.key", type=click.Path(dir_okay=False, path_type=Path))
@output_option
def keygen_command(key_file: Path, output: str) -> None:
    """Make an Ed25519 key pair to sign packs: KEY_FILE (default signing.key, mode
    0600, never overwritten) and its public half beside it (.pub), to give to
    whoever installs your packs (verify --trust)."""
    with _one_line_errors():
        private, public = keygen(key_file)
        ident = key_id(load_public_key(public))
    if output == "json":
        _emit(output, {"private_key": str(private), "public_key": str(public), "key_id": ident})
        return
    click.echo(f"key {ident}: private {private} (keep it secret), public {public}")


@agent.command("verify")
@click.argument("archive", type=_EXISTING_FILE)
@click.option(
    "--trust", "trusted", multiple=True, type=_EXISTING_FILE,
    help="A public key (.pub) you trust; repeatable. With one, a signature by a trusted key is required.",
)  # fmt: skip
@click.option("--require-signature", is_flag=True, help="Refuse an unsigned pack even without --trust.")
@output_option
def verify_command(archive: Path, trusted: tuple[Path, ...], require_signature: bool, output: str) -> None:
    """Check ARCHIVE as an install would, without installing it: every checksum,
    the signature, and no link, device, path outside the pack, oversized member
    or archive bomb. Exit 1, with the reason, when any check fails.

    \b
      agent-factory agent verify scope2-electricity-1.4.0.glpack --trust release.pub
    """
    with _one_line_errors():
        keys = [load_public_key(path) for path in trusted]
        policy = TrustPolicy.of(keys, require_signature=require_signature or bool(keys))
        result = verify(archive, policy)
    data = _summary(result)
    if output == "json":
        _emit(output, {"ok": True, **data})
        return
    signer = data["signer"]
    said = (
        "unsigned"
        if signer is None
        else f"signed by {signer['key_id']} ({'trusted' if signer['trusted'] else 'not a trusted key'})"
    )
    click.echo(f"ok: {data['name']} {data['version']}, {data['files']} files verified, {said}")


@agent.command("inspect-pack")
@click.argument("archive", type=_EXISTING_FILE)
@click.option("--deps", is_flag=True, help="Print the pack's dependency graph instead (see --format).")
@click.option(
    "--format", "fmt", type=click.Choice(["dot", "json"]), default="dot", show_default=True,
    help="The graph's format with --deps: Graphviz (dot -Tsvg) or JSON.",
)  # fmt: skip
@output_option
def inspect_pack(archive: Path, deps: bool, fmt: str, output: str) -> None:
    """What ARCHIVE holds, once verified: name, version, type, entry point,
    dependencies, requirements, resources, signer.

    \b
      agent-factory agent inspect-pack scope2-electricity-1.4.0.glpack
      agent-factory agent inspect-pack scope2-electricity-1.4.0.glpack --deps --format dot | dot -Tsvg
    """
    with _one_line_errors():
        result = verify(archive, TrustPolicy())
    spec = result.spec
    if deps:
        graph = DependencyGraph.from_specs([spec])
        if fmt == "json":
            _emit("json", {**graph.to_json(), "ranges": dict(spec.dependencies)})
        else:
            click.echo(graph.to_dot(), nl=False)
        return
    data = {
        **_summary(result),
        "spec": spec.model_dump(mode="json"),
    }
    if output == "json":
        _emit(output, data)
        return
    rows: list[tuple[str, Any]] = [
        ("name", f"{spec.name} {spec.version} ({spec.type})"),
        ("entry point", spec.entry_point),
        ("description", spec.description or "-"),
        ("depends on", ", ".join(f"{n} {r}" for n, r in spec.dependencies.items()) or "-"),
        ("requires", ", ".join(spec.requirements) or "-"),
        (
            "resources",
            f"{spec.resources.cpu:g} cpu, {spec.resources.memory_mb} MB, {spec.resources.timeout_s:g} s",
        ),
        ("execution", f"{spec.execution_mode}, network {'on' if spec.network else 'off'}"),
        ("files", data["files"]),
        ("signed by", data["signer"]["key_id"] if data["signer"] else "unsigned"),
    ]
    _emit(output, data, rows)


def _summary(result: InstalledPack) -> dict[str, Any]:
    signer = result.signer
    return {
        "name": result.manifest.name,
        "version": result.manifest.version,
        "files": len(result.manifest.files),
        "signer": None if signer is None else {"key_id": signer.key_id, "trusted": signer.trusted},
    }

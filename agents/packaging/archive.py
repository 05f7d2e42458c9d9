"""``pack``: an agent's directory as a reproducible ``.glpack`` (a tar.gz).

The same files give the same bytes, whoever packs them, wherever and whenever:
members are sorted, mtime/uid/gid/owner names are fixed, modes are 0644 or
0755 (executable), the gzip header has no time nor file name, and
``MANIFEST.json`` (then ``SIGNATURE``, when signed) comes first. Ed25519
signatures are deterministic, so a signed pack is reproducible too.

Only regular files are packed: a symlink in the tree is refused rather than
followed (it could point anywhere on the packing machine).
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import os
import stat
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agents.packaging.derive import DERIVED_INPUT, DERIVED_OUTPUT, schema_bytes
from agents.packaging.derive import derive_schemas as derive_schemas_of
from agents.packaging.errors import PackagingError, PackTooLarge
from agents.packaging.manifest import MANIFEST, SIGNATURE, FileEntry, Manifest
from agents.packaging.signing import sign
from agents.packaging.spec import SPEC_FILE, PackSpec, load_spec

__all__ = ["DEFAULT_IGNORE", "MAX_PACK_BYTES", "SUFFIX", "pack", "pack_bytes"]

SUFFIX: Final = ".glpack"
MAX_PACK_BYTES: Final = 50 * 1024 * 1024
#: Names (fnmatch patterns, matched against each path component) never packed.
DEFAULT_IGNORE: Final = (
    "__pycache__", "*.pyc", "*.pyo", ".git", ".hg", ".svn", ".venv", "venv", ".tox", ".nox",
    ".mypy_cache", ".pytest_cache", ".ruff_cache", "*.egg-info", ".DS_Store", "*.glpack", "*.key",
    "dist", "build",
    ".agent-factory",  # the embedded mode's data dir (its database, NATS store, token): `up` run here
)  # fmt: skip
_MTIME: Final = 0
_CHUNK: Final = 1 << 16


def pack(
    tree: Path,
    out_dir: Path | None = None,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    max_bytes: int = MAX_PACK_BYTES,
    output: Path | None = None,
    derive_schemas: bool = False,
) -> Path:
    """Write ``<name>-<version>.glpack`` of ``tree`` into ``out_dir`` (default: the
    current directory), or to ``output``; the file appears whole or not at all."""
    data, spec = pack_bytes(
        tree, signing_key=signing_key, ignore=ignore, max_bytes=max_bytes, derive_schemas=derive_schemas
    )
    target = output or (out_dir or Path.cwd()) / f"{spec.name}-{spec.version}{SUFFIX}"
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def pack_bytes(
    tree: Path,
    *,
    signing_key: Ed25519PrivateKey | None = None,
    ignore: Iterable[str] = DEFAULT_IGNORE,
    max_bytes: int = MAX_PACK_BYTES,
    derive_schemas: bool = False,
) -> tuple[bytes, PackSpec]:
    """The archive's bytes and the spec it was built from. ``derive_schemas``: render the
    schemas the spec does not name from the entry point's models (:mod:`agents.packaging.derive`)."""
    tree = tree.resolve()
    spec = load_spec(tree)
    files: list[tuple[str, Path | bytes]] = list(_collect(tree, tuple(ignore)))
    names = {rel for rel, _ in files}
    for declared in (spec.input_schema, spec.output_schema):
        if declared is not None and declared not in names:
            raise PackagingError(f"{tree / SPEC_FILE}: schema {declared!r} is not a file of the pack")
    if derive_schemas and (spec.input_schema is None or spec.output_schema is None):
        files.extend(_derived(tree, spec, names))
    files.sort(key=lambda item: item[0])
    total = sum(len(f) if isinstance(f, bytes) else f.stat().st_size for _, f in files)
    if total > max_bytes:
        raise PackTooLarge(f"{tree}: {total} bytes of files, over the {max_bytes}-byte cap of a pack")
    entries = {rel: _entry(f) for rel, f in files}
    manifest = Manifest(name=spec.name, version=spec.version, files=entries).to_bytes()

    raw = io.BytesIO()
    with (
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=_MTIME, compresslevel=9) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        _add(tar, MANIFEST, io.BytesIO(manifest), len(manifest), executable=False)
        if signing_key is not None:
            signature = sign(manifest, signing_key)
            _add(tar, SIGNATURE, io.BytesIO(signature), len(signature), executable=False)
        for rel, source in files:
            if isinstance(source, bytes):
                _add(tar, rel, io.BytesIO(source), entries[rel].size, executable=False)
                continue
            with source.open("rb") as fh:
                _add(tar, rel, fh, entries[rel].size, executable=entries[rel].executable)
    return raw.getvalue(), spec


def _derived(tree: Path, spec: PackSpec, names: set[str]) -> Iterator[tuple[str, bytes]]:
    input_schema, output_schema = derive_schemas_of(tree, spec.entry_point)
    for declared, path, schema in (
        (spec.input_schema, DERIVED_INPUT, input_schema),
        (spec.output_schema, DERIVED_OUTPUT, output_schema),
    ):
        if declared is None:
            if path in names:
                raise PackagingError(
                    f"{path} exists but {SPEC_FILE} does not name it: name it, or remove it to derive it"
                )
            yield path, schema_bytes(schema)


def _collect(tree: Path, ignore: tuple[str, ...]) -> Iterator[tuple[str, Path]]:
    for dirpath, dirnames, filenames in os.walk(tree):
        here = Path(dirpath)
        dirnames[:] = [d for d in dirnames if not _ignored(d, ignore)]
        for name in (*dirnames, *filenames):
            path = here / name
            rel = path.relative_to(tree).as_posix()
            if path.is_symlink():
                raise PackagingError(f"{rel} is a symlink: a pack holds regular files only")
            if name in dirnames:
                continue
            if _ignored(name, ignore):
                continue
            if not stat.S_ISREG(path.lstat().st_mode):
                raise PackagingError(f"{rel} is not a regular file: a pack holds regular files only")
            if rel in (MANIFEST, SIGNATURE):
                raise PackagingError(f"{rel} is a name pack writes itself: rename the file")
            yield rel, path


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore)


def _entry(source: Path | bytes) -> FileEntry:
    if isinstance(source, bytes):
        return FileEntry(sha256=hashlib.sha256(source).hexdigest(), size=len(source))
    digest = hashlib.sha256()
    size = 0
    with source.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(sha256=digest.hexdigest(), size=size, executable=bool(source.stat().st_mode & 0o111))


def _add(tar: tarfile.TarFile, name: str, content: io.BufferedIOBase | io.BytesIO, size: int,
         *, executable: bool) -> None:  # fmt: skip
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, _MTIME, 0o755 if executable else 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, content)

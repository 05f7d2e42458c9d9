"""The CLI's cache of packages fetched from the hub: one file per archive, named by its SHA-256.

``$AF_CACHE_DIR``, else ``$XDG_CACHE_HOME/agent-factory/packages``, else
``~/.cache/agent-factory/packages``, holds ``<sha256>.glpack`` files and
``index.json`` (name, version, sha256, size, fetched_at of each). A file is
used only once its bytes hash to the digest it is named by (the hub's, asked
first); one that does not is deleted and fetched again. Files and the index are
written to a temporary name and renamed, so a reader never sees half a file. Two
processes writing at once may each keep their own index entry (the last rename
wins): an entry missing from the index costs a download, never wrong bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from pydantic import BaseModel

__all__ = ["CachedPackage", "PackageCache", "cache_dir"]

INDEX: Final = "index.json"
SUFFIX: Final = ".glpack"


def cache_dir(env: Mapping[str, str] | None = None) -> Path:
    """Where the cache is (see the module docstring); ``env``: default ``os.environ``."""
    env = os.environ if env is None else env
    if env.get("AF_CACHE_DIR"):
        return Path(env["AF_CACHE_DIR"])
    base = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "agent-factory" / "packages"


class CachedPackage(BaseModel):
    name: str
    version: str
    sha256: str
    size_bytes: int
    fetched_at: datetime


class PackageCache:
    """The cache in directory ``root`` (created when something is first written)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_dir()

    def path(self, sha256: str) -> Path:
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            raise ValueError(f"{sha256[:80]!r} is not a SHA-256 in hex")
        return self.root / f"{sha256}{SUFFIX}"

    def get(self, sha256: str) -> bytes | None:
        """The archive whose digest is ``sha256``, if it is here and intact; a damaged
        copy is deleted (with its index entry) and None returned."""
        path = self.path(sha256)
        try:
            data = path.read_bytes()
        except OSError:  # not there, or not readable: downloaded again
            return None
        if hashlib.sha256(data).hexdigest() == sha256:
            return data
        self._forget(sha256)
        return None

    def put(self, name: str, version: str, data: bytes) -> CachedPackage:
        """Keep ``data`` as ``name`` ``version``, under its own digest."""
        sha256 = hashlib.sha256(data).hexdigest()
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.path(sha256), data)
        entry = CachedPackage(name=name, version=version, sha256=sha256, size_bytes=len(data),
                              fetched_at=datetime.now(UTC))  # fmt: skip
        entries = {e.sha256: e for e in self.entries()}
        entries[sha256] = entry
        self._save(list(entries.values()))
        return entry

    def entries(self) -> list[CachedPackage]:
        """What the index lists of the files that are here, by name then version."""
        try:
            raw = json.loads((self.root / INDEX).read_text())
            listed = [CachedPackage.model_validate(e) for e in raw.get("packages", [])]
        except (OSError, ValueError, AttributeError):  # missing or unreadable: the files still serve
            return []
        present = [e for e in listed if self.path(e.sha256).is_file()]
        return sorted(present, key=lambda e: (e.name, e.version, e.sha256))

    def clear(self) -> int:
        """Delete every cached archive and the index; how many archives there were."""
        removed = 0
        for path in self.root.glob(f"*{SUFFIX}"):
            path.unlink(missing_ok=True)
            removed += 1
        (self.root / INDEX).unlink(missing_ok=True)
        return removed

    def _forget(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)
        self._save([e for e in self.entries() if e.sha256 != sha256])

    def _save(self, entries: list[CachedPackage]) -> None:
        body = {"packages": [e.model_dump(mode="json") for e in entries]}
        self.root.mkdir(parents=True, exist_ok=True)
        _write_atomically(self.root / INDEX, json.dumps(body, indent=2).encode())


def _write_atomically(path: Path, data: bytes) -> None:
    """A temporary file beside ``path``, flushed, then renamed over it."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise

"""``verify_and_extract``: a ``.glpack`` checked in full, then installed atomically.

One streaming pass over the archive, refusing at the first problem:

* the archive over ``max_archive_bytes``; more than ``max_total_bytes``
  decompressed, or more than ``max_ratio`` times the archive's size (counted on
  the bytes actually inflated, not on the headers' sizes): an archive bomb;
* ``MANIFEST.json`` not first; the signature (``SIGNATURE``, second) bad, or
  missing/untrusted when the policy requires one;
* a member that is not a regular file: every link (symbolic or hard, wherever it
  points), directory entry, device, fifo or sparse file;
* a name that is absolute, has ``..``, ``.``, empty or backslash parts;
  a member twice; more than ``max_members``; one over ``max_member_bytes``;
* a member not in the manifest, a checksum or size that differs, a manifest
  file missing from the archive; an ``agent.pack.yaml`` that does not parse or
  names another name/version than the manifest.

Members are written by tarfile's ``data`` filter into a staging directory beside
the destination, which is renamed to ``<dest_root>/<name>/<version>`` once all
holds: a reader never sees half a pack. A version is immutable: installing the
same pack again is a no-op, other content under an installed version is refused.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Final, cast

from agents.packaging.errors import ArchiveRefused, PackagingError, PackSpecError, VersionExists
from agents.packaging.manifest import MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE, Manifest
from agents.packaging.signing import MAX_SIGNATURE_BYTES, Signer, TrustPolicy, check_signature
from agents.packaging.spec import SPEC_FILE, PackSpec, load_spec

__all__ = ["ExtractLimits", "InstalledPack", "verify", "verify_and_extract"]

_CHUNK: Final = 1 << 16
_RATIO_FLOOR: Final = 1 << 20  # tar's own padding makes tiny archives look like bombs


@dataclass(frozen=True)
class ExtractLimits:
    max_archive_bytes: int = 50 * 1024 * 1024
    max_total_bytes: int = 200 * 1024 * 1024
    max_member_bytes: int = 50 * 1024 * 1024
    max_members: int = 10_000
    max_ratio: float = 100.0


@dataclass(frozen=True)
class InstalledPack:
    path: Path
    spec: PackSpec
    manifest: Manifest
    signer: Signer | None
    #: False when this exact pack was already installed there
    created: bool


def verify_and_extract(
    archive: Path, dest_root: Path, policy: TrustPolicy, limits: ExtractLimits = ExtractLimits()
) -> InstalledPack:
    """Check ``archive`` in full and install it as ``<dest_root>/<name>/<version>``."""
    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest_root, prefix=".staging-"))
    try:
        manifest, manifest_bytes, signer = _extract_checked(archive, staging, policy, limits)
        spec = _spec_matching(staging, manifest)
        staging.chmod(0o755)  # mkdtemp's 0700: sandboxed runs read the code under another uid
        target = dest_root / manifest.name / manifest.version
        target.parent.mkdir(exist_ok=True)
        try:
            os.rename(staging, target)
        except OSError:  # it exists (rename onto a non-empty directory fails)
            if _installed_manifest(target) != manifest_bytes:
                raise VersionExists(
                    f"{manifest.name} {manifest.version} is already installed at {target} with other "
                    "content: a version is immutable, publish a new one"
                ) from None
            return InstalledPack(target, spec, manifest, signer, created=False)
        return InstalledPack(target, spec, manifest, signer, created=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def verify(archive: Path, policy: TrustPolicy, limits: ExtractLimits = ExtractLimits()) -> InstalledPack:
    """Every check of :func:`verify_and_extract`, into a temporary directory removed after."""
    with tempfile.TemporaryDirectory(prefix="glpack-verify-") as scratch:
        installed = verify_and_extract(archive, Path(scratch), policy, limits)
        return InstalledPack(archive, installed.spec, installed.manifest, installed.signer, created=False)


def _installed_manifest(target: Path) -> bytes | None:
    try:
        return (target / MANIFEST).read_bytes()
    except OSError:
        return None


def _spec_matching(staging: Path, manifest: Manifest) -> PackSpec:
    if SPEC_FILE not in manifest.files:
        raise ArchiveRefused(f"the pack has no {SPEC_FILE}")
    try:
        spec = load_spec(staging)
    except PackSpecError as exc:
        raise ArchiveRefused(f"the pack's {exc}") from None
    if (spec.name, spec.version) != (manifest.name, manifest.version):
        raise ArchiveRefused(
            f"{SPEC_FILE} says {spec.name} {spec.version}, the manifest {manifest.name} {manifest.version}"
        )
    return spec


def _extract_checked(
    archive: Path, staging: Path, policy: TrustPolicy, limits: ExtractLimits
) -> tuple[Manifest, bytes, Signer | None]:
    try:
        size = archive.stat().st_size
        raw = archive.open("rb")
    except OSError as exc:
        raise PackagingError(f"cannot read {archive}: {exc.strerror}") from None
    if size > limits.max_archive_bytes:
        raw.close()
        raise ArchiveRefused(f"{archive}: {size} bytes, over the {limits.max_archive_bytes}-byte cap")
    cap = min(limits.max_total_bytes, max(int(size * limits.max_ratio), _RATIO_FLOOR))
    with raw, _Inflated(raw, cap, archive) as stream:
        try:
            with tarfile.open(fileobj=cast(IO[bytes], stream), mode="r|") as tar:
                return _walk(tar, staging, policy, limits)
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ArchiveRefused(f"{archive} is not a readable .glpack (tar.gz): {exc}") from None


def _walk(
    tar: tarfile.TarFile, staging: Path, policy: TrustPolicy, limits: ExtractLimits
) -> tuple[Manifest, bytes, Signer | None]:
    members = iter(tar)
    first = next(members, None)
    if first is None or first.name != MANIFEST or not first.isreg():
        raise ArchiveRefused(
            f"{MANIFEST} must be the first member: not a pack made by `agent-factory agent pack`"
        )
    manifest_bytes = _small(tar, first, MAX_MANIFEST_BYTES)
    manifest = Manifest.from_bytes(manifest_bytes)
    if len(manifest.files) > limits.max_members:
        raise ArchiveRefused(
            f"the manifest lists {len(manifest.files)} files, over the cap of {limits.max_members}"
        )
    for name in manifest.files:
        _check_name(name)

    member = next(members, None)
    signature = None
    if member is not None and member.name == SIGNATURE:
        signature = _small(tar, member, MAX_SIGNATURE_BYTES)
        member = next(members, None)
    signer = check_signature(manifest_bytes, signature, policy)

    (staging / MANIFEST).write_bytes(manifest_bytes)
    if signature is not None:
        (staging / SIGNATURE).write_bytes(signature)
    seen: set[str] = set()
    while member is not None:
        _check_member(member, manifest, seen, limits)
        try:
            tar.extract(member, staging, filter="data")
        except OSError as exc:  # e.g. "a" then "a/b.py": a file where a directory must be
            raise ArchiveRefused(f"member {member.name!r} cannot be written: {exc.strerror}") from None
        written = staging / member.name
        _check_content(written, member.name, manifest)
        # The modes installed are the manifest's (the signed ones), whatever the header said.
        written.chmod(0o755 if manifest.files[member.name].executable else 0o644)
        seen.add(member.name)
        member = next(members, None)
    missing = sorted(set(manifest.files) - seen)
    if missing:
        raise ArchiveRefused(f"files of the manifest missing from the archive: {', '.join(missing[:10])}")
    return manifest, manifest_bytes, signer


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo, cap: int) -> bytes:
    if not member.isreg() or member.size > cap:
        raise ArchiveRefused(f"{member.name}: not a regular file of at most {cap} bytes")
    fh = tar.extractfile(member)
    assert fh is not None  # a regular file
    return fh.read()


def _check_name(name: str) -> None:
    pure = PurePosixPath(name)
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or "\x00" in name
        or len(name) > 1024
        or any(part in ("", ".", "..") for part in name.split("/"))
        or (len(pure.parts[0]) == 2 and pure.parts[0][1] == ":")  # C:
    ):
        raise ArchiveRefused(f"member {name!r}: not a plain relative path inside the pack")
    if name in (MANIFEST, SIGNATURE):
        raise ArchiveRefused(f"member {name!r} appears twice")


def _check_member(member: tarfile.TarInfo, manifest: Manifest, seen: set[str], limits: ExtractLimits) -> None:
    name = member.name
    _check_name(name)
    if member.issym() or member.islnk():
        raise ArchiveRefused(
            f"member {name!r} is a link (to {member.linkname!r}): packs hold regular files only"
        )
    if member.issparse() or not member.isreg():
        kind = (
            "a directory"
            if member.isdir()
            else "a device or fifo"
            if member.isdev()
            else "not a regular file"
        )
        raise ArchiveRefused(f"member {name!r} is {kind}: packs hold regular files only")
    if name in seen:
        raise ArchiveRefused(f"member {name!r} appears twice")
    if len(seen) >= limits.max_members:
        raise ArchiveRefused(f"more than {limits.max_members} members")
    if member.size > limits.max_member_bytes:
        raise ArchiveRefused(
            f"member {name!r}: {member.size} bytes, over the {limits.max_member_bytes}-byte cap"
        )
    entry = manifest.files.get(name)
    if entry is None:
        raise ArchiveRefused(f"member {name!r} is not in the manifest")
    if entry.size != member.size:
        raise ArchiveRefused(f"member {name!r}: {member.size} bytes, the manifest says {entry.size}")


def _check_content(path: Path, name: str, manifest: Manifest) -> None:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != manifest.files[name].sha256:
        raise ArchiveRefused(f"member {name!r}: its SHA-256 differs from the manifest's")


class _Inflated:
    """A gzip stream that refuses to inflate more than ``cap`` bytes in all."""

    def __init__(self, raw: IO[bytes], cap: int, archive: Path) -> None:
        self._gzip = gzip.GzipFile(fileobj=raw, mode="rb")
        self._cap, self._archive, self._read = cap, archive, 0

    def read(self, size: int = -1) -> bytes:
        want = self._cap + 1 - self._read if size < 0 else min(size, self._cap + 1 - self._read)
        data = self._gzip.read(max(want, 1))
        self._read += len(data)
        if self._read > self._cap:
            raise ArchiveRefused(
                f"{self._archive} inflates past {self._cap} bytes (size or compression-ratio cap): "
                "refused as an archive bomb"
            )
        return data

    def __enter__(self) -> _Inflated:
        return self

    def __exit__(self, *exc: object) -> None:
        self._gzip.close()

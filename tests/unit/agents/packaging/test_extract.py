"""verify_and_extract: a good pack installs atomically; each hostile shape is refused, nothing installed."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.packaging.archive import pack, pack_bytes
from agents.packaging.errors import ArchiveRefused, SignatureRefused, VersionExists
from agents.packaging.extract import ExtractLimits, verify, verify_and_extract
from agents.packaging.signing import TrustPolicies, TrustPolicy, keygen, load_private_key, load_public_key
from tests.unit.agents.packaging.conftest import PACK_YAML

OPEN = TrustPolicy()
SPEC = PACK_YAML.replace("input_schema: schemas/input.json\n", "").encode()


def _manifest(files: dict[str, bytes], **extra: object) -> bytes:
    entries = {
        n: {"sha256": hashlib.sha256(b).hexdigest(), "size": len(b), "executable": False}
        for n, b in files.items()
    }
    body = {"format": 1, "name": "scope2-electricity", "version": "1.4.0", "files": entries, **extra}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                tar.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                tar.addfile(info, io.BytesIO(m[1]))
    return raw.getvalue()


def _hostile(
    tmp_path: Path, members: list[tarfile.TarInfo | tuple[str, bytes]], manifest: bytes | None = None
) -> Path:
    regular = {"agent.pack.yaml": SPEC, **{m[0]: m[1] for m in members if isinstance(m, tuple)}}
    archive = tmp_path / "hostile.glpack"
    archive.write_bytes(
        _tar([("MANIFEST.json", manifest or _manifest(regular)), ("agent.pack.yaml", SPEC), *members])
    )
    return archive


def _refused(
    archive: Path,
    dest: Path,
    match: str,
    policy: TrustPolicy = OPEN,
    error: type[ArchiveRefused] = ArchiveRefused,
    **limits: int,
) -> None:
    with pytest.raises(error, match=match):
        verify_and_extract(archive, dest, policy, ExtractLimits(**limits))  # type: ignore[arg-type]
    assert (
        [p.name for p in dest.iterdir()] == [] if dest.exists() else True
    )  # no staging left, nothing installed


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


# --- a good pack


def test_a_good_pack_installs_under_name_and_version(tree: Path, tmp_path: Path) -> None:
    installed = verify_and_extract(pack(tree, tmp_path), tmp_path / "agents", OPEN)
    assert installed.path == tmp_path / "agents" / "scope2-electricity" / "1.4.0" and installed.created
    assert (installed.path / "scope2" / "agent.py").read_text().startswith("FACTOR")
    assert (installed.path / "run.sh").stat().st_mode & 0o100
    assert (installed.path / "MANIFEST.json").exists() and installed.signer is None
    assert installed.path.stat().st_mode & 0o777 == 0o755
    assert installed.spec.entry_point == "scope2.agent:PurchasedElectricity"
    assert sorted(p.name for p in (tmp_path / "agents").iterdir()) == ["scope2-electricity"]  # no staging


def test_installing_the_same_pack_again_is_a_no_op(tree: Path, tmp_path: Path) -> None:
    archive = pack(tree, tmp_path)
    verify_and_extract(archive, tmp_path / "agents", OPEN)
    assert not verify_and_extract(archive, tmp_path / "agents", OPEN).created


def test_other_content_under_an_installed_version_is_refused(tree: Path, tmp_path: Path) -> None:
    verify_and_extract(pack(tree, tmp_path), tmp_path / "agents", OPEN)
    (tree / "scope2" / "agent.py").write_text("FACTOR = 1.0\n")
    with pytest.raises(VersionExists, match=r"scope2-electricity 1.4.0 is already installed"):
        verify_and_extract(pack(tree, tmp_path / "new"), tmp_path / "agents", OPEN)
    installed = tmp_path / "agents" / "scope2-electricity" / "1.4.0" / "scope2" / "agent.py"
    assert installed.read_text().startswith("FACTOR = 0.233")


def test_verify_checks_everything_and_leaves_nothing(tree: Path, tmp_path: Path) -> None:
    result = verify(pack(tree, tmp_path), OPEN)
    assert result.manifest.name == "scope2-electricity" and not result.created


# --- signatures and trust


def test_a_signed_pack_from_a_trusted_key_installs_with_its_signer(tree: Path, tmp_path: Path) -> None:
    key_path, pub_path = keygen(tmp_path / "release.key")
    assert key_path.stat().st_mode & 0o777 == 0o600
    archive = pack(tree, tmp_path, signing_key=load_private_key(key_path))
    policy = TrustPolicy.of([load_public_key(pub_path)], require_signature=True)
    signer = verify_and_extract(archive, tmp_path / "agents", policy).signer
    assert signer is not None and signer.trusted and signer.key_id in policy.trusted_keys


def test_an_unsigned_pack_is_refused_when_a_signature_is_required(tree: Path, tmp_path: Path) -> None:
    _refused(
        pack(tree, tmp_path),
        tmp_path / "agents",
        r"unsigned",
        TrustPolicy(require_signature=True),
        error=SignatureRefused,
    )


def test_a_pack_signed_by_an_untrusted_key_is_refused_when_required(tree: Path, tmp_path: Path) -> None:
    mine, _ = keygen(tmp_path / "mine.key")
    _, theirs = keygen(tmp_path / "theirs.key")
    archive = pack(tree, tmp_path, signing_key=load_private_key(mine))
    policy = TrustPolicy.of([load_public_key(theirs)], require_signature=True)
    _refused(archive, tmp_path / "agents", r"does not trust", policy, error=SignatureRefused)


def test_an_untrusted_signer_is_reported_when_signatures_are_optional(tree: Path, tmp_path: Path) -> None:
    key, _ = keygen(tmp_path / "mine.key")
    signer = verify(pack(tree, tmp_path, signing_key=load_private_key(key)), OPEN).signer
    assert signer is not None and not signer.trusted


def test_a_signature_over_another_manifest_is_always_refused(tree: Path, tmp_path: Path) -> None:
    key, _ = keygen(tmp_path / "mine.key")
    signed, _ = pack_bytes(tree, signing_key=load_private_key(key))
    with tarfile.open(fileobj=io.BytesIO(signed), mode="r:gz") as tar:
        signature = tar.extractfile("SIGNATURE").read()  # type: ignore[union-attr]
    (tree / "scope2" / "agent.py").write_text("FACTOR = 9.9\n")  # altered after signing
    unsigned, _ = pack_bytes(tree)
    with tarfile.open(fileobj=io.BytesIO(unsigned), mode="r:gz") as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]  # type: ignore[union-attr]
    archive = tmp_path / "forged.glpack"
    archive.write_bytes(_tar([members[0], ("SIGNATURE", signature), *members[1:]]))
    _refused(archive, tmp_path / "agents", r"signature does not match MANIFEST.json", error=SignatureRefused)


def test_a_malformed_signature_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bad.glpack"
    archive.write_bytes(
        _tar(
            [
                ("MANIFEST.json", _manifest({"agent.pack.yaml": SPEC})),
                ("SIGNATURE", b"{}"),
                ("agent.pack.yaml", SPEC),
            ]
        )
    )
    _refused(archive, tmp_path / "agents", r"SIGNATURE is malformed", error=SignatureRefused)


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key, _ = keygen(tmp_path / "mine.key")
    key.chmod(0o644)
    with pytest.raises(Exception, match=r"readable by others"):
        load_private_key(key)


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    keygen(tmp_path / "mine.key")
    with pytest.raises(Exception, match=r"never overwritten"):
        keygen(tmp_path / "mine.key")


def test_a_tenant_without_its_own_policy_gets_the_installation_default() -> None:
    strict = TrustPolicy(require_signature=True)
    policies = TrustPolicies(default=OPEN, tenants={"acme": strict})
    assert policies.for_tenant("acme") is strict and policies.for_tenant("other") is OPEN


# --- checksums and the manifest


def test_a_member_whose_content_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    manifest = _manifest({"agent.pack.yaml": SPEC, "a.py": b"good"})
    _refused(
        _hostile(tmp_path, [("a.py", b"evil")], manifest), tmp_path / "agents", r"'a.py': its SHA-256 differs"
    )


def test_a_member_not_in_the_manifest_is_refused(tmp_path: Path) -> None:
    manifest = _manifest({"agent.pack.yaml": SPEC})
    _refused(
        _hostile(tmp_path, [("extra.py", b"x")], manifest),
        tmp_path / "agents",
        r"'extra.py' is not in the manifest",
    )


def test_a_manifest_file_missing_from_the_archive_is_refused(tmp_path: Path) -> None:
    manifest = _manifest({"agent.pack.yaml": SPEC, "gone.py": b"x"})
    _refused(_hostile(tmp_path, [], manifest), tmp_path / "agents", r"missing from the archive: gone.py")


def test_a_size_that_differs_from_the_manifest_is_refused(tmp_path: Path) -> None:
    manifest = _manifest({"agent.pack.yaml": SPEC, "a.py": b"four"})
    _refused(
        _hostile(tmp_path, [("a.py", b"fives")], manifest),
        tmp_path / "agents",
        r"5 bytes, the manifest says 4",
    )


def test_an_archive_without_the_manifest_first_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "x.glpack"
    archive.write_bytes(
        _tar([("agent.pack.yaml", SPEC), ("MANIFEST.json", _manifest({"agent.pack.yaml": SPEC}))])
    )
    _refused(archive, tmp_path / "agents", r"MANIFEST.json must be the first member")


def test_a_manifest_that_is_not_one_is_refused(tmp_path: Path) -> None:
    _refused(
        _hostile(tmp_path, [], b'{"files": 1}'), tmp_path / "agents", r"MANIFEST.json is not a pack manifest"
    )


def test_a_manifest_naming_a_path_outside_is_refused(tmp_path: Path) -> None:
    manifest = _manifest({"agent.pack.yaml": SPEC, "../evil.py": b"x"})
    _refused(
        _hostile(tmp_path, [], manifest), tmp_path / "agents", r"'../evil.py': not a plain relative path"
    )


def test_a_manifest_whose_name_is_a_path_is_refused(tmp_path: Path) -> None:
    manifest = _manifest({"agent.pack.yaml": SPEC}).replace(
        b'"name":"scope2-electricity"', b'"name":"../../etc"'
    )
    _refused(_hostile(tmp_path, [], manifest), tmp_path / "agents", r"not a pack manifest: name")


def test_a_pack_file_naming_another_version_than_the_manifest_is_refused(tmp_path: Path) -> None:
    spec = SPEC.replace(b"1.4.0", b"9.9.9")
    archive = tmp_path / "x.glpack"
    archive.write_bytes(
        _tar([("MANIFEST.json", _manifest({"agent.pack.yaml": spec})), ("agent.pack.yaml", spec)])
    )
    _refused(archive, tmp_path / "agents", r"agent.pack.yaml says scope2-electricity 9.9.9")


def test_garbage_is_refused_as_not_a_pack(tmp_path: Path) -> None:
    archive = tmp_path / "x.glpack"
    archive.write_bytes(b"not a gzip at all" * 10)
    _refused(archive, tmp_path / "agents", r"not a readable .glpack")


# --- hostile member shapes


@pytest.mark.parametrize(
    "name",
    ["../escape.py", "a/../../escape.py", "/etc/cron.d/evil", "a//b.py", "./a.py", "a\\..\\b.py", "C:/x.py"],
)
def test_a_member_path_that_could_leave_the_pack_is_refused(tmp_path: Path, name: str) -> None:
    _refused(_hostile(tmp_path, [(name, b"x")]), tmp_path / "agents", r"not a plain relative path")
    assert not (tmp_path / "escape.py").exists()


def test_a_symlink_is_refused_even_pointing_inside(tmp_path: Path) -> None:
    _refused(
        _hostile(tmp_path, [_link("inner", "agent.pack.yaml", tarfile.SYMTYPE)]),
        tmp_path / "agents",
        r"is a link",
    )


def test_a_symlink_pointing_outside_is_refused(tmp_path: Path) -> None:
    _refused(
        _hostile(tmp_path, [_link("passwd", "/etc/passwd", tarfile.SYMTYPE)]),
        tmp_path / "agents",
        r"is a link \(to '/etc/passwd'\)",
    )


def test_a_hard_link_is_refused(tmp_path: Path) -> None:
    _refused(
        _hostile(tmp_path, [_link("hard", "agent.pack.yaml", tarfile.LNKTYPE)]),
        tmp_path / "agents",
        r"is a link",
    )


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        (tarfile.CHRTYPE, "device"),
        (tarfile.BLKTYPE, "device"),
        (tarfile.FIFOTYPE, "fifo"),
        (tarfile.DIRTYPE, "directory"),
    ],
)
def test_devices_fifos_and_directory_entries_are_refused(tmp_path: Path, kind: bytes, said: str) -> None:
    info = tarfile.TarInfo("node")
    info.type = kind
    _refused(_hostile(tmp_path, [info]), tmp_path / "agents", said)


def test_a_member_twice_is_refused(tmp_path: Path) -> None:
    _refused(_hostile(tmp_path, [("a.py", b"x"), ("a.py", b"x")]), tmp_path / "agents", r"appears twice")


def test_a_second_manifest_member_is_refused(tmp_path: Path) -> None:
    _refused(_hostile(tmp_path, [("MANIFEST.json", b"{}")]), tmp_path / "agents", r"appears twice")


def test_an_oversized_member_is_refused_before_it_is_written(tmp_path: Path) -> None:
    _refused(
        _hostile(tmp_path, [("big.bin", b"x" * 5000)]),
        tmp_path / "agents",
        r"over the 4096-byte cap",
        max_member_bytes=4096,
    )


def test_too_many_members_are_refused(tmp_path: Path) -> None:
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [(f"f{i}.py", b"") for i in range(20)]
    _refused(_hostile(tmp_path, members), tmp_path / "agents", r"over the cap of 10", max_members=10)


def test_an_archive_over_its_size_cap_is_refused_unread(tree: Path, tmp_path: Path) -> None:
    _refused(pack(tree, tmp_path), tmp_path / "agents", r"over the 100-byte cap", max_archive_bytes=100)


def test_a_compression_bomb_is_refused_while_inflating(tmp_path: Path) -> None:
    bomb = b"\x00" * (30 * 1024 * 1024)  # 30 MB of zeros: ~30 KB compressed, ratio ~1000
    archive = _hostile(tmp_path, [("zeros.bin", bomb)])
    assert archive.stat().st_size < 100_000
    _refused(archive, tmp_path / "agents", r"refused as an archive bomb")


def test_the_total_cap_counts_inflated_bytes_across_members(tmp_path: Path) -> None:
    # Incompressible members, each under the member cap: only the running total catches them.
    members: list[tarfile.TarInfo | tuple[str, bytes]] = [
        (f"r{i}.bin", os.urandom(300_000)) for i in range(5)
    ]
    archive = _hostile(tmp_path, members)
    _refused(archive, tmp_path / "agents", r"inflates past 1048576 bytes", max_total_bytes=1 << 20)
    assert verify_and_extract(
        archive, tmp_path / "ok", OPEN
    ).created  # the same archive under the default caps


def test_a_member_under_a_name_that_is_a_file_is_refused_not_a_traceback(tmp_path: Path) -> None:
    _refused(
        _hostile(tmp_path, [("a", b"x"), ("a/b.py", b"y")]),
        tmp_path / "agents",
        r"'a/b.py' cannot be written",
    )


def test_installed_modes_are_the_manifests_whatever_the_headers_say(tmp_path: Path) -> None:
    info = tarfile.TarInfo("tool.sh")
    info.size, info.mode = 2, 0o6777  # setuid, setgid, world-writable
    archive = tmp_path / "x.glpack"
    manifest = _manifest({"agent.pack.yaml": SPEC, "tool.sh": b"hi"})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for name, content in (("MANIFEST.json", manifest), ("agent.pack.yaml", SPEC)):
            plain = tarfile.TarInfo(name)
            plain.size = len(content)
            tar.addfile(plain, io.BytesIO(content))
        tar.addfile(info, io.BytesIO(b"hi"))
    archive.write_bytes(raw.getvalue())
    installed = verify_and_extract(archive, tmp_path / "agents", OPEN)
    assert (installed.path / "tool.sh").stat().st_mode & 0o7777 == 0o644


_names = st.from_regex(r"[a-z]{1,3}(/[a-z]{1,3}){0,2}\.txt", fullmatch=True)


@settings(max_examples=25, deadline=None)
@given(files=st.dictionaries(_names, st.binary(max_size=300), max_size=8))
def test_any_tree_packs_and_installs_to_exactly_its_files(files: dict[str, bytes]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        (root / "src").mkdir()
        (root / "src" / "agent.pack.yaml").write_bytes(SPEC)
        for name, content in files.items():
            (root / "src" / name).parent.mkdir(parents=True, exist_ok=True)
            (root / "src" / name).write_bytes(content)
        installed = verify_and_extract(pack(root / "src", root), root / "agents", OPEN)
        got = {
            p.relative_to(installed.path).as_posix(): p.read_bytes() for p in installed.path.rglob("*.txt")
        }
        assert got == files
        assert set(installed.manifest.files) == {"agent.pack.yaml", *files}

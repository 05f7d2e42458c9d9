"""pack: a reproducible .glpack of an agent's directory, with its manifest and an optional signature."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

from agents.packaging.archive import pack, pack_bytes
from agents.packaging.errors import PackagingError, PackSpecError, PackTooLarge
from agents.packaging.signing import keygen, load_private_key
from tests.helpers import DOUBLE_AGENT_MODULE


def _members(data: bytes) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return tar.getmembers()


def test_packing_the_same_tree_twice_gives_identical_bytes(tree: Path, tmp_path: Path) -> None:
    first = pack(tree, tmp_path / "a")
    second = pack(tree, tmp_path / "b")
    assert first.name == "scope2-electricity-1.4.0.glpack"
    assert first.read_bytes() == second.read_bytes()


def test_a_copy_with_other_mtimes_owners_and_modes_packs_to_the_same_bytes(
    tree: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy)
    for i, path in enumerate(sorted(copy.rglob("*"))):
        os.utime(path, (1_000_000 + i, 2_000_000_000 - i))
        if path.is_file() and path.name != "run.sh":
            path.chmod(0o600)  # not executable: still 0644 in the pack
    (copy / "scope2" / "__pycache__").mkdir()
    (copy / "scope2" / "__pycache__" / "agent.cpython-311.pyc").write_bytes(b"\x00junk")
    assert pack_bytes(tree)[0] == pack_bytes(copy)[0]


def test_members_are_sorted_normalised_and_the_manifest_comes_first(tree: Path) -> None:
    data, _ = pack_bytes(tree)
    assert data[4:8] == b"\x00\x00\x00\x00"  # gzip header: no mtime
    assert gzip.decompress(data)  # and a valid gzip
    members = _members(data)
    names = [m.name for m in members]
    assert names == [
        "MANIFEST.json", "agent.pack.yaml", "run.sh", "schemas/input.json", "scope2/__init__.py",
        "scope2/agent.py", "tests/test_agent.py",
    ]  # fmt: skip
    for m in members:
        assert (m.mtime, m.uid, m.gid, m.uname, m.gname) == (0, 0, 0, "", "")
        assert m.mode == (0o755 if m.name == "run.sh" else 0o644)


def test_the_manifest_lists_the_sha256_and_size_of_every_other_member(tree: Path) -> None:
    data, _ = pack_bytes(tree)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        manifest = json.load(tar.extractfile("MANIFEST.json"))  # type: ignore[arg-type]
    assert manifest["name"] == "scope2-electricity" and manifest["version"] == "1.4.0"
    assert set(manifest["files"]) == {m.name for m in _members(data)} - {"MANIFEST.json"}
    entry = manifest["files"]["scope2/agent.py"]
    assert entry["size"] == len("FACTOR = 0.233  # kg CO2e per kWh\n") and len(entry["sha256"]) == 64
    assert manifest["files"]["run.sh"]["executable"] is True


def test_the_ignore_list_keeps_caches_vcs_keys_and_the_data_dir_out(tree: Path) -> None:
    for junk in (
        ".agent-factory/postgres/base/1/1259",  # `up` run in the package's directory
        ".agent-factory/state.json",
        ".git/config",
        ".venv/bin/python",
        "scope2/__pycache__/x.pyc",
        "scope2/y.pyc",
        "signing.key",
    ):
        (tree / junk).parent.mkdir(parents=True, exist_ok=True)
        (tree / junk).write_text("junk")
    names = {m.name for m in _members(pack_bytes(tree)[0])}
    assert not any(".git" in n or ".venv" in n or n.endswith((".pyc", ".key")) for n in names)
    assert not any(n.startswith(".agent-factory") for n in names)


def test_a_symlink_in_the_tree_is_refused_not_followed(tree: Path) -> None:
    (tree / "scope2" / "secrets").symlink_to("/etc/passwd")
    with pytest.raises(PackagingError, match=r"scope2/secrets is a symlink"):
        pack_bytes(tree)


def test_a_tree_over_the_size_cap_is_refused(tree: Path) -> None:
    (tree / "data.bin").write_bytes(b"x" * 2000)
    with pytest.raises(PackTooLarge, match=r"over the 1000-byte cap"):
        pack_bytes(tree, max_bytes=1000)


def test_a_schema_the_spec_names_must_be_in_the_pack(tree: Path) -> None:
    (tree / "schemas" / "input.json").unlink()
    with pytest.raises(PackagingError, match=r"schema 'schemas/input.json' is not a file of the pack"):
        pack_bytes(tree)


def test_a_tree_without_a_valid_pack_file_is_refused(tree: Path) -> None:
    (tree / "agent.pack.yaml").write_text("name: x\n")
    with pytest.raises(PackSpecError, match=r"agent.pack.yaml:1: spec_version: required"):
        pack_bytes(tree)


def test_a_signed_pack_is_reproducible_too(tree: Path, tmp_path: Path) -> None:
    key_path, _ = keygen(tmp_path / "release.key")
    key = load_private_key(key_path)
    first, _ = pack_bytes(tree, signing_key=key)
    assert first == pack_bytes(tree, signing_key=key)[0]
    assert [m.name for m in _members(first)][:2] == ["MANIFEST.json", "SIGNATURE"]


def test_pack_writes_to_the_output_path_it_is_given(tree: Path, tmp_path: Path) -> None:
    out = pack(tree, output=tmp_path / "x" / "mine.glpack")
    assert out == tmp_path / "x" / "mine.glpack" and out.stat().st_size > 0
    assert [p.name for p in out.parent.iterdir()] == ["mine.glpack"]  # no temp file left


def _agent_tree(root: Path) -> Path:
    (root / "scope2").mkdir(parents=True)
    (root / "scope2" / "__init__.py").write_text("")
    (root / "scope2" / "agent.py").write_text(DOUBLE_AGENT_MODULE)
    (root / "agent.pack.yaml").write_text(
        "spec_version: 1\nname: double\nversion: 0.1.0\ntype: deterministic\n"
        "entry_point: scope2.agent:Double\n"
    )
    return root


def test_schemas_are_derived_from_the_entry_points_models_when_asked(tmp_path: Path) -> None:
    tree = _agent_tree(tmp_path / "src")
    data, _ = pack_bytes(tree, derive_schemas=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        schema = json.load(tar.extractfile("schemas/input.json"))  # type: ignore[arg-type]
        assert "schemas/output.json" in tar.getnames()
    assert schema["properties"]["value"]["type"] == "number"
    assert pack_bytes(tree, derive_schemas=True)[0] == data  # still reproducible
    assert "scope2" not in {name.split(".")[0] for name in sys.modules}  # imported in a child


def test_schemas_are_not_derived_unless_asked(tmp_path: Path) -> None:
    names = {m.name for m in _members(pack_bytes(_agent_tree(tmp_path / "src"))[0])}
    assert "schemas/input.json" not in names


def test_an_entry_point_that_does_not_import_is_named_when_deriving(tree: Path) -> None:
    (tree / "agent.pack.yaml").write_text(
        (tree / "agent.pack.yaml").read_text().replace("input_schema: schemas/input.json\n", "")
    )
    (tree / "schemas" / "input.json").unlink()
    with pytest.raises(
        PackagingError, match=r"cannot derive schemas from scope2.agent:PurchasedElectricity: .*has no"
    ):
        pack_bytes(tree, derive_schemas=True)

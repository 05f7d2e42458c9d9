"""agent-factory agent pack | keygen | verify | inspect-pack, through click as a user types them."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from gateway.cli import cli
from tests.helpers import DOUBLE_AGENT_MODULE
from tests.unit.agents.packaging.conftest import write_tree


def _run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), prog_name="agent-factory", catch_exceptions=False)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src")


def test_pack_writes_the_archive_and_says_what_it_holds(tree: Path, tmp_path: Path) -> None:
    result = _run("agent", "pack", str(tree), "-f", str(tmp_path / "out.glpack"))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"{tmp_path / 'out.glpack'}: scope2-electricity 1.4.0, 6 files, " + (
        f"{(tmp_path / 'out.glpack').stat().st_size} bytes, unsigned"
    )


def test_pack_json_output_for_scripts(tree: Path, tmp_path: Path) -> None:
    result = _run("-o", "json", "agent", "pack", str(tree), "-f", str(tmp_path / "out.glpack"))
    data = json.loads(result.stdout)
    assert (data["name"], data["version"], data["files"], data["signed_by"]) == (
        "scope2-electricity",
        "1.4.0",
        6,
        None,
    )


def test_keygen_sign_and_verify_with_the_trusted_key(tree: Path, tmp_path: Path) -> None:
    key = tmp_path / "release.key"
    made = json.loads(_run("agent", "keygen", str(key), "-o", "json").stdout)
    assert made["public_key"] == str(tmp_path / "release.pub") and len(made["key_id"]) == 16
    archive = tmp_path / "signed.glpack"
    assert _run("agent", "pack", str(tree), "--sign", str(key), "-f", str(archive)).exit_code == 0
    result = _run("agent", "verify", str(archive), "--trust", str(tmp_path / "release.pub"))
    assert result.exit_code == 0, result.output
    assert (
        result.output.strip()
        == f"ok: scope2-electricity 1.4.0, 6 files verified, signed by {made['key_id']} (trusted)"
    )


def test_verify_with_another_trusted_key_fails_in_one_line(tree: Path, tmp_path: Path) -> None:
    _run("agent", "keygen", str(tmp_path / "mine.key"))
    _run("agent", "keygen", str(tmp_path / "theirs.key"))
    archive = tmp_path / "x.glpack"
    _run("agent", "pack", str(tree), "--sign", str(tmp_path / "mine.key"), "-f", str(archive))
    result = _run("agent", "verify", str(archive), "--trust", str(tmp_path / "theirs.pub"))
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: signed by key ") and "does not trust" in result.stderr
    assert "Traceback" not in result.output


def test_verify_an_unsigned_pack_when_a_signature_is_required(tree: Path, tmp_path: Path) -> None:
    archive = tmp_path / "x.glpack"
    _run("agent", "pack", str(tree), "-f", str(archive))
    assert _run("agent", "verify", str(archive)).exit_code == 0
    result = _run("agent", "verify", str(archive), "--require-signature")
    assert result.exit_code == 1 and "unsigned" in result.stderr


def test_verify_a_tampered_archive_names_the_member(tree: Path, tmp_path: Path) -> None:
    good = tmp_path / "x.glpack"
    _run("agent", "pack", str(tree), "-f", str(good))
    with tarfile.open(good) as src:
        members = [(m, src.extractfile(m).read()) for m in src.getmembers()]  # type: ignore[union-attr]
    bad = tmp_path / "bad.glpack"
    with tarfile.open(bad, "w:gz") as out:
        for member, content in members:
            if member.name == "scope2/agent.py":
                content = content.replace(b"0.233", b"0.999")
            out.addfile(member, io.BytesIO(content))
    result = _run("agent", "verify", str(bad), "-o", "json")
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: member 'scope2/agent.py': its SHA-256 differs from the manifest's"


def test_pack_of_a_directory_without_a_pack_file_says_so(tmp_path: Path) -> None:
    result = _run("agent", "pack", str(tmp_path))
    assert result.exit_code == 1 and "agent.pack.yaml: cannot read it" in result.stderr


def test_pack_with_an_invalid_pack_file_names_the_line(tree: Path) -> None:
    (tree / "agent.pack.yaml").write_text(
        (tree / "agent.pack.yaml").read_text().replace("deterministic", "magic")
    )
    result = _run("agent", "pack", str(tree))
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(
        "agent.pack.yaml:4: type: Input should be 'deterministic', 'reasoning' or 'insight'"
    )


def test_inspect_pack_shows_the_spec_table_and_json(tree: Path, tmp_path: Path) -> None:
    spec = tree / "agent.pack.yaml"
    spec.write_text(spec.read_text() + "dependencies:\n  unit-normaliser: ^1.2\n")
    archive = tmp_path / "x.glpack"
    _run("agent", "pack", str(tree), "-f", str(archive))
    table = _run("agent", "inspect-pack", str(archive)).output
    assert "scope2-electricity 1.4.0 (deterministic)" in table and "unit-normaliser ^1.2" in table
    data = json.loads(_run("agent", "inspect-pack", str(archive), "-o", "json").stdout)
    assert data["spec"]["entry_point"] == "scope2.agent:PurchasedElectricity" and data["signer"] is None


def test_inspect_pack_deps_as_dot_and_json(tree: Path, tmp_path: Path) -> None:
    spec = tree / "agent.pack.yaml"
    spec.write_text(spec.read_text() + "dependencies:\n  unit-normaliser: ^1.2\n  grid-factors: ~2.0\n")
    archive = tmp_path / "x.glpack"
    _run("agent", "pack", str(tree), "-f", str(archive))
    dot = _run("agent", "inspect-pack", str(archive), "--deps").output
    assert dot.startswith("digraph agents {") and '"scope2-electricity" -> "unit-normaliser";' in dot
    data = json.loads(_run("agent", "inspect-pack", str(archive), "--deps", "--format", "json").stdout)
    assert data["levels"] == [["grid-factors", "unit-normaliser"], ["scope2-electricity"]]
    assert data["ranges"] == {"unit-normaliser": "^1.2", "grid-factors": "~2.0"}


def test_every_pack_command_explains_itself() -> None:
    for command in ("pack", "keygen", "verify", "inspect-pack"):
        result = _run("agent", command, "--help")
        assert result.exit_code == 0 and "Usage: agent-factory agent " + command in result.output
    assert "-f, --file" in _run("agent", "pack", "--help").output


def test_pack_derive_schemas_flag_adds_the_models_schemas(tmp_path: Path) -> None:
    tree = tmp_path / "src"
    (tree / "mine").mkdir(parents=True)
    (tree / "mine" / "__init__.py").write_text("")
    (tree / "mine" / "agent.py").write_text(DOUBLE_AGENT_MODULE)
    (tree / "agent.pack.yaml").write_text(
        "spec_version: 1\nname: double\nversion: 0.1.0\ntype: deterministic\nentry_point: mine.agent:Double\n"
    )
    archive = tmp_path / "d.glpack"
    result = _run("agent", "pack", str(tree), "--derive-schemas", "-f", str(archive), "-o", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["files"] == 5  # the pack file, two modules, two schemas

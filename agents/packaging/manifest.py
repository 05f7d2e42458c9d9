"""``MANIFEST.json``: the SHA-256 and size of every file of a pack, and the signature over it.

The manifest is the one thing signed: a file's checksum pins its content, so a
valid signature over the manifest vouches for every file it lists.
"""

from __future__ import annotations

import json
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from agents.packaging.errors import ArchiveRefused
from agents.packaging.spec import AgentName, SemVerText

__all__ = ["MANIFEST", "MAX_MANIFEST_BYTES", "SIGNATURE", "FileEntry", "Manifest"]

MANIFEST: Final = "MANIFEST.json"
SIGNATURE: Final = "SIGNATURE"
MAX_MANIFEST_BYTES: Final = 4 * 1024 * 1024

Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    sha256: Sha256
    size: int = Field(ge=0)
    executable: bool = False


class Manifest(BaseModel):
    """What a pack holds: ``files`` maps each member's path to its checksum (itself and
    ``SIGNATURE`` excepted)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = 1
    name: AgentName
    version: SemVerText
    files: dict[str, FileEntry]

    def to_bytes(self) -> bytes:
        """Canonical JSON (sorted keys, no spaces): the bytes that are signed."""
        return (
            json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")) + "\n"
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> Manifest:
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise ArchiveRefused(f"{MANIFEST} is not a pack manifest: {where}: {first['msg']}") from None

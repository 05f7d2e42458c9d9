"""Blobs in a JetStream object store (made by :mod:`mesh.provision`), each checked
against the SHA-256 its owner recorded (the hub's packages: ``agents.hub``).

nats-py's object store checks each object against the digest in its own meta
message; :func:`get_blob` also checks it against the digest the caller kept
elsewhere (the hub's index in PostgreSQL). So an object replaced under the
same name, by mistake or on purpose, is refused instead of served. Reads
stream the chunks into one buffer; nats-py's default joins ``bytes``, which
copies the whole object again for each 128 KiB chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io

from nats.js import JetStreamContext
from nats.js.errors import DigestMismatchError, ObjectNotFoundError

from mesh.errors import MeshError

__all__ = ["BlobCorrupt", "BlobNotFound", "delete_blob", "get_blob", "put_blob"]


class BlobNotFound(MeshError):
    status = 404


class BlobCorrupt(MeshError):
    """The stored bytes are not the ones recorded: refused, never served."""

    status = 502


async def put_blob(js: JetStreamContext, bucket: str, name: str, data: bytes) -> str:
    """Store ``data`` as ``name`` (replacing what was there); its SHA-256, hex."""
    store = await js.object_store(bucket)
    await store.put(name, data)
    return hashlib.sha256(data).hexdigest()


async def get_blob(js: JetStreamContext, bucket: str, name: str, sha256: str) -> bytes:
    """The bytes of ``name``, if their SHA-256 is ``sha256`` (hex); :class:`BlobCorrupt` if not."""
    store = await js.object_store(bucket)
    buffer = io.BytesIO()
    try:
        await store.get(name, writeinto=buffer)
    except ObjectNotFoundError as exc:
        raise BlobNotFound(f"{bucket}/{name} is not stored") from exc
    except DigestMismatchError as exc:  # its chunks differ from its own meta's digest
        raise BlobCorrupt(f"{bucket}/{name}: its chunks do not match its own digest: refused") from exc
    data = buffer.getvalue()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise BlobCorrupt(f"{bucket}/{name} has SHA-256 {found}, not the {sha256} recorded for it: refused")
    return data


async def delete_blob(js: JetStreamContext, bucket: str, name: str) -> None:
    """Remove ``name`` (nothing if it is not there)."""
    store = await js.object_store(bucket)
    with contextlib.suppress(ObjectNotFoundError):
        await store.delete(name)

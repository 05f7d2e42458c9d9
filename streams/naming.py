"""How Faust names map onto JetStream names: streams, subjects, KV buckets and keys.

Layout (one JetStream stream per topic partition)::

    topic "orders", partition 3
      stream   faust-orders-3
      subject  faust.orders.3                 (plain topics, and key-less records)
      subject  faust.orders.3.k<base64url>    (compacted topics: one subject per key)

Topic names are escaped so that any Faust topic fits every NATS name grammar
(stream names, subject tokens, KV bucket names and KV keys): characters
outside ``[A-Za-z0-9-]`` become ``_xx`` (hex of each UTF-8 byte), so the
mapping is reversible and two topics never share a stream.
"""

from __future__ import annotations

import base64
import functools
import re

__all__ = [
    "PREFIX",
    "escape",
    "is_key_subject",
    "key_subject",
    "key_token",
    "offset_key",
    "offsets_bucket",
    "group_bucket",
    "partition_subject",
    "stream_name",
    "stream_subjects",
    "unescape",
    "TOPICS_BUCKET",
]

PREFIX = "faust"
TOPICS_BUCKET = "faust-topics"

_SAFE = re.compile(r"[A-Za-z0-9-]")


@functools.lru_cache(maxsize=4096)
def escape(name: str) -> str:
    """Reversible escape of ``name`` into ``[A-Za-z0-9_-]+``."""
    out: list[str] = []
    for ch in name:
        if _SAFE.fullmatch(ch):
            out.append(ch)
        else:
            out.extend(f"_{b:02x}" for b in ch.encode())
    return "".join(out) or "_"


def unescape(token: str) -> str:
    """Inverse of :func:`escape`."""
    if token == "_":
        return ""
    raw = bytearray()
    i = 0
    while i < len(token):
        if token[i] == "_":
            raw.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            raw.extend(token[i].encode())
            i += 1
    return raw.decode()


def stream_name(topic: str, partition: int) -> str:
    """The stream holding one partition of ``topic``."""
    return f"{PREFIX}-{escape(topic)}-{partition}"


def partition_subject(topic: str, partition: int) -> str:
    """Subject of key-less records (and of every record of a plain topic)."""
    return f"{PREFIX}.{escape(topic)}.{partition}"


def key_token(key: bytes) -> str:
    """A subject token for ``key`` (unpadded base64url, ``k`` prefix so it is never empty)."""
    return "k" + base64.urlsafe_b64encode(key).rstrip(b"=").decode()


def key_subject(topic: str, partition: int, key: bytes) -> str:
    """Subject of a keyed record of a compacted topic: the newest record per key survives."""
    return f"{partition_subject(topic, partition)}.{key_token(key)}"


def is_key_subject(subject: str) -> bool:
    """A subject made by :func:`key_subject` (topic names are escaped: no dots)."""
    return subject.count(".") == 3


def stream_subjects(topic: str, partition: int, compacting: bool) -> list[str]:
    base = partition_subject(topic, partition)
    return [base, f"{base}.*"] if compacting else [base]


def offsets_bucket(group_id: str) -> str:
    """KV bucket holding the committed offsets of one consumer group."""
    return f"faust-offsets-{escape(group_id)}"


def group_bucket(group_id: str) -> str:
    """KV bucket holding the membership heartbeats, leader lease and assignment of a group."""
    return f"faust-group-{escape(group_id)}"


def offset_key(topic: str, partition: int) -> str:
    """Key of one partition's committed offset inside :func:`offsets_bucket`."""
    return f"{escape(topic)}.{partition}"

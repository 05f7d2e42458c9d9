"""The local package cache: where it is, an archive kept under its digest and
written atomically, a damaged copy discarded, the index, clearing it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.package_cache import PackageCache, cache_dir


def test_it_lives_in_af_cache_dir_else_xdg_cache_home_else_home_cache() -> None:
    assert cache_dir({"AF_CACHE_DIR": "/srv/cache", "XDG_CACHE_HOME": "/x"}) == Path("/srv/cache")
    assert cache_dir({"XDG_CACHE_HOME": "/x"}) == Path("/x/agent-factory/packages")
    assert cache_dir({}) == Path.home() / ".cache" / "agent-factory" / "packages"


def test_an_archive_is_kept_under_its_digest_listed_and_nothing_half_written_is_left(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path / "c")
    entry = cache.put("grid", "1.0.0", b"archive bytes")
    digest = hashlib.sha256(b"archive bytes").hexdigest()
    assert entry.sha256 == digest and (tmp_path / "c" / f"{digest}.glpack").read_bytes() == b"archive bytes"
    assert cache.get(digest) == b"archive bytes"
    assert [(e.name, e.version, e.size_bytes) for e in cache.entries()] == [("grid", "1.0.0", 13)]
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [f"{digest}.glpack", "index.json"]


def test_a_damaged_copy_is_discarded_with_its_index_entry(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path)
    digest = cache.put("grid", "1.0.0", b"good").sha256
    cache.path(digest).write_bytes(b"flipped")
    assert cache.get(digest) is None
    assert not cache.path(digest).exists() and cache.entries() == []


def test_clear_removes_every_archive_and_the_index(tmp_path: Path) -> None:
    cache = PackageCache(tmp_path)
    cache.put("a", "1.0.0", b"a")
    cache.put("b", "2.0.0", b"b")
    assert cache.clear() == 2 and list(tmp_path.iterdir()) == [] and cache.entries() == []


def test_a_digest_that_is_no_sha256_is_refused_before_it_names_a_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a SHA-256"):
        PackageCache(tmp_path).get("../../etc/passwd")


def test_a_cache_that_cannot_be_written_fails_loudly_for_the_caller_to_skip(tmp_path: Path) -> None:
    """`agent fetch` catches this and only warns: the download itself stands."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = PackageCache(blocker / "c")
    with pytest.raises(OSError):
        cache.put("a", "1.0.0", b"a")
    assert cache.get(hashlib.sha256(b"a").hexdigest()) is None and cache.entries() == []

"""Version ranges: caret, tilde, comparison sets, exact, partial, '*', and the prerelease rule."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from semver import Version

from agents.packaging.versions import InvalidVersion, VersionRange, parse_version, sort_key


@pytest.mark.parametrize(
    ("text", "inside", "outside"),
    [
        ("^1.2.3", ["1.2.3", "1.9.0"], ["1.2.2", "2.0.0"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2"]),
        ("^1.2", ["1.2.0", "1.99.0"], ["1.1.9", "2.0.0"]),
        ("~1.2.3", ["1.2.3", "1.2.99"], ["1.3.0", "1.2.2"]),
        ("~1", ["1.0.0", "1.9.9"], ["2.0.0"]),
        (">=1.2,<2", ["1.2.0", "1.99.99"], ["1.1.9", "2.0.0"]),
        (">1.0.0, <=1.5.0, !=1.3.0", ["1.0.1", "1.5.0"], ["1.0.0", "1.3.0", "1.5.1"]),
        ("1.4.0", ["1.4.0"], ["1.4.1", "1.3.9"]),
        ("=1.4.0", ["1.4.0"], ["1.4.1"]),
        ("1.4", ["1.4.0", "1.4.7"], ["1.5.0"]),
        ("*", ["0.0.1", "99.0.0"], []),
        ("", ["1.0.0"], []),
    ],
)
def test_a_range_admits_what_it_names_and_nothing_else(
    text: str, inside: list[str], outside: list[str]
) -> None:
    rng = VersionRange.parse(text)
    assert all(rng.contains(v) for v in inside), [v for v in inside if not rng.contains(v)]
    assert not any(rng.contains(v) for v in outside), [v for v in outside if rng.contains(v)]


@pytest.mark.parametrize("text", ["*", "^1.0.0", ">=1.0.0", "<3", "~2.0"])
def test_prereleases_are_excluded_unless_the_range_names_one(text: str) -> None:
    assert not VersionRange.parse(text).contains("2.0.0-rc.1")


def test_a_range_naming_a_prerelease_admits_later_prereleases_of_the_same_version_only() -> None:
    rng = VersionRange.parse(">=2.0.0-rc.1")
    assert rng.contains("2.0.0-rc.2") and rng.contains("2.0.0") and rng.contains("2.1.0")
    assert not rng.contains("2.0.0-alpha") and not rng.contains("2.1.0-beta")
    assert rng.names_prerelease


def test_build_metadata_is_ignored() -> None:
    assert VersionRange.parse("1.4.0").contains("1.4.0+build.7")


@pytest.mark.parametrize("text", ["^^1", "1.2.3.4", ">=", "latest", "1.x", ">=1.0 <2.0"])
def test_a_bad_range_says_what_a_range_looks_like(text: str) -> None:
    with pytest.raises(InvalidVersion, match=r"expected e\.g\. .\^1\.2\.0.|not a SemVer version"):
        VersionRange.parse(text)


def test_a_bad_version_says_what_a_version_looks_like() -> None:
    with pytest.raises(InvalidVersion, match=r"expected MAJOR\.MINOR\.PATCH"):
        parse_version("1.0")


_versions = st.builds(Version, st.integers(0, 20), st.integers(0, 20), st.integers(0, 20))


@given(base=_versions, candidate=_versions)
def test_caret_is_the_same_major_at_or_above_for_1_and_later(base: Version, candidate: Version) -> None:
    rng = VersionRange.parse(f"^{base}")
    if base.major > 0:
        expected = candidate >= base and candidate.major == base.major
    elif base.minor > 0:
        expected = candidate >= base and (candidate.major, candidate.minor) == (0, base.minor)
    else:
        expected = candidate == base
    assert rng.contains(candidate) == expected


@given(base=_versions, candidate=_versions)
def test_tilde_is_the_same_minor_at_or_above(base: Version, candidate: Version) -> None:
    expected = candidate >= base and candidate.major == base.major and candidate.minor == base.minor
    assert VersionRange.parse(f"~{base}").contains(candidate) == expected


_prerelease = st.lists(
    st.one_of(st.integers(0, 30).map(str), st.sampled_from(["alpha", "beta", "rc", "a1"])), max_size=3
)
_any_versions = st.builds(lambda v, pre: v.replace(prerelease=".".join(pre) or None), _versions, _prerelease)


@given(a=_any_versions, b=_any_versions)
def test_the_sort_key_orders_versions_as_semver_does(a: Version, b: Version) -> None:
    assert (sort_key(a) < sort_key(b)) == (a < b)
    assert (sort_key(a) == sort_key(b)) == (a.compare(b) == 0)

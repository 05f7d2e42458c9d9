"""A pack's ``platform`` range: parsed with the spec, checked against this platform's
version (its package metadata)."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from agents.packaging.errors import PackSpecError, PlatformMismatch
from agents.packaging.platform_support import admits_platform, check_platform, platform_version
from agents.packaging.spec import parse_spec

SPEC = "spec_version: 1\nname: grid\nversion: 1.0.0\ntype: deterministic\nentry_point: grid.agent:Grid\n"


def test_the_platform_version_is_the_installed_distributions() -> None:
    assert platform_version() == version("agent-factory")


def test_a_range_admits_the_platform_versions_inside_it_and_none_means_any() -> None:
    assert admits_platform(">=0.1,<1", "0.4.2")
    assert not admits_platform(">=0.1,<1", "1.0.0")
    assert not admits_platform("^2.0", "0.1.0")
    assert admits_platform(None, "9.9.9")


def test_a_pack_whose_range_excludes_this_platform_is_refused_with_both_versions() -> None:
    spec = parse_spec(SPEC + "platform: '>=2.0,<3'\n")
    with pytest.raises(PlatformMismatch) as refused:
        check_platform(spec, "1.4.0")
    assert str(refused.value).startswith("grid 1.0.0 needs Agent Factory >=2.0,<3; this platform is 1.4.0")
    assert refused.value.details == {"needs": ">=2.0,<3", "platform": "1.4.0"}
    check_platform(spec, "2.1.0")
    check_platform(parse_spec(SPEC), "0.0.1")  # no range: any platform


def test_a_platform_that_is_no_range_names_its_line() -> None:
    with pytest.raises(PackSpecError, match=r"agent.pack.yaml:6: platform: range '\^\^1'"):
        parse_spec(SPEC + "platform: ^^1\n")

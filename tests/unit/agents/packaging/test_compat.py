"""Breaking changes between two versions' schemas, and the version bump they need."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel

from agents.packaging.compat import check_bump, input_breaks, output_breaks, schema_breaks
from agents.packaging.errors import BreakingChangeWithoutMajorBump, PackagingError


class Site(BaseModel):
    country: str
    grid: Literal["eu", "us", "cn"] = "eu"


class InV1(BaseModel):
    kwh: float
    site: Site
    note: str | None = None
    tags: list[str] = []


class OutV1(BaseModel):
    kg_co2e: float
    factor_source: Literal["iea", "epa"]
    lines: list[Site]
    warning: str | None = None


def _s(model: type[BaseModel]) -> dict[str, object]:
    return model.model_json_schema()


def _breaks(side: str, new: type[BaseModel]) -> list[str]:
    if side == "input":
        return [str(b) for b in input_breaks(_s(InV1), _s(new))]
    return [str(b) for b in output_breaks(_s(OutV1), _s(new))]


def test_identical_schemas_have_no_breaks() -> None:
    assert schema_breaks(_s(InV1), _s(InV1), _s(OutV1), _s(OutV1)) == []


def test_adding_an_optional_input_and_widening_an_input_type_do_not_break() -> None:
    class InV2(BaseModel):
        kwh: float | str  # accepts more
        site: Site
        note: str | None = None
        tags: list[str] = []
        meter_id: str | None = None  # new, optional

    assert _breaks("input", InV2) == []


def test_a_removed_input_field_breaks() -> None:
    class InV2(BaseModel):
        kwh: float
        site: Site
        tags: list[str] = []

    assert _breaks("input", InV2) == ["input /note: removed"]


def test_a_retyped_input_field_breaks_with_both_types_named() -> None:
    class InV2(BaseModel):
        kwh: int  # narrower: 1.5 is refused now
        site: Site
        note: str | None = None
        tags: list[str] = []

    assert _breaks("input", InV2) == ["input /kwh: type number became integer"]


def test_a_newly_required_input_and_a_new_required_field_break() -> None:
    class InV2(BaseModel):
        kwh: float
        site: Site
        note: str  # was optional
        tags: list[str] = []
        meter_id: str  # new and required

    assert _breaks("input", InV2) == [
        "input /meter_id: new required field",
        "input /note: now required",
        "input /note: no longer accepts null",
    ]


def test_a_narrowed_input_enum_breaks_naming_the_dropped_values() -> None:
    class SiteV2(BaseModel):
        country: str
        grid: Literal["eu"] = "eu"

    class InV2(BaseModel):
        kwh: float
        site: SiteV2  # through $ref into $defs
        note: str | None = None
        tags: list[str] = []

    assert _breaks("input", InV2) == ["input /site/grid: no longer accepts 'cn', 'us'"]


def test_a_retyped_array_item_breaks_with_its_path() -> None:
    class InV2(BaseModel):
        kwh: float
        site: Site
        note: str | None = None
        tags: list[int] = []

    assert _breaks("input", InV2) == ["input /tags[]: type string became integer"]


def test_a_removed_output_field_breaks_even_if_optional() -> None:
    class OutV2(BaseModel):
        kg_co2e: float
        factor_source: Literal["iea", "epa"]
        lines: list[Site]

    assert _breaks("output", OutV2) == ["output /warning: removed"]


def test_an_output_that_may_now_be_missing_or_null_breaks() -> None:
    class OutV2(BaseModel):
        kg_co2e: float | None  # required still, but nullable
        factor_source: Literal["iea", "epa"] = "iea"  # no longer required
        lines: list[Site]
        warning: str | None = None

    assert _breaks("output", OutV2) == [
        "output /factor_source: no longer always present",
        "output /kg_co2e: may now be null",
    ]


def test_a_widened_output_enum_breaks_and_a_narrowed_one_does_not() -> None:
    class Wider(BaseModel):
        kg_co2e: float
        factor_source: Literal["iea", "epa", "defra"]
        lines: list[Site]
        warning: str | None = None

    class Narrower(BaseModel):
        kg_co2e: float
        factor_source: Literal["iea"]
        lines: list[Site]
        warning: str | None = None

    assert _breaks("output", Wider) == ["output /factor_source: may now return 'defra'"]
    assert _breaks("output", Narrower) == []


def test_a_narrowed_output_type_does_not_break_and_a_widened_one_does() -> None:
    class Narrower(BaseModel):
        kg_co2e: int
        factor_source: Literal["iea", "epa"]
        lines: list[Site]
        warning: str | None = None

    class Wider(BaseModel):
        kg_co2e: float | str
        factor_source: Literal["iea", "epa"]
        lines: list[Site]
        warning: str | None = None

    assert _breaks("output", Narrower) == []
    assert _breaks("output", Wider) == ["output /kg_co2e: type number became number | string"]


def test_a_removed_field_inside_output_array_items_names_its_path() -> None:
    class Line(BaseModel):
        grid: Literal["eu", "us", "cn"] = "eu"

    class OutV2(BaseModel):
        kg_co2e: float
        factor_source: Literal["iea", "epa"]
        lines: list[Line]
        warning: str | None = None

    assert _breaks("output", OutV2) == ["output /lines[]/country: removed"]


def test_breaks_need_a_major_bump() -> None:
    breaks = input_breaks(_s(InV1), {"type": "object", "properties": {}})
    check_bump("1.4.0", "2.0.0", breaks)
    with pytest.raises(
        BreakingChangeWithoutMajorBump, match=r"1\.4\.0 → 1\.5\.0 breaks callers \(input /kwh: removed"
    ):
        check_bump("1.4.0", "1.5.0", breaks)


def test_below_1_0_a_minor_bump_counts_as_major() -> None:
    breaks = input_breaks(_s(InV1), {"type": "object", "properties": {}})
    check_bump("0.3.1", "0.4.0", breaks)
    check_bump("0.3.1", "1.0.0", breaks)
    with pytest.raises(BreakingChangeWithoutMajorBump, match=r"at least 0\.4\.0 or 1\.0\.0"):
        check_bump("0.3.1", "0.3.2", breaks)


def test_without_breaks_any_higher_version_will_do_and_a_lower_one_never() -> None:
    check_bump("1.4.0", "1.4.1", [])
    with pytest.raises(PackagingError, match=r"must be higher"):
        check_bump("1.4.0", "1.4.0", [])


def test_the_error_carries_every_break_for_tools() -> None:
    breaks = input_breaks(_s(InV1), {"type": "object", "properties": {}})
    with pytest.raises(BreakingChangeWithoutMajorBump) as caught:
        check_bump("1.0.0", "1.1.0", breaks)
    assert caught.value.breaks == [
        "input /kwh: removed",
        "input /note: removed",
        "input /site: removed",
        "input /tags: removed",
    ]


def test_a_recursive_schema_is_compared_without_looping() -> None:
    class Node(BaseModel):
        name: str
        children: list[Node] = []

    class NodeV2(BaseModel):
        name: int
        children: list[NodeV2] = []

    assert output_breaks(_s(Node), _s(Node)) == []
    assert [str(b) for b in input_breaks(_s(Node), _s(NodeV2))] == ["input /name: type string became integer"]

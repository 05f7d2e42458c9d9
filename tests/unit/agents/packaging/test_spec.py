"""agent.pack.yaml: a valid file parses; each kind of problem names the file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents.packaging.errors import PackSpecError
from agents.packaging.spec import MAX_SPEC_BYTES, load_spec, parse_spec

GOOD = """\
spec_version: 1
name: scope2-electricity
version: 1.4.0
description: Scope 2 emissions of purchased electricity, location-based
type: deterministic
entry_point: scope2.agent:PurchasedElectricity
dependencies:
  unit-normaliser: ^1.2
  grid-factors: ">=2.0,<3"
requirements:
  - pint>=0.23,<1
input_schema: schemas/input.json
resources:
  cpu: 0.5
  memory_mb: 256
  timeout_s: 30
execution_mode: dedicated
network: false
resilience:
  timeout_s: 20
  retry:
    max_attempts: 4
  fallback:
    agents: [scope2-lite]
metadata:
  author: Climate Team
  license: Apache-2.0
  tags: [ghg, scope-2]
  frameworks: [GHG Protocol, CSRD]
"""


def _problem(text: str, file: str = "agent.pack.yaml") -> str:
    with pytest.raises(PackSpecError) as caught:
        parse_spec(text, file)
    assert len(caught.value.problems) >= 1
    return str(caught.value)


def test_a_complete_pack_file_parses_into_the_model() -> None:
    spec = parse_spec(GOOD)
    assert spec.name == "scope2-electricity" and str(spec.semver) == "1.4.0"
    assert spec.dependencies == {"unit-normaliser": "^1.2", "grid-factors": ">=2.0,<3"}
    assert spec.resources.cpu == 0.5 and spec.execution_mode == "dedicated"
    assert spec.resilience.timeout_s == 20 and spec.resilience.fallback is not None
    assert spec.metadata.frameworks == ("GHG Protocol", "CSRD")


def test_load_spec_reads_agent_pack_yaml_of_a_directory(tmp_path: Path) -> None:
    (tmp_path / "agent.pack.yaml").write_text(GOOD)
    assert load_spec(tmp_path).name == "scope2-electricity"


def test_a_missing_file_is_a_spec_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PackSpecError, match=r"agent\.pack\.yaml: cannot read it"):
        load_spec(tmp_path)


def test_an_out_of_range_value_names_its_line_and_dotted_field() -> None:
    text = GOOD.replace("cpu: 0.5", "cpu: -1")
    assert (
        _problem(text, "my/agent.pack.yaml")
        == "my/agent.pack.yaml:14: resources.cpu: Input should be greater than 0"
    )


def test_an_unknown_field_names_its_line_and_the_fields_expected() -> None:
    message = _problem(GOOD.replace("  memory_mb: 256", "  memory: 256"))
    assert (
        message
        == "agent.pack.yaml:15: resources.memory: unknown field; expected one of: cpu, memory_mb, timeout_s"
    )


def test_an_unknown_top_level_field_is_refused() -> None:
    assert _problem(GOOD + "colour: blue\n").startswith(
        "agent.pack.yaml:30: colour: unknown field; expected one of:"
    )


def test_an_unknown_field_inside_the_resilience_block_is_refused() -> None:
    text = GOOD.replace("    agents: [scope2-lite]", "    agents: [scope2-lite]\n    retries: 2")
    assert _problem(text).startswith("agent.pack.yaml:25: resilience.fallback.retries: unknown field")


def test_a_missing_required_field_is_named() -> None:
    assert _problem(GOOD.replace("entry_point: scope2.agent:PurchasedElectricity\n", "")) == (
        "agent.pack.yaml:1: entry_point: required, missing"
    )


def test_a_version_that_is_not_semver_says_what_is_expected() -> None:
    message = _problem(GOOD.replace("version: 1.4.0", "version: '1.4'"))
    assert message.startswith(
        "agent.pack.yaml:3: version: '1.4' is not a SemVer version: expected MAJOR.MINOR.PATCH"
    )


def test_an_unquoted_number_as_version_is_told_to_quote_it() -> None:
    assert "quote it" in _problem(GOOD.replace("version: 1.4.0", "version: 1.4"))


def test_a_bad_dependency_range_names_the_dependency_line() -> None:
    message = _problem(GOOD.replace("unit-normaliser: ^1.2", "unit-normaliser: ^^1"))
    assert message.startswith("agent.pack.yaml:8: dependencies.unit-normaliser: range '^^1'")


def test_a_dependency_that_is_not_an_agent_key_is_refused() -> None:
    assert "expected an agent key" in _problem(GOOD.replace("unit-normaliser:", "Unit_Normaliser:"))


def test_a_requirement_with_a_url_is_refused_at_its_item_line() -> None:
    message = _problem(GOOD.replace("  - pint>=0.23,<1", "  - pint>=0.23,<1\n  - git+https://example.com/x"))
    assert message.startswith("agent.pack.yaml:12: requirements.1: 'git+https://example.com/x'")


def test_an_unknown_agent_type_lists_the_allowed_ones() -> None:
    assert _problem(GOOD.replace("type: deterministic", "type: magic")) == (
        "agent.pack.yaml:5: type: Input should be 'deterministic', 'reasoning' or 'insight'"
    )


def test_a_bad_entry_point_says_module_colon_class() -> None:
    assert "expected 'module:Class'" in _problem(
        GOOD.replace("scope2.agent:PurchasedElectricity", "scope2.agent")
    )


def test_a_schema_path_outside_the_pack_is_refused() -> None:
    assert "relative path inside the pack" in _problem(GOOD.replace("schemas/input.json", "../../etc/passwd"))


def test_a_bad_resilience_policy_keeps_the_policy_message() -> None:
    assert "resilience.retry.max_attempts" in _problem(GOOD.replace("max_attempts: 4", "max_attempts: 0"))


def test_a_yaml_syntax_error_names_its_line() -> None:
    assert _problem(GOOD + "tags: [unclosed\n").startswith("agent.pack.yaml:31: not valid YAML:")


def test_a_duplicate_key_is_refused_instead_of_the_last_one_winning() -> None:
    assert _problem(GOOD + "name: other\n") == "agent.pack.yaml:30: name: given twice"


def test_anchors_and_aliases_are_refused() -> None:
    assert "anchors and aliases are not allowed" in _problem("a: &x [1, 2]\nb: *x\n")


def test_python_object_tags_are_refused_by_the_safe_loader() -> None:
    assert "could not determine a constructor" in _problem("x: !!python/object/apply:os.system ['true']\n")


def test_nesting_deeper_than_the_cap_is_refused() -> None:
    assert "nested deeper than 32 levels" in _problem("[" * 40 + "]" * 40)


def test_pathological_nesting_is_refused_without_crashing() -> None:
    assert "nested deeper than 32 levels" in _problem("[" * 20_000 + "]" * 20_000)


def test_a_file_over_the_size_cap_is_refused_before_parsing() -> None:
    assert "larger than 256 KB" in _problem(GOOD + "#" * MAX_SPEC_BYTES)


def test_a_document_that_is_not_a_mapping_is_refused() -> None:
    assert _problem("- a\n- b\n") == "agent.pack.yaml:1: expected a mapping of fields (name: …)"


def test_an_empty_file_is_refused() -> None:
    assert "empty" in _problem("")


def test_every_problem_is_reported_not_only_the_first() -> None:
    with pytest.raises(PackSpecError) as caught:
        parse_spec(GOOD.replace("cpu: 0.5", "cpu: -1").replace("type: deterministic", "type: magic"))
    assert [p.field for p in caught.value.problems] == ["type", "resources.cpu"]

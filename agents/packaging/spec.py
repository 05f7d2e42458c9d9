"""``agent.pack.yaml``: what an agent package is, parsed safely and validated strictly.

Example (docs/packaging.md lists every field)::

    spec_version: 1
    name: scope2-electricity
    version: 1.4.0
    type: deterministic
    entry_point: scope2.agent:PurchasedElectricity
    dependencies: {unit-normaliser: ^1.2}
    requirements: ["pint>=0.23,<1"]
    input_schema: schemas/input.json

The file is read with PyYAML's safe loader (no Python objects), at most
:data:`MAX_SPEC_BYTES` and :data:`MAX_DEPTH` levels deep, without anchors or
duplicate keys; every problem names the file, its line and the field
(:class:`~agents.packaging.errors.PackSpecError`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Final, Literal, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from semver import Version

from agents.packaging.errors import PackagingError, PackSpecError, SpecProblem
from agents.packaging.versions import InvalidVersion, VersionRange, parse_version
from agents.resilience.policy import Resilience
from mesh.names import AGENT_KEY_RE

__all__ = [
    "MAX_DEPTH",
    "AgentName",
    "SemVerText",
    "MAX_SPEC_BYTES",
    "SPEC_FILE",
    "Metadata",
    "PackSpec",
    "Resources",
    "load_spec",
    "parse_spec",
    "read_schema",
]

SPEC_FILE: Final = "agent.pack.yaml"
MAX_SPEC_BYTES: Final = 256 * 1024
MAX_DEPTH: Final = 32
SPEC_VERSION: Final = 1

_ENTRY_POINT: Final = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
# A PyPI requirement with optional extras and version specifiers; no URLs, no
# markers: what a pack needs must come from the index the platform trusts.
_REQUIREMENT: Final = re.compile(
    r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?(\[[A-Za-z0-9._,-]+\])?"
    r"(\s*(===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!-]+(\s*,\s*(===|==|!=|~=|<=|>=|<|>)\s*[A-Za-z0-9.*+!-]+)*)?"
)
_TAG: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,39}")


def _agent_key(name: str) -> str:
    if not AGENT_KEY_RE.fullmatch(name):
        raise ValueError(f"{name!r}: expected an agent key: lowercase letters, digits and '-', at most 63")
    return name


def _entry_point(entry: str) -> str:
    if not _ENTRY_POINT.fullmatch(entry):
        raise ValueError("expected 'module:Class', e.g. 'scope2.agent:PurchasedElectricity'")
    return entry


def _semver(version: str) -> str:
    try:
        parse_version(version)
    except InvalidVersion as exc:
        raise ValueError(str(exc)) from None
    return version


def _range(text: str) -> str:
    try:
        VersionRange.parse(text)
    except InvalidVersion as exc:
        raise ValueError(str(exc)) from None
    return text


def _requirement(req: str) -> str:
    if not _REQUIREMENT.fullmatch(req.strip()):
        raise ValueError(
            f"{req!r}: expected a PyPI name with optional version specifiers, "
            "e.g. 'pint>=0.23,<1' (no URLs, no markers)"
        )
    return req


AgentName = Annotated[str, AfterValidator(_agent_key)]
SemVerText = Annotated[str, AfterValidator(_semver)]
EntryPoint = Annotated[str, AfterValidator(_entry_point)]
RangeText = Annotated[str, AfterValidator(_range)]
Requirement = Annotated[str, AfterValidator(_requirement)]


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(_Block):
    """What one run may use; the sandbox enforces them."""

    cpu: float = Field(default=1.0, gt=0, le=64, description="cores")
    memory_mb: int = Field(default=512, ge=16, le=262_144)
    timeout_s: float = Field(default=300.0, gt=0, le=86_400, description="one run, wall clock")


class Metadata(_Block):
    author: str = Field(default="", max_length=200)
    license: str = Field(default="", max_length=100, description="an SPDX identifier, e.g. Apache-2.0")
    tags: tuple[str, ...] = Field(default=(), max_length=30)
    frameworks: tuple[str, ...] = Field(
        default=(), max_length=30, description="regulatory frameworks served, e.g. GHG Protocol, CSRD"
    )
    homepage: str = Field(default="", max_length=500)

    @field_validator("tags")
    @classmethod
    def _tags(cls, tags: tuple[str, ...]) -> tuple[str, ...]:
        for tag in tags:
            if not _TAG.fullmatch(tag):
                raise ValueError(f"tag {tag!r}: expected lowercase letters, digits, '.', '_', '-'")
        return tags


class Migrations(_Block):
    """Functions (``module:function``) the lifecycle runs when a version replaces
    another: ``up`` when this version is deployed over a live one (``up(from_version,
    to_version)``), ``down`` when it is rolled back to an earlier one (``down(this
    version, the earlier)``). Sync or async; raising fails the step. They must be
    idempotent: a deploy tried again runs ``up`` again."""

    up: EntryPoint | None = None
    down: EntryPoint | None = None
    timeout_s: float = Field(default=300.0, gt=0, le=3600, description="each run, wall clock")


class PackSpec(_Block):
    """One agent package, as ``agent.pack.yaml`` declares it."""

    spec_version: Literal[1] = Field(description="the format of this file; 1 today")
    name: AgentName = Field(description="the agent key: lowercase letters, digits, '-'")
    version: SemVerText = Field(description="SemVer, e.g. 1.4.0")
    description: str = Field(default="", max_length=2000)
    type: Literal["deterministic", "reasoning", "insight"]
    entry_point: EntryPoint = Field(description="module:Class of the Agent subclass")
    dependencies: dict[AgentName, RangeText] = Field(
        default_factory=dict, max_length=200, description="agent name → version range"
    )
    requirements: tuple[Requirement, ...] = Field(default=(), max_length=200, description="PyPI requirements")
    platform: RangeText | None = Field(
        default=None, description="the Agent Factory versions it runs on, e.g. '>=0.1,<1'; none: any"
    )
    input_schema: str | None = Field(default=None, description="path of a JSON schema inside the pack")
    output_schema: str | None = None
    resources: Resources = Resources()
    execution_mode: Literal["pool", "dedicated"] = "pool"
    network: bool = False
    resilience: Resilience = Resilience()
    migrations: Migrations = Migrations()
    metadata: Metadata = Metadata()

    @field_validator("input_schema", "output_schema")
    @classmethod
    def _inside(cls, path: str | None) -> str | None:
        if path is not None:
            pure = PurePosixPath(path)
            if pure.is_absolute() or ".." in pure.parts or "\\" in path or not pure.parts:
                raise ValueError("expected a relative path inside the pack, e.g. 'schemas/input.json'")
        return path

    @property
    def semver(self) -> Version:
        """The version as a :class:`semver.Version`."""
        return parse_version(self.version)


def load_spec(directory: Path) -> PackSpec:
    """``<directory>/agent.pack.yaml``, parsed and validated."""
    path = directory / SPEC_FILE
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_SPEC_BYTES + 1)
    except OSError as exc:
        raise PackSpecError([SpecProblem(str(path), None, "", f"cannot read it: {exc.strerror}")]) from None
    return parse_spec(raw, str(path))


def parse_spec(raw: bytes | str, file: str = SPEC_FILE) -> PackSpec:
    """Parse a pack file's text; :class:`PackSpecError` lists each problem with its line."""
    data = raw.encode() if isinstance(raw, str) else raw
    if len(data) > MAX_SPEC_BYTES:
        raise PackSpecError([SpecProblem(file, None, "", f"larger than {MAX_SPEC_BYTES // 1024} KB")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackSpecError([SpecProblem(file, None, "", f"not UTF-8 (byte {exc.start})")]) from None
    root, loaded = _load_yaml(text, file)
    if not isinstance(loaded, dict):
        line = root.start_mark.line + 1 if root is not None else 1
        raise PackSpecError([SpecProblem(file, line, "", "expected a mapping of fields (name: …)")])
    try:
        return PackSpec.model_validate(loaded)
    except ValidationError as exc:
        assert root is not None
        raise PackSpecError([_problem(file, root, err) for err in exc.errors()]) from None


def _load_yaml(text: str, file: str) -> tuple[yaml.Node | None, Any]:
    """The composed node tree (for line numbers) and the plain data built from it."""
    loader = yaml.SafeLoader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:
            raise PackSpecError(
                [SpecProblem(file, None, "", f"nested deeper than {MAX_DEPTH} levels")]
            ) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            line = mark.line + 1 if mark is not None else None
            raise PackSpecError([SpecProblem(file, line, "", f"not valid YAML: {exc.problem}")]) from None
        except yaml.YAMLError as exc:
            raise PackSpecError([SpecProblem(file, None, "", f"not valid YAML: {exc}")]) from None
        if root is None:
            raise PackSpecError([SpecProblem(file, 1, "", "empty: expected a mapping of fields")])
        _check_shape(root, file)
        try:
            return root, loader.construct_document(root)
        except yaml.MarkedYAMLError as exc:  # e.g. an unknown !tag
            mark = exc.problem_mark
            line = mark.line + 1 if mark is not None else None
            raise PackSpecError([SpecProblem(file, line, "", f"not valid here: {exc.problem}")]) from None
    finally:
        loader.dispose()


def _check_shape(root: yaml.Node, file: str) -> None:
    """No node deeper than MAX_DEPTH, none reached twice (anchors and aliases), no duplicate key."""
    seen: set[int] = set()
    stack: list[tuple[yaml.Node, int]] = [(root, 1)]
    while stack:
        node, depth = stack.pop()
        line = node.start_mark.line + 1
        if id(node) in seen:
            raise PackSpecError([SpecProblem(file, line, "", "anchors and aliases are not allowed")])
        seen.add(id(node))
        if depth > MAX_DEPTH:
            raise PackSpecError([SpecProblem(file, line, "", f"nested deeper than {MAX_DEPTH} levels")])
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    if key.value in keys:
                        where = key.start_mark.line + 1
                        raise PackSpecError([SpecProblem(file, where, str(key.value), "given twice")])
                    keys.add(key.value)
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((item, depth + 1) for item in node.value)


def _problem(file: str, root: yaml.Node, err: ErrorDetails) -> SpecProblem:
    loc = err["loc"]
    node, key_node, path = root, None, []
    for part in loc:
        child = _child(node, part)
        if child is None:  # a union's branch name, or a field that is missing
            continue
        key_node, node = child
        path.append(str(part))
    if err["type"] == "extra_forbidden":
        line_node = key_node or node
        message = "unknown field; " + _expected_fields(loc[:-1])
    elif err["type"] == "missing":
        line_node = node
        path.append(str(loc[-1]))
        message = "required, missing"
    else:
        line_node = node
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "string_type" and loc and loc[-1] == "version":
            message += " (quote it: version: '1.0.0')"
    field = ".".join(path) if path else ".".join(str(p) for p in loc)
    return SpecProblem(file, line_node.start_mark.line + 1, field, message)


def _child(node: yaml.Node, part: int | str) -> tuple[yaml.Node | None, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode) and isinstance(part, str):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value == part:
                return key, value
    if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        item = node.value[part]
        return None, item
    return None


def _expected_fields(loc: tuple[int | str, ...]) -> str:
    model: Any = PackSpec
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        models = [
            a for a in (annotation, *get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)
        ]
        if not models:
            return "see docs/packaging.md"
        model = models[0]
    return "expected one of: " + ", ".join(model.model_fields)


def read_schema(pack_dir: Path, member: str | None) -> dict[str, Any] | None:
    """The JSON schema ``member`` (an ``input_schema``/``output_schema`` path) of the pack
    in ``pack_dir``, None when it names none; :class:`PackagingError` naming the file
    when it is not a readable JSON object."""
    if member is None:
        return None
    try:
        loaded = json.loads((pack_dir / member).read_text())
    except (OSError, ValueError) as exc:
        raise PackagingError(f"{member}: not a readable JSON schema ({exc})") from None
    if not isinstance(loaded, dict):
        raise PackagingError(f"{member}: a JSON schema is an object")
    return loaded

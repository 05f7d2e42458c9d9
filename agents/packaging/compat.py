"""Breaking changes between two versions of an agent, read off their JSON schemas.

A caller of version N must keep working with N+1 unless the major version says
otherwise. So the **input** schema may only accept more, and the **output**
schema may only promise more:

=================  ==========================================  ===========================================
                   input (what callers send)                   output (what callers read)
=================  ==========================================  ===========================================
field removed      break (a caller's field is refused/ignored)  break
type changed       break unless the new types include the old   break unless the new types are among the old
required           break when a field becomes required (or a    break when a required field becomes optional
                   new required field appears)                  (or nullable)
enum               break when a value is dropped                break when a value is added
=================  ==========================================  ===========================================

``integer`` counts as a kind of ``number``. Nested objects (``properties``),
array items, ``$ref`` into ``$defs``/``definitions`` and ``anyOf``/``oneOf``
(pydantic's ``Optional``) are followed. Not checked yet: numeric and length
bounds, patterns, formats, ``additionalProperties`` changes.

:func:`check_bump` refuses breaks without a major bump; below 1.0.0 a minor
bump counts as major (``0.3.1 → 0.4.0`` may break, ``0.3.1 → 0.3.2`` may not),
as SemVer's convention for initial development goes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from agents.packaging.errors import BreakingChangeWithoutMajorBump, PackagingError
from agents.packaging.versions import parse_version

__all__ = ["Break", "check_bump", "input_breaks", "output_breaks", "schema_breaks"]

Side = Literal["input", "output"]
Schema = Mapping[str, Any]
_Seen = frozenset[tuple[str, str]]
_MAX_DEPTH: Final = 64


@dataclass(frozen=True)
class Break:
    side: Side
    path: str  # "/site/country", "/lines[]/kg"; "/" for the document itself
    kind: Literal["removed", "retyped", "required", "optional", "enum"]
    detail: str

    def __str__(self) -> str:
        return f"{self.side} {self.path}: {self.detail}"


def schema_breaks(
    old_input: Schema, new_input: Schema, old_output: Schema, new_output: Schema
) -> list[Break]:
    """Every break of the input and output schemas, inputs first, each side in path order."""
    return input_breaks(old_input, new_input) + output_breaks(old_output, new_output)


def input_breaks(old: Schema, new: Schema) -> list[Break]:
    return sorted(_compare("input", old, new, _Roots(old, new), "/", frozenset()), key=lambda b: b.path)


def output_breaks(old: Schema, new: Schema) -> list[Break]:
    return sorted(_compare("output", old, new, _Roots(old, new), "/", frozenset()), key=lambda b: b.path)


def check_bump(old_version: str, new_version: str, breaks: list[Break]) -> None:
    """Refuse ``new_version`` when it does not follow ``old_version`` or breaks without a major bump."""
    old, new = parse_version(old_version), parse_version(new_version)
    if new <= old:
        raise PackagingError(
            f"version {new_version} does not follow {old_version}: a new version must be higher"
        )
    if not breaks:
        return
    major = new.major > old.major if old.major > 0 else (new.major > 0 or new.minor > old.minor)
    if not major:
        needed = f"{old.major + 1}.0.0" if old.major > 0 else f"0.{old.minor + 1}.0 or 1.0.0"
        listed = "; ".join(str(b) for b in breaks[:10]) + (
            f"; and {len(breaks) - 10} more" if len(breaks) > 10 else ""
        )
        raise BreakingChangeWithoutMajorBump(
            f"{old_version} → {new_version} breaks callers ({listed}): a breaking change needs a major "
            f"bump, at least {needed}",
            [str(b) for b in breaks],
        )


@dataclass(frozen=True)
class _Roots:
    old: Schema
    new: Schema


def _compare(side: Side, old: Schema, new: Schema, roots: _Roots, path: str, seen: _Seen) -> Iterator[Break]:
    refs = (str(old.get("$ref", "")), str(new.get("$ref", "")))
    if refs != ("", ""):  # a recursive model: each pair of definitions is compared once per path
        if refs in seen or len(seen) > _MAX_DEPTH:
            return
        seen = seen | {refs}
    old, new = _deref(old, roots.old), _deref(new, roots.new)
    old_types, new_types = _types(old, roots.old), _types(new, roots.new)
    accepted, given = (old_types, new_types) if side == "input" else (new_types, old_types)
    if not _covers(given, accepted):  # input: new must take all the old took; output: the reverse
        if _covers(given | {"null"}, accepted):  # null is the only difference
            said = "no longer accepts null" if side == "input" else "may now be null"
            yield Break(side, path, "retyped", said)
        else:
            yield Break(side, path, "retyped", f"type {_spell(old_types)} became {_spell(new_types)}")
        return
    yield from _enum(side, old, new, path)
    old_obj, new_obj = _object(old, roots.old), _object(new, roots.new)
    if old_obj is not None and new_obj is not None:
        yield from _fields(side, old_obj, new_obj, roots, path, seen)
    old_items, new_items = _items(old, roots.old), _items(new, roots.new)
    if old_items is not None and new_items is not None:
        yield from _compare(side, old_items, new_items, roots, _join(path, "[]"), seen)


def _fields(side: Side, old: Schema, new: Schema, roots: _Roots, path: str, seen: _Seen) -> Iterator[Break]:
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    old_req, new_req = set(old.get("required", ())), set(new.get("required", ()))
    for name in sorted(old_props):
        here = _join(path, name)
        if name not in new_props:
            yield Break(side, here, "removed", "removed")
            continue
        if side == "input" and name in new_req and name not in old_req:
            yield Break(side, here, "required", "now required")
        if side == "output" and name in old_req and name not in new_req:
            yield Break(side, here, "optional", "no longer always present")
        yield from _compare(side, old_props[name], new_props[name], roots, here, seen)
    if side == "input":
        for name in sorted(set(new_props) - set(old_props)):
            if name in new_req:
                yield Break(side, _join(path, name), "required", "new required field")


def _enum(side: Side, old: Schema, new: Schema, path: str) -> Iterator[Break]:
    old_values, new_values = _values(old), _values(new)
    if old_values is None and new_values is None:
        return
    if side == "input":
        if new_values is not None and (old_values is None or not old_values <= new_values):
            dropped = sorted(map(repr, (old_values or set()) - new_values)) or ["(any value before)"]
            yield Break(side, path, "enum", f"no longer accepts {', '.join(dropped)}")
    elif old_values is not None and (new_values is None or not new_values <= old_values):
        added = sorted(map(repr, (new_values or set()) - old_values)) or ["(any value now)"]
        yield Break(side, path, "enum", f"may now return {', '.join(added)}")


def _values(schema: Schema) -> set[Any] | None:
    if "const" in schema:
        return {_hashable(schema["const"])}
    if "enum" in schema:
        return {_hashable(v) for v in schema["enum"]}
    return None


def _hashable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | None) else repr(value)


def _deref(schema: Any, root: Schema) -> Schema:
    seen = 0
    while isinstance(schema, Mapping) and isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
        ref: str = schema["$ref"]
        if not ref.startswith("#/"):
            return {}  # remote refs are not followed: treated as "any"
        target: Any = root
        for part in ref[2:].split("/"):
            target = (
                target.get(part.replace("~1", "/").replace("~0", "~"), {})
                if isinstance(target, Mapping)
                else {}
            )
        schema, seen = target, seen + 1
    return schema if isinstance(schema, Mapping) else {}


def _branches(schema: Schema, root: Schema) -> list[Schema]:
    listed = schema.get("anyOf") or schema.get("oneOf")
    if isinstance(listed, list):
        return [b for branch in listed for b in _branches(_deref(branch, root), root)]
    return [schema]


def _types(schema: Schema, root: Schema) -> frozenset[str]:
    found: set[str] = set()
    for branch in _branches(schema, root):
        declared = branch.get("type")
        if isinstance(declared, str):
            found.add(declared)
        elif isinstance(declared, list):
            found.update(t for t in declared if isinstance(t, str))
        elif "properties" in branch:
            found.add("object")
        elif "const" in branch or "enum" in branch:
            found.update(_type_of(v) for v in (branch.get("enum") or [branch.get("const")]))
        else:
            return frozenset({"any"})
    return frozenset(found)


def _type_of(value: Any) -> str:
    kinds = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else kinds.get(type(value), "any")


def _covers(wide: frozenset[str], narrow: frozenset[str]) -> bool:
    """Does ``wide`` admit every type ``narrow`` admits?"""
    if "any" in wide:
        return True
    if "any" in narrow:
        return False
    return all(t in wide or (t == "integer" and "number" in wide) for t in narrow)


def _object(schema: Schema, root: Schema) -> Schema | None:
    for branch in _branches(schema, root):
        if "properties" in branch or branch.get("type") == "object":
            return branch
    return None


def _items(schema: Schema, root: Schema) -> Schema | None:
    for branch in _branches(schema, root):
        if isinstance(branch.get("items"), Mapping):
            items: Schema = branch["items"]
            return items
    return None


def _join(path: str, part: str) -> str:
    if part == "[]":
        return path + "[]" if path != "/" else "/[]"
    return f"{path.rstrip('/')}/{part}"


def _spell(types: frozenset[str]) -> str:
    return " | ".join(sorted(types)) or "none"

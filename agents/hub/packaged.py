"""An installed agent version as the platform's own processes know it: its key,
version, description, resilience and schemas, read from its pack, and never
its code. The code runs only in the version's dedicated workers, started in
the version's own directory (:mod:`agents.hub.install`): the gateway imports
no package, so a package's import-time code never runs in the gateway, and two
versions of one module never meet in one interpreter.

Input is checked here against the pack's JSON schema (``input_schema``; a pack
without one accepts any JSON object here and is checked by its own model in
the worker, where a mismatch fails the run as an input error).
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, RootModel, model_validator

from agents.contract import Agent, RunContext
from agents.errors import AgentError
from agents.packaging.spec import PackSpec
from agents.store.installs import InstalledVersion

__all__ = ["ANY_OBJECT", "PackagedAgent", "is_packaged", "packaged_agent"]

ANY_OBJECT: Final[dict[str, Any]] = {"type": "object"}
_MAX_ERRORS: Final = 10


class PackagedAgent(Agent[BaseModel, BaseModel]):
    """Stands for an installed version in the gateway (see the module's docstring)."""

    execution_mode: ClassVar[str] = "dedicated"
    installed: ClassVar[InstalledVersion]

    async def run(self, input: BaseModel, ctx: RunContext) -> BaseModel:
        raise AgentError(f"{self.key} {self.version} runs in its dedicated workers, not here")


def is_packaged(agent: Agent[Any, Any]) -> bool:
    return isinstance(agent, PackagedAgent)


def packaged_agent(row: InstalledVersion) -> PackagedAgent:
    """The stand-in of ``row``'s version (its pack's spec and schemas)."""
    spec = PackSpec.model_validate(row.spec)
    attrs: dict[str, Any] = {
        "key": row.agent, "version": row.version, "description": row.description, "installed": row,
        "Input": _schema_model(f"{_camel(row.agent)}Input", row.input_schema),
        "Output": _schema_model(f"{_camel(row.agent)}Output", row.output_schema),
        "resilience": spec.resilience, "ack_wait_s": max(30.0, spec.resources.timeout_s),
    }  # fmt: skip
    cls: type[PackagedAgent] = type(f"Packaged{_camel(row.agent)}", (PackagedAgent,), attrs)
    return cls()


def _camel(key: str) -> str:
    return "".join(part.capitalize() for part in key.split("-"))


def _schema_model(name: str, schema: dict[str, Any]) -> type[BaseModel]:
    """A model that holds any JSON value and accepts it only when ``schema`` does."""
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise AgentError(f"{name}: the pack's schema is not a JSON schema: {exc.message}") from None
    validator = Draft202012Validator(schema)

    class Checked(RootModel[Any]):
        @model_validator(mode="after")
        def _matches(self) -> Checked:
            errors = sorted(validator.iter_errors(self.root), key=lambda e: list(e.absolute_path))
            if errors:
                said = "; ".join(
                    f"{'/'.join(str(p) for p in e.absolute_path) or '(the input)'}: {e.message}"
                    for e in errors[:_MAX_ERRORS]
                )
                raise ValueError(said)
            return self

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return schema

    Checked.__name__ = Checked.__qualname__ = name
    return Checked

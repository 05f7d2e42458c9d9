"""Typed payloads: a registry of pydantic models, one per payload type name.

An envelope's ``type`` names its payload schema (``carbon.calculate.request``).
When a model is registered for that name, senders are refused before publish
and receivers reject (and count) a payload that does not match; the handler
then sees the parsed model instance as ``envelope.payload``. Types with no
registered model pass through untouched: validation is opt-in per type. The
JSON schema of every registered type is available for docs and the API.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from mesh.channels.errors import InvalidPayload
from mesh.envelope import validation_errors

__all__ = ["SchemaRegistry"]


class SchemaRegistry:
    """Payload type name -> pydantic model."""

    def __init__(self) -> None:
        self._models: dict[str, type[BaseModel]] = {}

    def register(self, type_name: str, model: type[BaseModel]) -> None:
        """Register (or replace) the model for ``type_name``."""
        self._models[type_name] = model

    def validate(self, type_name: str, payload: Any) -> Any:
        """Return ``payload`` parsed into its model; raise :class:`InvalidPayload`.

        A payload that already is an instance of the registered model is
        returned as is (it was validated when it was built).
        """
        model = self._models.get(type_name)
        if model is None or isinstance(payload, model):
            return payload
        try:
            return model.model_validate(payload)
        except ValidationError as exc:
            raise InvalidPayload(type_name, validation_errors(exc, first_only=True)) from exc

    def json_schemas(self) -> dict[str, dict[str, Any]]:
        """Every registered type's JSON schema, by type name."""
        return {name: model.model_json_schema() for name, model in sorted(self._models.items())}

    def __contains__(self, type_name: object) -> bool:
        return type_name in self._models

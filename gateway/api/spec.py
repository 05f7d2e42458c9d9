"""The API's OpenAPI 3.1 document, generated from the routes themselves.

Every handler carries an :func:`endpoint` marker naming its summary and the pydantic
models it reads and answers with, the same ones it validates and dumps with, so the
document cannot drift from the code. :func:`openapi` walks the app's router: a route
without a marker is missing from the document, and
``tests/integration/gateway/test_openapi.py`` fails on it.

```python
@routes.get("/api/v1/runs/{run_id}")
@endpoint("One run's state", response=RunView, errors=(404,))
async def get_run(request: web.Request) -> web.Response: ...
```
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Final, TypeVar

from aiohttp import web
from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode

from gateway.api.auth import OPEN_PATHS
from gateway.api.params import PATH_SCHEMAS, ecma_pattern
from gateway.api.problems import Problem

__all__ = ["Endpoint", "endpoint", "endpoint_of", "openapi"]

TITLE: Final = "Agent Factory management API"
REF: Final = "#/components/schemas/{model}"
PROBLEM_TYPE: Final = "application/problem+json"
_MARK: Final = "__endpoint__"
_PARAM: Final = re.compile(r"\{(\w+)(?::[^}]*)?\}")
# Answers any route may give whatever it declares: a malformed correlation id (400),
# and past the auth middleware, no or a wrong token (401), one whose scope or tenant
# does not reach the route (403), and the rate limit (429).
_ANY_ROUTE: Final = (400,)
_SECURED: Final = (401, 403, 429)
_WITH_BODY: Final = (400, 413, 415, 422)

H = TypeVar("H", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Endpoint:
    """What the document says of one handler (see :func:`endpoint`)."""

    summary: str
    response: Any  # a pydantic model or any type TypeAdapter takes (``list[X]``, ``A | B``)
    body: Any = None
    query: type[BaseModel] | None = None
    path: Mapping[str, re.Pattern[str]] = field(default_factory=dict)
    status: tuple[int, ...] = (200,)
    errors: tuple[int, ...] = ()
    tags: tuple[str, ...] = ()
    media_type: str = "application/json"
    description: str | None = None
    body_media_type: str = "application/json"


def endpoint(
    summary: str,
    *,
    response: Any = None,
    body: Any = None,
    query: type[BaseModel] | None = None,
    path: Mapping[str, re.Pattern[str]] | None = None,
    status: int | tuple[int, ...] = 200,
    errors: tuple[int, ...] = (),
    tags: tuple[str, ...] = (),
    media_type: str = "application/json",
    body_media_type: str = "application/json",
) -> Callable[[H], H]:
    """Mark a handler for the OpenAPI document.

    ``body`` and ``query`` are the models the handler validates its body and query
    with; ``response`` the model of what it answers with ``status`` (one code, or
    several that share the body); ``errors`` the 4xx/5xx codes it may answer with
    (each a problem+json ``Problem``; those every route or body shares are added).
    ``response=None`` is for a ``204`` with no body. A path parameter's schema comes
    from :data:`~gateway.api.params.PATH_SCHEMAS` by its name; ``path`` gives the
    pattern of one that means something else here. The handler's docstring, if any,
    is the operation's description. ``body_media_type``: a body that is not JSON
    (``body=bytes``, e.g. an upload).
    """

    def mark(handler: H) -> H:
        spec = Endpoint(
            summary, response, body, query, path or {}, status if isinstance(status, tuple) else (status,),
            errors, tags, media_type, handler.__doc__ and " ".join(handler.__doc__.split()), body_media_type,
        )  # fmt: skip
        setattr(handler, _MARK, spec)
        return handler

    return mark


def endpoint_of(handler: Callable[..., Any]) -> Endpoint | None:
    return getattr(handler, _MARK, None)


_built: weakref.WeakKeyDictionary[web.Application, dict[str, Any]] = weakref.WeakKeyDictionary()


def openapi(app: web.Application) -> dict[str, Any]:
    """The document of ``app``'s marked routes (built once per app: routes are fixed once it serves)."""
    if (doc := _built.get(app)) is None:
        doc = _built[app] = _document(app)
    return doc


def _routes(app: web.Application) -> Iterator[tuple[str, str, Endpoint, str]]:
    """(method, path template, marker, operation id) of every marked route; aiohttp adds
    a HEAD beside each GET, which is no operation of its own."""
    for route in app.router.routes():
        spec = endpoint_of(route.handler)
        if route.method == "HEAD" or route.resource is None or spec is None:
            continue
        yield route.method, route.resource.canonical, spec, route.handler.__name__


class _Schemas:
    """The schemas the operations name, generated together so that one model reached
    from several operations becomes one component (``X-Input``/``X-Output`` when its
    request and response forms differ)."""

    def __init__(self) -> None:
        self._wanted: dict[tuple[int, JsonSchemaMode], TypeAdapter[Any]] = {}
        self._refs: dict[tuple[int, JsonSchemaMode], dict[str, Any]] = {}
        self.components: dict[str, Any] = {}

    def want(self, form: Any, mode: JsonSchemaMode) -> None:
        self._wanted.setdefault((id(form), mode), TypeAdapter(form))

    def generate(self) -> None:
        inputs = [(key[0], key[1], adapter) for key, adapter in self._wanted.items()]
        self._refs, defs = TypeAdapter.json_schemas(inputs, ref_template=REF)
        self.components = defs.get("$defs", {})

    def ref(self, form: Any, mode: JsonSchemaMode) -> dict[str, Any]:
        """The schema of ``form`` (a ``$ref`` to a component for a model)."""
        return self._refs[(id(form), mode)]


def _document(app: web.Application) -> dict[str, Any]:
    schemas = _Schemas()
    schemas.want(Problem, "serialization")
    marked = list(_routes(app))
    for _, _, spec, _ in marked:
        if spec.response is not None:
            schemas.want(spec.response, "serialization")
        if spec.body is not None:
            schemas.want(spec.body, "validation")
    schemas.generate()
    paths: dict[str, dict[str, Any]] = {}
    for method, path, spec, op_id in marked:
        template = _PARAM.sub(r"{\1}", path)
        paths.setdefault(template, {})[method.lower()] = _operation(path, spec, op_id, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": TITLE, "version": "v1"},
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "paths": paths,
        "components": {
            "schemas": schemas.components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _operation(path: str, spec: Endpoint, op_id: str, schemas: _Schemas) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "summary": spec.summary}
    if spec.description:
        op["description"] = spec.description
    if spec.tags:
        op["tags"] = list(spec.tags)
    if params := [*_path_parameters(path, spec.path), *_query_parameters(spec.query, schemas)]:
        op["parameters"] = params
    if spec.body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {spec.body_media_type: {"schema": schemas.ref(spec.body, "validation")}},
        }
    responses: dict[str, Any] = {}
    for status in spec.status:
        responses[str(status)] = _response(status, spec, schemas)
    errors = {*_ANY_ROUTE, *spec.errors, *(_WITH_BODY if spec.body is not None else ())}
    if path not in OPEN_PATHS:
        errors.update(_SECURED)
    else:
        op["security"] = []
    shown = {"content": {PROBLEM_TYPE: {"schema": schemas.ref(Problem, "serialization")}}}
    for status in sorted(errors - set(spec.status)):
        responses[str(status)] = {"description": HTTPStatus(status).phrase, **shown}
    responses["default"] = {"description": "Any other error", **shown}
    op["responses"] = responses
    return op


def _response(status: int, spec: Endpoint, schemas: _Schemas) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": HTTPStatus(status).phrase}
    if spec.response is not None and status != 204:
        schema = schemas.ref(spec.response, "serialization")
        answer["content"] = {spec.media_type: {"schema": schema}}
    return answer


def _path_parameters(path: str, own: Mapping[str, re.Pattern[str]]) -> list[dict[str, Any]]:
    """``{name}`` in the template, typed by the route's own pattern, else by
    :data:`~gateway.api.params.PATH_SCHEMAS`."""

    def schema(name: str) -> dict[str, Any]:
        if name in own:
            return {"type": "string", "pattern": ecma_pattern(own[name].pattern)}
        return PATH_SCHEMAS.get(name, {"type": "string"})

    return [{"name": n, "in": "path", "required": True, "schema": schema(n)} for n in _PARAM.findall(path)]


def _query_parameters(query: type[BaseModel] | None, schemas: _Schemas) -> list[dict[str, Any]]:
    if query is None:
        return []
    schema = query.model_json_schema(ref_template=REF)
    schemas.components.update(schema.get("$defs", {}))
    required = set(schema.get("required", ()))
    return [
        {"name": name, "in": "query", "required": name in required, "schema": _plain(prop)}
        | ({"description": prop["description"]} if "description" in prop else {})
        for name, prop in schema["properties"].items()
    ]


def _plain(prop: dict[str, Any]) -> dict[str, Any]:
    """A property's schema as a parameter's: a query value is absent or a string, never
    null, so ``X | None`` is ``X``; its title and description go on the parameter."""
    branches = [b for b in prop.get("anyOf", ()) if b != {"type": "null"}]
    if len(branches) == 1:
        prop = {**prop, **branches[0]}
        del prop["anyOf"]
        if prop.get("default", ...) is None:
            del prop["default"]
    return {k: v for k, v in prop.items() if k not in ("title", "description")}

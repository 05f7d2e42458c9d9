"""The Agent Hub's routes: search, versions, one version, its archive.

A tenant's token sees public packages and its tenant's own (row security in
PostgreSQL, :mod:`agents.store.hub_index`); another tenant's private package
is 404, as if it did not exist. A download is checked against the digest the
index holds before a byte is sent (:mod:`agents.hub`).
"""

from __future__ import annotations

import base64
import re
from typing import Final

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from agents.hub import Hub, HubPackage
from gateway.api.auth import principal, tenant_scoped
from gateway.api.bodies import json_response
from gateway.api.params import path_value
from gateway.api.services import SERVICES, Services
from gateway.api.spec import endpoint

__all__ = ["PACKAGE", "VERSION", "routes"]

routes = web.RouteTableDef()

PACKAGE: Final = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")  # as hub_packages.name
VERSION: Final = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,63}")
TAG: Final = r"[a-z0-9][a-z0-9-]{0,31}"
_PATH: Final = {"package": PACKAGE, "version": VERSION}


class SearchQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(default="", max_length=200, pattern=r"^[^\x00]*$", description="words, or a name prefix")
    tags: str = Field(
        default="", pattern=f"^(?:{TAG}(?:,{TAG})*)?$", description="comma-separated: all of them"
    )
    limit: int = Field(default=20, ge=1, le=200)
    offset: int = Field(default=0, ge=0, le=100_000)


class PackageList(BaseModel):
    packages: list[HubPackage]


def _hub(request: web.Request) -> Hub:
    svc: Services = request.app[SERVICES]
    return Hub(svc.pool, svc.nc, svc.js)


def _name_version(request: web.Request) -> tuple[str, str]:
    name = path_value(request, "package", PACKAGE, "package name")
    return name, path_value(request, "version", VERSION, "version")


@routes.get("/api/v1/hub/packages")
@endpoint("Search the hub: each package's newest version, best match first", query=SearchQuery,
          response=PackageList, errors=(422,), tags=("hub",))  # fmt: skip
@tenant_scoped
async def search(request: web.Request) -> web.Response:
    q = SearchQuery.model_validate(dict(request.query))
    tags = [t for t in q.tags.split(",") if t]
    found = await _hub(request).search(q.q, tags, tenant=principal(request).tenant, limit=q.limit,
                                       offset=q.offset)  # fmt: skip
    return json_response({"packages": [p.model_dump(mode="json") for p in found]})


@routes.get("/api/v1/hub/packages/{package}")
@endpoint("Every version of a package, newest first", response=PackageList, path=_PATH, errors=(404,),
          tags=("hub",))  # fmt: skip
@tenant_scoped
async def versions(request: web.Request) -> web.Response:
    name = path_value(request, "package", PACKAGE, "package name")
    found = await _hub(request).versions(name, tenant=principal(request).tenant)
    if not found:
        raise web.HTTPNotFound(text=f"no package {name} in the hub")
    return json_response({"packages": [p.model_dump(mode="json") for p in found]})


@routes.get("/api/v1/hub/packages/{package}/{version}")
@endpoint("One version of a package: what the index holds", response=HubPackage, path=_PATH, errors=(404,),
          tags=("hub",))  # fmt: skip
@tenant_scoped
async def package(request: web.Request) -> web.Response:
    name, version = _name_version(request)
    found = await _hub(request).get(name, version, tenant=principal(request).tenant)
    return json_response(found.model_dump(mode="json"))


@routes.get("/api/v1/hub/packages/{package}/{version}/archive")
@endpoint("Download a version's .glpack, checked against its digest first", response=bytes, path=_PATH,
          errors=(404, 502), tags=("hub",), media_type="application/gzip")  # fmt: skip
@tenant_scoped
async def archive(request: web.Request) -> web.Response:
    """The archive's SHA-256 is in ``Digest`` (RFC 3230, base64) and ``X-Package-Sha256`` (hex):
    a client checks what it received against them."""
    name, version = _name_version(request)
    found, data = await _hub(request).download(name, version, tenant=principal(request).tenant)
    digest = base64.b64encode(bytes.fromhex(found.digest)).decode()
    headers = {
        "Digest": f"sha-256={digest}",
        "X-Package-Sha256": found.digest,
        "Content-Disposition": f'attachment; filename="{name}-{version}.glpack"',
    }
    return web.Response(body=data, content_type="application/gzip", headers=headers)

"""The Agent Hub: package archives in the JetStream object store, their index in
PostgreSQL (:mod:`agents.store.hub_index`), each tenant seeing public packages and
its own."""

from agents.hub.catalog import Hub, Published
from agents.store.hub_index import HubPackage, PackageExists, PackageNotFound

__all__ = ["Hub", "HubPackage", "PackageExists", "PackageNotFound", "Published"]

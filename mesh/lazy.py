"""Package facades that load their exported names on first use.

A package's ``__init__`` names what it exports and where each name lives;
importing one module of the package then does not load them all (a sandbox
template imports ``mesh.names`` without nats-py, aiohttp or Prometheus)::

    _WHERE = {"TaskQueue": "mesh.queue.producer", ...}
    __getattr__ = lazy_exports(__name__, _WHERE)

Do not export a name that is also a submodule's (``mesh.provision``): once
the submodule is imported, the package attribute is the module.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each name in ``where`` is imported from
    its module when first asked for."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__

"""Input/output JSON schemas derived from a pack's entry point, at pack time.

When ``agent.pack.yaml`` names no ``input_schema``/``output_schema`` and the
packer asks for it (``pack(..., derive_schemas=True)``, ``agent pack
--derive-schemas``), the entry point's ``Input`` and ``Output`` models are
rendered as ``schemas/input.json`` and ``schemas/output.json`` in the pack.

The agent's module is imported in a child interpreter (this one's, with the
pack's directory first on its path), so its import side effects and modules
stay out of the packing process, and packing twice never reuses a stale
import. The JSON is written with sorted keys: the same models give the same
bytes, so a derived pack stays reproducible.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

from agents.packaging.errors import PackagingError

__all__ = ["DERIVED_INPUT", "DERIVED_OUTPUT", "derive_schemas", "schema_bytes"]

DERIVED_INPUT: Final = "schemas/input.json"
DERIVED_OUTPUT: Final = "schemas/output.json"

_SCRIPT: Final = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
module, _, attr = sys.argv[2].partition(":")
cls = getattr(importlib.import_module(module), attr, None)
if cls is None:
    sys.exit(f"module {module!r} has no {attr!r}")
for name in ("Input", "Output"):
    if not hasattr(getattr(cls, name, None), "model_json_schema"):
        sys.exit(f"{attr} has no pydantic {name} model")
print(json.dumps({"input": cls.Input.model_json_schema(), "output": cls.Output.model_json_schema()}))
"""


def derive_schemas(
    tree: Path, entry_point: str, timeout_s: float = 60.0
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The entry point's Input and Output JSON schemas; :class:`PackagingError` naming the
    cause when the module does not import or the class has no models."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", _SCRIPT, str(tree), entry_point],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            cwd=tree,
        )
    except subprocess.TimeoutExpired:
        raise PackagingError(f"importing {entry_point} took over {timeout_s:g} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PackagingError(f"cannot derive schemas from {entry_point}: {last}")
    found = json.loads(done.stdout)
    return found["input"], found["output"]


def schema_bytes(schema: dict[str, Any]) -> bytes:
    return (json.dumps(schema, indent=2, sort_keys=True) + "\n").encode()

"""DDSketch to and from JSON: the one module that reads and writes ddsketch's private attributes.

ddsketch (DataDog's sketches-py) serializes only through protobuf, which this
project does not install. A sketch here is a :class:`ddsketch.DDSketch` (a
logarithmic mapping with relative accuracy ``RELATIVE_ACCURACY`` over dense
stores); :func:`encode` writes its stores' non-empty key range and its summary
(count, sum, min, max, zero count) and :func:`decode` rebuilds an equal sketch.
The stores are reached through ``_store`` / ``_negative_store`` and the summary
through ``_count``, ``_sum``, ``_min``, ``_max``, ``_zero_count``:
``tests/unit/streams/test_canary_sketch.py`` fails naming this module if a
ddsketch release renames them.
"""

from __future__ import annotations

from typing import Any

from ddsketch import DDSketch

from mesh.canary import RELATIVE_ACCURACY

__all__ = ["decode", "encode", "new_sketch"]


def new_sketch() -> DDSketch:
    return DDSketch(relative_accuracy=RELATIVE_ACCURACY)


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _counts(bins: list[float]) -> list[float] | list[int]:
    """Whole counts as ints (the usual case: compact, and C-speed: this runs once per
    event, on every bin of the minute's sketch), others as they are."""
    whole = list(map(int, bins))
    return whole if whole == bins else bins


def _store_json(store: Any) -> list[Any] | None:
    """``[first key, [count per key from it]]``; None for an empty store."""
    if store.count == 0:
        return None
    first = store.min_key - store.offset
    last = store.max_key - store.offset
    return [store.min_key, _counts(store.bins[first : last + 1])]


def _fill(store: Any, data: list[Any] | None) -> None:
    if data is None:
        return
    first, counts = data
    for i, count in enumerate(counts):
        if count:
            store.add(first + i, count)


def encode(sketch: DDSketch) -> dict[str, Any]:
    """The sketch as JSON-ready data (``decode`` reads it back)."""
    s: Any = sketch
    return {
        "a": s._mapping.relative_accuracy,
        "n": _number(s._count),
        "s": s._sum,
        "lo": s._min if s._count else None,
        "hi": s._max if s._count else None,
        "z": _number(s._zero_count),
        "p": _store_json(s._store),
        "m": _store_json(s._negative_store),
    }


def decode(data: dict[str, Any]) -> DDSketch:
    """The sketch ``encode`` wrote. Raises ``ValueError`` for another accuracy than ours
    (sketches of different mappings cannot be merged)."""
    if data["a"] != RELATIVE_ACCURACY:
        raise ValueError(f"a sketch of relative accuracy {data['a']}, expected {RELATIVE_ACCURACY}")
    sketch = new_sketch()
    s: Any = sketch
    _fill(s._store, data["p"])
    _fill(s._negative_store, data["m"])
    s._zero_count = float(data["z"])
    s._count = float(data["n"])
    s._sum = float(data["s"])
    if data["n"]:
        s._min, s._max = data["lo"], data["hi"]
    return sketch

"""The canary's DDSketch codec (``streams.processors.sketch``): round trips, and the
ddsketch internals it relies on, pinned so a ddsketch release that moves them fails here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from ddsketch import DDSketch
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.canary import RELATIVE_ACCURACY
from streams.processors.sketch import decode, encode, new_sketch

values = st.lists(
    st.one_of(
        st.floats(min_value=0.0, max_value=1e7, allow_nan=False),
        st.floats(min_value=-1e4, max_value=0.0, allow_nan=False),
        st.just(0.0),
    ),
    max_size=300,
)


def _sketch(xs: list[float]) -> DDSketch:
    sketch = new_sketch()
    for x in xs:
        sketch.add(x)
    return sketch


def _same(a: DDSketch, b: DDSketch) -> None:
    assert (a.count, a.num_values) == (b.count, b.num_values)
    assert a.sum == pytest.approx(b.sum)  # a merge adds in another order
    if a.count:
        for q in (0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0):
            assert a.get_quantile_value(q) == b.get_quantile_value(q)


@settings(deadline=None)
@given(values)
def test_a_sketch_round_trips_through_json_with_every_quantile_equal(xs: list[float]) -> None:
    sketch = _sketch(xs)
    data = json.loads(json.dumps(encode(sketch)))  # what the changelog carries
    back = decode(data)
    _same(sketch, back)
    assert encode(back) == encode(sketch)


@settings(deadline=None)
@given(values, values)
def test_a_decoded_sketch_merges_as_the_original_would(xs: list[float], ys: list[float]) -> None:
    merged = decode(encode(_sketch(xs)))
    merged.merge(decode(encode(_sketch(ys))))
    _same(merged, _sketch(xs + ys))


def test_a_sketch_of_another_accuracy_is_refused() -> None:
    data = encode(DDSketch(relative_accuracy=0.05))
    with pytest.raises(ValueError, match=r"relative accuracy 0\.05"):
        decode(data)


def test_the_ddsketch_internals_the_codec_reads_are_still_there() -> None:
    """streams/processors/sketch.py reads and writes these private attributes of
    ddsketch (its only serialization is protobuf). If this fails, ddsketch changed:
    adapt that module (and only it) to the new release."""
    sketch: Any = new_sketch()
    sketch.add(12.5)
    sketch.add(0.0)
    sketch.add(-3.0)
    where = "ddsketch changed; adapt streams/processors/sketch.py:"
    for name in ("_mapping", "_store", "_negative_store", "_zero_count", "_count", "_sum", "_min", "_max"):
        assert hasattr(sketch, name), f"{where} DDSketch.{name} is gone"
    assert sketch._mapping.relative_accuracy == RELATIVE_ACCURACY, f"{where} mapping.relative_accuracy"
    assert (sketch._count, sketch._sum, sketch._zero_count) == (3.0, 9.5, 1.0), f"{where} summary fields"
    assert (sketch._min, sketch._max) == (-3.0, 12.5), f"{where} _min/_max"
    for store in (sketch._store, sketch._negative_store):
        for name in ("count", "min_key", "max_key", "offset", "bins", "add"):
            assert hasattr(store, name), f"{where} {type(store).__name__}.{name} is gone"
        assert store.count == 1.0, f"{where} store.count"
        assert store.bins[store.min_key - store.offset] == 1.0, (
            f"{where} bins are no longer offset by .offset"
        )

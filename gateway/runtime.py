"""Process settings for long-running mesh processes (gateway, workers, benchmarks).

CPython's cyclic garbage collector runs a young-generation pass every 700
net allocations and, every so often, a full pass over every live object. A
busy worker or gateway keeps thousands of tasks, futures and messages alive,
so with the defaults it re-scans them hundreds of times a second: measured
on the queue benchmark, that was a quarter of the process's CPU. Reference
counting still frees almost everything at once; the collector is only for
cycles, which these processes make few of.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["GC_THRESHOLDS", "tune_gc"]

#: (young, middle, old): a young pass every 50,000 net allocations instead of 700.
GC_THRESHOLDS: Final = (50_000, 20, 100)


def tune_gc() -> None:
    """Raise the collector's thresholds and move what startup built (modules,
    classes, settings) out of its reach with ``gc.freeze``. Call once, after
    imports, at the start of a long-running process."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)

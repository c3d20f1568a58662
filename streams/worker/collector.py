"""The garbage collector of a worker process: short, rare pauses on the decision path.

CPython's cycle collector stops the event loop while it scans. A worker holds its libraries
(Faust, aiokafka, mode: about 90,000 tracked objects once started) and the decoded states
of the keys it decided lately (up to ``streams.worker.processor.KNOWN_STATES``), almost none
of them ever cyclic garbage: with the default thresholds (700, 10, 10) a full collection
ran every 3-5 s at 1,000 fresh-key opens/s, took 75-155 ms, found 0 objects to free, and
every decision behind it waited (measured with ``gc.callbacks`` and a loop-stall watchdog,
2026-12-02; those pauses were the latency's p99).

So, once the worker is ready (its first recovery done), ``freeze_startup_heap`` collects
once and moves every survivor into the permanent generation, which no later collection
scans (CPython's ``gc.freeze``: the application's start-up objects live as long as the
process; a cycle among them that became garbage later would never be freed, a bounded
one-time cost). ``tune_thresholds`` lets the youngest generation grow to
``YOUNG_THRESHOLD`` objects (a young collection stays a few milliseconds) and makes a full
collection ``OLD_THRESHOLD`` times rarer than by default. Full collections still happen,
by allocation count; reference counting frees everything acyclic at once as before.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

#: Allocations (minus deallocations) between two collections of the youngest generation.
YOUNG_THRESHOLD = 10_000
#: Young collections between two collections of the middle generation (CPython's default).
MIDDLE_THRESHOLD = 10
#: Middle collections between two full ones (CPython's default is 10).
OLD_THRESHOLD = 100


def tune_thresholds() -> None:
    """Sets the collector's thresholds for a worker (``YOUNG_THRESHOLD``, ``MIDDLE_THRESHOLD``, ``OLD_THRESHOLD``)."""
    gc.set_threshold(YOUNG_THRESHOLD, MIDDLE_THRESHOLD, OLD_THRESHOLD)


def freeze_startup_heap() -> int:
    """Collects once, then exempts every object alive now from later collections; returns how many."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    logger.info("%d objects of the started worker are exempt from garbage collection from now on", frozen)
    return frozen


__all__ = ["MIDDLE_THRESHOLD", "OLD_THRESHOLD", "YOUNG_THRESHOLD", "freeze_startup_heap", "tune_thresholds"]

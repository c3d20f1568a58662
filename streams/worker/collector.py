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
one-time cost). ``tune_thresholds`` then keeps each pause short and full collections rare.

What a pause costs is the objects it scans, and what a worker's young and middle generations
hold is mostly the decoded states the agent keeps of the keys it decided (about twelve
tracked objects a state): at 1,000 fresh keys/s nearly every allocation survives. With a
young threshold of 10,000 a middle collection every ~5 s scanned 60,000-70,000 objects for
47-65 ms (``gc.callbacks``, 2026-12-04), which put ~1% of the decisions of a 5 s run behind
it: the latency's p99. A young threshold of 2,000 makes the middle collections a fifth of
that, five times as often: twelve runs of 5 s at 1,000 fresh-key opens/s alternating with the
old thresholds, p99 median 13.5 ms (7-23) against 21 (8-65), max 18-48 ms against 21-107;
54,000 lifecycle inputs end to end 7,218-7,292 inputs/s against 7,326-7,430, ~1.5% less
(2026-12-04 14:59-15:10). A young threshold of 1,000 (middle 5) gave p99 11 ms but 10-20%
less throughput. ``OLD_THRESHOLD`` keeps a full collection as rare by allocation count as
before (young x middle x old = 10,000,000), and CPython also waits until the objects promoted
since the last full collection are a quarter of those that survived it. Reference counting
frees everything acyclic at once as before.
"""

from __future__ import annotations

import gc
import logging

logger = logging.getLogger(__name__)

#: Allocations (minus deallocations) between two collections of the youngest generation.
YOUNG_THRESHOLD = 2_000
#: Young collections between two collections of the middle generation (CPython's default).
MIDDLE_THRESHOLD = 10
#: Middle collections between two full ones (CPython's default is 10).
OLD_THRESHOLD = 500


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

"""The worker's collector settings: thresholds set, start-up heap exempted from later collections."""

from __future__ import annotations

import gc

from streams.worker import collector


def test_tune_thresholds_sets_the_worker_s_generations():
    before = gc.get_threshold()
    try:
        collector.tune_thresholds()
        assert gc.get_threshold() == (collector.YOUNG_THRESHOLD, collector.MIDDLE_THRESHOLD, collector.OLD_THRESHOLD)
    finally:
        gc.set_threshold(*before)


def test_freeze_startup_heap_exempts_every_live_object_and_says_how_many():
    held = [[index] for index in range(1000)]  # tracked objects alive when the worker is ready
    try:
        frozen = collector.freeze_startup_heap()
        assert frozen == gc.get_freeze_count()
        assert frozen >= len(held)
        assert not any(gc.is_tracked(item) and item in gc.get_objects(generation=2) for item in held[:10])
    finally:
        gc.unfreeze()  # the test process goes on collecting as before
    assert gc.get_freeze_count() == 0

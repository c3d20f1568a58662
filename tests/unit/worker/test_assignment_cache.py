"""The agent's ownership check: the consumer's assignment, asked once per group generation."""

from __future__ import annotations

from types import SimpleNamespace

from faust.types import TP

from streams.worker.faust_consumer import owned_by_generation


class CountingConsumer:
    """A consumer whose ``assignment()`` calls are counted (Faust builds a new set on each)."""

    def __init__(self, assignment: set[TP]) -> None:
        self.current = assignment
        self.calls = 0

    def assignment(self) -> set[TP]:
        self.calls += 1
        return set(self.current)


def test_the_assignment_is_asked_once_per_generation_and_again_after_a_rebalance():
    consumer = CountingConsumer({TP("inputs", 0), TP("inputs", 1)})
    app = SimpleNamespace(consumer=consumer, consumer_generation_id=1)
    owned = owned_by_generation(app)

    before = [owned(TP("inputs", 0)), owned(TP("inputs", 1)), owned(TP("inputs", 2))]
    calls_in_one_generation = consumer.calls
    consumer.current = {TP("inputs", 2)}  # a rebalance moved partitions 0 and 1 away
    app.consumer_generation_id = 2
    after = [owned(TP("inputs", 0)), owned(TP("inputs", 2))]

    assert (before, calls_in_one_generation, after, consumer.calls) == (
        [True, True, False], 1, [False, True], 2)

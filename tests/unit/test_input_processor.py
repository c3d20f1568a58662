"""The agent's input processor with plain callables: what it sends, and when it stores.

The seam of "kill -9 between the local store write and the changelog flush": after such a
kill the restarted worker's local store already holds the input's state, the changelog does
not, and the input is delivered again. Its decision is a no-op; the processor must still
write the state, so the changelog (standbys, the next owner) converges.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

from streams import serde
from streams.app import ConsumedRecord, InputProcessor, input_of
from streams.domain import InputEvent, Side, Signal, SignalAction
from streams.settings import Settings
from streams.topics import TopicNames

KEY = "APTUSDT@binance"
TOPICS = TopicNames.for_prefix("unit.")


def open_signal(signal_id: str, ts: int = 1_761_173_440_983) -> bytes:
    return serde.encode_input(InputEvent(
        event_id=f"signal:{signal_id}", key=KEY, ts=ts,
        payload=Signal(signal_id=signal_id, action=SignalAction.OPEN, symbol="APTUSDT", exchange="binance",
                       side=Side.BUY, quantity=Decimal("61.8"), stop_loss_pct=Decimal("2.5"), ts=ts)))


class Harness:
    """A processor over a dict table; every send is acknowledged at once and recorded."""

    def __init__(self) -> None:
        self.table: dict[bytes, dict] = {}
        self.stores: list[tuple[bytes, dict]] = []
        self.sent: list[tuple[str, bytes, bytes, list]] = []
        settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"})
        self.processor = InputProcessor(settings=settings, topics=TOPICS, send=self._send, load=self.table.get,
                                        store=self._store)

    async def _send(self, topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
        self.sent.append((topic, key, value, headers))
        acknowledged = asyncio.get_running_loop().create_future()
        acknowledged.set_result(None)
        return acknowledged

    def _store(self, key: bytes, value: dict) -> None:
        self.stores.append((key, value))
        self.table[key] = value

    async def apply(self, offset: int, value: bytes):
        return await self.processor.apply(ConsumedRecord(TOPICS.inputs, 0, offset, KEY.encode(), value, 0))


async def test_an_input_is_sent_before_its_state_is_stored():
    # Arrange
    harness = Harness()

    # Act
    decision = await harness.apply(5, open_signal("s-1"))

    # Assert
    assert decision is not None and decision.commands
    assert [topic for topic, _, _, _ in harness.sent][0] == TOPICS.commands
    assert {input_of(headers) for _, _, _, headers in harness.sent} == {(0, 5)}  # each output names its input
    stored = serde.key_state_from_record(harness.stores[-1][1])
    assert stored.last_offset == 5 and stored.live_position is not None


async def test_a_redelivered_input_is_a_no_op_that_writes_its_state_again():
    # Arrange: the local store already holds the state of offset 5 (its changelog write lost).
    harness = Harness()
    await harness.apply(5, open_signal("s-1"))
    state_before = harness.table[KEY.encode()]
    harness.sent.clear()
    harness.stores.clear()

    # Act: offset 5 delivered again.
    decision = await harness.apply(5, open_signal("s-1"))

    # Assert: nothing sent, nothing decided, the same state written once more.
    assert decision is not None and decision.commands == () and decision.audit is None
    assert harness.sent == []
    assert harness.stores == [(KEY.encode(), state_before)]


async def test_an_input_that_changes_nothing_and_is_not_redelivered_writes_no_state():
    # Arrange: a repeated signal id at a NEW offset is a refusal with an audit, not a redelivery.
    harness = Harness()
    await harness.apply(5, open_signal("s-1"))
    harness.stores.clear()

    # Act
    decision = await harness.apply(6, open_signal("s-1"))

    # Assert: refused and audited; stored once, because the decision moved the key's last offset.
    assert decision is not None and decision.audit is not None and decision.commands == ()
    assert [serde.key_state_from_record(value).last_offset for _, value in harness.stores] == [6]


def test_the_deadline_index_follows_stored_states_and_names_only_passed_deadlines():
    # Arrange: one position in flight (deadline 1000), one active (none), one whose flight ended.
    from streams.app import DeadlineIndex
    from streams.domain import Deadline, Status

    def record(key: str, status: str, deadline_at: int | None) -> dict:
        return {"key": key, "position": {"id": f"{key}/1", "status": status, "deadline_at": deadline_at}}

    index = DeadlineIndex()
    index.rebuild([record("A@binance", "entry_placed", 1000), record("B@binance", "active", None),
                   record("C@binance", "pending_sl", 5000)], frozenset({0}))

    # Act
    before = index.due(999)
    at = index.due(1000)
    index.note(record("A@binance", "active", None))  # the entry was answered and stored
    after_answer = index.due(10_000)

    # Assert
    assert before == []
    (event,) = at
    assert event.key == "A@binance" and event.event_id == "deadline:A@binance/1:entry_placed:1000"
    assert event.payload == Deadline(position_id="A@binance/1", status=Status.ENTRY_PLACED, due_at=1000, ts=1000)
    assert [e.key for e in after_answer] == ["C@binance"]
    assert index.partitions == frozenset({0})

"""serde: every domain value survives domain -> Avro bytes -> domain unchanged."""

from __future__ import annotations

import dataclasses
import io
from decimal import Decimal

import fastavro
import pytest

from benchmarks.lifecycle import POLICY, lifecycle_inputs
from streams.wire import codec, serde
from streams.wire.errors import InvalidRecord
from streams.wire.flat_records import AuditUpdates, CommandRecords, avro_long, avro_string
from streams.wire.key_state_bytes import ArrayItems, KeyStateEncoder, PositionBytes, array_item_encoders
from streams.domain import AppliedInput, Deadline, InputEvent, KeyState, OrderRole, Side, Status, decide
from streams.domain.commands import CancelOrder, ClosePosition, PlaceEntry, PlaceStopLoss, QueryOrder
from streams.domain.model import LatestSnapshot, OrderRef, SeenSignal


def _fold(events):
    """Every decision of a real run of decide() over two keys' whole position lives."""
    states: dict[str, KeyState | None] = {}
    offsets: dict[str, int] = {}
    decisions = []
    for event in events:
        offsets[event.key] = offsets.get(event.key, -1) + 1
        decision = decide(states.get(event.key), AppliedInput(offsets[event.key], event), POLICY)
        states[event.key] = decision.state
        decisions.append(decision)
    return decisions


EVENTS = list(lifecycle_inputs(keys=2, cycles=2))
DECISIONS = _fold(EVENTS)


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: e.event_id)
def test_serde_input_round_trip_returns_an_equal_event(event):
    assert serde.decode_input(serde.encode_input(event)) == event


def test_serde_deadline_input_round_trip_returns_an_equal_event():
    event = InputEvent("deadline:K/1:pending_entry:5", "APTUSDT@binance", 7,
                       Deadline(position_id="APTUSDT@binance/1", status=Status.PENDING_ENTRY, due_at=5, ts=7))
    assert serde.decode_input(serde.encode_input(event)) == event


def test_serde_commands_round_trip_return_equal_commands():
    commands = [command for decision in DECISIONS for command in decision.commands]
    assert {type(c).__name__ for c in commands} >= {"PlaceEntry", "PlaceStopLoss", "ClosePosition"}
    for command in commands:
        assert serde.decode_command(serde.encode_command(command)) == command


def test_serde_position_and_audit_updates_round_trip_return_equal_values():
    for offset, decision in enumerate(DECISIONS):
        position = decision.state.position
        assert serde.decode_update(serde.encode_position_update(decision.state.key, offset, position)) == position
        assert serde.decode_update(serde.encode_audit_update(decision.audit)) == decision.audit


def test_serde_key_state_round_trip_through_the_table_codec_returns_an_equal_state():
    for decision in DECISIONS:
        data = codec.encode("KeyState", serde.key_state_to_record(decision.state))
        assert serde.key_state_from_record(codec.decode("KeyState", data)) == decision.state


def test_key_state_encoder_writes_the_bytes_the_codec_writes_for_every_state_of_a_keys_lives():
    # Each key's states in order, so unchanged fields are taken from the key's last state.
    encoder = KeyStateEncoder()
    many = _fold(lifecycle_inputs(keys=3, cycles=4))

    for decision in many:
        assert encoder.encode(decision.state) == codec.encode("KeyState", serde.key_state_to_record(decision.state))


def test_key_state_encoder_re_encodes_a_field_whose_value_changed_and_keeps_the_others():
    encoder = KeyStateEncoder()
    first = DECISIONS[0].state
    encoder.encode(first)
    changed = dataclasses.replace(first, last_offset=first.last_offset + 40, last_exchange_ts=123_456)

    data = encoder.encode(changed)

    assert serde.key_state_from_record(codec.decode("KeyState", data)) == changed


def test_key_state_encoder_forgets_its_keys_past_its_limit_and_still_writes_them_right():
    encoder = KeyStateEncoder(kept_keys=1)
    for decision in DECISIONS[:6]:
        assert encoder.encode(decision.state) == codec.encode("KeyState", serde.key_state_to_record(decision.state))


def test_position_bytes_write_the_updates_and_states_the_codec_writes_for_every_decision_of_a_keys_lives():
    # As the worker: the update is encoded when decided, the state later with the same position object.
    positions = PositionBytes()
    encoder = KeyStateEncoder(positions=positions)
    many = _fold(lifecycle_inputs(keys=3, cycles=4))
    updates = 0

    for offset, decision in enumerate(many):
        position = decision.state.position
        if decision.position_changed and position is not None:
            updates += 1
            assert positions.update(decision.state.key, offset, position) == serde.encode_position_update(
                decision.state.key, offset, position)
        assert encoder.encode(decision.state) == codec.encode("KeyState", serde.key_state_to_record(decision.state))
    assert updates > 10


def test_key_state_encoder_writes_the_codec_s_bytes_with_every_nested_record_and_array_filled():
    # Arrange: a state whose every optional record, array and union branch is present (the
    # hand encoder takes records and arrays of them), and one with each of them empty.
    ref = OrderRef(client_order_id="cid-1", attempt=2, side=Side.SELL, quantity=Decimal("0.125"))
    state = next(decision.state for decision in DECISIONS if decision.state.position is not None)
    position = dataclasses.replace(
        state.position, entry_order=ref, stop_order=dataclasses.replace(ref, client_order_id="cid-2", side=None),
        close_order=dataclasses.replace(ref, client_order_id="cid-3", quantity=None), seen_reports=("r-1", "r-2"),
        orders_to_cancel=(ref, dataclasses.replace(ref, attempt=70_000)), closed_at_exchange=True,
        closed_at=1_761_173_440_999, deadline_at=None, signal_id="s-\u00e9")
    snapshot = LatestSnapshot(fetched_at=5, received_at=-3, side=Side.BUY, quantity=Decimal("-1.5"),
                              entry_price=Decimal("9.7"), mark_price=None, unrealized_pnl=Decimal("0"))
    full = dataclasses.replace(state, position=position, latest_snapshot=snapshot,
                               seen_signals=tuple(SeenSignal(f"sig-{n}", 1_000 * n) for n in range(70)))
    bare = dataclasses.replace(full, position=dataclasses.replace(position, orders_to_cancel=(), seen_reports=(),
                                                                  entry_order=None),
                               latest_snapshot=None, seen_signals=())

    # Act / Assert
    for value in (full, bare):
        assert KeyStateEncoder().encode(value) == codec.encode("KeyState", serde.key_state_to_record(value))
        assert KeyStateEncoder(positions=PositionBytes()).encode(value) == codec.encode(
            "KeyState", serde.key_state_to_record(value))


def test_key_state_encoder_refuses_a_value_that_does_not_fit_its_field_with_a_typed_error():
    state = next(decision.state for decision in DECISIONS if decision.state.position is not None)

    with pytest.raises(InvalidRecord, match="KeyState"):
        KeyStateEncoder().encode(dataclasses.replace(state, last_offset="late"))
    with pytest.raises(InvalidRecord, match="KeyState"):
        KeyStateEncoder().encode(dataclasses.replace(state, seen_signals=(SeenSignal(None, 1),)))
    with pytest.raises(InvalidRecord, match="KeyState"):
        KeyStateEncoder().encode(dataclasses.replace(state, seen_signals="sig-1"))


def test_key_state_encoder_writes_the_codec_s_bytes_as_a_key_s_seen_signals_grow_shrink_and_empty():
    # As decide does: the same item objects carried over, the oldest dropped, new ones added;
    # then an equal item that is another object, and no items at all.
    encoder = KeyStateEncoder()
    state = DECISIONS[0].state
    signals = tuple(SeenSignal(f"sig-{n}", 1_000 * n) for n in range(6))
    arrays = [signals[:1], signals[:3], signals[1:4], signals[2:6], signals[5:] + (SeenSignal("sig-5", 5_000),),
              (), signals[:2]]

    for offset, seen in enumerate(arrays):
        value = dataclasses.replace(state, last_offset=offset, seen_signals=seen)
        assert encoder.encode(value) == codec.encode("KeyState", serde.key_state_to_record(value))


def _seen_signal_encoder_noting_ids() -> tuple:
    """The real item encoder of ``KeyState.seen_signals``, and the list of signal ids it encoded, in order."""
    encode_item = array_item_encoders("KeyState")["seen_signals"]
    encoded_ids: list[str] = []

    def noting(item):
        encoded_ids.append(item["signal_id"])
        return encode_item(item)
    return noting, encoded_ids


def _never_whole(_key, _value):
    raise AssertionError("an array is encoded item by item")


def test_array_items_encode_only_the_items_the_key_s_last_array_did_not_hold():
    encode_item, encoded_ids = _seen_signal_encoder_noting_ids()
    items = ArrayItems(encode_item, _never_whole)
    first, second, third = (SeenSignal(f"sig-{n}", n) for n in range(3))

    items("BTCUSDT@binance", (first, second))
    items("BTCUSDT@binance", (second, third))
    items("ETHUSDT@binance", (second,))

    assert encoded_ids == ["sig-0", "sig-1", "sig-2", "sig-1"]


def test_array_items_forget_their_keys_past_their_limit_and_still_write_them_right():
    encode_item, encoded_ids = _seen_signal_encoder_noting_ids()
    items = ArrayItems(encode_item, _never_whole, kept_keys=1)
    signal = SeenSignal("sig-1", 1)

    fields = [items(key, (signal,)) for key in ("A@binance", "B@binance", "A@binance")]

    assert encoded_ids == ["sig-1", "sig-1", "sig-1"]  # A's last array was forgotten when B came
    assert fields == [avro_long(1) + array_item_encoders("KeyState")["seen_signals"](serde.to_record(signal))
                      + b"\x00"] * 3


def test_position_bytes_forget_their_keys_past_their_limit_and_still_write_them_right():
    positions = PositionBytes(kept_keys=1)
    for offset, decision in enumerate(DECISIONS[:8]):
        if decision.state.position is not None:
            key, position = decision.state.key, decision.state.position
            assert positions.update(key, offset, position) == serde.encode_position_update(key, offset, position)


def test_audit_updates_write_the_bytes_the_codec_writes_for_every_audit_record_of_a_keys_lives():
    audits = AuditUpdates()
    records = [decision.audit for decision in _fold(lifecycle_inputs(keys=3, cycles=4)) if decision.audit is not None]

    for audit in records:
        assert audits.encode(audit) == serde.encode_audit_update(audit)
    assert {audit.order_outcome is None for audit in records} == {True, False}  # both union branches
    bare = dataclasses.replace(records[0], position_id=None, status_after=None, client_order_id=None,
                               order_role=None, order_outcome=None, refusal_code=None)
    assert audits.encode(bare) == serde.encode_audit_update(bare)


def test_audit_updates_take_what_the_codec_takes_a_str_enum_member_as_a_string_and_a_bool_as_a_long():
    audit = next(decision.audit for decision in DECISIONS if decision.audit is not None)
    lenient = dataclasses.replace(audit, reason=Status.ACTIVE, event_id=Side.BUY, offset=True)

    assert AuditUpdates().encode(lenient) == serde.encode_audit_update(lenient)


def test_audit_updates_refuse_a_value_that_does_not_fit_its_field_with_a_typed_error():
    audit = next(decision.audit for decision in DECISIONS if decision.audit is not None)

    with pytest.raises(InvalidRecord, match="AuditRecord"):
        AuditUpdates().encode(dataclasses.replace(audit, ts="yesterday"))
    with pytest.raises(InvalidRecord, match="AuditRecord"):
        AuditUpdates().encode(dataclasses.replace(audit, reason=None))


def test_command_records_write_the_bytes_the_codec_writes_for_every_command_type():
    commands = CommandRecords()
    decided = [command for decision in _fold(lifecycle_inputs(keys=3, cycles=4)) for command in decision.commands]
    header = dict(command_id="c-1", key="APTUSDT@binance", position_id="APTUSDT@binance/7", symbol="APTUSDT",
                  exchange="binance")
    every_type = [
        PlaceEntry(**header, client_order_id="e-7", side=Side.BUY, quantity=Decimal("61.8")),
        PlaceStopLoss(**header, client_order_id="s-7", side=Side.SELL, quantity=Decimal("1E-8"),
                      stop_price=Decimal("4.205")),
        ClosePosition(**header, client_order_id="x-7", side=Side.SELL, quantity=Decimal("0.001")),
        CancelOrder(**header, client_order_id="s-7", role=OrderRole.STOP_LOSS),
        QueryOrder(**header, client_order_id="e-7", role=OrderRole.ENTRY),
    ]

    for command in [*decided, *every_type]:
        assert commands.encode(command) == serde.encode_command(command)
        assert serde.decode_command(commands.encode(command)) == command
    assert len({type(command) for command in decided}) >= 2


def test_command_records_refuse_a_value_that_does_not_fit_its_field_with_a_typed_error():
    command = next(command for decision in DECISIONS for command in decision.commands)

    for unfit in (dataclasses.replace(command, client_order_id=None), dataclasses.replace(command, command_id=7)):
        with pytest.raises(InvalidRecord, match="does not accept"):
            CommandRecords().encode(unfit)
        with pytest.raises(InvalidRecord):  # as the codec
            serde.encode_command(unfit)


@pytest.mark.parametrize("value", [0, 1, -1, 63, 64, -64, -65, 8191, 8192, 2**31, -(2**31), 2**63 - 1, -(2**63)])
def test_avro_long_is_fastavro_s_encoding(value):
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "long", value)
    assert avro_long(value) == buffer.getvalue()


@pytest.mark.parametrize("value", ["", "BTCUSDT@binance", "é€𝄞" * 50])
def test_avro_string_is_fastavro_s_encoding(value):
    buffer = io.BytesIO()
    fastavro.schemaless_writer(buffer, "string", value)
    assert avro_string(value) == buffer.getvalue()


def test_serde_decimal_keeps_the_exchange_scale_exactly():
    command = next(c for d in DECISIONS for c in d.commands if type(c).__name__ == "PlaceEntry")
    decoded = serde.decode_command(serde.encode_command(command))
    assert str(decoded.quantity) == str(command.quantity) == str(Decimal("61.8"))


def test_serde_dead_letter_round_trip_keeps_the_original_bytes():
    letter = serde.DeadLetter("position-inputs", 2, 41, b"APTUSDT@binance", b"\x00\xff garbage",
                              "NotSingleObjectEncoded", "not Avro", 1_761_173_440_983)
    assert serde.decode_dead_letter(serde.encode_dead_letter(letter)) == letter


def test_serde_input_with_a_non_decimal_quantity_raises_a_typed_decode_error():
    event = EVENTS[0]
    record = serde.to_record(event)
    record["payload"] = ("Signal", {**serde.to_record(event.payload), "quantity": "sixty-one"})
    data = codec.encode(serde.INPUT_RECORD, record)

    with pytest.raises(codec.DecodeError, match="decimal"):
        serde.decode_input(data)


def test_serde_key_state_written_before_seen_signals_keeps_its_ids_as_first_seen_at_its_newest_time():
    # Arrange: a table value written by the v0 schema (ids only, no first-seen time).
    retired = next(w for w in codec.default_registry().writer_schemas("KeyState") if not w.current)
    old = {"key": "APTUSDT@binance", "last_offset": 41, "recent_signal_ids": ["sig-1", "sig-2"], "position": None,
           "last_exchange_ts": 1_761_173_440_000}
    data = codec.default_registry().encode_with_writer(retired.fingerprint, old)

    # Act
    state = serde.key_state_from_record(codec.decode("KeyState", data))

    # Assert: nothing forgotten at the upgrade; the retention counts from the newest time known.
    assert [(s.signal_id, s.first_seen_at) for s in state.seen_signals] == [
        ("sig-1", 1_761_173_440_000), ("sig-2", 1_761_173_440_000)]
    assert state.has_seen_signal("sig-2")
    assert codec.decode("KeyState", codec.encode("KeyState", serde.key_state_to_record(state)))["recent_signal_ids"] == []

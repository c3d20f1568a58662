"""A realistic input stream for benchmarks: whole position lives over many keys.

Per key and cycle: an open signal, the entry fill, the stop-loss acknowledgement, a few
exchange snapshots, a close signal, the stop's cancel, the close fill and a flat snapshot, which is what the
agent sees in production, answered the way the exchange edge answers.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from decimal import Decimal

from streams.wire import serde
from streams.domain import (
    AppliedInput,
    CancelOrder,
    Command,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    KeyState,
    PlaceEntry,
    PlaceStopLoss,
    ClosePosition,
    Policy,
    ReportOutcome,
    Side,
    Signal,
    SignalAction,
    decide,
)

POLICY = Policy(default_stop_loss_pct=Decimal("2"), entry_timeout_ms=30_000, stop_loss_timeout_ms=30_000,
                close_timeout_ms=30_000, signal_id_retention_ms=7 * 24 * 3600 * 1000)


def _signal(key: str, symbol: str, signal_id: str, action: SignalAction, ts: int) -> InputEvent:
    opening = action is SignalAction.OPEN
    return InputEvent(f"signal:{signal_id}", key, ts, Signal(
        signal_id=signal_id, action=action, symbol=symbol, exchange="binance",
        side=Side.BUY if opening else None, quantity=Decimal("61.8") if opening else None,
        stop_loss_pct=Decimal("2.5") if opening else None, ts=ts))


def _snapshot(key: str, symbol: str, quantity: str, ts: int) -> InputEvent:
    flat = quantity == "0"
    return InputEvent(f"snapshot:{key}:{ts}", key, ts, ExchangeSnapshot(
        exchange="binance", symbol=symbol, fetched_at=ts, side=None if flat else Side.BUY,
        quantity=Decimal(quantity), entry_price=None if flat else Decimal("10.00")))


def _answer(command: Command, outcome: ReportOutcome, ts: int) -> InputEvent:
    filled = outcome is ReportOutcome.FILLED
    return InputEvent(f"report:{command.client_order_id}:{outcome.value}", command.key, ts, ExecutionReport(
        position_id=command.position_id, client_order_id=command.client_order_id, role=command.role,
        outcome=outcome, ts=ts, exchange_order_id="1", filled_quantity=command.quantity if filled else None,
        average_price=Decimal("10.00") if filled else None,
        stop_price=getattr(command, "stop_price", None) if not filled else None, error_code=None,
        error_message=None))


def lifecycle_inputs(keys: int, cycles: int, start_ts: int = 1_761_173_440_000) -> Iterator[InputEvent]:
    """Inputs for ``keys`` symbols x ``cycles`` position lives, interleaved across keys.

    Decides along the way (with its own states) only to learn the client order ids the
    exchange answers to, exactly as the executor would.
    """
    states: dict[str, KeyState | None] = {}
    offsets: dict[str, int] = {}
    ts = start_ts

    def step(event: InputEvent) -> tuple[Command, ...]:
        offsets[event.key] = offsets.get(event.key, -1) + 1
        decision = decide(states.get(event.key), AppliedInput(offsets[event.key], event), POLICY)
        states[event.key] = decision.state
        return decision.commands

    symbols = [f"BENCH{index}USDT" for index in range(keys)]
    for cycle in range(cycles):
        pending: dict[str, list[InputEvent]] = {}
        for symbol in symbols:
            key = f"{symbol}@binance"
            ts += 1
            lives: list[InputEvent] = []
            event = _signal(key, symbol, f"{symbol}-{cycle}-open", SignalAction.OPEN, ts)
            lives.append(event)
            commands = step(event)
            entry = next(c for c in commands if isinstance(c, PlaceEntry))
            ts += 1
            event = _answer(entry, ReportOutcome.FILLED, ts)
            lives.append(event)
            stop = next(c for c in step(event) if isinstance(c, PlaceStopLoss))
            ts += 1
            event = _answer(stop, ReportOutcome.ACCEPTED, ts)
            lives.append(event)
            step(event)
            for _ in range(3):
                ts += 1
                event = _snapshot(key, symbol, "61.8", ts)
                lives.append(event)
                step(event)
            ts += 1
            event = _signal(key, symbol, f"{symbol}-{cycle}-close", SignalAction.CLOSE, ts)
            lives.append(event)
            closing = step(event)
            cancel = next(c for c in closing if isinstance(c, CancelOrder))
            close = next(c for c in closing if isinstance(c, ClosePosition))
            ts += 1
            event = _answer(cancel, ReportOutcome.CANCELED, ts)  # the stop goes first, as commanded
            lives.append(event)
            step(event)
            ts += 1
            event = _answer(close, ReportOutcome.FILLED, ts)
            lives.append(event)
            step(event)
            pending[key] = lives
        # Interleave the keys' inputs, as many symbols trade at once.
        for position in range(max(len(v) for v in pending.values())):
            for lives in pending.values():
                if position < len(lives):
                    yield lives[position]


@functools.cache
def encoded_lifecycle(keys: int, cycles: int) -> tuple[tuple[bytes, bytes], ...]:
    """``lifecycle_inputs(keys, cycles)`` as (key, value) bytes of ``position-inputs`` records, made once."""
    return tuple((event.key.encode(), serde.encode_input(event)) for event in lifecycle_inputs(keys, cycles))


def encoded_open_signals(tag: str, count: int, ts: int = 1_761_173_440_000) -> list[tuple[bytes, bytes]]:
    """``count`` open signals, each for a key of its own (``LAT<tag>X<n>USDT@binance``): one PlaceEntry each."""
    records = []
    for index in range(count):
        symbol = f"LAT{tag}X{index}USDT"
        key = f"{symbol}@binance"
        records.append((key.encode(), serde.encode_input(_signal(key, symbol, f"{symbol}-open", SignalAction.OPEN, ts))))
    return records

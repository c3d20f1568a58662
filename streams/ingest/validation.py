"""Frames and signals of the WebSocket feed (contract section 2) -> domain inputs. Pure: no I/O, no clock.

A frame is JSON text holding one signal object or an array of them. ``parse_frame`` turns
it into the list of decoded objects (or raises ``InvalidFrame``); ``validate_signal`` turns
one object into a ``Signal`` (or raises ``InvalidSignal`` naming the first rule it breaks);
``to_input_event`` wraps a signal for ``position-inputs``.

Rules, checked in this order (``code`` of the refusal in brackets):

- the item is a JSON object [``not_an_object``];
- ``id``: a non-empty string of at most 128 characters [``missing_field`` / ``invalid_field``];
- ``action``: ``"open"`` or ``"close"`` [``unknown_action``];
- ``exchange``: a non-empty string [``invalid_field``], one of the configured exchanges
  (only ``binance`` today) [``unknown_exchange``];
- ``symbol``: a non-empty string without whitespace, ``@`` or ``/`` (they would break the
  ``SYMBOL@exchange`` key and the position ids built on it) [``invalid_field``];
- ``ts``: a JSON integer, epoch milliseconds, > 0 [``invalid_field``];
- an open only: ``side`` ``"BUY"`` or ``"SELL"`` [``unknown_side``]; ``quantity`` a decimal
  string [``invalid_field``] > 0 [``non_positive_quantity``]; ``stop_loss_pct`` absent, null
  or a decimal string [``invalid_field``] with 0 < pct < 100 [``stop_loss_out_of_range``];
- last, the symbol is listed on that exchange [``unknown_symbol``] (``is_known_symbol``,
  injected, so this module stays pure).

A required field that is absent or ``null`` is ``missing_field``. Values are compared
exactly as the contract writes them (``"BUY"``, not ``"buy"``). A close ignores ``side``,
``quantity`` and ``stop_loss_pct`` (it closes whatever the key holds). Unknown extra fields
are ignored, so a producer can add some without breaking the feed.

Decimals never go through a binary float. ``quantity`` and ``stop_loss_pct`` must be JSON
*strings* in plain decimal notation (``"61.8"``, ``"0.002"``: an optional ``-``, digits, an
optional point followed by digits, at most 40 characters). A JSON number is refused, and so
is exponent notation: the contract names decimal strings, and a number in a JSON document
has usually been through a float in its producer (``0.1 + 0.2`` prints as
``0.30000000000000004``): guessing which decimal was meant could trade a quantity nobody
asked for. Frames are parsed with ``parse_float=Decimal``, so even a refused number is
never a Python float, and the reason shows it exactly as it was sent.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Collection
from decimal import Decimal
from typing import Any

from streams.domain import InputEvent, Policy, Side, Signal, SignalAction, is_stop_loss_pct, key_for
from streams.ingest.exceptions import InvalidFrame, InvalidSignal

__all__ = [
    "SUPPORTED_EXCHANGES",
    "MAX_ID_LENGTH",
    "SymbolCheck",
    "parse_frame",
    "validate_signal",
    "to_input_event",
    "event_id_for",
]

SUPPORTED_EXCHANGES: frozenset[str] = frozenset({"binance"})
"""Exchanges a signal may name: those the pipeline has a gateway for (``streams/exchange``)."""

MAX_ID_LENGTH = 128
_MAX_DECIMAL_LENGTH = 40
_MAX_TS = 2 ** 63 - 1  # Avro long
_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?")
_FORBIDDEN_IN_SYMBOL = re.compile(r"[\s@/]")
_SHOWN_LIMIT = 64

SymbolCheck = Callable[[str, str], bool]
"""``is_known_symbol(exchange, symbol) -> bool``: does the exchange list this symbol?"""


# --------------------------------------------------------------------------- frames


def _refuse_constant(name: str) -> Any:
    # json accepts NaN/Infinity by default; they are not JSON and never a quantity.
    raise ValueError(f"{name} is not valid JSON")


def parse_frame(frame: str | bytes) -> list[Any]:
    """The decoded items of one frame: ``[object]`` for an object, the elements of an array.

    Raises ``InvalidFrame`` for a binary frame (code ``invalid_frame``), text that is not
    JSON (``invalid_json``) and JSON that is neither an object nor an array
    (``invalid_frame``). An empty array holds no signal and yields ``[]``. The elements of
    an array are not checked here: each is judged on its own by ``validate_signal``.
    """
    if isinstance(frame, bytes | bytearray | memoryview):
        raise InvalidFrame("invalid_frame", "binary frame: the feed sends JSON text frames")
    try:
        data = json.loads(frame, parse_float=Decimal, parse_constant=_refuse_constant)
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise InvalidFrame("invalid_json", f"frame is not valid JSON: {error}") from error
    if isinstance(data, dict):
        return [data]
    if isinstance(data, list):
        return data
    raise InvalidFrame("invalid_frame", f"frame must hold a signal object or an array of them, got {_shown(data)}")


# --------------------------------------------------------------------------- one signal


def _shown(value: Any) -> str:
    """A value as the reason shows it: JSON-like, exact, short."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return f"number {value}"
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        return text if len(text) <= _SHOWN_LIMIT else text[:_SHOWN_LIMIT - 1] + '…"'
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return type(value).__name__


class _Fields:
    """Field access that raises ``InvalidSignal`` with the signal's id once it is known."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.signal_id: str | None = None

    def refuse(self, code: str, reason: str) -> InvalidSignal:
        return InvalidSignal(code, reason, self.signal_id)

    def required(self, name: str) -> Any:
        value = self.data.get(name)
        if value is None:
            raise self.refuse("missing_field", f"missing field '{name}'")
        return value

    def text(self, name: str, what: str = "a non-empty string") -> str:
        value = self.required(name)
        if not isinstance(value, str) or not value.strip():
            raise self.refuse("invalid_field", f"'{name}' must be {what}, got {_shown(value)}")
        return value

    def decimal(self, name: str, value: Any) -> Decimal:
        if not isinstance(value, str) or len(value) > _MAX_DECIMAL_LENGTH or not _DECIMAL_TEXT.fullmatch(value):
            raise self.refuse("invalid_field", f"'{name}' must be a decimal string such as \"61.8\", got {_shown(value)}")
        return Decimal(value)


def validate_signal(item: Any, is_known_symbol: SymbolCheck,
                    exchanges: Collection[str] = SUPPORTED_EXCHANGES) -> Signal:
    """The domain ``Signal`` of one decoded signal object; raises ``InvalidSignal`` (see the module doc).

    ``is_known_symbol(exchange, symbol)`` is asked last, only for an otherwise valid
    signal, so a malformed one never costs a look-up.
    """
    if not isinstance(item, dict):
        raise InvalidSignal("not_an_object", f"a signal must be a JSON object, got {_shown(item)}")
    fields = _Fields(item)

    signal_id = fields.text("id", f"a non-empty string of at most {MAX_ID_LENGTH} characters")
    if len(signal_id) > MAX_ID_LENGTH:
        raise fields.refuse("invalid_field",
                            f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} characters, "
                            f"got {len(signal_id)} characters")
    fields.signal_id = signal_id

    raw_action = fields.required("action")
    try:
        action = SignalAction(raw_action) if isinstance(raw_action, str) else None
    except ValueError:
        action = None
    if action is None:
        raise fields.refuse("unknown_action", f"unknown action {_shown(raw_action)} (expected \"open\" or \"close\")")

    exchange = fields.text("exchange")
    if exchange not in exchanges:
        configured = ", ".join(sorted(exchanges)) or "none"
        raise fields.refuse("unknown_exchange", f"unknown exchange {_shown(exchange)} (configured: {configured})")

    symbol = fields.text("symbol")
    if _FORBIDDEN_IN_SYMBOL.search(symbol):
        raise fields.refuse("invalid_field", f"'symbol' must not contain whitespace, '@' or '/', got {_shown(symbol)}")

    ts = fields.required("ts")
    if not isinstance(ts, int) or isinstance(ts, bool) or not 0 < ts <= _MAX_TS:
        raise fields.refuse("invalid_field", f"'ts' must be a positive integer of epoch milliseconds, got {_shown(ts)}")

    side = quantity = stop_loss_pct = None
    if action is SignalAction.OPEN:
        raw_side = fields.required("side")
        if raw_side not in (Side.BUY.value, Side.SELL.value):
            raise fields.refuse("unknown_side", f"'side' must be \"BUY\" or \"SELL\", got {_shown(raw_side)}")
        side = Side(raw_side)

        raw_quantity = fields.required("quantity")
        quantity = fields.decimal("quantity", raw_quantity)
        if not quantity > 0:
            raise fields.refuse("non_positive_quantity", f"'quantity' must be > 0, got {_shown(raw_quantity)}")

        raw_pct = item.get("stop_loss_pct")
        if raw_pct is not None:
            stop_loss_pct = fields.decimal("stop_loss_pct", raw_pct)
            if not is_stop_loss_pct(stop_loss_pct):
                raise fields.refuse("stop_loss_out_of_range",
                                    f"'stop_loss_pct' must be > 0 and < 100, got {_shown(raw_pct)}")

    if not is_known_symbol(exchange, symbol):
        raise fields.refuse("unknown_symbol", f"unknown symbol {_shown(symbol)} on {exchange}")

    return Signal(signal_id=signal_id, action=action, symbol=symbol, exchange=exchange, side=side,
                  quantity=quantity, stop_loss_pct=stop_loss_pct, ts=ts)


# --------------------------------------------------------------------------- the input


def event_id_for(signal: Signal) -> str:
    """The input's event id: ``signal:<id>`` (the same signal delivered twice has the same one)."""
    return f"signal:{signal.signal_id}"


def to_input_event(signal: Signal, received_at_ms: int, policy: Policy | None = None) -> InputEvent:
    """The ``position-inputs`` input of a valid signal, key ``SYMBOL@exchange``.

    The input's time is when the pipeline received the signal, not the feed's own ``ts``
    (kept in the signal): deadlines count from it, so a feed clock running ahead or a
    signal replayed from yesterday neither postpones nor fires them at once. ``policy``
    (the ingest's) is recorded in the input: the state machine decides it with that.
    """
    return InputEvent(event_id=event_id_for(signal), key=key_for(signal.symbol, signal.exchange),
                      ts=received_at_ms, payload=signal, policy=policy)

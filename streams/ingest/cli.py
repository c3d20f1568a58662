"""Publish one signal by hand (for operators), with the feed's own validation.

    python -m streams.ingest.cli open APTUSDT BUY 61.8 [--stop-loss-pct 2.5] [--exchange binance] [--id ID] [--ts MS]
    python -m streams.ingest.cli close APTUSDT [--exchange binance] [--id ID] [--ts MS]

The signal is built as the feed would send it (quantities stay the strings typed, never
floats), judged by the same rules (``streams.ingest.validation``, the symbol checked
against the exchange's markets: ``BINANCE_FUTURES_URL`` or the worker's built-in emulator)
and published to ``position-inputs``, keyed ``SYMBOL@exchange``, waiting for the broker's
acknowledgement. On success it prints one line with the signal id, key, topic, partition
and offset. ``--id`` defaults to ``cli-<random>``; repeating an id is a duplicate and
changes nothing. ``--ts`` defaults to now.

Exit codes: 0 published; 2 refused (the reason on stderr) or bad usage; 3 the exchange or
Kafka could not be reached (nothing was published).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from typing import Any

from streams.wire import serde
from streams.ingest.exceptions import InvalidSignal, PublishFailed, SymbolsUnavailable
from streams.ingest.publish import KafkaPublisher
from streams.ingest.symbols import binance_directory
from streams.ingest.validation import to_input_event, validate_signal
from streams.settings import Settings, SettingsError
from streams.topics import TopologyError

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_UNAVAILABLE", "build_signal", "main"]

EXIT_OK = 0
EXIT_REFUSED = 2
EXIT_UNAVAILABLE = 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m streams.ingest.cli",
                                     description="Publish one trading signal to position-inputs.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{open,close}")
    opening = actions.add_parser("open", help="open a position")
    opening.add_argument("symbol", help="exchange-native symbol, e.g. APTUSDT")
    opening.add_argument("side", help="BUY (long) or SELL (short)")
    opening.add_argument("quantity", help="decimal, base-asset units, e.g. 61.8")
    opening.add_argument("--stop-loss-pct", help="stop-loss distance in percent, 0 < pct < 100 "
                                                 "(default: DEFAULT_STOP_LOSS_PCT)")
    closing = actions.add_parser("close", help="close the open position of a symbol")
    closing.add_argument("symbol", help="exchange-native symbol, e.g. APTUSDT")
    for sub in (opening, closing):
        sub.add_argument("--exchange", default="binance", help="exchange (default binance)")
        sub.add_argument("--id", dest="signal_id", help="signal id (default cli-<random>)")
        sub.add_argument("--ts", type=int, help="signal time, epoch milliseconds (default now)")
    return parser


def build_signal(args: argparse.Namespace, now_ms: int) -> dict[str, Any]:
    """The signal object the feed would send for these arguments (values kept as typed)."""
    signal: dict[str, Any] = {
        "id": args.signal_id if args.signal_id is not None else f"cli-{uuid.uuid4().hex[:16]}",
        "action": args.action,
        "symbol": args.symbol,
        "exchange": args.exchange,
    }
    if args.action == "open":
        signal.update(side=args.side, quantity=args.quantity)
        if args.stop_loss_pct is not None:
            signal["stop_loss_pct"] = args.stop_loss_pct
    signal["ts"] = args.ts if args.ts is not None else now_ms
    return signal


def _refused(reason: str) -> int:
    print(f"refused: {reason}", file=sys.stderr)
    return EXIT_REFUSED


def _unavailable(reason: str) -> int:
    print(f"error: {reason}; nothing was published", file=sys.stderr)
    return EXIT_UNAVAILABLE


async def _publish(settings: Settings, signal_object: dict[str, Any]) -> int:
    directory = binance_directory(settings)
    publisher = KafkaPublisher(settings)
    try:
        try:
            await directory.load()
        except SymbolsUnavailable as error:
            return _unavailable(f"cannot check the symbol: {error} (is the pipeline, or BINANCE_FUTURES_URL, up?)")
        try:
            signal = validate_signal(signal_object, directory.is_known_symbol, directory.exchanges)
        except InvalidSignal as refusal:
            return _refused(refusal.reason)
        event = to_input_event(signal, received_at_ms=int(time.time() * 1000), policy=settings.policy())
        try:
            await publisher.start()
            delivery = await publisher.send(publisher.topics.inputs, event.key.encode("utf-8"),
                                            serde.encode_input(event))
        except PublishFailed as error:
            return _unavailable(str(error))
        what = f"{signal.action.value} {signal.symbol}"
        if signal.side is not None:
            what += f" {signal.side.value} {signal.quantity}"
        if signal.stop_loss_pct is not None:
            what += f", stop-loss {signal.stop_loss_pct} %"
        print(f"published signal {signal.signal_id} ({what}) key={event.key} topic={delivery.topic} "
              f"partition={delivery.partition} offset={delivery.offset}", flush=True)
        return EXIT_OK
    finally:
        await directory.close()
        await publisher.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m streams.ingest.cli``; returns the exit code."""
    args = _parser().parse_args(argv)
    signal_object = build_signal(args, int(time.time() * 1000))
    # The rules that need no exchange first: a typo is refused without waiting for one.
    try:
        validate_signal(signal_object, lambda exchange, symbol: True)
    except InvalidSignal as refusal:
        return _refused(refusal.reason)
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_REFUSED
    try:
        return asyncio.run(_publish(settings, signal_object))
    except TopologyError as error:
        return _unavailable(str(error))


if __name__ == "__main__":
    sys.exit(main())

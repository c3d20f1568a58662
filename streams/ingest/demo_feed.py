"""The built-in demo signal feed: a small WebSocket server playing a scripted sequence of signals.

It is the embedded default of ``SIGNALS_WS_URL`` (``python -m streams.ingest`` runs it
in-process when the variable is unset) and runs standalone with
``python -m streams.ingest.demo_feed --port 6071``, which prints its URL on the first line.

Every client that connects gets the whole script, one frame every ``interval_s`` seconds
(``DEMO_FEED_INTERVAL_S``), then the connection stays open and idle. Signal ids are
prefixed with the server's start time (``demo-<epoch ms>-...``): a new run opens new
positions, while a client that reconnects to the same run gets the same ids again, which
the pipeline recognises as duplicates. Each signal's ``ts`` is the time it is sent.

The script (quantities pass the emulator's filters at its default mark prices):

1. open APTUSDT BUY 61.8, stop-loss 2.5 % (the seed's scenario B: the open the old bot
   raced with its synchroniser);
2. open BTCUSDT BUY 0.002 (notional 200 at 100000; the default stop-loss);
3. the first frame again, byte for byte: a duplicate delivery, no further effect;
4. one array frame with two ETHUSDT opens: the second arrives while the first is in
   flight and is refused downstream (recorded as refused in the audit log);
5. a frame that is not valid JSON: dead letter ``invalid_json``;
6. one array frame with an open of quantity "0" (dead letter ``non_positive_quantity``),
   an open of an unlisted symbol (dead letter ``unknown_symbol``) and a valid open of
   SOLUSDT SELL 3, which goes through: a bad signal never holds up its neighbours;
7. close APTUSDT.

BTCUSDT, ETHUSDT and SOLUSDT stay open, so the table view has something to show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal as signals
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from streams.telemetry.logging import configure_logging

__all__ = ["DEFAULT_PORT", "DEFAULT_INTERVAL_S", "DEMO_FEED_HEADER", "DemoStep", "demo_script", "DemoFeed", "main"]

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6071
#: Handshake response header by which the demo feed names itself (its run id as the value).
DEMO_FEED_HEADER = "X-Position-Pipeline-Demo-Feed"
DEFAULT_INTERVAL_S = 1.5


@dataclass(frozen=True)
class DemoStep:
    """One frame of the script: ``build(ts)`` gives its JSON value, or the exact text to send."""

    name: str
    note: str
    build: Callable[[int], Any] | None = None
    repeat_of: str | None = None  # instead of build: the text sent for that step, byte for byte

    def text(self, ts: int) -> str:
        """The frame's text for a send at ``ts`` (epoch ms); a repeat has none of its own."""
        if self.build is None:
            raise ValueError(f"step {self.name!r} repeats {self.repeat_of!r}: it has no text of its own")
        value = self.build(ts)
        return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))


def _open(signal_id: str, symbol: str, side: str, quantity: str, stop_loss_pct: str | None = None
          ) -> Callable[[int], dict]:
    def build(ts: int) -> dict:
        signal = {"id": signal_id, "action": "open", "symbol": symbol, "exchange": "binance", "side": side,
                  "quantity": quantity}
        if stop_loss_pct is not None:
            signal["stop_loss_pct"] = stop_loss_pct
        return {**signal, "ts": ts}
    return build


def _close(signal_id: str, symbol: str) -> Callable[[int], dict]:
    return lambda ts: {"id": signal_id, "action": "close", "symbol": symbol, "exchange": "binance", "ts": ts}


def demo_script(run_id: str) -> tuple[DemoStep, ...]:
    """The demo's frames, with signal ids ``<run_id>-<name>`` (see the module doc)."""
    def sid(name: str) -> str:
        return f"{run_id}-{name}"

    eth_first = _open(sid("eth-open"), "ETHUSDT", "SELL", "0.01", "3")
    eth_second = _open(sid("eth-open-in-flight"), "ETHUSDT", "BUY", "0.02")
    zero_quantity = _open(sid("sol-open-zero"), "SOLUSDT", "BUY", "0")
    unlisted = _open(sid("unlisted-open"), "NOSUCHUSDT", "BUY", "1")
    sol = _open(sid("sol-open"), "SOLUSDT", "SELL", "3", "2")
    return (
        DemoStep("apt-open", "scenario B: open APTUSDT BUY 61.8, stop-loss 2.5 %",
                 _open(sid("apt-open"), "APTUSDT", "BUY", "61.8", "2.5")),
        DemoStep("btc-open", "open BTCUSDT BUY 0.002, default stop-loss", _open(sid("btc-open"), "BTCUSDT", "BUY",
                                                                                "0.002")),
        DemoStep("apt-open-again", "the APTUSDT open delivered again: a duplicate, no effect",
                 repeat_of="apt-open"),
        DemoStep("eth-open-twice", "two ETHUSDT opens in one frame: the second is refused, the first is in flight",
                 lambda ts: [eth_first(ts), eth_second(ts)]),
        DemoStep("broken-json", "a frame that is not JSON: dead letter",
                 lambda ts: f'{{"id": "{sid("broken")}", "action": "open", "symbol": "SOLUSDT", "ts": {ts}'),
        DemoStep("bad-signals", "quantity 0 and an unlisted symbol (dead letters) beside a valid SOLUSDT open",
                 lambda ts: [zero_quantity(ts), unlisted(ts), sol(ts)]),
        DemoStep("apt-close", "close APTUSDT", _close(sid("apt-close"), "APTUSDT")),
    )


class DemoFeed:
    """The demo feed's WebSocket server."""

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, interval_s: float = DEFAULT_INTERVAL_S,
                 run_id: str | None = None, wall_clock_ms: Callable[[], int] | None = None) -> None:
        self.host = host
        self.port = port
        self.interval_s = interval_s
        self._wall_clock_ms = wall_clock_ms or (lambda: int(time.time() * 1000))
        self.run_id = run_id or f"demo-{self._wall_clock_ms()}"
        self.steps = demo_script(self.run_id)
        self.clients_served = 0
        self._server: Server | None = None
        self.url: str | None = None

    async def start(self) -> str:
        """Binds and serves; returns ``ws://host:port`` (the port actually bound when 0 was asked)."""
        self._server = await serve(self._play, self.host, self.port, process_response=self._identify)
        port = self._server.sockets[0].getsockname()[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"ws://{host}:{port}"
        logger.info("demo feed listening on %s (run %s, one frame every %.1fs)", self.url, self.run_id,
                    self.interval_s)
        return self.url

    def _identify(self, connection: ServerConnection, request: Any, response: Any) -> None:
        # Says "demo feed" in the handshake, so an ingest configured by URL alone (compose,
        # SIGNALS_WS_URL=ws://demo-feed:6071) still knows, and refuses a production exchange.
        response.headers[DEMO_FEED_HEADER] = self.run_id

    async def stop(self) -> None:
        """Closes every connection (1001 going away) and the listening socket."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _play(self, connection: ServerConnection) -> None:
        self.clients_served += 1
        peer = connection.remote_address
        sent: dict[str, str] = {}
        try:
            for index, step in enumerate(self.steps):
                if index and self.interval_s:
                    await asyncio.sleep(self.interval_s)  # pacing for a human watching, not synchronisation
                text = sent[step.repeat_of] if step.repeat_of else step.text(self._wall_clock_ms())
                sent[step.name] = text
                await connection.send(text)
                logger.info("demo feed -> %s: %s", peer, step.note)
            logger.info("demo feed: script done for %s; the connection stays open", peer)
            await connection.wait_closed()
        except ConnectionClosed:
            logger.info("demo feed: %s disconnected", peer)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streams.ingest.demo_feed",
                                     description="Serve the built-in demo signal feed until interrupted.")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port to bind; 0 picks a free one (default {DEFAULT_PORT})")
    parser.add_argument("--interval", type=float, default=DEFAULT_INTERVAL_S, metavar="SECONDS",
                        help=f"pause between frames (default {DEFAULT_INTERVAL_S})")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    feed = DemoFeed(args.host, args.port, interval_s=args.interval)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    print(await feed.start(), flush=True)
    try:
        await stop.wait()
    finally:
        await feed.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m streams.ingest.demo_feed``; prints the feed's URL first."""
    args = _parse_args(argv)
    configure_logging()
    if args.interval < 0:
        print("--interval must be >= 0", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(args))
    except OSError as error:
        print(f"cannot serve on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

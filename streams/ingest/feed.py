"""The signal ingest: a WebSocket client of ``SIGNALS_WS_URL`` that publishes to ``position-inputs``.

It reads text frames (one signal object or a JSON array of them, contract section 2),
validates each signal (``streams.ingest.validation``) and publishes every valid one to
``position-inputs`` as an ``InputEvent`` keyed by the raw UTF-8 bytes of
``SYMBOL@exchange``, waiting for the broker's acknowledgement before it reads on, so the
signals of one feed reach Kafka in the order the feed sent them. A frame that is not JSON,
or a signal that breaks a rule, is logged with the reason and written to
``position-dead-letters`` (``DeadLetter``: ``source_topic`` is the feed URL, partition and
offset -1, ``value`` the frame's original bytes, ``error_type`` the refusal's code); the
connection and every other signal go on. A frame larger than 1 MiB is not read at all: the
WebSocket library closes the connection (1009), the log says so, and the client reconnects.

When the connection drops or cannot be made, the client reconnects with exponential
backoff (capped by ``PIPELINE_INGEST_MAX_BACKOFF_S``, jittered); a connection that lasted
or delivered a frame starts the backoff again from its first step. While Kafka does not
acknowledge, the client retries the same record with the same backoff and reads nothing
new. Delivery is at least once from the frame on: the feed's protocol has no
acknowledgement, so a frame received just before a crash may be lost; a feed that re-sends
after a reconnect is safe, because a repeated signal ``id`` changes nothing downstream.

``python -m streams.ingest`` runs it with ``Settings.from_env()``; with ``SIGNALS_WS_URL``
unset it plays the built-in demo feed (``streams.ingest.demo_feed``) in-process and
connects to it. SIGTERM/SIGINT stop it cleanly: the frame in hand is finished, the
connection closed (1001 going away), the producer flushed.
"""

from __future__ import annotations

import asyncio
import logging
import signal as signals
import sys
import time
from collections.abc import Callable, Collection
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.uri import parse_uri

from streams.wire import serde
from streams.domain import Policy, Signal
from streams.edge.backoff import Backoff, retry_until_acknowledged, sleep_unless_stopped
from streams.ingest.demo_feed import DEMO_FEED_HEADER
from streams.ingest.exceptions import (
    DemoFeedOnProduction,
    IngestError,
    InvalidFrame,
    InvalidSignal,
    PublishFailed,
    RefusedInput,
)
from streams.ingest.publish import Delivery, KafkaPublisher, Publisher
from streams.ingest.symbols import SymbolDirectory, binance_directory
from streams.edge.ccxt_client import is_production_url
from streams.heartbeat import beat_while_running
from streams.ingest.validation import parse_frame, to_input_event, validate_signal
from streams.settings import Settings, SettingsError
from streams.topics import TopologyError
from streams.telemetry.logging import configure_logging

__all__ = ["FeedStats", "SymbolSource", "SignalFeedClient", "display_url", "run_ingest", "main"]

logger = logging.getLogger(__name__)

STABLE_CONNECTION_S = 10.0
_EXCERPT = 200


class SymbolSource(Protocol):
    """What the client needs to judge symbols (``SymbolDirectory``, or a stub in tests)."""

    @property
    def exchanges(self) -> Collection[str]: ...

    def is_known_symbol(self, exchange: str, symbol: str) -> bool: ...

    async def refresh(self, exchange: str) -> bool: ...


class FeedStats:
    """Counters of one client (for logs, metrics and tests), with a way to await a condition on them."""

    def __init__(self) -> None:
        self.connections = 0  # handshakes that succeeded
        self.connect_failures = 0  # attempts that never got a connection
        self.disconnects = 0  # connections that ended while the client ran
        self.frames = 0
        self.published = 0  # signals acknowledged on position-inputs
        self.dead_letters = 0  # refusals acknowledged on position-dead-letters
        self._changed = asyncio.Event()

    def bump(self, name: str) -> None:
        """Counts one more ``name`` and wakes whoever waits on the counters."""
        setattr(self, name, getattr(self, name) + 1)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for(self, predicate: Callable[[FeedStats], bool]) -> None:
        """Returns once ``predicate(self)`` holds (checked after every change)."""
        while not predicate(self):
            await self._changed.wait()

    def __repr__(self) -> str:
        return (f"FeedStats(connections={self.connections}, connect_failures={self.connect_failures}, "
                f"disconnects={self.disconnects}, frames={self.frames}, published={self.published}, "
                f"dead_letters={self.dead_letters})")


def display_url(url: str) -> str:
    """``url`` without credentials or query (a feed URL may carry a token): for logs and dead letters."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return f"{parts.scheme}://{netloc}{parts.path}"


def _key_hint(item: Any) -> bytes | None:
    """The ``SYMBOL@exchange`` a refused signal names, when it names one: its dead letter's record key."""
    if isinstance(item, dict):
        symbol, exchange = item.get("symbol"), item.get("exchange")
        if isinstance(symbol, str) and isinstance(exchange, str) and symbol and exchange:
            return f"{symbol}@{exchange}".encode()
    return None


def _excerpt(raw: bytes) -> str:
    text = raw[:_EXCERPT].decode("utf-8", errors="replace")
    return text + ("…" if len(raw) > _EXCERPT else "")


class SignalFeedClient:
    """Reads one WebSocket feed and publishes its signals until ``stop()``."""

    def __init__(self, url: str, publisher: Publisher, symbols: SymbolSource, *, backoff: Backoff | None = None,
                 stable_connection_s: float = STABLE_CONNECTION_S, wall_clock_ms: Callable[[], int] | None = None,
                 open_timeout_s: float = 10.0, ping_interval_s: float | None = 20.0,
                 max_frame_bytes: int = 1 << 20, refuse_demo_feed: bool = False,
                 policy: Policy | None = None) -> None:
        try:
            parse_uri(url)
        except InvalidURI as error:
            raise IngestError(f"not a WebSocket URL: {display_url(url)!r}: {error}") from None
        self.url = url
        self.source = display_url(url)
        self.stats = FeedStats()
        self._publisher = publisher
        self._symbols = symbols
        self._backoff = backoff or Backoff()
        self._stable_connection_s = stable_connection_s
        self._wall_clock_ms = wall_clock_ms or (lambda: int(time.time() * 1000))
        self._connect_options: dict[str, Any] = {
            "open_timeout": open_timeout_s,
            "ping_interval": ping_interval_s,
            "ping_timeout": ping_interval_s,
            "close_timeout": 5,
            "max_size": max_frame_bytes,
        }
        self._refuse_demo_feed = refuse_demo_feed
        self._policy = policy  # recorded in every input: the state machine decides it with this
        self._stop = asyncio.Event()
        self._connection: ClientConnection | None = None
        self._closing: asyncio.Task | None = None

    # ------------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Asks ``run`` to end: the frame in hand is finished, then the connection is closed."""
        self._stop.set()
        connection = self._connection
        if connection is not None:
            # Unblocks a pending read at once; a frame being handled is not interrupted.
            self._closing = asyncio.get_running_loop().create_task(connection.close(1001, "ingest shutting down"))

    async def run(self) -> None:
        """Connects, reads, reconnects with backoff; returns after ``stop()``."""
        while not self._stop.is_set():
            opened_at: float | None = None
            frames_before = self.stats.frames
            try:
                async with connect(self.url, **self._connect_options) as connection:
                    self._connection = connection
                    opened_at = time.monotonic()
                    self.stats.bump("connections")
                    self._refuse_the_demo_feed_if_asked(connection)
                    logger.info("connected to the signal feed %s", self.source)
                    if not self._stop.is_set():  # stop() during the handshake found no connection to close
                        await self._read(connection)
                    if not self._stop.is_set():
                        logger.warning("signal feed %s closed the connection (code %s)", self.source,
                                       connection.close_code)
            except ConnectionClosed as closed:
                logger.warning("connection to the signal feed %s lost: %s", self.source, closed)
            except (OSError, TimeoutError, WebSocketException) as error:
                # OSError: refused, reset, unreachable; TimeoutError: no handshake within
                # open_timeout; WebSocketException: an HTTP answer that is no WebSocket.
                if opened_at is None:
                    self.stats.bump("connect_failures")
                    logger.warning("cannot connect to the signal feed %s: %s: %s", self.source,
                                   type(error).__name__, error)
                else:
                    logger.warning("connection to the signal feed %s failed: %s: %s", self.source,
                                   type(error).__name__, error)
            except PublishFailed as error:
                # Only raised once stop() was asked while Kafka did not acknowledge.
                logger.error("stopping with a frame not fully published: %s", error)
            except DemoFeedOnProduction:
                raise  # no reconnect fixes a configuration that trades demo signals for real
            except Exception:  # noqa: BLE001 - a bug must not end the ingest (and with it the supervised pipeline)
                logger.exception("unexpected error on the signal feed %s; reconnecting", self.source)
            finally:
                self._connection = None
            if opened_at is not None:
                self.stats.bump("disconnects")
            if self._stop.is_set():
                break
            if opened_at is not None and (time.monotonic() - opened_at >= self._stable_connection_s
                                          or self.stats.frames > frames_before):
                self._backoff.reset()
            delay = self._backoff.next_delay()
            logger.info("reconnecting to %s in %.2fs", self.source, delay)
            await sleep_unless_stopped(self._stop, delay)
        logger.info("signal feed client stopped (%r)", self.stats)

    def _refuse_the_demo_feed_if_asked(self, connection: ClientConnection) -> None:
        run = connection.response.headers.get(DEMO_FEED_HEADER) if connection.response is not None else None
        if run and self._refuse_demo_feed:
            raise DemoFeedOnProduction(
                f"the signal feed {self.source} is the built-in demo feed (run {run}) and BINANCE_FUTURES_URL names "
                f"Binance's production exchange: its signals would open real positions; point SIGNALS_WS_URL at "
                f"your feed or BINANCE_FUTURES_URL at a paper exchange")

    async def _read(self, connection: ClientConnection) -> None:
        async for frame in connection:  # ends on a normal close, raises ConnectionClosedError otherwise
            await self.handle_frame(frame)
            if self._stop.is_set():
                return

    # ------------------------------------------------------------------ one frame

    async def handle_frame(self, frame: str | bytes) -> None:
        """Publishes the frame's valid signals in order and dead-letters the rest; never raises a refusal.

        Raises ``PublishFailed`` only when ``stop()`` was asked while Kafka did not
        acknowledge (the rest of the frame is then not published, and the log says so).
        """
        raw = frame.encode("utf-8") if isinstance(frame, str) else bytes(frame)
        self.stats.bump("frames")
        try:
            items = parse_frame(frame)
        except InvalidFrame as refusal:
            await self._dead_letter(raw, None, refusal, refusal.reason, "frame")
            return
        for index, item in enumerate(items):
            where = f" (item {index} of {len(items)} in an array frame)" if len(items) > 1 else ""
            try:
                signal = await self._validate(item)
                event = to_input_event(signal, received_at_ms=int(time.time() * 1000), policy=self._policy)
                value = serde.encode_input(event)
            except RefusedInput as refusal:
                signal_id = getattr(refusal, "signal_id", None)
                await self._dead_letter(raw, _key_hint(item), refusal, refusal.reason + where,
                                        f"signal {signal_id!r}" if signal_id else "signal")
                continue
            except Exception as error:  # noqa: BLE001 - a bug on one signal must not stop the feed
                logger.exception("unexpected error on a signal from %s", self.source)
                refusal = RefusedInput(type(error).__name__, str(error) or type(error).__name__)
                await self._dead_letter(raw, _key_hint(item), refusal, refusal.reason + where, "signal")
                continue
            delivery = await self._send(self._publisher.topics.inputs, event.key.encode("utf-8"), value)
            self.stats.bump("published")
            logger.info("signal %s (%s %s) -> %s[%d]@%d", signal.signal_id, signal.action.value, event.key,
                        delivery.topic, delivery.partition, delivery.offset)

    async def _validate(self, item: Any) -> Signal:
        try:
            return validate_signal(item, self._symbols.is_known_symbol, self._symbols.exchanges)
        except InvalidSignal as refusal:
            # A symbol listed since the last load is found by a reload (rate-limited).
            if refusal.code == "unknown_symbol" and await self._symbols.refresh(item["exchange"]):
                return validate_signal(item, self._symbols.is_known_symbol, self._symbols.exchanges)
            raise

    async def _dead_letter(self, raw: bytes, key: bytes | None, refusal: RefusedInput, reason: str,
                           what: str) -> None:
        logger.warning("refused %s from %s: %s [%s]; frame: %s", what, self.source, reason, refusal.code,
                       _excerpt(raw))
        letter = serde.DeadLetter.of(self.source, -1, -1, None, raw, refusal.code, self._wall_clock_ms(), reason)
        await self._send(self._publisher.topics.dead_letters, key, serde.encode_dead_letter(letter))
        self.stats.bump("dead_letters")

    async def _send(self, topic: str, key: bytes | None, value: bytes) -> Delivery:
        """Publishes, retrying with backoff until Kafka acknowledges: a signal is never skipped."""
        return await retry_until_acknowledged(
            lambda: self._publisher.send(topic, key, value), Backoff(self._backoff.initial_s, self._backoff.max_s),
            f"a record for {topic}", logger, retry_on=PublishFailed, stop=self._stop,
            stopped=lambda error: PublishFailed(f"{topic}: not acknowledged before shutdown: {error}"))


# ---------------------------------------------------------------------- the process


async def run_ingest(settings: Settings, stop: asyncio.Event, *, symbols: SymbolDirectory | None = None) -> None:
    """Runs the ingest until ``stop`` is set: demo feed (if no URL), Kafka, the exchange's symbols, the client.

    Waits, with backoff, for Kafka and for the exchange's symbol list (the worker that runs
    the built-in emulator may start later). Raises ``IngestError`` for what no wait fixes.
    """
    from streams.ingest.demo_feed import DemoFeed  # the demo is the embedded default only

    backoff_cap = settings.ingest_max_backoff_s
    demo: DemoFeed | None = None
    heartbeat = asyncio.create_task(beat_while_running(settings.heartbeat_file)) if settings.heartbeat_file else None
    directory = symbols or binance_directory(settings)
    publisher = KafkaPublisher(settings)
    try:
        url = settings.signals_ws_url
        trades_for_real = settings.binance_futures_url is not None and is_production_url(settings.binance_futures_url)
        if url is None and trades_for_real:
            # The demo feed opens real positions wherever the exchange points: never on production.
            raise IngestError("SIGNALS_WS_URL is unset, so the built-in demo feed would trade on the production "
                              "exchange named by BINANCE_FUTURES_URL: set SIGNALS_WS_URL to your signal feed")
        if url is None:
            demo = DemoFeed("127.0.0.1", settings.demo_feed_port, interval_s=settings.demo_feed_interval_s)
            try:
                url = await demo.start()
            except OSError as error:
                if settings.demo_feed_port == 0:
                    raise IngestError(f"cannot start the built-in demo feed on 127.0.0.1: {error}") from error
                # Another pipeline on this host plays it (several `make pipeline`, one group):
                # listen to that run. Its signal ids are the run's, so every ingest publishes
                # the same signals and the repeated ids have no further effect.
                demo, url = None, f"ws://127.0.0.1:{settings.demo_feed_port}"
                logger.info("SIGNALS_WS_URL unset and 127.0.0.1:%d is taken (%s): following the demo feed another "
                            "pipeline on this host plays there", settings.demo_feed_port, error)
            else:
                logger.info("SIGNALS_WS_URL unset: playing the built-in demo feed at %s", url)
        if not await publisher.start_until_ready(stop, Backoff(max_s=backoff_cap)):
            return
        if not await directory.load_until_ready(stop, Backoff(max_s=backoff_cap)):
            return
        client = SignalFeedClient(url, publisher, directory, backoff=Backoff(max_s=backoff_cap),
                                  refuse_demo_feed=trades_for_real, policy=settings.policy())
        watcher = asyncio.create_task(_stop_when(stop, client))
        try:
            await client.run()
        finally:
            watcher.cancel()
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        await directory.close()
        await publisher.stop()
        if demo is not None:
            await demo.stop()


async def _stop_when(stop: asyncio.Event, client: SignalFeedClient) -> None:
    await stop.wait()
    client.stop()


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signals.SIGINT, signals.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await run_ingest(settings, stop)


def main() -> int:
    """Entry point of ``python -m streams.ingest``: 0 after SIGTERM/SIGINT, 1 on a fatal error."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        print(f"signal ingest: {error}", file=sys.stderr)
        return 1
    configure_logging(settings.log_format)
    try:
        asyncio.run(_main(settings))
    except (IngestError, TopologyError) as error:
        logger.critical("signal ingest stopped: %s", error)
        return 1
    return 0


"""The exchange edge inside a worker: gateways, executor, poller and their lifecycles.

Started with the Faust app (a ``mode.Service``): it builds one ccxt gateway per configured
exchange (every signed request carrying ``recvWindow`` = ``PIPELINE_EXCHANGE_RECV_WINDOW_MS``),
follows the order-attempt ledger the executor writes before every placement
(``streams.exchange.attempts``), follows the table changelog for the poller's tracked keys,
and, when ``BINANCE_FUTURES_URL`` is unset, runs the built-in Binance USD-M emulator (the
embedded default: paper trading; shared by every worker on the host) and points the real
ccxt client at it.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import mode

from streams.exchange.attempts import KafkaAttemptLedger
from streams.edge.ccxt_client import create_binanceusdm
from streams.exchange.clock import ExchangeClock
from streams.exchange.executor import OrderExecutor, PlacementTiming
from streams.exchange.gateway import CcxtGateway, ExchangeGateway
from streams.exchange.poller import PositionPoller, TrackedKeys
from streams.settings import Settings
from streams.topics import TopicNames

logger = logging.getLogger(__name__)


class ExchangeEdge(mode.Service):
    """Owns the exchange clients of one worker process."""

    def __init__(self, settings: Settings, changelog_topic: str, publish, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.gateways: dict[str, ExchangeGateway] = {}
        self.tracked = TrackedKeys(settings.kafka_bootstrap_servers, changelog_topic)
        self.ledger = KafkaAttemptLedger(settings.kafka_bootstrap_servers,
                                         TopicNames.for_prefix(settings.topic_prefix).order_attempts)
        # The exchange's time, not this host's: report and snapshot times come from here
        # (and signed requests' timestamps), never from decide() (streams/exchange/clock.py).
        self.clock = ExchangeClock()
        self.executor = OrderExecutor(self.gateways, self.clock.now_ms, self.ledger, timing=PlacementTiming(
            recv_window_ms=settings.exchange_recv_window_ms, clock_margin_ms=settings.exchange_clock_margin_ms))
        self.poller = PositionPoller(self.gateways, self.tracked.live_keys, publish, self.clock.now_ms)
        self._emulator = None
        self._clock_sync: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def on_start(self) -> None:
        base_url = self.settings.binance_futures_url
        api_key, api_secret = self.settings.binance_api_key, self.settings.binance_api_secret
        if base_url is None:
            from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET

            base_url = await self._start_or_share_emulator()
            api_key, api_secret = api_key or DEFAULT_API_KEY, api_secret or DEFAULT_API_SECRET
        if not api_key or not api_secret:
            raise RuntimeError("binance: BINANCE_API_KEY and BINANCE_API_SECRET are required with BINANCE_FUTURES_URL")
        gateway = CcxtGateway("binance", create_binanceusdm(
            base_url, api_key, api_secret, recv_window_ms=self.settings.exchange_recv_window_ms))
        self.gateways["binance"] = gateway
        try:
            await self.clock.sync(gateway)
        except Exception as error:  # noqa: BLE001 - the exchange may come up later: retried below
            logger.warning("binance clock sync failed at start (trading on this host's clock until it works): %s",
                           error)
        self._clock_sync = asyncio.create_task(self.clock.keep_synced(
            gateway, interval_s=min(60.0, self.settings.sync_interval_s)))
        await self.ledger.start()
        await self.tracked.start()
        self.ready.set()

    async def _start_or_share_emulator(self) -> str:
        """The built-in emulator's URL: started here, or the one another worker on this host serves.

        Several workers of one group on one machine (``make pipeline`` twice) must trade on
        ONE paper exchange: each with its own would hold a different book, and keys would
        move between exchanges with their partitions. The first worker binds
        ``EMULATOR_PORT``; the others find it there and use it.
        """
        from emulator.binance_usdm import BinanceUsdmEmulator

        port = self.settings.emulator_port
        emulator = BinanceUsdmEmulator(host="127.0.0.1", port=port)
        try:
            base_url = await emulator.start()
        except OSError as error:
            shared = f"http://127.0.0.1:{port}"
            if port == 0 or not await _answers_as_binance(shared):
                raise RuntimeError(f"cannot start the built-in exchange emulator on 127.0.0.1:{port} ({error}) and "
                                   f"nothing there answers /fapi/v1/ping: set EMULATOR_PORT or "
                                   f"BINANCE_FUTURES_URL") from error
            logger.info("BINANCE_FUTURES_URL unset: paper trading on the built-in emulator another worker on this "
                        "host serves at %s", shared)
            return shared
        self._emulator = emulator
        logger.info("BINANCE_FUTURES_URL unset: paper trading on the built-in emulator at %s", base_url)
        return base_url

    async def on_stop(self) -> None:
        if self._clock_sync is not None:
            self._clock_sync.cancel()
        await self.tracked.stop()
        await self.ledger.stop()
        for gateway in self.gateways.values():
            await gateway.close()
        if self._emulator is not None:
            await self._emulator.stop()


async def _answers_as_binance(base_url: str) -> bool:
    """True when ``base_url`` answers Binance USD-M's ping (``GET /fapi/v1/ping`` -> ``{}``)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            async with session.get(f"{base_url}/fapi/v1/ping") as reply:
                return reply.status == 200 and await reply.json(content_type=None) == {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return False

"""The exchange edge inside a worker: gateways, executor, poller and their lifecycles.

Started with the Faust app (a ``mode.Service``): it builds one ccxt gateway per configured
exchange (every signed request carrying ``recvWindow`` = ``PIPELINE_EXCHANGE_RECV_WINDOW_MS``),
follows the order-attempt ledger the executor writes before every placement
(``streams.exchange.attempts``), follows the table changelog for the poller's tracked keys,
and, when ``BINANCE_FUTURES_URL`` is unset, runs the built-in Binance USD-M emulator (the
embedded default: paper trading) and points the real ccxt client at it.
"""

from __future__ import annotations

import asyncio
import logging
import time

import mode

from streams.exchange.attempts import KafkaAttemptLedger
from streams.exchange.ccxt_client import create_binanceusdm
from streams.exchange.executor import OrderExecutor, PlacementTiming
from streams.exchange.gateway import CcxtGateway, ExchangeGateway
from streams.exchange.poller import PositionPoller, TrackedKeys
from streams.settings import Settings
from streams.topics import TopicNames

logger = logging.getLogger(__name__)


def wall_clock_ms() -> int:
    """The edge's clock: report and snapshot times come from here, never from decide()."""
    return int(time.time() * 1000)


class ExchangeEdge(mode.Service):
    """Owns the exchange clients of one worker process."""

    def __init__(self, settings: Settings, changelog_topic: str, publish, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.gateways: dict[str, ExchangeGateway] = {}
        self.tracked = TrackedKeys(settings.kafka_bootstrap_servers, changelog_topic)
        self.ledger = KafkaAttemptLedger(settings.kafka_bootstrap_servers,
                                         TopicNames.for_prefix(settings.topic_prefix).order_attempts)
        self.executor = OrderExecutor(self.gateways, wall_clock_ms, self.ledger, timing=PlacementTiming(
            recv_window_ms=settings.exchange_recv_window_ms, clock_margin_ms=settings.exchange_clock_margin_ms))
        self.poller = PositionPoller(self.gateways, self.tracked.live_keys, publish, wall_clock_ms)
        self._emulator = None
        self.ready = asyncio.Event()

    async def on_start(self) -> None:
        base_url = self.settings.binance_futures_url
        api_key, api_secret = self.settings.binance_api_key, self.settings.binance_api_secret
        if base_url is None:
            from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator

            self._emulator = BinanceUsdmEmulator(host="127.0.0.1", port=self.settings.emulator_port)
            base_url = await self._emulator.start()
            api_key, api_secret = api_key or DEFAULT_API_KEY, api_secret or DEFAULT_API_SECRET
            logger.info("BINANCE_FUTURES_URL unset: paper trading on the built-in emulator at %s", base_url)
        if not api_key or not api_secret:
            raise RuntimeError("binance: BINANCE_API_KEY and BINANCE_API_SECRET are required with BINANCE_FUTURES_URL")
        self.gateways["binance"] = CcxtGateway("binance", create_binanceusdm(
            base_url, api_key, api_secret, recv_window_ms=self.settings.exchange_recv_window_ms))
        await self.ledger.start()
        await self.tracked.start()
        self.ready.set()

    async def on_stop(self) -> None:
        await self.tracked.stop()
        await self.ledger.stop()
        for gateway in self.gateways.values():
            await gateway.close()
        if self._emulator is not None:
            await self._emulator.stop()

"""The exchange edge inside a worker: gateways, executor, poller and their lifecycles.

Started with the Faust app (a ``mode.Service``): it builds one ccxt gateway per configured
exchange (every signed request carrying ``recvWindow`` = ``PIPELINE_EXCHANGE_RECV_WINDOW_MS``),
follows the order-attempt ledger the executor writes before every placement
(``streams.exchange.attempts``), follows the table changelog for the poller's tracked keys,
and, when ``BINANCE_FUTURES_URL`` is unset, points the real ccxt client at the paper
exchange the worker gives it (``streams.worker.paper_exchange``: the built-in Binance USD-M
emulator, shared by every worker on the host).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

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


class PaperExchange(Protocol):
    """An exchange for paper trading that the edge starts when no exchange URL is configured."""

    api_key: str
    api_secret: str

    async def start(self) -> str:
        """Starts it (or finds it shared) and returns its base URL."""
        ...

    async def stop(self) -> None:
        """Stops it if this process started it."""
        ...


class ExchangeEdge(mode.Service):
    """Owns the exchange clients of one worker process."""

    def __init__(self, settings: Settings, changelog_topic: str, publish, *,
                 paper_exchange: PaperExchange | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.paper_exchange = paper_exchange
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
        self._clock_sync: asyncio.Task | None = None
        self.ready = asyncio.Event()

    async def on_start(self) -> None:
        base_url = self.settings.binance_futures_url
        api_key, api_secret = self.settings.binance_api_key, self.settings.binance_api_secret
        if base_url is None:
            if self.paper_exchange is None:
                raise RuntimeError("binance: BINANCE_FUTURES_URL is unset and no paper exchange was given")
            base_url = await self.paper_exchange.start()
            api_key = api_key or self.paper_exchange.api_key
            api_secret = api_secret or self.paper_exchange.api_secret
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

    async def on_stop(self) -> None:
        if self._clock_sync is not None:
            self._clock_sync.cancel()
        await self.tracked.stop()
        await self.ledger.stop()
        for gateway in self.gateways.values():
            await gateway.close()
        if self.paper_exchange is not None:
            await self.paper_exchange.stop()

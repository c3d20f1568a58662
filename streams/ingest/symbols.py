"""Which symbols each exchange lists: loaded once at start, refreshed on an unknown symbol.

The ingest refuses a signal for a symbol its exchange does not list (contract section 2).
Markets are loaded through the real ccxt client (``create_binanceusdm``), from
``BINANCE_FUTURES_URL`` or, when it is unset, from the built-in emulator that the stream
worker runs on ``127.0.0.1:EMULATOR_PORT``. Only the public ``/fapi/v1/exchangeInfo`` is
asked, so this process never holds the exchange credentials.

A symbol listed after the start (a new perpetual) is found by a reload, at most once per
``refresh_interval_s`` per exchange, so a feed full of junk symbols cannot flood the
exchange with ``exchangeInfo`` requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping

import ccxt.async_support as ccxt

from streams.edge.ccxt_client import create_binanceusdm, is_production_url
from streams.edge.backoff import Backoff, retry_until_ready
from streams.ingest.exceptions import SymbolsUnavailable
from streams.settings import Settings

__all__ = ["MarketLoader", "SymbolDirectory", "CcxtMarkets", "exchange_markets_url", "binance_directory"]

logger = logging.getLogger(__name__)

MarketLoader = Callable[[], Awaitable[Collection[str]]]
"""Loads (again) the exchange-native symbols one exchange lists; raises ``SymbolsUnavailable``."""

DEFAULT_REFRESH_INTERVAL_S = 60.0


class SymbolDirectory:
    """The symbols of every configured exchange, with a rate-limited reload."""

    def __init__(self, loaders: Mapping[str, MarketLoader], *, refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic, closers: Collection[Callable[[], Awaitable[None]]] = ()
                 ) -> None:
        self._loaders = dict(loaders)
        self._symbols: dict[str, frozenset[str]] = {}
        self._loaded_at: dict[str, float] = {}
        self._refresh_interval_s = refresh_interval_s
        self._clock = clock
        self._closers = tuple(closers)

    @property
    def exchanges(self) -> frozenset[str]:
        """The exchanges this directory knows about (the configured ones)."""
        return frozenset(self._loaders)

    def is_known_symbol(self, exchange: str, symbol: str) -> bool:
        """True when ``exchange`` listed ``symbol`` at the last load (the validation's ``SymbolCheck``)."""
        return symbol in self._symbols.get(exchange, frozenset())

    async def _load(self, exchange: str) -> None:
        symbols = frozenset(await self._loaders[exchange]())
        # Stamped even when empty: the interval bounds the requests, whatever they returned.
        self._symbols[exchange] = symbols
        self._loaded_at[exchange] = self._clock()
        logger.info("%s lists %d symbols", exchange, len(symbols))

    async def load(self) -> None:
        """Loads every exchange's symbols; raises ``SymbolsUnavailable`` when one cannot be had."""
        for exchange in self._loaders:
            await self._load(exchange)

    async def load_until_ready(self, stop: asyncio.Event, backoff: Backoff) -> bool:
        """Retries ``load`` with backoff until it succeeds (True) or ``stop`` is set (False).

        At start the exchange may not answer yet (the worker that runs the built-in emulator
        may start after the ingest): waiting is right, giving up is not.
        """
        return await retry_until_ready(self.load, SymbolsUnavailable, stop, backoff, logger)

    async def refresh(self, exchange: str) -> bool:
        """Reloads ``exchange``'s symbols if the last load is older than the interval; True if it did.

        A failed reload keeps the symbols known so far (logged, never raised): the signal
        that asked is judged on what is known.
        """
        if exchange not in self._loaders:
            return False
        loaded_at = self._loaded_at.get(exchange)
        if loaded_at is not None and self._clock() - loaded_at < self._refresh_interval_s:
            return False
        try:
            await self._load(exchange)
        except SymbolsUnavailable as error:
            self._loaded_at[exchange] = self._clock()  # a failure also waits out the interval
            logger.warning("refreshing the symbols failed, keeping the known ones: %s", error)
            return False
        return True

    async def close(self) -> None:
        """Releases the exchange clients."""
        for close in self._closers:
            await close()


class CcxtMarkets:
    """A ``MarketLoader`` over a ccxt client: the ids of ``load_markets(reload=True)``."""

    def __init__(self, name: str, client: ccxt.Exchange, source: str) -> None:
        self.name = name
        self._client = client
        self._source = source

    async def __call__(self) -> frozenset[str]:
        try:
            await self._client.load_markets(reload=True)
        except ccxt.BaseError as error:
            # ccxt's message names the URL and the answer; this client holds no credentials.
            text = str(error)[:300] or type(error).__name__
            raise SymbolsUnavailable(f"{self.name}: cannot load markets from {self._source}: "
                                     f"{type(error).__name__}: {text}") from error
        return frozenset(self._client.markets_by_id)

    async def close(self) -> None:
        """Closes the ccxt client's HTTP session."""
        await self._client.close()


def exchange_markets_url(settings: Settings) -> str:
    """Where Binance's markets are loaded from: ``BINANCE_FUTURES_URL``, else the worker's emulator."""
    return settings.binance_futures_url or f"http://127.0.0.1:{settings.emulator_port}"


def binance_directory(settings: Settings, *, timeout_ms: int = 10000,
                      refresh_interval_s: float = DEFAULT_REFRESH_INTERVAL_S) -> SymbolDirectory:
    """A directory of the configured exchange (Binance USD-M) through one ccxt client.

    No credentials: ``exchangeInfo`` is public, and a process that needs no secret should
    not hold one.
    """
    url = exchange_markets_url(settings)
    client = create_binanceusdm(url, "", "", timeout_ms=timeout_ms)
    if not is_production_url(url) and url.startswith("http://"):
        client.timeout_on_exit = 0  # ccxt waits 250 ms on close for a TLS shutdown; plain HTTP has none
    markets = CcxtMarkets("binance", client, url)
    return SymbolDirectory({"binance": markets}, refresh_interval_s=refresh_interval_s, closers=(markets.close,))

"""The paper exchange of a worker without ``BINANCE_FUTURES_URL``: the built-in Binance USD-M emulator.

The worker (the composition root) gives it to the exchange edge, so the edge never imports
the emulator. Several workers of one group on one machine (``make pipeline`` twice) must
trade on ONE paper exchange: each with its own would hold a different book, and keys would
move between exchanges with their partitions. The first worker binds ``EMULATOR_PORT``; the
others find it there and use it.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator

logger = logging.getLogger(__name__)

__all__ = ["EmbeddedEmulator"]


class EmbeddedEmulator:
    """Starts the built-in emulator on ``port`` of 127.0.0.1, or uses the one another worker serves there."""

    api_key = DEFAULT_API_KEY
    api_secret = DEFAULT_API_SECRET

    def __init__(self, port: int) -> None:
        self.port = port
        self._emulator: BinanceUsdmEmulator | None = None

    async def start(self) -> str:
        """The emulator's URL: started here, or the one another worker on this host serves."""
        port = self.port
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

    async def stop(self) -> None:
        """Stops the emulator if this worker started it (the others keep using theirs)."""
        if self._emulator is not None:
            await self._emulator.stop()
            self._emulator = None


async def _answers_as_binance(base_url: str) -> bool:
    """True when ``base_url`` answers Binance USD-M's ping (``GET /fapi/v1/ping`` -> ``{}``)."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as session:
            async with session.get(f"{base_url}/fapi/v1/ping") as reply:
                return reply.status == 200 and await reply.json(content_type=None) == {}
    except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
        return False

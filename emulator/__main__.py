"""``python -m emulator``: run the Binance USD-M emulator standalone until interrupted.

Prints the base URL on the first line of stdout (``http://127.0.0.1:<port>``), so a script
can read it with ``--port 0``. Point the pipeline at it with ``BINANCE_FUTURES_URL`` and the
emulator's key pair (``--api-key``/``--api-secret``, by default ``DEFAULT_API_KEY`` /
``DEFAULT_API_SECRET`` of ``emulator.binance_usdm``); drive it through
``<base URL>/_emulator/`` (see ``docs/emulator.md``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys

from emulator.binance_usdm import (
    CLIENT_ID_RULES,
    CLIENT_ID_UNIQUE_AMONG_OPEN,
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    BinanceUsdmEmulator,
    RateLimitConfig,
    default_symbols,
)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one (default)")
    parser.add_argument("--bench-symbols", type=int, default=300, metavar="N",
                        help="generated BENCH0USDT..BENCH<N-1>USDT symbols besides the real ones (default 300)")
    parser.add_argument("--api-key", default=DEFAULT_API_KEY, help="API key the emulator accepts")
    parser.add_argument("--api-secret", default=DEFAULT_API_SECRET, help="HMAC secret the emulator accepts")
    parser.add_argument("--no-rate-limits", action="store_true",
                        help="publish Binance's limits but do not enforce them")
    parser.add_argument("--client-id-rule", choices=CLIENT_ID_RULES, default=CLIENT_ID_UNIQUE_AMONG_OPEN,
                        help="open_orders (default, Binance's documented rule: an id is accepted again once "
                             "its order is filled, canceled or expired) or forever (stricter than Binance)")
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    return parser.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    emulator = BinanceUsdmEmulator(
        args.host, args.port, symbols=default_symbols(args.bench_symbols), api_key=args.api_key,
        api_secret=args.api_secret, rate_limits=RateLimitConfig(enforce=not args.no_rate_limits),
        client_id_rule=args.client_id_rule)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    base_url = await emulator.start()
    print(base_url, flush=True)
    try:
        await stop.wait()
    finally:
        await emulator.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m emulator``."""
    args = _parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

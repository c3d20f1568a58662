"""Exchange emulators the pipeline trades against in paper trading and in tests.

``binance_usdm``: Binance USD-M futures REST as ccxt 4.5.90 uses it. Its manual (the
endpoints, the fault injection and the ``/_emulator/`` control API) is ``docs/emulator.md``;
``emulator.binance_usdm``'s docstring says which module of the package does what.
"""

from emulator.binance_usdm import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator
from emulator.book import ExchangeBook
from emulator.control import CONTROL_PREFIX
from emulator.errors import BinanceError
from emulator.rate_limits import RateLimitConfig
from emulator.symbols import SymbolSpec, bench_symbols, default_symbols

__all__ = [
    "BinanceUsdmEmulator", "DEFAULT_API_KEY", "DEFAULT_API_SECRET",  # binance_usdm: the server and its keys
    "ExchangeBook",  # book
    "CONTROL_PREFIX",  # control
    "BinanceError",  # errors
    "RateLimitConfig",  # rate_limits
    "SymbolSpec", "bench_symbols", "default_symbols",  # symbols
]

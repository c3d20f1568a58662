"""Exchange emulators the pipeline trades against in paper trading and in tests.

``binance_usdm``: Binance USD-M futures REST as ccxt 4.5.90 uses it (see its docstring for
the endpoints, the fault injection and the ``/_emulator/`` control API).
"""

from emulator.binance_usdm import (
    CONTROL_PREFIX,
    DEFAULT_API_KEY,
    DEFAULT_API_SECRET,
    BinanceError,
    BinanceUsdmEmulator,
    ExchangeBook,
    RateLimitConfig,
    SymbolSpec,
    bench_symbols,
    default_symbols,
)

__all__ = [
    "BinanceError",
    "BinanceUsdmEmulator",
    "CONTROL_PREFIX",
    "DEFAULT_API_KEY",
    "DEFAULT_API_SECRET",
    "ExchangeBook",
    "RateLimitConfig",
    "SymbolSpec",
    "bench_symbols",
    "default_symbols",
]

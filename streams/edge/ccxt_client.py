"""The ccxt client for Binance USD-M futures, pointed at production or at any other host.

``create_binanceusdm(base_url, ...)`` builds ``ccxt.async_support.binanceusdm``. When
``base_url`` is not production (``https://fapi.binance.com``; ``None`` also means
production) the host of EVERY entry of ``urls['api']`` is replaced, every path kept:
``https://fapi.binance.com/fapi/v1`` becomes ``<base_url>/fapi/v1`` and so do the spot,
sapi, dapi, eapi and papi entries, so no ccxt call can reach a real Binance host by
accident. ``fetchCurrencies`` is off (otherwise ``load_markets`` calls
``/sapi/v1/capital/config/getall``) and markets are loaded from ``/fapi/v1/exchangeInfo``
only.

Credentials: the key and secret live only on the ccxt object. ccxt's own debug log line
carries the request headers (``X-MBX-APIKEY``); the client gets a logger that blanks both
values out of every record. ``repr()`` of the client shows neither.

Error codes: off the production URL ccxt cannot pick its USD-M error table (it chooses by
URL prefix), so for example -4116 "ClientOrderId is duplicated." arrives as a plain
``ExchangeError``. ccxt puts Binance's JSON body in the message; ``exchange_error_code``
reads the code back so callers can match on it.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import ccxt.async_support as ccxt

__all__ = ["DEFAULT_RECV_WINDOW_MS", "PRODUCTION_URL", "create_binanceusdm", "exchange_error_code",
           "is_production_url"]

PRODUCTION_URL = "https://fapi.binance.com"
#: Every host of this domain is Binance's production: real money.
PRODUCTION_DOMAIN = "binance.com"
_REDACTED = "***"
_CODE_PATTERN = re.compile(r'"code"\s*:\s*"?(-?\d+)"?')


def is_production_url(base_url: str | None) -> bool:
    """True for ``None`` and for any URL whose host is Binance's (``binance.com`` or a subdomain).

    The host is parsed, not the string compared: ``https://FAPI.binance.com:443/`` and
    ``https://fapi.binance.com`` are the same exchange, and so is any other Binance host.
    """
    if base_url is None:
        return True
    host = (urlsplit(base_url.strip()).hostname or "").rstrip(".").lower()
    return host == PRODUCTION_DOMAIN or host.endswith("." + PRODUCTION_DOMAIN)


def _rehost(url: str, base_url: str) -> str:
    """``url`` with its scheme and host replaced by ``base_url``'s, its path kept."""
    return base_url.rstrip("/") + urlsplit(url).path


class _RedactingLogger:
    """A logger front that blanks credentials out of every record before it is emitted.

    ccxt logs through ``self.logger.debug(fmt, *args)`` with the request headers among the
    args; formatting here, then redacting, catches the key wherever it appears.
    """

    def __init__(self, logger: logging.Logger, secrets: tuple[str, ...]) -> None:
        self._logger = logger
        # Longest first, so a secret that contains the key is blanked whole.
        self._secrets = tuple(sorted((s for s in secrets if s), key=len, reverse=True))

    def __repr__(self) -> str:
        return f"_RedactingLogger({self._logger.name!r})"

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, _REDACTED)
        return text

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 - the logging.Logger name
        """As ``logging.Logger.isEnabledFor``."""
        return self._logger.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.log``, the formatted message redacted."""
        if not self._logger.isEnabledFor(level):
            return
        try:
            text = str(msg) % args if args else str(msg)
        except (TypeError, ValueError):
            text = " ".join(str(part) for part in (msg, *args))
        passthrough = {k: v for k, v in kwargs.items() if k in ("exc_info", "stack_info", "stacklevel")}
        self._logger.log(level, "%s", self._redact(text), **passthrough)

    def debug(self, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.debug``."""
        self.log(logging.DEBUG, msg, *args, **kwargs)

    def info(self, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.info``."""
        self.log(logging.INFO, msg, *args, **kwargs)

    def warning(self, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.warning``."""
        self.log(logging.WARNING, msg, *args, **kwargs)

    def error(self, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.error``."""
        self.log(logging.ERROR, msg, *args, **kwargs)

    def exception(self, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.exception``."""
        kwargs.setdefault("exc_info", True)
        self.log(logging.ERROR, msg, *args, **kwargs)

    def critical(self, msg: object, *args: object, **kwargs: Any) -> None:
        """As ``logging.Logger.critical``."""
        self.log(logging.CRITICAL, msg, *args, **kwargs)


DEFAULT_RECV_WINDOW_MS = 5000


def create_binanceusdm(base_url: str | None, api_key: str, api_secret: str, *, enable_rate_limit: bool = False,
                       timeout_ms: int = 10000, recv_window_ms: int = DEFAULT_RECV_WINDOW_MS) -> ccxt.binanceusdm:
    """A ccxt Binance USD-M client on ``base_url`` (``None`` or production: Binance itself).

    ``enable_rate_limit`` turns on ccxt's own limiter (off by default: it is far slower than
    Binance's published limits; the pipeline limits requests itself). ``timeout_ms`` bounds
    every request. ``recv_window_ms`` is sent as ``recvWindow`` with every signed request
    (ccxt option ``recvWindow``), explicitly rather than left to Binance's default, because
    the executor's placement protocol counts on it: a request stamped T is refused (-1021)
    once T + recvWindow has passed. The caller closes the client (``await client.close()``).
    """
    if not 1 <= recv_window_ms <= 60000:
        raise ValueError(f"recv_window_ms must be in 1..60000 (Binance's limit), got {recv_window_ms}")
    if not is_production_url(base_url):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            # The URL is configuration, not a secret: naming it helps whoever set it.
            raise ValueError(f"BINANCE_FUTURES_URL must be http(s)://host[:port][/prefix], got {base_url!r}")
    if timeout_ms <= 0:
        raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
    client = ccxt.binanceusdm({
        "apiKey": api_key,
        "secret": api_secret,
        "enableRateLimit": enable_rate_limit,
        "timeout": timeout_ms,
        "verbose": False,  # verbose mode prints request headers, the API key among them
        "options": {
            # Off: fetchCurrencies calls /sapi/v1/capital/config/getall (and margin pairs).
            "fetchCurrencies": False,
            "fetchMargins": False,
            # USD-M perpetuals only: load_markets asks /fapi/v1/exchangeInfo and nothing else.
            "fetchMarkets": {"types": ["linear"]},
            "defaultType": "swap",
            "defaultSubType": "linear",
            # A clock sync would be one more request at load_markets; the host's clock is kept by NTP.
            "adjustForTimeDifference": False,
            # Sent with every signed request; see recv_window_ms above.
            "recvWindow": recv_window_ms,
        },
    })
    client.logger = _RedactingLogger(logging.getLogger("ccxt.base.exchange"), (api_key, api_secret))
    if not is_production_url(base_url):
        client.urls["api"] = {name: _rehost(url, base_url) if isinstance(url, str) else url
                              for name, url in client.urls["api"].items()}
    return client


def exchange_error_code(error: BaseException) -> int | None:
    """Binance's numeric error code carried in a ccxt exception's message, if any.

    ccxt raises ``<exchange id> <Binance JSON body>`` (for 429/418: ``<id> <status> <reason>
    <body>``); the code is the ``code`` member of that body, e.g. -4116 for a duplicate
    client order id. ``None`` when the message holds no Binance body (network errors).
    """
    message = str(error)
    start, end = message.find("{"), message.rfind("}")
    if 0 <= start < end:
        try:
            body = json.loads(message[start:end + 1])
        except ValueError:
            body = None
        if isinstance(body, dict) and "code" in body:
            try:
                return int(body["code"])
            except (TypeError, ValueError):
                return None
    match = _CODE_PATTERN.search(message)
    return int(match.group(1)) if match else None

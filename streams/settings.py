"""The pipeline's configuration: one frozen object, built once at the entry point.

Precedence: an explicit argument, then the environment, then the embedded default. Every
environment variable the pipeline reads is named here and nowhere else (the contract's
variables first, then the pipeline's own tuning knobs).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streams.domain import SIGNAL_ID_RETENTION_MIN_MS, Policy

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_STACK_ENV_FILE = REPO_ROOT / ".stack" / "env"


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names the variable."""


def _local_stack_value(name: str, env: Mapping[str, str]) -> str | None:
    """The value `make stack` recorded for ``name``, so the pipeline finds the local stack."""
    env_file = Path(env.get("STACK_DIR", REPO_ROOT / ".stack")) / "env"
    try:
        lines = env_file.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        assignment = line.removeprefix("export ").strip()
        if assignment.startswith(f"{name}="):
            return assignment.split("=", 1)[1]
    return None


def _number(env: Mapping[str, str], name: str, default: str, kind: type) -> object:
    raw = env.get(name, default)
    try:
        value = kind(raw)
    except (ValueError, ArithmeticError) as error:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from error
    return value


def _flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise SettingsError(f"{name}={raw!r} is not a boolean (on/off)")


#: What stands for a credential wherever one would be shown.
MASK = "***"
_CREDENTIAL_FIELDS = frozenset({"binance_api_key", "binance_api_secret", "web_auth_token"})
_URL_FIELDS = frozenset({"database_url", "signals_ws_url", "binance_futures_url"})
_SECRET_QUERY_NAMES = frozenset({"password", "pass", "pwd", "token", "access_token", "key", "apikey", "api_key",
                                 "secret", "signature", "sslpassword"})


def masked_url(url: str | None) -> str | None:
    """``url`` safe to show: the password of its userinfo and secret-looking query values masked.

    ``postgresql://user:pw@host/db?sslpassword=x`` -> ``postgresql://user:***@host/db?sslpassword=***``.
    """
    if not url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{hostport}" if colon else f"{user}@{hostport}"
    query = "&".join(
        f"{name}={MASK}" if name.lower() in _SECRET_QUERY_NAMES else (f"{name}={value}" if sep else name)
        for name, sep, value in (item.partition("=") for item in parts.query.split("&") if item)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


@dataclass(frozen=True)
class Settings:
    """Everything the pipeline's processes need to know about their surroundings.

    ``repr()`` masks every credential (the database password, the exchange key and secret,
    the web token): settings end up in logs and error reports.
    """

    # The contract's variables (../shared/CONTRACT.md, section 1).
    kafka_bootstrap_servers: str
    database_url: str
    signals_ws_url: str | None = None
    binance_futures_url: str | None = None
    binance_api_key: str | None = field(default=None, repr=False)
    binance_api_secret: str | None = field(default=None, repr=False)
    sync_interval_s: float = 30.0
    default_stop_loss_pct: Decimal = Decimal("2")
    web_port: int = 6066
    web_bind: str = "127.0.0.1"
    # The web server (streams/web): the host name other workers reach this one by (default:
    # WEB_BIND when it names one address, else the machine's host name), the optional bearer
    # token every route then requires, and the log format (text or json lines).
    web_host: str | None = None
    web_auth_token: str | None = field(default=None, repr=False)
    log_format: str = "text"

    # The pipeline's own knobs.
    app_id: str = "position-pipeline"
    topic_prefix: str = ""
    topic_partitions: int = 12
    topic_replication_factor: int = 1
    table_store: str = "rocksdb://"
    data_dir: Path = REPO_ROOT / ".stack" / "pipeline"
    entry_timeout_s: float = 30.0
    stop_loss_timeout_s: float = 30.0
    close_timeout_s: float = 30.0
    deadline_scan_interval_s: float = 1.0
    # How long a signal id is remembered after its first delivery (the contract: >= 7 days).
    signal_id_retention_s: float = SIGNAL_ID_RETENTION_MIN_MS / 1000
    # Binance refuses a signed request whose timestamp is more than recvWindow old (-1021).
    # Every request carries this recvWindow; an order attempt stamped T can therefore no
    # longer execute once recvWindow + the clock margin has passed since T, and only then
    # may the executor place an order a lookup did not find (streams/exchange/executor.py).
    # The margin covers Binance accepting timestamps up to 1 s ahead of its clock, clock
    # skew between executor hosts and the time a request spends inside the exchange.
    exchange_recv_window_ms: int = 5000
    exchange_clock_margin_ms: int = 3000
    commit_interval_s: float = 2.8
    session_timeout_s: float = 10.0
    # retention.ms of position-inputs when the pipeline creates it: -1 keeps every input, so
    # a replay from the log start knows every position ever opened.
    inputs_retention_ms: int = -1
    # The PostgreSQL sink (sinks/postgres.py): records per transaction, how long a partial
    # batch waits for more, and the ceiling of its retry backoff while PostgreSQL is down.
    sink_batch_size: int = 1000
    sink_linger_s: float = 0.2
    sink_max_backoff_s: float = 30.0
    sink_metrics_port: int = 6068
    exchange_edge_enabled: bool = True
    table_standby_replicas: int = 1
    heartbeat_file: Path | None = None
    emulator_port: int = 6070
    # The signal ingest (streams/ingest): the built-in demo feed it plays when SIGNALS_WS_URL
    # is unset (its port, 0 = any free one, and the pause between its frames), and the
    # ceiling of its reconnect/retry backoff.
    demo_feed_port: int = 6071
    demo_feed_interval_s: float = 1.5
    ingest_max_backoff_s: float = 30.0

    def __repr__(self) -> str:
        shown = []
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in _CREDENTIAL_FIELDS:
                value = MASK if value else value
            elif item.name in _URL_FIELDS:
                value = masked_url(value)
            shown.append(f"{item.name}={value!r}")
        return f"Settings({', '.join(shown)})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Settings from ``env`` (default ``os.environ``); keyword arguments win over both."""
        env = os.environ if env is None else env
        kafka = env.get("KAFKA_BOOTSTRAP_SERVERS") or _local_stack_value("KAFKA_BOOTSTRAP_SERVERS", env) \
            or "127.0.0.1:9092"
        database = env.get("DATABASE_URL") or _local_stack_value("DATABASE_URL", env) \
            or "postgresql://postgres@127.0.0.1:5432/positions"
        settings = cls(
            kafka_bootstrap_servers=kafka,
            database_url=database,
            signals_ws_url=env.get("SIGNALS_WS_URL") or None,
            binance_futures_url=env.get("BINANCE_FUTURES_URL") or None,
            binance_api_key=env.get("BINANCE_API_KEY") or None,
            binance_api_secret=env.get("BINANCE_API_SECRET") or None,
            sync_interval_s=_number(env, "SYNC_INTERVAL_S", "30", float),
            default_stop_loss_pct=_number(env, "DEFAULT_STOP_LOSS_PCT", "2", Decimal),
            web_port=_number(env, "WEB_PORT", "6066", int),
            web_bind=env.get("WEB_BIND", "127.0.0.1"),
            web_host=env.get("WEB_HOST") or None,
            web_auth_token=env.get("WEB_AUTH_TOKEN") or None,
            log_format=env.get("LOG_FORMAT", "text").lower(),
            app_id=env.get("PIPELINE_APP_ID", "position-pipeline"),
            topic_prefix=env.get("PIPELINE_TOPIC_PREFIX", ""),
            topic_partitions=_number(env, "PIPELINE_TOPIC_PARTITIONS", "12", int),
            topic_replication_factor=_number(env, "PIPELINE_TOPIC_REPLICATION_FACTOR", "1", int),
            table_store=env.get("PIPELINE_TABLE_STORE", "rocksdb://"),
            data_dir=Path(env.get("PIPELINE_DATA_DIR", REPO_ROOT / ".stack" / "pipeline")),
            entry_timeout_s=_number(env, "PIPELINE_ENTRY_TIMEOUT_S", "30", float),
            stop_loss_timeout_s=_number(env, "PIPELINE_STOP_LOSS_TIMEOUT_S", "30", float),
            close_timeout_s=_number(env, "PIPELINE_CLOSE_TIMEOUT_S", "30", float),
            deadline_scan_interval_s=_number(env, "PIPELINE_DEADLINE_SCAN_INTERVAL_S", "1", float),
            signal_id_retention_s=_number(env, "PIPELINE_SIGNAL_ID_RETENTION_S",
                                          str(SIGNAL_ID_RETENTION_MIN_MS // 1000), float),
            exchange_recv_window_ms=_number(env, "PIPELINE_EXCHANGE_RECV_WINDOW_MS", "5000", int),
            exchange_clock_margin_ms=_number(env, "PIPELINE_EXCHANGE_CLOCK_MARGIN_MS", "3000", int),
            commit_interval_s=_number(env, "PIPELINE_COMMIT_INTERVAL_S", "2.8", float),
            session_timeout_s=_number(env, "PIPELINE_SESSION_TIMEOUT_S", "10", float),
            inputs_retention_ms=_number(env, "PIPELINE_INPUTS_RETENTION_MS", "-1", int),
            sink_batch_size=_number(env, "PIPELINE_SINK_BATCH_SIZE", "1000", int),
            sink_linger_s=_number(env, "PIPELINE_SINK_LINGER_S", "0.2", float),
            sink_max_backoff_s=_number(env, "PIPELINE_SINK_MAX_BACKOFF_S", "30", float),
            sink_metrics_port=_number(env, "PIPELINE_SINK_METRICS_PORT", "6068", int),
            exchange_edge_enabled=_flag(env, "PIPELINE_EXCHANGE_EDGE", True),
            table_standby_replicas=_number(env, "PIPELINE_TABLE_STANDBY_REPLICAS", "1", int),
            heartbeat_file=Path(env["PIPELINE_HEARTBEAT_FILE"]) if env.get("PIPELINE_HEARTBEAT_FILE") else None,
            emulator_port=_number(env, "EMULATOR_PORT", "6070", int),
            demo_feed_port=_number(env, "DEMO_FEED_PORT", "6071", int),
            demo_feed_interval_s=_number(env, "DEMO_FEED_INTERVAL_S", "1.5", float),
            ingest_max_backoff_s=_number(env, "PIPELINE_INGEST_MAX_BACKOFF_S", "30", float),
        )
        settings = dataclasses.replace(settings, **overrides)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuses values the pipeline cannot run with, naming the variable."""
        if not 0 < self.default_stop_loss_pct < 100:
            raise SettingsError(f"DEFAULT_STOP_LOSS_PCT must be between 0 and 100, got {self.default_stop_loss_pct}")
        if self.log_format not in ("text", "json"):
            raise SettingsError(f"LOG_FORMAT must be text or json, got {self.log_format!r}")
        if not 1 <= self.web_port <= 65535:
            raise SettingsError(f"WEB_PORT must be a port number, got {self.web_port}")
        if self.topic_partitions < 1:
            raise SettingsError(f"PIPELINE_TOPIC_PARTITIONS must be >= 1, got {self.topic_partitions}")
        if not 6 <= self.session_timeout_s <= 1800:
            # Kafka brokers refuse a session outside group.min/max.session.timeout.ms (6 s / 30 min by default).
            raise SettingsError(f"PIPELINE_SESSION_TIMEOUT_S must be between 6 and 1800, got {self.session_timeout_s}")
        if self.inputs_retention_ms != -1 and self.inputs_retention_ms < 1:
            raise SettingsError(f"PIPELINE_INPUTS_RETENTION_MS must be -1 (keep forever) or > 0 ms, "
                                f"got {self.inputs_retention_ms}")
        if self.sync_interval_s <= 0:
            raise SettingsError(f"SYNC_INTERVAL_S must be > 0, got {self.sync_interval_s}")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("DATABASE_URL must be a postgresql:// URL")
        if self.sink_batch_size < 1:
            raise SettingsError(f"PIPELINE_SINK_BATCH_SIZE must be >= 1, got {self.sink_batch_size}")
        if self.sink_linger_s < 0:
            raise SettingsError(f"PIPELINE_SINK_LINGER_S must be >= 0, got {self.sink_linger_s}")
        if self.sink_max_backoff_s <= 0:
            raise SettingsError(f"PIPELINE_SINK_MAX_BACKOFF_S must be > 0, got {self.sink_max_backoff_s}")
        if self.signals_ws_url is not None and not self.signals_ws_url.startswith(("ws://", "wss://")):
            raise SettingsError("SIGNALS_WS_URL must be a ws:// or wss:// URL")
        if not 0 <= self.sink_metrics_port <= 65535:
            raise SettingsError(f"PIPELINE_SINK_METRICS_PORT must be a port (0 = no endpoint), got {self.sink_metrics_port}")
        if not 0 <= self.demo_feed_port <= 65535:
            raise SettingsError(f"DEMO_FEED_PORT must be a port (0 = any free one), got {self.demo_feed_port}")
        if self.demo_feed_interval_s < 0:
            raise SettingsError(f"DEMO_FEED_INTERVAL_S must be >= 0, got {self.demo_feed_interval_s}")
        if self.signal_id_retention_s * 1000 < SIGNAL_ID_RETENTION_MIN_MS:
            raise SettingsError("PIPELINE_SIGNAL_ID_RETENTION_S must be at least 7 days (604800): a repeated "
                                f"signal id has no effect for 7 days, got {self.signal_id_retention_s}")
        # Binance: "recvWindow must be less than 60000" (-1131 above it).
        if not 1 <= self.exchange_recv_window_ms <= 60000:
            raise SettingsError(f"PIPELINE_EXCHANGE_RECV_WINDOW_MS must be in 1..60000, got {self.exchange_recv_window_ms}")
        if self.exchange_clock_margin_ms < 1000:
            raise SettingsError("PIPELINE_EXCHANGE_CLOCK_MARGIN_MS must be >= 1000 (Binance accepts timestamps "
                                f"up to 1 s ahead of its clock), got {self.exchange_clock_margin_ms}")
        if self.ingest_max_backoff_s < 0.5:
            raise SettingsError(f"PIPELINE_INGEST_MAX_BACKOFF_S must be >= 0.5, got {self.ingest_max_backoff_s}")

    @property
    def broker_urls(self) -> list[str]:
        """The bootstrap servers as Faust broker URLs."""
        return [f"kafka://{server.strip()}" for server in self.kafka_bootstrap_servers.split(",") if server.strip()]

    def policy(self) -> Policy:
        """The state machine's parameters."""
        return Policy(
            default_stop_loss_pct=self.default_stop_loss_pct,
            entry_timeout_ms=int(self.entry_timeout_s * 1000),
            stop_loss_timeout_ms=int(self.stop_loss_timeout_s * 1000),
            close_timeout_ms=int(self.close_timeout_s * 1000),
            signal_id_retention_ms=int(self.signal_id_retention_s * 1000),
        )

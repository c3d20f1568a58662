"""The pipeline's configuration: one frozen object, built once at the entry point.

Precedence: an explicit argument, then the environment, then the embedded default. Every
environment variable the pipeline reads is named here and nowhere else (the contract's
variables first, then the pipeline's own tuning knobs).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from streams.domain import SIGNAL_ID_RETENTION_MIN_MS, Policy, is_stop_loss_pct
from streams.domain.exceptions import PipelineError

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_STACK_ENV_FILE = REPO_ROOT / ".stack" / "env"


class SettingsError(PipelineError, ValueError):
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


def _read(env: Mapping[str, str], name: str, kind: str, default: object) -> object:
    """The value of variable ``name`` as the field's type ``kind`` (a string: annotations are postponed)."""
    if kind == "bool":
        return _flag(env, name, bool(default))
    if kind in ("str | None", "Path | None"):
        raw = env.get(name)
        if not raw:
            return default
        return Path(raw) if kind == "Path | None" else raw
    if kind == "str":
        return env.get(name, default)
    if kind == "Path":
        return Path(env.get(name, default))
    return _number(env, name, str(default), {"int": int, "float": float, "Decimal": Decimal}[kind])


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
    signals_ws_url: str | None = field(default=None, metadata={"env": "SIGNALS_WS_URL"})
    binance_futures_url: str | None = field(default=None, metadata={"env": "BINANCE_FUTURES_URL"})
    binance_api_key: str | None = field(default=None, repr=False, metadata={"env": "BINANCE_API_KEY"})
    binance_api_secret: str | None = field(default=None, repr=False, metadata={"env": "BINANCE_API_SECRET"})
    sync_interval_s: float = field(default=30.0, metadata={"env": "SYNC_INTERVAL_S"})
    default_stop_loss_pct: Decimal = field(default=Decimal("2"), metadata={"env": "DEFAULT_STOP_LOSS_PCT"})
    web_port: int = field(default=6066, metadata={"env": "WEB_PORT"})
    web_bind: str = field(default="127.0.0.1", metadata={"env": "WEB_BIND"})
    # The web server (streams/web): the host name other workers reach this one by (default:
    # WEB_BIND when it names one address, else the machine's host name), the optional bearer
    # token every route then requires, and the log format (text or json lines).
    web_host: str | None = field(default=None, metadata={"env": "WEB_HOST"})
    web_auth_token: str | None = field(default=None, repr=False, metadata={"env": "WEB_AUTH_TOKEN"})
    log_format: str = field(default="text", metadata={"env": "LOG_FORMAT"})

    # The pipeline's own knobs.
    app_id: str = field(default="position-pipeline", metadata={"env": "PIPELINE_APP_ID"})
    topic_prefix: str = field(default="", metadata={"env": "PIPELINE_TOPIC_PREFIX"})
    topic_partitions: int = field(default=12, metadata={"env": "PIPELINE_TOPIC_PARTITIONS"})
    topic_replication_factor: int = field(default=1, metadata={"env": "PIPELINE_TOPIC_REPLICATION_FACTOR"})
    table_store: str = field(default="rocksdb://", metadata={"env": "PIPELINE_TABLE_STORE"})
    data_dir: Path = field(default=REPO_ROOT / ".stack" / "pipeline", metadata={"env": "PIPELINE_DATA_DIR"})
    entry_timeout_s: float = field(default=30.0, metadata={"env": "PIPELINE_ENTRY_TIMEOUT_S"})
    stop_loss_timeout_s: float = field(default=30.0, metadata={"env": "PIPELINE_STOP_LOSS_TIMEOUT_S"})
    close_timeout_s: float = field(default=30.0, metadata={"env": "PIPELINE_CLOSE_TIMEOUT_S"})
    deadline_scan_interval_s: float = field(default=1.0, metadata={"env": "PIPELINE_DEADLINE_SCAN_INTERVAL_S"})
    # How long a signal id is remembered after its first delivery (the contract: >= 7 days).
    signal_id_retention_s: float = field(default=SIGNAL_ID_RETENTION_MIN_MS / 1000,
                                         metadata={"env": "PIPELINE_SIGNAL_ID_RETENTION_S"})
    # Binance refuses a signed request whose timestamp is more than recvWindow old (-1021).
    # Every request carries this recvWindow; an order attempt stamped T can therefore no
    # longer execute once recvWindow + the clock margin has passed since T, and only then
    # may the executor place an order a lookup did not find (streams/exchange/executor.py).
    # The margin covers Binance accepting timestamps up to 1 s ahead of its clock, clock
    # skew between executor hosts and the time a request spends inside the exchange.
    exchange_recv_window_ms: int = field(default=5000, metadata={"env": "PIPELINE_EXCHANGE_RECV_WINDOW_MS"})
    exchange_clock_margin_ms: int = field(default=3000, metadata={"env": "PIPELINE_EXCHANGE_CLOCK_MARGIN_MS"})
    commit_interval_s: float = field(default=2.8, metadata={"env": "PIPELINE_COMMIT_INTERVAL_S"})
    # How long the producer waits to fill a request. At 0 nearly every input of the agent left
    # in a request of its own (Faust suspends once per event, and each suspension let
    # aiokafka's sender go), and each request is a round of work for the broker. Kafka 4.0's
    # Java producer waits 5 ms by default (KIP-1030) for the same reason; it adds at most
    # that to a decision's latency.
    producer_linger_ms: int = field(default=5, metadata={"env": "PIPELINE_PRODUCER_LINGER_MS"})
    session_timeout_s: float = field(default=10.0, metadata={"env": "PIPELINE_SESSION_TIMEOUT_S"})
    # retention.ms of position-inputs when the pipeline creates it: -1 keeps every input, so
    # a replay from the log start knows every position ever opened.
    inputs_retention_ms: int = field(default=-1, metadata={"env": "PIPELINE_INPUTS_RETENTION_MS"})
    # The PostgreSQL sink (sinks/postgres.py): records per transaction, how long a partial
    # batch waits for more, and the ceiling of its retry backoff while PostgreSQL is down.
    # 10,000: a backlog drains in fewer commits, and more of a position's versions meet in one
    # batch (only the newest is read and written); a quiet stream still flushes after the
    # linger. Against 5,000: 88,000-90,000 records/s instead of 74,000-75,000 (bench_sink,
    # alternating, 2026-12-04).
    sink_batch_size: int = field(default=10_000, metadata={"env": "PIPELINE_SINK_BATCH_SIZE"})
    sink_linger_s: float = field(default=0.2, metadata={"env": "PIPELINE_SINK_LINGER_S"})
    sink_max_backoff_s: float = field(default=30.0, metadata={"env": "PIPELINE_SINK_MAX_BACKOFF_S"})
    # Processes the sink decodes its batches in (sinks/decode_process.py), each batch split
    # by partition among them, while the sink's thread fetches and writes. 0: in that thread.
    # One: on 2 cores a second did no better (150,000 records, 3 alternating rounds: 0 processes
    # 29,540-33,184 records/s, 1 37,292-42,853, 2 34,375-43,124).
    sink_decode_processes: int = field(default=1, metadata={"env": "PIPELINE_SINK_DECODE_PROCESSES"})
    # Connections the sink writes a batch on at once (sinks/postgres.py), each the records of
    # the partitions p with p % writers == its number, in a transaction of its own. A key lives
    # in one partition, so its rows always go through the same connection, in order. One by
    # default: the write step alone (no Kafka, no decoding) took 0.67 s with 2 against 1.03 s,
    # but the whole sink on 2 cores is CPU-bound and 2 gave 87,000-99,000 records/s against
    # 90,000-104,000 (bench_sink, alternating, 2026-12-04); with cores to spare, raise it.
    sink_writers: int = field(default=1, metadata={"env": "PIPELINE_SINK_WRITERS"})
    sink_metrics_port: int = field(default=6068, metadata={"env": "PIPELINE_SINK_METRICS_PORT"})
    exchange_edge_enabled: bool = field(default=True, metadata={"env": "PIPELINE_EXCHANGE_EDGE"})
    table_standby_replicas: int = field(default=1, metadata={"env": "PIPELINE_TABLE_STANDBY_REPLICAS"})
    heartbeat_file: Path | None = field(default=None, metadata={"env": "PIPELINE_HEARTBEAT_FILE"})
    emulator_port: int = field(default=6070, metadata={"env": "EMULATOR_PORT"})
    # The signal ingest (streams/ingest): the built-in demo feed it plays when SIGNALS_WS_URL
    # is unset (its port, 0 = any free one, and the pause between its frames), and the
    # ceiling of its reconnect/retry backoff.
    demo_feed_port: int = field(default=6071, metadata={"env": "DEMO_FEED_PORT"})
    demo_feed_interval_s: float = field(default=1.5, metadata={"env": "DEMO_FEED_INTERVAL_S"})
    ingest_max_backoff_s: float = field(default=30.0, metadata={"env": "PIPELINE_INGEST_MAX_BACKOFF_S"})

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
        values: dict[str, object] = {"kafka_bootstrap_servers": kafka, "database_url": database}
        for item in fields(cls):
            if "env" in item.metadata:
                values[item.name] = _read(env, item.metadata["env"], item.type, item.default)
        values["log_format"] = str(values["log_format"]).lower()
        return cls(**{**values, **overrides})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Refuses values the pipeline cannot run with, naming the variable."""
        if not is_stop_loss_pct(self.default_stop_loss_pct):
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
        if not 0 <= self.producer_linger_ms <= 1000:
            raise SettingsError(f"PIPELINE_PRODUCER_LINGER_MS must be between 0 and 1000, got {self.producer_linger_ms}")
        if not self.database_url.startswith(("postgresql://", "postgres://")):
            raise SettingsError("DATABASE_URL must be a postgresql:// URL")
        if self.sink_batch_size < 1:
            raise SettingsError(f"PIPELINE_SINK_BATCH_SIZE must be >= 1, got {self.sink_batch_size}")
        if not 0 <= self.sink_decode_processes <= 64:
            raise SettingsError(f"PIPELINE_SINK_DECODE_PROCESSES must be between 0 and 64, got {self.sink_decode_processes}")
        if not 1 <= self.sink_writers <= 64:
            raise SettingsError(f"PIPELINE_SINK_WRITERS must be between 1 and 64, got {self.sink_writers}")
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

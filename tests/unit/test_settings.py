"""Settings: contract variables, embedded defaults, precedence, refusals that name the variable."""

from __future__ import annotations

from decimal import Decimal

import pytest

from streams.settings import Settings, SettingsError


def test_settings_without_environment_use_the_contracts_embedded_defaults(tmp_path):
    # Arrange: an empty environment and a stack folder with no recorded stack.
    env = {"STACK_DIR": str(tmp_path)}

    # Act
    settings = Settings.from_env(env)

    # Assert
    assert settings.sync_interval_s == 30.0
    assert settings.default_stop_loss_pct == Decimal("2")
    assert (settings.web_port, settings.web_bind) == (6066, "127.0.0.1")
    assert settings.binance_futures_url is None and settings.signals_ws_url is None
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.policy().signal_id_retention_ms == 7 * 24 * 3600 * 1000
    assert (settings.exchange_recv_window_ms, settings.exchange_clock_margin_ms) == (5000, 3000)


def test_settings_without_kafka_variable_find_the_local_stack_recorded_by_make_stack(tmp_path):
    # Arrange
    (tmp_path / "env").write_text("export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39092\n"
                                  "export DATABASE_URL=postgresql://postgres@127.0.0.1:35432/positions\n")

    # Act
    settings = Settings.from_env({"STACK_DIR": str(tmp_path)})

    # Assert
    assert settings.kafka_bootstrap_servers == "127.0.0.1:39092"
    assert settings.database_url == "postgresql://postgres@127.0.0.1:35432/positions"


def test_settings_environment_is_overridden_by_explicit_arguments():
    # Arrange
    env = {"KAFKA_BOOTSTRAP_SERVERS": "a:1,b:2", "DATABASE_URL": "postgresql://u@h:1/d", "SYNC_INTERVAL_S": "1",
           "DEFAULT_STOP_LOSS_PCT": "2.5", "BINANCE_API_SECRET": "very-secret"}

    # Act
    settings = Settings.from_env(env, sync_interval_s=5.0)

    # Assert
    assert settings.sync_interval_s == 5.0
    assert settings.default_stop_loss_pct == Decimal("2.5")
    assert settings.broker_urls == ["kafka://a:1", "kafka://b:2"]
    assert "very-secret" not in repr(settings)


@pytest.mark.parametrize(("variable", "value"), [
    ("DEFAULT_STOP_LOSS_PCT", "100"), ("DEFAULT_STOP_LOSS_PCT", "abc"), ("SYNC_INTERVAL_S", "0"),
    ("WEB_PORT", "http"), ("PIPELINE_TOPIC_PARTITIONS", "0"), ("DATABASE_URL", "mysql://x"),
    ("PIPELINE_SIGNAL_ID_RETENTION_S", "604799"), ("PIPELINE_EXCHANGE_RECV_WINDOW_MS", "60001"),
    ("PIPELINE_EXCHANGE_RECV_WINDOW_MS", "0"), ("PIPELINE_EXCHANGE_CLOCK_MARGIN_MS", "999"),
    ("PIPELINE_PRODUCER_LINGER_MS", "1001"),
])
def test_settings_with_a_bad_value_raise_an_error_naming_the_variable(variable, value):
    # Arrange
    env = {"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d", variable: value}

    # Act / Assert
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env(env)


def test_repr_and_the_banner_mask_every_credential():
    # Arrange
    from streams.supervise import banner

    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "k:1",
        "DATABASE_URL": "postgresql://bob:hunter2@db:5432/positions?sslpassword=sslsecret&application_name=x",
        "SIGNALS_WS_URL": "wss://feeduser:feedpw@signals.example/feed?token=feedtoken",
        "BINANCE_FUTURES_URL": "https://fapi.binance.com",
        "BINANCE_API_KEY": "binancekey123", "BINANCE_API_SECRET": "binancesecret456", "WEB_AUTH_TOKEN": "webtoken789",
    })

    # Act
    shown = [repr(settings), str(settings), banner(settings)]

    # Assert: no secret anywhere; what is not secret stays readable
    for text in shown:
        for secret in ("hunter2", "sslsecret", "feedpw", "feedtoken", "binancekey123", "binancesecret456",
                       "webtoken789"):
            assert secret not in text, (secret, text)
    assert "postgresql://bob:***@db:5432/positions?sslpassword=***&application_name=x" in shown[2]
    assert "binance_api_key='***'" in shown[0] and "web_auth_token='***'" in shown[0]


def test_masked_url_keeps_urls_without_credentials_as_they_are():
    from streams.settings import masked_url

    assert masked_url("postgresql://postgres@127.0.0.1:5432/positions") == "postgresql://postgres@127.0.0.1:5432/positions"
    assert masked_url("ws://127.0.0.1:6071") == "ws://127.0.0.1:6071"
    assert masked_url(None) is None

"""The project's metrics (bounded labels, what each observe_* counts), JSON logs, web settings."""

from __future__ import annotations

import json
import logging
import logging.config
import sys

import pytest
from prometheus_client import REGISTRY

from streams.settings import Settings, SettingsError
from streams.telemetry import metrics
from streams.telemetry.logging import JsonFormatter, faust_logging_config
from tests.unit.domain.domain_builders import Feed, feed_active, feed_pending_entry

BASE_ENV = {"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.mark.parametrize(("code", "category"), [
    ("already_open", "already_open"),
    ("already_closing", "already_closing"),
    ("nothing_to_close", "nothing_to_close"),
    ("invalid_signal", "invalid_signal"),
    ("unknown_symbol", "unknown_symbol"),
    ("non_positive_quantity", "invalid_signal"),
    ("stop_loss_out_of_range", "invalid_signal"),
    ("invalid_json", "invalid_frame"),
    ("invalid_frame", "invalid_frame"),
    ("something nobody foresaw", "other"),
    (None, "other"),
])
def test_refusal_codes_map_to_a_few_categories(code, category):
    assert metrics.refusal_category(code) == category
    assert category in metrics.REFUSAL_CATEGORIES


def test_every_refusal_of_the_state_machine_has_a_code_and_its_own_category():
    # The reason is for people: rewording it must not move a metric.
    from streams.domain import NO_OPS, AuditDecision, RefusalCode

    refused = [no_op for no_op in NO_OPS.values() if no_op.decision is AuditDecision.REFUSED]
    assert refused and all(no_op.code is not None for no_op in refused)
    assert all(metrics.refusal_category(code.value) == code.value for code in RefusalCode)


def test_observe_decision_counts_decisions_and_refusals_by_category():
    # Arrange: a second open on a live key is refused.
    feed = feed_pending_entry()
    refused = feed.open("sig-again")
    applied = Feed().open("sig-first")
    before_refused = sample("pipeline_decisions_total", decision="refused", kind="signal")
    before_applied = sample("pipeline_decisions_total", decision="applied", kind="signal")
    before_category = sample("pipeline_refusals_total", reason="already_open", source="agent")

    # Act
    metrics.observe_decision(refused)
    metrics.observe_decision(applied)

    # Assert
    assert sample("pipeline_decisions_total", decision="refused", kind="signal") == before_refused + 1
    assert sample("pipeline_decisions_total", decision="applied", kind="signal") == before_applied + 1
    assert sample("pipeline_refusals_total", reason="already_open", source="agent") == before_category + 1


def test_observe_input_counts_by_payload_kind():
    # Arrange
    feed = feed_active()
    before = sample("pipeline_inputs_total", kind="report")

    # Act
    for item in feed.sent:
        metrics.observe_input(item.event)

    # Assert: open signal, entry fill, stop-loss accepted.
    assert sample("pipeline_inputs_total", kind="report") == before + 2


def test_exchange_error_codes_and_error_types_stay_a_bounded_label_set():
    # Act
    for code in range(-5000, -4900):
        metrics.observe_exchange_error(code)
    metrics.observe_exchange_error(None)
    for index in range(100):
        metrics.observe_dead_letter("agent", f"Error{index}")

    # Assert
    codes = {s.labels["code"] for m in REGISTRY.collect() if m.name == "pipeline_exchange_errors" for s in m.samples}
    types = {s.labels["error_type"] for m in REGISTRY.collect() if m.name == "pipeline_dead_letters" for s in m.samples}
    assert len(codes) <= 42 and "other" in codes
    assert len(types) <= 42 and "other" in types


def test_unknown_sources_are_labelled_other():
    # Act
    metrics.observe_refusal("unknown_symbol", source="somewhere")

    # Assert
    assert sample("pipeline_refusals_total", reason="unknown_symbol", source="other") >= 1


def test_position_gauge_sets_every_live_status_including_zeros():
    # Act
    metrics.refresh_position_gauge([feed_active().position, feed_active().position])

    # Assert
    assert sample("pipeline_positions", status="active") == 2
    assert sample("pipeline_positions", status="pending_entry") == 0
    assert REGISTRY.get_sample_value("pipeline_positions", {"status": "closed"}) is None


def test_sink_lag_is_never_negative():
    metrics.set_sink_lag(-3)
    assert sample("pipeline_sink_lag_records") == 0
    metrics.set_sink_lag(42)
    assert sample("pipeline_sink_lag_records") == 42


def test_json_formatter_writes_one_json_object_per_record_with_extras_and_traceback():
    # Arrange
    logger = logging.getLogger("test.json")
    try:
        raise ValueError("boom")
    except ValueError:
        record = logger.makeRecord("test.json", logging.ERROR, __file__, 1, "failed %s", ("x",),
                                   exc_info=sys.exc_info(), extra={"key": "APTUSDT@binance"})

    # Act
    line = JsonFormatter().format(record)

    # Assert
    assert "\n" not in line
    document = json.loads(line)
    assert document["message"] == "failed x" and document["level"] == "ERROR" and document["logger"] == "test.json"
    assert document["key"] == "APTUSDT@binance"
    assert "ValueError: boom" in document["exc_info"]
    assert document["ts"].endswith("Z")


def test_faust_logging_config_replaces_only_the_default_handler():
    assert faust_logging_config("text") is None
    config = faust_logging_config("json")
    assert config["merge"] is True and config["handlers"]["default"]["formatter"] == "json"
    # The formatter factory resolves (dictConfig raises on a wrong "()" path).
    logging.config.dictConfig({**{k: v for k, v in config.items() if k != "merge"}, "disable_existing_loggers": False})


def test_web_settings_come_from_the_environment_and_the_token_never_shows():
    # Act
    settings = Settings.from_env({**BASE_ENV, "WEB_AUTH_TOKEN": "hunter2", "WEB_HOST": "10.0.0.7",
                                  "LOG_FORMAT": "JSON"})

    # Assert
    assert settings.web_auth_token == "hunter2" and settings.web_host == "10.0.0.7"
    assert settings.log_format == "json"
    assert "hunter2" not in repr(settings)
    assert Settings.from_env(BASE_ENV).web_auth_token is None


@pytest.mark.parametrize(("variable", "value"), [("LOG_FORMAT", "xml"), ("WEB_PORT", "70000")])
def test_bad_web_settings_name_their_variable(variable, value):
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({**BASE_ENV, variable: value})

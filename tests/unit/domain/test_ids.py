"""Identifiers are pure functions of their inputs and fit the exchange's rules."""

from __future__ import annotations

import pytest

from streams.domain import (
    CLIENT_ORDER_ID_PATTERN,
    InvalidValueError,
    OrderRole,
    ReportOutcome,
    client_order_id,
    command_id,
    key_for,
    key_of_position_id,
    position_id,
    report_key,
)

POSITION = "APTUSDT@binance/1234"


def test_position_id_is_key_slash_offset():
    # Arrange
    key = key_for("APTUSDT", "binance")

    # Act
    identifier = position_id(key, 1234)

    # Assert
    assert identifier == POSITION
    assert key_of_position_id(identifier) == key


def test_position_id_negative_offset_is_refused():
    # Arrange / Act / Assert
    with pytest.raises(InvalidValueError):
        position_id("APTUSDT@binance", -1)


def test_client_order_id_same_inputs_same_id():
    # Arrange / Act
    first = client_order_id(POSITION, OrderRole.ENTRY, 1)
    second = client_order_id(POSITION, OrderRole.ENTRY, 1)

    # Assert
    assert first == second


def test_client_order_id_known_value_is_stable_across_releases():
    # Arrange / Act
    identifier = client_order_id(POSITION, OrderRole.STOP_LOSS, 1)

    # Assert: pinned, so a change of the recipe (which would orphan live orders) fails here
    assert identifier == "pps1-5jwt6hgfv4fisvkx"


@pytest.mark.parametrize("role", list(OrderRole))
@pytest.mark.parametrize("attempt", [1, 2, 9, 10, 12345, 10**15])
def test_client_order_id_fits_binance_charset_and_length(role: OrderRole, attempt: int):
    # Arrange
    long_position = "1000SHIBUSDT@binance/" + "9" * 18

    # Act
    identifier = client_order_id(long_position, role, attempt)

    # Assert
    assert CLIENT_ORDER_ID_PATTERN.match(identifier)
    assert len(identifier) <= 36
    assert identifier == identifier.lower()


def test_client_order_id_attempts_roles_and_positions_differ():
    # Arrange
    other = "APTUSDT@binance/1235"

    # Act
    identifiers = {
        client_order_id(position, role, attempt)
        for position in (POSITION, other)
        for role in OrderRole
        for attempt in (1, 2, 3)
    }

    # Assert
    assert len(identifiers) == 2 * len(OrderRole) * 3


def test_client_order_id_prefix_names_role_and_attempt():
    # Arrange / Act
    entry, stop, close = (client_order_id(POSITION, role, 2) for role in OrderRole)

    # Assert
    assert (entry[:5], stop[:5], close[:5]) == ("ppe2-", "pps2-", "ppc2-")


def test_client_order_id_attempt_zero_is_refused():
    # Arrange / Act / Assert
    with pytest.raises(InvalidValueError):
        client_order_id(POSITION, OrderRole.ENTRY, 0)


def test_command_id_names_position_kind_and_order():
    # Arrange
    client_id = client_order_id(POSITION, OrderRole.ENTRY, 1)

    # Act
    place = command_id(POSITION, "place_entry", client_id)
    query = command_id(POSITION, "query_order", client_id, 1240)

    # Assert
    assert place == f"{POSITION}/place_entry/{client_id}"
    assert query == f"{POSITION}/query_order/{client_id}/1240"


def test_report_key_is_unambiguous_pair():
    # Arrange
    client_id = client_order_id(POSITION, OrderRole.CLOSE, 1)

    # Act
    key = report_key(client_id, ReportOutcome.NOT_FOUND)

    # Assert
    assert key == f"{client_id}|not_found"
    assert "|" not in client_id

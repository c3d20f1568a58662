"""The compiled builders `decide` uses give the same frozen values as the dataclasses' own."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from decimal import Decimal

import pytest

from streams.domain import AuditDecision, AuditRecord, Decision, InputKind, KeyState, Position, Status
from streams.domain.verdicts import (
    _new_audit_record,
    _new_decision,
    _new_key_state,
    _precompiled_new,
    _replace_position,
)
from tests.unit.domain.domain_builders import KEY, feed_active


def _active_position() -> Position:
    position = feed_active().state.position
    assert position is not None
    return position


def test_replace_position_equals_dataclasses_replace_and_leaves_the_original_as_it_was():
    # Arrange
    position = _active_position()
    before = repr(position)

    # Act
    replaced = _replace_position(position, status=Status.CLOSING, quantity=Decimal("1.50"), version=99)

    # Assert
    expected = dataclasses.replace(position, status=Status.CLOSING, quantity=Decimal("1.50"), version=99)
    assert type(replaced) is Position
    assert replaced == expected
    assert repr(replaced) == repr(expected)  # Decimal("1.50") keeps its exponent
    assert hash(replaced) == hash(expected)
    assert repr(position) == before


def test_replace_position_without_changes_copies_every_field():
    # Arrange
    position = _active_position()

    # Act
    copied = _replace_position(position)

    # Assert
    assert copied is not position
    assert copied == position


def test_a_built_value_is_frozen():
    # Arrange
    replaced = _replace_position(_active_position(), version=7)
    state = _new_key_state(key=KEY, last_offset=3, seen_signals=(), position=replaced, last_exchange_ts=0)

    # Act / Assert
    with pytest.raises(dataclasses.FrozenInstanceError):
        replaced.version = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.last_offset = 4  # type: ignore[misc]


def test_new_key_state_audit_record_and_decision_equal_their_constructors_defaults_included():
    # Arrange
    position = _active_position()
    state_fields = dict(key=KEY, last_offset=5, seen_signals=(), position=position, last_exchange_ts=12)
    audit_fields = dict(key=KEY, offset=5, event_id="e", position_id=position.id, input_kind=InputKind.SNAPSHOT,
                        decision=AuditDecision.IGNORED, reason="r", ts=1)

    # Act
    state = _new_key_state(**state_fields)
    audit = _new_audit_record(**audit_fields)
    decision = _new_decision(state=state, commands=(), audit=audit, position_changed=False)

    # Assert
    assert (type(state), type(audit), type(decision)) == (KeyState, AuditRecord, Decision)
    assert state == KeyState(**state_fields)
    assert audit == AuditRecord(**audit_fields)
    assert audit.status_after is None and audit.refusal_code is None
    assert decision == Decision(state=KeyState(**state_fields), commands=(), audit=AuditRecord(**audit_fields),
                                position_changed=False)


def test_new_runs_the_post_init_of_its_class():
    # Arrange
    @dataclass(frozen=True, slots=True)
    class Checked:
        amount: int

        def __post_init__(self) -> None:
            if self.amount < 0:
                raise ValueError("negative")

    build = _precompiled_new(Checked)

    # Act / Assert
    assert build(amount=2) == Checked(2)
    with pytest.raises(ValueError, match="negative"):
        build(amount=-1)


def test_new_refuses_a_class_with_a_default_factory():
    # Arrange
    @dataclass(frozen=True, slots=True)
    class WithFactory:
        items: list = field(default_factory=list)

    # Act / Assert
    with pytest.raises(TypeError, match="default factory"):
        _precompiled_new(WithFactory)

"""The local stack's KRaft cluster id is one ``kafka-storage format`` accepts as an argument."""

from __future__ import annotations

import base64
import uuid

from stack import kafka_broker


def test_a_cluster_id_never_begins_with_a_dash_which_kafka_storage_would_read_as_an_option(monkeypatch):
    # Arrange: the first random id encodes to "-..." (first byte 0xF8 is the base64 digit 62),
    # the second to "AAAA...".
    dash_first = uuid.UUID(bytes=b"\xf8" + b"\x00" * 15)
    plain = uuid.UUID(bytes=b"\x00" * 16)
    drawn = iter([dash_first, plain])
    monkeypatch.setattr(kafka_broker.uuid, "uuid4", lambda: next(drawn))

    # Act
    cluster_id = kafka_broker.new_cluster_id()

    # Assert: the dash id was drawn and refused; the id has Kafka's 22-character form.
    assert base64.urlsafe_b64encode(dash_first.bytes).decode().startswith("-")
    assert cluster_id == "A" * 22


def test_cluster_ids_are_22_url_safe_characters_and_differ():
    ids = {kafka_broker.new_cluster_id() for _ in range(200)}

    assert len(ids) == 200
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
    assert all(set(i) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") for i in ids)

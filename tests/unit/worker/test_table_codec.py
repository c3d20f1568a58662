"""The key_to_state table reads and writes one codec on every path, recovery included.

A worker restores its table from the changelog whenever its local store is behind it (an
empty data dir, a crash, a replay, a takeover). The changelog topic's schema decodes those
records, the store and the changelog writes encode them: all must be Avro ``KeyState``,
or recovery stalls on the first record the table itself wrote.
"""

from __future__ import annotations

from streams.wire import codec, serde
from streams.worker.app import KeyStateTable, build_pipeline
from streams.domain import KeyState
from streams.settings import Settings


def pipeline(tmp_path):
    settings = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "postgresql://u@h:1/d"},
                                 table_store="memory://", data_dir=tmp_path, app_id="codec-unit")
    return build_pipeline(settings)


def test_table_store_changelog_writes_and_recovery_all_use_the_avro_key_state_codec(tmp_path):
    # Arrange
    table = pipeline(tmp_path).key_to_state

    # Act
    recovery_schema = table.changelog_topic.schema

    # Assert
    assert isinstance(table, KeyStateTable)
    assert table.value_serializer == KeyStateTable.VALUE_CODEC == "avro-key-state"
    assert table.data.value_serializer == "avro-key-state"
    assert recovery_schema.value_serializer == "avro-key-state"
    assert recovery_schema.key_serializer == table.key_serializer == "raw"


def test_a_changelog_record_the_table_wrote_decodes_on_the_recovery_path(tmp_path):
    # Arrange: the bytes a changelog write produces for a state.
    built = pipeline(tmp_path)
    table = built.key_to_state
    state = KeyState.initial("APTUSDT@binance")
    written = built.app.serializers.dumps_value(None, serde.key_state_to_record(state),
                                                serializer=table.value_serializer)

    # Act: what recovery and standbys do with a changelog record's value.
    restored = built.app.serializers.loads_value(None, written, serializer=table.changelog_topic.schema.value_serializer)

    # Assert
    assert written[:2] == codec.MARKER
    assert serde.key_state_from_record(restored) == state

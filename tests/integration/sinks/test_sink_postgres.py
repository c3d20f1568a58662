"""The sink on the real broker and PostgreSQL: final rows, redelivery, order, bad records, lost connections.

Each test publishes what the agent would publish (``UpdateStream``, made by the real
``decide``) on its own ``position-updates`` topic and runs a ``PostgresSink`` into its own
fresh database. The end-to-end test with the real worker is ``test_sink_pipeline.py``;
a stopped and restarted PostgreSQL is ``test_sink_outage.py``.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer

from sinks.batch_decode import decode_batch
from sinks.exceptions import DatabaseError, IntegrityViolationError
from sinks.migrate import migrate
from sinks.postgres import PostgresWriter, write_batch
from sinks.rows import BatchRows, merge_updates
from streams.wire import serde
from streams.domain import Position, ReportOutcome, Status
from streams.telemetry import metrics
from streams.topics import sink_group
from tests.integration.sink_support import (  # noqa: F401 - fresh_database is a fixture
    PARTITIONS,
    RunningSink,
    UpdateStream,
    assert_events_match,
    assert_rows_match,
    committed_offsets,
    create_topics,
    end_offsets,
    events_by_key,
    fresh_database,
    positions_by_id,
    publish,
    publish_updates,
    sink_settings,
    table_rows,
    wait_until,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("writers", [1, 3])
async def test_rows_after_a_stream_equal_the_final_state_of_every_position_field_by_field(
        kafka_bootstrap, fresh_database, unique_suffix, writers):
    # Arrange: 6 keys x 4 lives (closed, rolled back, adopted, partially filled), then one
    # more position per key left active: old ones close and new ones open inside batches;
    # written on one connection, or on three at once (each its partitions).
    stream = UpdateStream.lives(keys=6, cycles=4)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, sink_batch_size=50, sink_writers=writers)
    topics = await create_topics(settings)
    await publish_updates(kafka_bootstrap, topics.updates, stream.updates)

    # Act
    async with RunningSink(settings) as sink:
        await sink.wait_written(len(stream.updates))

        # Assert: offsets moved exactly to the end, after the rows were written (the sink sends
        # its commit without waiting for the broker's answer: it lands a moment later).
        await wait_until(lambda: committed_matches(kafka_bootstrap, sink.sink.group_id, topics.updates), 10,
                         "offsets committed to the end")
        lag = await sink.sink.refresh_lag()

    # Assert
    rows = await positions_by_id(fresh_database)
    assert_rows_match(rows, stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())
    assert sorted(row["status"] for row in rows.values() if row["status"] not in ("closed", "rolled_back")) \
        == ["active"] * 6
    assert sum(lag.values()) == 0
    assert sink.stats.batches > 1 and sink.stats.retries == 0
    assert sink.stats.last_versions  # the newest input offset written, per partition


async def test_two_sinks_in_one_group_share_the_partitions_and_write_every_row_once_in_order(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: one sink writes the first half; a second joins the group (the first gives up
    # partitions, committing what it wrote of them as they go), then the second half comes.
    stream = UpdateStream.lives(keys=8, cycles=3)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, sink_batch_size=20)
    topics = await create_topics(settings)
    half = len(stream.updates) // 2
    await publish_updates(kafka_bootstrap, topics.updates, stream.updates[:half])

    # Act
    async with RunningSink(settings) as first:
        await first.wait_written(half)
        async with RunningSink(settings) as second:
            await wait_until(lambda: second.sink._consumer is not None and second.sink._consumer.assigned, 60,
                             "the second sink to hold partitions")
            await wait_until(lambda: first.sink._consumer.assigned and not (
                first.sink._consumer.assigned & second.sink._consumer.assigned), 60, "the rebalance to settle")
            shares = (set(first.sink._consumer.assigned), set(second.sink._consumer.assigned))
            await publish_updates(kafka_bootstrap, topics.updates, stream.updates[half:])
            await wait_until(lambda: committed_matches(kafka_bootstrap, sink_group(settings), topics.updates), 60, "every offset committed")

    # Assert: the partitions split between them, every row as the stream left it, none refused
    # (a key's rows stayed in order through the move).
    assert shares[0] and shares[1] and shares[0] | shares[1] == set(range(PARTITIONS))
    assert first.stats.refused == second.stats.refused == 0
    assert second.stats.records_written > 0
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())


async def test_the_same_updates_delivered_twice_leave_identical_rows(kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: the whole stream published twice (an agent that re-sent everything).
    stream = UpdateStream.lives(keys=4, cycles=3)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, sink_batch_size=40)
    topics = await create_topics(settings)
    await publish_updates(kafka_bootstrap, topics.updates, stream.updates + stream.updates)

    # Act
    async with RunningSink(settings) as sink:
        await sink.wait_written(2 * len(stream.updates))
    positions_once = await table_rows(fresh_database, "monitoring.positions", "id")
    events_once = await table_rows(fresh_database, "monitoring.position_events", "key, input_offset")

    # ... and replayed once more from the beginning by a sink of another group (a reset sink).
    replay = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, app_id=f"replay-{unique_suffix}")
    async with RunningSink(replay) as replaying:
        await replaying.wait_written(2 * len(stream.updates))

    # Assert
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())
    assert await table_rows(fresh_database, "monitoring.positions", "id") == positions_once
    assert await table_rows(fresh_database, "monitoring.position_events", "key, input_offset") == events_once
    assert (replaying.stats.positions_upserted, replaying.stats.events_inserted) == (0, 0)


async def test_updates_delivered_out_of_version_order_leave_identical_rows(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: the stream backwards, in small batches: every position's newest version
    # comes first, each older one after it, across batch boundaries.
    stream = UpdateStream.lives(keys=4, cycles=3)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, sink_batch_size=7)
    topics = await create_topics(settings)
    await publish_updates(kafka_bootstrap, topics.updates, list(reversed(stream.updates)))

    # Act
    async with RunningSink(settings) as sink:
        await sink.wait_written(len(stream.updates))

    # Assert
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())


async def test_a_batch_in_any_order_writes_the_same_rows_as_the_stream_in_order(fresh_database):
    # Arrange: the whole stream as one batch, shuffled.
    stream = UpdateStream.lives(keys=5, cycles=4)
    shuffled = [update.value for update in stream.updates]
    random.Random(7).shuffle(shuffled)
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        # Act
        await writer.write(merge_updates(shuffled), asyncio.Event())

        # Assert
        assert_rows_match(await positions_by_id(fresh_database), stream.positions())
        assert_events_match(await events_by_key(fresh_database), stream.audits())
    finally:
        await writer.close()


async def test_a_batch_partly_written_before_writes_only_its_new_rows_and_counts_them(fresh_database):
    # Arrange: the first half of the stream is in the table; the whole stream comes again
    # (a batch read again after a crash, extended by what came since), so the audit rows'
    # first COPY meets rows that are there and gives way to the insert that skips them.
    stream = UpdateStream.lives(keys=3, cycles=3)
    values = [update.value for update in stream.updates]
    half = len(values) // 2
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        first = await writer.write(merge_updates(values[:half]), asyncio.Event())
        whole = merge_updates(values)

        # Act
        again = await writer.write(whole, asyncio.Event())

        # Assert
        assert first.events_inserted + again.events_inserted == len(whole.events)
        assert 0 < again.events_inserted < len(whole.events)
        assert_rows_match(await positions_by_id(fresh_database), stream.positions())
        assert_events_match(await events_by_key(fresh_database), stream.audits())
    finally:
        await writer.close()


def decoded_rows(updates) -> BatchRows:
    """The rows of the updates as the sink reads them: audit rows in binary COPY form."""
    return decode_batch([update.data for update in updates], [0] * len(updates)).rows


async def test_a_batch_read_as_the_sink_reads_it_writes_the_rows_of_the_domain_values(fresh_database):
    # Arrange: the bytes read by decode_batch (audit records straight to binary COPY rows),
    # shuffled into one batch.
    stream = UpdateStream.lives(keys=5, cycles=4)
    shuffled = list(stream.updates)
    random.Random(11).shuffle(shuffled)
    rows = decoded_rows(shuffled)
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        # Act
        result = await writer.write(rows, asyncio.Event())

        # Assert
        assert rows.event_copy_rows == len(stream.audits()) and not rows.events
        assert result.events_inserted == len(stream.audits())
        assert_rows_match(await positions_by_id(fresh_database), stream.positions())
        assert_events_match(await events_by_key(fresh_database), stream.audits())
    finally:
        await writer.close()


async def test_copy_form_audit_rows_partly_written_before_write_only_their_new_rows(fresh_database):
    # Arrange: the first half is in the table; the whole stream comes again in COPY form, so
    # its COPY meets rows that are there and gives way to the staged insert that skips them.
    stream = UpdateStream.lives(keys=3, cycles=3)
    half = len(stream.updates) // 2
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        first = await writer.write(decoded_rows(stream.updates[:half]), asyncio.Event())
        whole = decoded_rows(stream.updates)

        # Act
        again = await writer.write(whole, asyncio.Event())
        third = await writer.write(whole, asyncio.Event())  # the staging table is empty again after commit

        # Assert
        assert first.events_inserted + again.events_inserted == whole.event_copy_rows
        assert 0 < again.events_inserted < whole.event_copy_rows
        assert third.events_inserted == 0
        assert_rows_match(await positions_by_id(fresh_database), stream.positions())
        assert_events_match(await events_by_key(fresh_database), stream.audits())
    finally:
        await writer.close()


def close_and_reopen() -> tuple[UpdateStream, list, list]:
    """A key's first position active (first batch), then closed and the next one active (second)."""
    stream = UpdateStream()
    stream.open_to_active("APTUSDT")
    first = list(stream.updates)
    stream.answer(stream.close("APTUSDT"), ReportOutcome.FILLED)
    stream.open_to_active("APTUSDT", quantity="7")
    return stream, first, stream.updates[len(first):]


async def test_an_old_position_closing_and_the_next_opening_in_one_batch_pass_the_unique_index(fresh_database):
    # Arrange: the table holds the key's first position, active.
    stream, first_batch, second_batch = close_and_reopen()
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        await writer.write(merge_updates(u.value for u in first_batch), asyncio.Event())
        rows = merge_updates(u.value for u in second_batch)
        # Handed over newest first: the merge statement's ORDER BY alone must put them right.
        backwards = BatchRows(positions=list(reversed(rows.positions)), events=rows.events)

        # Act
        result = await write_batch(await writer.connection(), backwards)

        # Assert
        assert result.positions_upserted == 2
        assert_rows_match(await positions_by_id(fresh_database), stream.positions())
        assert sorted(p.status for p in stream.positions()) == sorted([Status.CLOSED, Status.ACTIVE])
    finally:
        await writer.close()


async def test_the_next_position_written_before_the_old_one_closed_is_refused_by_the_index(fresh_database):
    # Arrange: the control of the test above. The same updates split the wrong way round,
    # the new position in a batch before the old one's close: the backstop fires. So the
    # ordering is what keeps it quiet on legitimate data.
    stream, first_batch, second_batch = close_and_reopen()
    (old_id,) = {u.value.id for u in first_batch if isinstance(u.value, Position)}
    newer = [u.value for u in second_batch if isinstance(u.value, Position) and u.value.id != old_id]
    writer = PostgresWriter(fresh_database, max_backoff_s=0.5)
    try:
        await writer.write(merge_updates(u.value for u in first_batch), asyncio.Event())
        connection = await writer.connection()

        # Act / Assert
        with pytest.raises(IntegrityViolationError) as refused:
            await write_batch(connection, merge_updates(newer))
        assert isinstance(refused.value.__cause__, asyncpg.UniqueViolationError)
        assert await connection.fetchval("SELECT count(*) FROM monitoring.positions") == 1
    finally:
        await writer.close()


async def test_an_undecodable_update_is_dead_lettered_and_the_sink_goes_on(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: garbage and an empty value between good updates, all on one key's partition.
    stream = UpdateStream.lives(keys=1, cycles=2)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix)
    topics = await create_topics(settings)
    key = stream.updates[0].key.encode()
    half = len(stream.updates) // 2
    records = [(key, u.data) for u in stream.updates[:half]] + [(key, b"not avro at all"), (key, None)] \
        + [(key, u.data) for u in stream.updates[half:]]
    await publish(kafka_bootstrap, topics.updates, records)

    # Act
    async with RunningSink(settings) as sink:
        await sink.wait_written(len(records))
        await wait_until(lambda: committed_matches(kafka_bootstrap, sink.sink.group_id, topics.updates), 10,
                         "offsets committed to the end")

    # Assert
    assert sink.stats.undecodable == 2
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())
    letters = await read_all(kafka_bootstrap, topics.dead_letters, expected=2)
    decoded = [serde.decode_dead_letter(record.value) for record in letters]
    assert sorted(letter.source_offset for letter in decoded) == [half, half + 1]
    assert {letter.source_topic for letter in decoded} == {topics.updates}
    assert sorted((letter.value or b"") for letter in decoded) == [b"", b"not avro at all"]


async def test_a_live_position_another_live_row_holds_is_dead_lettered_with_both_rows_and_the_sink_goes_on(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: the database already holds a live DUPUSDT position; a second life of the same
    # key under another id arrives (what a replay not started at offset 0 produces), then
    # more good updates of another key.
    first, second, later = UpdateStream(), UpdateStream(), UpdateStream()
    first.open_to_active("DUPUSDT")
    second.snapshot("DUPUSDT", "0")  # moves its offsets on: the second life gets another id
    second.snapshot("DUPUSDT", "0")
    second.open_to_active("DUPUSDT", quantity="3.5")
    later.open_to_active("OKUSDT")
    (held,) = first.positions()
    (intruder,) = second.positions()
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, sink_batch_size=1000)
    topics = await create_topics(settings)
    refused_before = metrics.SINK_REFUSED_ROWS._value.get()

    # Act
    async with RunningSink(settings) as sink:
        await publish_updates(kafka_bootstrap, topics.updates, first.updates)
        await sink.wait_written(len(first.updates))
        await publish_updates(kafka_bootstrap, topics.updates, second.updates + later.updates)
        await sink.wait_written(len(first.updates) + len(second.updates) + len(later.updates))
        letters = await read_all(kafka_bootstrap, topics.dead_letters, expected=1)
        await wait_until(lambda: committed_matches(kafka_bootstrap, sink.sink.group_id, topics.updates), 10,
                         "offsets committed to the end")
        still_running = not sink.task.done()

    # Assert: the held row stays, the other key's rows landed, the intruder is a dead letter
    # naming both rows, the offsets moved on and the sink never stopped.
    assert held.id != intruder.id
    assert_rows_match(await positions_by_id(fresh_database), first.positions() + later.positions())
    assert still_running
    decoded = [serde.decode_dead_letter(record.value) for record in letters]
    assert {letter.error_type for letter in decoded} == {"LivePositionConflict"}
    assert all(intruder.id in letter.reason and held.id in letter.reason for letter in decoded)
    assert serde.decode_update(decoded[-1].value).id == intruder.id
    assert sink.stats.refused == len(decoded) >= 1
    assert metrics.SINK_REFUSED_ROWS._value.get() - refused_before == len(decoded)


async def test_connections_killed_mid_stream_are_retried_and_nothing_is_skipped(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: a sink with its own application_name, so its server process can be found.
    stream = UpdateStream.lives(keys=8, cycles=4)
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix, sink_batch_size=20,
                             sink_max_backoff_s=0.2)
    topics = await create_topics(settings)
    application = f"sink-{unique_suffix}"
    killer = await asyncpg.connect(fresh_database)
    killed = 0

    async with RunningSink(settings, application_name=application) as sink:
        try:
            # Act: publish a slice, then at once terminate the sink's connection: it is
            # writing the slice (lost mid-batch) or about to (lost while idle), and either
            # way the next write finds it gone.
            for start in range(0, len(stream.updates), 25):
                await publish_updates(kafka_bootstrap, topics.updates, stream.updates[start:start + 25])
                killed += await killer.fetchval(
                    "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE application_name = $1) AS terminated", application)
                await asyncio.sleep(0.1)
        finally:
            await killer.close()
        await sink.wait_written(len(stream.updates))

    # Assert
    assert killed >= 3
    # A connection killed during a write fails it (a retry, then a reconnect); one killed while
    # idle is found closed before the next write (a reconnect): every kill was met one way.
    assert sink.stats.reconnects >= 1
    assert sink.stats.retries + sink.stats.reconnects >= killed
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())


async def test_batches_fetched_behind_one_not_durable_wait_uncommitted_and_are_written_after_it_in_order(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: the first half written and committed; the second half is many batches.
    stream, settings, topics, half = await first_half_published(kafka_bootstrap, fresh_database, unique_suffix)
    blocker = await asyncpg.connect(fresh_database)
    async with RunningSink(settings) as sink:
        before = await committed_once_written(kafka_bootstrap, sink, topics, half)
        group = sink.sink.group_id

        # Act: hold a lock the sink's merge needs, then publish the second half.
        blocking = blocker.transaction()
        await blocking.start()
        await blocker.execute("LOCK TABLE monitoring.positions IN ACCESS EXCLUSIVE MODE")
        await publish_updates(kafka_bootstrap, topics.updates, stream.updates[half:])

        async def sink_waits_for_the_lock() -> bool:
            return await blocker.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'") >= 1

        await wait_until(sink_waits_for_the_lock, 30, "the sink's write to wait for the lock")
        # Behind the batch being written, the next ones are fetched and decoded meanwhile.
        await wait_until(lambda: sink.stats.batches_in_hand >= 3, 30, "batches fetched behind the waiting one")

        # Assert: consumed, not written, so not committed.
        assert await committed_offsets(kafka_bootstrap, group, topics.updates) == before
        assert sink.stats.records_written == half
        await blocking.rollback()
        await sink.wait_written(len(stream.updates))
        await wait_until(lambda: committed_matches(kafka_bootstrap, group, topics.updates), 30, "second commit")
    await blocker.close()
    # Written in fetch order: out of order, a key's next position would meet its old one still
    # open and the live-position index would refuse it.
    assert sink.stats.refused == 0 and sink.stats.undecodable == 0
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())


async def test_a_write_postgres_refuses_for_good_stops_the_sink_with_the_batches_behind_it_uncommitted(
        kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange: the first half written and committed, then the audit table gone (renamed).
    stream, settings, topics, half = await first_half_published(kafka_bootstrap, fresh_database, unique_suffix)
    admin = await asyncpg.connect(fresh_database)
    sink = await RunningSink(settings).__aenter__()  # not left by __aexit__: its failure is the point
    try:
        before = await committed_once_written(kafka_bootstrap, sink, topics, half)
        group = sink.sink.group_id
        await admin.execute("ALTER TABLE monitoring.position_events RENAME TO position_events_away")

        # Act
        await publish_updates(kafka_bootstrap, topics.updates, stream.updates[half:])
        with pytest.raises(DatabaseError, match="position_events"):
            await asyncio.wait_for(sink.task, timeout=60)
    finally:
        if not sink.task.done():
            await sink.stop()

    # Assert: nothing past the written half is committed; once the table is back, a new sink writes the rest.
    assert await committed_offsets(kafka_bootstrap, group, topics.updates) == before
    assert sink.stats.records_written == half and sink.stats.batches_in_hand == 0
    await admin.execute("ALTER TABLE monitoring.position_events_away RENAME TO position_events")
    await admin.close()
    async with RunningSink(settings) as again:
        await again.wait_written(len(stream.updates) - half)
    assert_rows_match(await positions_by_id(fresh_database), stream.positions())
    assert_events_match(await events_by_key(fresh_database), stream.audits())


async def first_half_published(kafka_bootstrap: str, database_url: str, suffix: str):
    """(stream, settings, topics, half): a stream whose keys close and open positions again,
    read in batches of 10 records, its first ``half`` updates published."""
    stream = UpdateStream.lives(keys=4, cycles=4)
    settings = sink_settings(kafka_bootstrap, database_url, suffix, sink_batch_size=10, sink_linger_s=0.0)
    topics = await create_topics(settings)
    half = len(stream.updates) // 2
    await publish_updates(kafka_bootstrap, topics.updates, stream.updates[:half])
    return stream, settings, topics, half


async def committed_once_written(kafka_bootstrap: str, sink: RunningSink, topics, records: int) -> dict[int, int]:
    """The sink's committed offsets once it has written ``records`` and committed them all."""
    await sink.wait_written(records)
    group = sink.sink.group_id
    await wait_until(lambda: committed_matches(kafka_bootstrap, group, topics.updates), 30, "first commit")
    return await committed_offsets(kafka_bootstrap, group, topics.updates)


async def committed_matches(bootstrap: str, group: str, topic: str) -> bool:
    """True when the group's committed offsets are the topic's end offsets."""
    ends = {p: o for p, o in (await end_offsets(bootstrap, topic)).items() if o > 0}
    committed = await committed_offsets(bootstrap, group, topic)
    return all(committed.get(partition) == offset for partition, offset in ends.items())


async def read_all(bootstrap: str, topic: str, expected: int, timeout_s: float = 30.0) -> list:
    """At least ``expected`` records of ``topic``, from its beginning."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    records: list = []
    try:
        async def enough() -> bool:
            for partition_records in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(partition_records)
            return len(records) >= expected

        await wait_until(enough, timeout_s, f"{expected} records on {topic}")
    finally:
        await consumer.stop()
    return records


async def test_migrations_run_at_sink_start_on_an_empty_database(kafka_bootstrap, fresh_database, unique_suffix):
    # Arrange
    settings = sink_settings(kafka_bootstrap, fresh_database, unique_suffix)
    await create_topics(settings)

    # Act
    async with RunningSink(settings) as sink:
        await wait_until(lambda: all(writer._migrated for writer in sink.sink.writers), 30, "migrations")

    # Assert
    connection = await asyncpg.connect(fresh_database)
    try:
        assert await migrate(connection) == []  # nothing left to apply
    finally:
        await connection.close()

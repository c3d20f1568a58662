"""Defects of Faust's consumer seen in the fault suite, each put in by hand: the input watch repairs them.

The worker's Faust app runs in the test's process, so a test can leave it the way a worker
was once left. The real broker, the real worker code; only the defect is put in by hand.

- A partition Faust stops fetching is still applied, and fetched again. Seen once after a
  kill -9 and a restart (2026-12-03): the worker applied two partitions to their ends while
  the third stayed 785 inputs behind for three minutes, nothing delivered, nothing logged.
- A commit Faust counted though it never reached the broker is made again. Seen once with
  workers joining and leaving (2026-12-03): one partition's committed offset stayed 566
  inputs behind its log end for three minutes while every input was applied, nothing logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest
from faust.types import TP

from streams.admin import create_topics
from streams.domain import Side
from streams.settings import Settings
from streams.worker.app import Pipeline, build_pipeline
from streams.worker.input_watch import UNDELIVERED_PATIENCE_S
from tests.integration.pipeline_harness import InputSender, UpdatesTap, wait_until_applied

pytestmark = pytest.mark.integration

PARTITIONS = 3


@pytest.fixture
async def worker_in_process(kafka_bootstrap, unique_suffix, tmp_path) -> AsyncIterator[Pipeline]:
    """The worker's Faust app, started in this process on a fresh group, its input partitions assigned."""
    app_id = f"watch-{unique_suffix}"
    settings = Settings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "PIPELINE_APP_ID": app_id, "PIPELINE_TOPIC_PREFIX": f"{app_id}.",
        "PIPELINE_TOPIC_PARTITIONS": str(PARTITIONS), "PIPELINE_TABLE_STORE": "memory://",
        "PIPELINE_DATA_DIR": str(tmp_path / "data"), "PIPELINE_EXCHANGE_EDGE": "off",
        "PIPELINE_ENTRY_TIMEOUT_S": "600",  # no deadline input joins the test's own
    })
    await create_topics(settings, wait_s=30)
    pipeline = build_pipeline(settings)
    app = pipeline.app
    await app.start()
    try:
        deadline = time.monotonic() + 60
        while not (app.tables.recovery.completed.is_set() and not app.rebalancing
                   and len(input_partitions(pipeline)) == PARTITIONS):
            assert time.monotonic() < deadline, "the in-process worker was not assigned its partitions in 60 s"
            await asyncio.sleep(0.2)
        yield pipeline
    finally:
        await app.stop()


def input_partitions(pipeline: Pipeline) -> set[TP]:
    return {tp for tp in pipeline.app.consumer.assignment() if tp.topic == pipeline.topics.inputs}


async def test_inputs_of_partitions_faust_stopped_fetching_are_applied_and_the_partitions_fetched_again(
        worker_in_process, kafka_bootstrap, caplog):
    # Arrange: the worker applies a first round of signals, then Faust stops fetching its inputs.
    pipeline = worker_in_process
    inputs = await InputSender(kafka_bootstrap, pipeline.topics.inputs).start()
    updates = await UpdatesTap(kafka_bootstrap, pipeline.topics.updates).start()
    rounds = {name: [f"{name}{index}USDT" for index in range(20)] for name in ("BEFORE", "UNFETCHED", "AFTER")}
    try:
        for symbol in rounds["BEFORE"]:
            await inputs.open(symbol, Side.BUY, "1")
        await wait_until_applied(kafka_bootstrap, pipeline.settings.app_id, pipeline.topics.inputs, timeout_s=60)
        pipeline.app.consumer.pause_partitions(input_partitions(pipeline))

        # Act: a round nobody fetches, then, once it is applied, a round after it.
        with caplog.at_level(logging.WARNING, logger="streams.worker.app"):
            started = time.monotonic()
            for symbol in rounds["UNFETCHED"]:
                await inputs.open(symbol, Side.BUY, "1")
            await wait_until_applied(kafka_bootstrap, pipeline.settings.app_id, pipeline.topics.inputs,
                                     timeout_s=60)
            unfetched_applied_after = time.monotonic() - started
            said = [record.getMessage() for record in caplog.records if "Faust delivered none" in record.getMessage()]
            caplog.clear()
            for symbol in rounds["AFTER"]:
                await inputs.open(symbol, Side.BUY, "1")
            await wait_until_applied(kafka_bootstrap, pipeline.settings.app_id, pipeline.topics.inputs,
                                     timeout_s=60)
            said_after = [record.getMessage() for record in caplog.records if "Faust delivered none" in record.getMessage()]
        every_symbol = [symbol for symbols in rounds.values() for symbol in symbols]
        await updates.wait_for(lambda: all(updates.latest(f"{symbol}@binance") for symbol in every_symbol), 30,
                               "a position for every signal")
    finally:
        await updates.stop()
        await inputs.stop()

    # Assert: every signal is a pending entry, and committed; the unfetched round waited for the
    # watch's patience and was named (partition, offsets, what Faust and aiokafka held); after it,
    # Faust fetches the partitions again: the last round needs no watch.
    assert all(updates.latest(f"{symbol}@binance").status.value == "pending_entry" for symbol in every_symbol)
    assert unfetched_applied_after >= UNDELIVERED_PATIENCE_S
    assert 1 <= len(said) <= PARTITIONS
    assert all("paused=True" in line for line in said), said
    assert said_after == []
    assert input_partitions(pipeline) <= pipeline.app.consumer._active_partitions


async def test_a_commit_faust_counted_though_the_broker_never_got_it_is_made_again(
        worker_in_process, kafka_bootstrap, caplog):
    # Arrange: the worker applies a first round; then its consumer service refuses to commit, as
    # it does a commit the coordinator answers "already rebalanced": it returns False, and
    # Faust records the offsets as committed all the same (Consumer._commit_offsets).
    pipeline = worker_in_process
    app_id = pipeline.settings.app_id
    inputs = await InputSender(kafka_bootstrap, pipeline.topics.inputs).start()
    thread = pipeline.app.consumer._thread
    commit_for_real = thread._commit
    refused: list[dict] = []

    async def refuse(offsets):
        refused.append(dict(offsets))
        return False

    try:
        for symbol in (f"COUNTED{index}USDT" for index in range(20)):
            await inputs.open(symbol, Side.BUY, "1")
        await wait_until_applied(kafka_bootstrap, app_id, pipeline.topics.inputs, timeout_s=60)
        thread._commit = refuse

        # Act: a round whose commits are refused; then commits go through again.
        for symbol in (f"REFUSED{index}USDT" for index in range(20)):
            await inputs.open(symbol, Side.BUY, "1")
        deadline = time.monotonic() + 60
        while not refused or not faust_believes_every_input_committed(pipeline, await log_ends(pipeline)):
            assert time.monotonic() < deadline, "Faust did not count the refused commits in 60 s"
            await asyncio.sleep(0.2)
        thread._commit = commit_for_real
        with caplog.at_level(logging.WARNING, logger="streams.worker.input_watch"):
            await wait_until_applied(kafka_bootstrap, app_id, pipeline.topics.inputs, timeout_s=60)
        said = [record.getMessage() for record in caplog.records if "Faust believes it committed" in record.getMessage()]
    finally:
        thread._commit = commit_for_real
        await inputs.stop()

    # Assert: the broker holds every offset (above), and each partition set right was named.
    assert 1 <= len(said) <= PARTITIONS
    assert all("the broker holds" in line for line in said), said


async def log_ends(pipeline: Pipeline) -> dict[TP, int]:
    return dict(await pipeline.app.consumer.highwaters(*input_partitions(pipeline)))


def faust_believes_every_input_committed(pipeline: Pipeline, ends: dict[TP, int]) -> bool:
    believed = pipeline.app.consumer._committed_offset
    return all((believed.get(tp) or 0) >= end for tp, end in ends.items())

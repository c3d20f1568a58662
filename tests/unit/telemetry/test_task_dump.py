"""The SIGUSR2 dump: where each task waits, in this loop and in the process's other loops, and what the worker holds."""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref

from streams.telemetry.task_dump import DUMP_SIGNAL, describe_other_loops, install_task_dump


async def waits_in_a_thread_of_its_own(started: threading.Event) -> None:
    started.set()
    await asyncio.sleep(30)


async def test_the_tasks_of_an_event_loop_running_in_another_thread_are_named_with_where_they_wait():
    # Arrange: a second event loop in a thread, as Faust runs a consumer thread.
    other = asyncio.new_event_loop()
    started = threading.Event()
    task_holder: list[asyncio.Task] = []

    def run() -> None:
        task_holder.append(other.create_task(waits_in_a_thread_of_its_own(started)))
        other.run_until_complete(asyncio.gather(task_holder[0], return_exceptions=True))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert await asyncio.to_thread(started.wait, 5)

        # Act
        described = describe_other_loops(asyncio.get_running_loop())
    finally:
        other.call_soon_threadsafe(task_holder[0].cancel)
        await asyncio.to_thread(thread.join, 5)
        other.close()

    # Assert
    assert "(another thread)" in described
    assert "in waits_in_a_thread_of_its_own" in described


async def test_the_signal_logs_the_worker_s_own_state_and_survives_a_state_that_cannot_be_read(caplog):
    loop = asyncio.get_running_loop()
    states = iter(["position-inputs[3]: applied up to 17"])

    def describe_state() -> str:
        return next(states)  # the second call raises StopIteration

    install_task_dump(loop, describe_state)
    try:
        with caplog.at_level(logging.WARNING, logger="streams.telemetry.task_dump"):
            for dumps in (1, 2):
                os.kill(os.getpid(), DUMP_SIGNAL)
                for _ in range(100):
                    if len(caplog.records) >= dumps:
                        break
                    await asyncio.sleep(0.01)
    finally:
        loop.remove_signal_handler(DUMP_SIGNAL)

    first, second = (record.getMessage() for record in caplog.records)
    assert "position-inputs[3]: applied up to 17" in first and first.endswith("end of tasks")
    assert "state unreadable: StopIteration()" in second


class Referent:
    """Something a weak proxy can point at."""


async def test_a_weak_proxy_whose_referent_is_gone_does_not_break_the_dump():
    # Arrange: a dead weak proxy in the heap (asking it anything raises ReferenceError).
    referent = Referent()
    dead = weakref.proxy(referent)
    del referent

    # Act
    described = describe_other_loops(asyncio.get_running_loop())

    # Assert: the dump reads the heap past it (no other loop runs here).
    assert described == "" and dead is not None

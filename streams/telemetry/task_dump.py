"""``kill -USR2 <worker pid>``: log where every asyncio task of the process is waiting.

A stalled stream processor shows no error, only silence. Python's own task stacks stop at
the task's outer coroutine; this follows each coroutine's ``cr_await`` chain (and async
generators' ``ag_await``) down to the innermost frame, so the log names the very line a
task waits on: an acknowledgement, a lock, a fetch. (SIGUSR1 is mode's: it prints threads
and the outer frames only.)
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import signal
from collections.abc import Callable
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

#: The signal that asks for the dump.
DUMP_SIGNAL = signal.SIGUSR2


def await_chain(awaitable: Any, depth_limit: int = 64) -> list[FrameType]:
    """The frames of ``awaitable`` and of everything it awaits, outermost first."""
    frames: list[FrameType] = []
    current = awaitable
    while current is not None and len(frames) < depth_limit:
        frame = getattr(current, "cr_frame", None) or getattr(current, "ag_frame", None) \
            or getattr(current, "gi_frame", None)
        if frame is not None:
            frames.append(frame)
        current = getattr(current, "cr_await", None) or getattr(current, "ag_await", None) \
            or getattr(current, "gi_yieldfrom", None)
    return frames


def describe_tasks(tasks: set[asyncio.Task] | None = None) -> str:
    """Every task (default: all of the running loop's), each with its await chain, one frame per line."""
    blocks = []
    for task in sorted(tasks if tasks is not None else asyncio.all_tasks(), key=lambda t: t.get_name()):
        lines = [f"task {task.get_name()} ({'done' if task.done() else 'pending'})"]
        lines.extend(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
                     for frame in await_chain(task.get_coro()))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def describe_suspended(code_path: str = "/streams/") -> str:
    """Every suspended coroutine and async generator of ``code_path`` that no other one awaits, with its chain.

    A task's chain breaks where it awaits an object that is not a coroutine (Faust's agent
    actors are such objects); the pipeline's own coroutines are found here all the same.
    """
    suspended = [obj for obj in gc.get_objects()
                 if (inspect.iscoroutine(obj) or inspect.isasyncgen(obj))
                 and (frame := getattr(obj, "cr_frame", None) or getattr(obj, "ag_frame", None)) is not None
                 and code_path in frame.f_code.co_filename]
    awaited = {id(getattr(obj, "cr_await", None) or getattr(obj, "ag_await", None)) for obj in suspended}
    blocks = []
    for outer in (obj for obj in suspended if id(obj) not in awaited):
        blocks.append("\n".join(f"  {frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"
                                for frame in await_chain(outer)))
    return "\n\n".join(sorted(blocks))


def describe_other_loops(this_loop: asyncio.AbstractEventLoop) -> str:
    """The tasks of every other running event loop of the process (Faust's consumer runs in a thread of its own).

    Read from this thread while the other loop may run: a diagnostic, best effort.
    """
    blocks = []
    # ``type``, not ``isinstance``: isinstance asks an object its ``__class__``, and a weak
    # proxy whose referent is gone (one is in the heap now and then) raises ReferenceError.
    for other in (obj for obj in gc.get_objects() if issubclass(type(obj), asyncio.AbstractEventLoop)):
        if other is this_loop or not other.is_running():
            continue
        try:
            blocks.append(f"event loop {id(other):#x} (another thread):\n{describe_tasks(asyncio.all_tasks(other))}")
        except RuntimeError as error:  # its task set changed while read
            blocks.append(f"event loop {id(other):#x} (another thread): not readable now ({error})")
    return "\n\n".join(blocks)


def install_task_dump(loop: asyncio.AbstractEventLoop, describe_state: Callable[[], str] | None = None) -> None:
    """Logs ``describe_tasks()``, ``describe_suspended()``, the other loops' tasks and ``describe_state()``
    (what the process holds, for a stall no task shows) on each ``DUMP_SIGNAL``."""
    def dump() -> None:
        try:
            state = describe_state() if describe_state is not None else ""
        except Exception as error:  # noqa: BLE001 - a diagnostic never raises into the event loop
            state = f"state unreadable: {error!r}"
        logger.warning("asyncio tasks (SIGUSR2):\n%s\n\nsuspended pipeline coroutines:\n\n%s\n\n%s\n\n%s\nend of tasks",
                       describe_tasks(), describe_suspended(), describe_other_loops(loop), state)

    loop.add_signal_handler(DUMP_SIGNAL, dump)


__all__ = ["DUMP_SIGNAL", "await_chain", "describe_other_loops", "describe_suspended", "describe_tasks",
           "install_task_dump"]

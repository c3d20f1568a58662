"""Applies consumed inputs to their keys' states: decode, decide, send the outputs durably, then store.

``InputProcessor`` is the agent's work without Faust: it takes plain records and callables
(``send``, ``load``, ``store``), so its control flow is unit-tested on plain functions, and
replay and diff fold the log through the very same code. Nothing it meets escapes as an
exception: undecodable bytes and inputs ``decide`` refuses as malformed become dead letters
with the reason; a failed send is retried until Kafka takes it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any


from streams.edge.backoff import Backoff
from streams.wire import codec, serde
from streams.wire.flat_records import AuditUpdates, CommandRecords
from streams.domain import AppliedInput, AuditRecord, Command, Decision, DomainError, InputEvent, KeyState, Policy, \
    Position, decide
from streams.settings import Settings
from streams.topics import TopicNames
from streams.telemetry import metrics
from streams.domain.exceptions import PipelineError

logger = logging.getLogger(__name__)

#: Pauses before sending again what Kafka did not acknowledge.
SEND_BACKOFF = Backoff(0.1, 5.0)
#: Decoded states the agent keeps between runs (cleared, not evicted one by one, past this).
KNOWN_STATES = 100_000


@dataclass(frozen=True)
class ConsumedRecord:
    """The parts of a consumed Kafka record the processor needs (no Faust types below here)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


Headers = list[tuple[str, bytes]]
Send = Callable[[str, bytes, bytes, Headers], Awaitable[Any]]


@dataclass(frozen=True)
class Output:
    """One record the agent sends for an input: its topic, key, value and input headers.

    ``partition`` None: the key's default partition (murmur2, as the Java client).
    """

    topic: str
    key: bytes
    value: bytes
    headers: Headers
    partition: int | None = None


SendAll = Callable[[Sequence[Output]], Awaitable[list[Any]]]

#: Kafka headers on every output of an input: which input it was decided for, so a decision
#: diff (``streams diff``) can put each recorded command beside the input that produced it.
INPUT_PARTITION_HEADER = "pipeline-input-partition"
INPUT_OFFSET_HEADER = "pipeline-input-offset"


def input_headers(partition: int, offset: int) -> Headers:
    """The headers naming the input ``partition``/``offset`` an output was decided for."""
    return [(INPUT_PARTITION_HEADER, str(partition).encode()), (INPUT_OFFSET_HEADER, str(offset).encode())]


def input_of(headers: Any) -> tuple[int, int] | None:
    """``(partition, offset)`` of the input an output record was decided for; None without the headers."""
    found = {name: value for name, value in (headers or ())}
    try:
        return int(found[INPUT_PARTITION_HEADER]), int(found[INPUT_OFFSET_HEADER])
    except (KeyError, ValueError):
        return None


@dataclass
class InputProcessor:
    """Applies one consumed input to its key's state: decode, decide, send, then store.

    ``send(topic, key, value, headers)`` returns an awaitable that resolves once Kafka has
    the record; ``load``/``store`` read and write the key's state (the caller's table). Kept free of Faust
    so the control flow is testable with plain callables.

    Each input is decided with the policy recorded in it (its producer's), or, for inputs
    written before policies were recorded, with the settings' policy; ``policy_overrides``
    (field -> value) change those fields on top (a decision diff trying another policy).
    """

    settings: Settings
    topics: TopicNames
    #: One record at a time (when there is no ``send_all``).
    send: Send | None
    #: ``load(key, partition)``: the key's stored state (the partition is its input's), or None.
    load: Callable[[bytes, int], KeyState | None]
    #: Where ``apply_batch`` writes the states; None for a caller that writes them itself.
    store: Callable[[bytes, KeyState], None] | None
    policy_overrides: Mapping[str, Any] | None = None
    #: ``send_all(outputs)`` -> an acknowledgement per output, in order: hands a run's outputs
    #: over at once (the worker's record batches); without it each goes through ``send``.
    send_all: SendAll | None = None
    #: ``(key, offset, position)`` -> the position update's record value (the worker shares
    #: the position's bytes with its state: streams.wire.key_state_bytes.PositionBytes).
    encode_position_update: Callable[[str, int, Position], bytes] = serde.encode_position_update
    #: ``audit`` -> its update's record value (by hand, byte for byte the codec's: streams.wire.flat_records).
    encode_audit_update: Callable[[AuditRecord], bytes] = field(default_factory=lambda: AuditUpdates().encode)
    #: ``command`` -> its record value (by hand, byte for byte the codec's: streams.wire.flat_records).
    encode_command: Callable[[Command], bytes] = field(default_factory=lambda: CommandRecords().encode)
    applied_inputs: int = 0
    dead_letters: int = 0
    _default_policy: Policy = field(init=False)
    _overridden: dict[Policy, Policy] = field(init=False, default_factory=dict)
    _send_all: SendAll = field(init=False)

    def __post_init__(self) -> None:
        if self.send is None and self.send_all is None:
            raise TypeError("InputProcessor needs send or send_all")
        self._send_all = self.send_all or self._send_one_by_one
        self._default_policy = self.settings.policy()

    def policy_for(self, event: InputEvent) -> Policy:
        """The policy ``event`` is decided with (see the class docstring)."""
        recorded = event.policy or self._default_policy
        if not self.policy_overrides:
            return recorded
        overridden = self._overridden.get(recorded)
        if overridden is None:
            overridden = self._overridden[recorded] = dataclasses.replace(recorded, **self.policy_overrides)
        return overridden

    async def apply(self, record: ConsumedRecord) -> Decision | None:
        """Applies one record; returns the decision, or None when it went to the dead letters."""
        return (await self.apply_batch([record]))[0]

    async def apply_batch(self, records: Sequence[ConsumedRecord],
                          known: dict[bytes, KeyState | None] | None = None) -> list[Decision | None]:
        """Applies a run of records in order; one decision (or None: a dead letter) per record.

        Each record is decided against the state the records before it produced (an
        in-memory overlay of the table), then every output of the run is sent and awaited
        together, and only then are the states stored. The crash rule is the one of a single
        input: no state is stored, and (the caller acks after this returns) no offset is
        committed, before Kafka has acknowledged the outputs that state implies. A crash in
        between replays the run: the same decisions, the same client order ids.

        ``known`` (optional) are decoded states the caller keeps from run to run, the one
        writer of those keys: a key found there is not read back from the table and decoded
        again. They become the run's overlay; the caller drops them if this raises.
        """
        run = self.decide_run(records, {} if known is None else known)
        await self.acknowledged(run, await self.hand_over(run))
        self.store_run(run)
        return run.decisions

    def decide_run(self, records: Sequence[ConsumedRecord], overlay: dict[bytes, KeyState | None]) -> "DecidedRun":
        """Decides ``records`` in order against ``overlay`` (updated in place) and the table: nothing sent or stored.

        The first half of ``apply_batch``: the run's outputs must be acknowledged
        (``hand_over`` then ``acknowledged``) before ``store_run`` writes its states.
        """
        run = DecidedRun()
        for record in records:
            run.decisions.append(self._decide(record, overlay, run.to_store, run.outputs))
        return run

    async def hand_over(self, run: "DecidedRun") -> "Handover":
        """Hands every output of ``run`` to the producer without waiting for Kafka's acknowledgements."""
        return await self._hand_over(run.outputs, range(len(run.outputs)))

    async def acknowledged(self, run: "DecidedRun", handover: "Handover") -> None:
        """Waits until Kafka acknowledged every output of ``run``, sending again what it did not.

        Only what Kafka did not acknowledge is sent again: an output acknowledged in an
        attempt that failed for another one is never repeated, so a partial failure puts no
        second PlaceEntry on position-commands. (An output Kafka wrote but whose
        acknowledgement was lost can still appear twice; the executor looks an order up by
        its client id before placing it, so that changes nothing at the exchange.)
        """
        attempt = 0
        while True:
            for index, acknowledgement in handover.acknowledgements:
                try:
                    await acknowledgement
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # noqa: BLE001 - Kafka unreachable: wait, never skip the input
                    handover.refused.append(index)
                    handover.errors.append(error)
            if not handover.refused:
                return
            unacknowledged = sorted(handover.refused)
            delay = SEND_BACKOFF.delay(attempt)
            logger.warning("%d of %d outputs not acknowledged (%s); sending those again in %.1fs",
                           len(unacknowledged), len(run.outputs), handover.errors[0], delay)
            attempt += 1
            await asyncio.sleep(delay)
            handover = await self._hand_over(run.outputs, unacknowledged)

    async def _hand_over(self, outputs: list[Output], indexes: Iterable[int]) -> "Handover":
        handover = Handover()
        selected = list(indexes)
        try:
            acknowledgements = await self._send_all([outputs[index] for index in selected])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - not handed to the producer: send them again
            handover.refused.extend(selected)
            handover.errors.append(error)
            return handover
        handover.acknowledgements.extend(zip(selected, acknowledgements))
        return handover

    async def _send_one_by_one(self, outputs: Sequence[Output]) -> list[Any]:
        """``send_all`` through ``send``: one acknowledgement per output; one the producer refused fails."""
        acknowledgements = []
        for output in outputs:
            try:
                acknowledgement = await self.send(output.topic, output.key, output.value, output.headers)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # noqa: BLE001 - not handed to the producer: it is sent again
                acknowledgement = asyncio.get_running_loop().create_future()
                acknowledgement.set_exception(error)
            acknowledgements.append(acknowledgement)
        return acknowledgements

    def store_run(self, run: "DecidedRun") -> None:
        """Writes the states ``run`` decided (its outputs acknowledged) with ``store`` and counts its inputs."""
        if self.store is None:
            raise TypeError("this processor has no store: its caller writes the states (latest_states)")
        for write in latest_states([run]):
            self.store(write.key, write.state)
        self.count_applied([run])

    def count_applied(self, runs: Iterable["DecidedRun"]) -> None:
        """Counts the inputs of ``runs`` that were applied (not dead-lettered), once their states are stored."""
        self.applied_inputs += sum(1 for run in runs for decision in run.decisions if decision is not None)

    def _decide(self, record: ConsumedRecord, overlay: dict[bytes, KeyState | None],
                to_store: dict[bytes, tuple[int, KeyState]], outputs: list[Output]) -> Decision | None:
        headers = input_headers(record.partition, record.offset)
        try:
            key, event = self._decode(record)
            # An input's time is the log's: the broker stamps position-inputs records as they
            # are appended (LogAppendTime), one clock for every producer whatever its host's,
            # kept with the record so a replay decides at the same times.
            event = dataclasses.replace(event, ts=record.timestamp_ms)
            state = overlay[record.key] if record.key in overlay else self.load(record.key, record.partition)
            decision = decide(state, AppliedInput(record.offset, event), self.policy_for(event))
            metrics.observe_input(event)
            metrics.observe_decision(decision)
            encoded = [(self.topics.commands, self.encode_command(command)) for command in decision.commands]
            position = decision.state.position
            if decision.position_changed and position is not None:
                encoded.append((self.topics.updates, self.encode_position_update(key, record.offset, position)))
            if decision.audit is not None:
                encoded.append((self.topics.updates, self.encode_audit_update(decision.audit)))
        except (codec.DecodeError, DomainError, InvalidInputRecord) as error:
            outputs.append(self._dead_letter(record, error, headers))
            return None
        except Exception as error:  # noqa: BLE001 - a bug must not make Faust skip the input silently
            logger.error("input %s[%d]@%d could not be applied:\n%s", record.topic, record.partition,
                         record.offset, traceback.format_exc())
            outputs.append(self._dead_letter(record, error, headers))
            return None
        outputs.extend(Output(topic, record.key, value, headers) for topic, value in encoded)
        redelivered = state is not None and record.offset <= state.last_offset
        if decision.state is not state or redelivered:
            # A redelivered input changes nothing, but its state is written again: a kill
            # between the local store write and the changelog flush left the changelog (and
            # so the standbys and the next owner) without it; rewriting converges them.
            overlay[record.key] = decision.state
            to_store[record.key] = (record.partition, decision.state)
        return decision

    def _decode(self, record: ConsumedRecord) -> tuple[str, InputEvent]:
        if record.key is None:
            raise InvalidInputRecord("record has no key; inputs are keyed by SYMBOL@exchange")
        if record.value is None:
            raise InvalidInputRecord("record has no value")
        try:
            key = record.key.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InvalidInputRecord(f"key is not UTF-8: {record.key[:64]!r}") from error
        event = serde.decode_input(record.value)
        if event.key != key:
            raise InvalidInputRecord(f"record key {key!r} differs from the input's own key {event.key!r}")
        return key, event

    def _dead_letter(self, record: ConsumedRecord, error: BaseException, headers: Headers) -> Output:
        letter = serde.DeadLetter.of(record.topic, record.partition, record.offset, record.key, record.value, error,
                                     record.timestamp_ms)
        logger.warning("dead letter from %s[%d]@%d: %s: %s", record.topic, record.partition, record.offset,
                       letter.error_type, letter.reason)
        self.dead_letters += 1
        metrics.observe_dead_letter("agent", letter.error_type)
        return Output(self.topics.dead_letters, record.key or b"", serde.encode_dead_letter(letter), headers)


@dataclass
class DecidedRun:
    """Inputs decided and not yet durable: their decisions, the outputs Kafka must acknowledge, the states to store."""

    decisions: list[Decision | None] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=list)
    #: key -> (its partition, the state to store once the outputs are acknowledged)
    to_store: dict[bytes, tuple[int, KeyState]] = field(default_factory=dict)


@dataclass(frozen=True)
class StateWrite:
    """A key's latest state of one or more runs and the partition (its input's) it is written to."""

    key: bytes
    partition: int
    state: KeyState


def latest_states(runs: Iterable[DecidedRun]) -> list[StateWrite]:
    """The state each key reached over ``runs`` (in decision order), each key once."""
    latest: dict[bytes, StateWrite] = {}
    for run in runs:
        for key, (partition, state) in run.to_store.items():
            latest[key] = StateWrite(key, partition, state)
    return list(latest.values())


@dataclass
class Handover:
    """Outputs given to the producer: ``(index, acknowledgement)`` of those it took, the indexes
    refused or not acknowledged, and why."""

    acknowledgements: list[tuple[int, Any]] = field(default_factory=list)
    refused: list[int] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)


class InvalidInputRecord(PipelineError, ValueError):
    """A record on ``position-inputs`` that is not an input at all (no key, wrong key, no value)."""


def load_from(states: Mapping[bytes, KeyState]) -> Callable[[bytes, int], KeyState | None]:
    """``load`` over a plain mapping of key -> state (one mapping for every partition: replay, diff, tests)."""
    return lambda key, _partition: states.get(key)


def with_policy(event: InputEvent, settings: Settings) -> InputEvent:
    """``event`` carrying the policy of this process: the state machine decides it with that, in any replay."""
    return dataclasses.replace(event, policy=settings.policy())


__all__ = ["INPUT_OFFSET_HEADER", "INPUT_PARTITION_HEADER", "SEND_BACKOFF", "ConsumedRecord", "DecidedRun", "Headers",
           "Handover", "InputProcessor",
           "InvalidInputRecord", "Output", "StateWrite", "input_headers", "input_of", "latest_states", "load_from", "with_policy"]

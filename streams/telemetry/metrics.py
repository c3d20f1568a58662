"""The pipeline's own Prometheus metrics, and the functions that feed them.

Every metric is a module-level object in prometheus-client's default registry, so any
module of a process can import this one and count; the worker's ``GET /metrics`` serves
that registry together with Faust's own sensor metrics (``faust_*``, see
``streams.web.server``). Callers should use the ``observe_*`` / ``set_*`` functions rather
than the objects: they keep every label value inside a small fixed set (a label value is
a time series; free text such as a refusal sentence or an exchange message must never
become one).

Where to call them:

- ``observe_input(event)`` and ``observe_decision(decision)``: the stream agent, once per
  applied input (``InputProcessor.apply``, after ``decide``);
- ``observe_dead_letter(source, error_type)``: wherever a dead letter is published;
- ``observe_refusal(reason_or_code, source)``: the ingest, for a signal it refuses
  (``observe_decision`` already counts the state machine's refusals);
- ``observe_exchange_error(code)``: the executor, for an error answer of the exchange;
- ``observe_restored_record(replica)``: the table's changelog callback, per record restored;
- ``set_group_leader(is_leader)``: the web server, before each scrape;
- ``set_sink_lag(records)``, ``observe_sink_refused_row()``: the PostgreSQL sink;
- ``refresh_position_gauge(positions)``: the web server, before each scrape (from the local
  table, so each worker reports the positions of the partitions it owns);
- ``observe_edge_failure(component, stage)``: a background part of the exchange edge that
  failed and will retry (the poller, the order-attempt ledger).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable

from prometheus_client import Counter, Gauge

from streams.domain import (
    RefusalCode,
    AuditDecision,
    Deadline,
    Decision,
    ExchangeSnapshot,
    ExecutionReport,
    InputEvent,
    Position,
    Signal,
    Status,
)

__all__ = [
    "DEAD_LETTERS",
    "DECISIONS",
    "EDGE_FAILURES",
    "EXCHANGE_ERRORS",
    "GROUP_LEADER",
    "INPUTS",
    "POSITIONS",
    "REFUSALS",
    "REFUSAL_CATEGORIES",
    "RESTORED_RECORDS",
    "SINK_LAG",
    "SINK_REFUSED_ROWS",
    "observe_dead_letter",
    "observe_edge_failure",
    "observe_decision",
    "observe_exchange_error",
    "observe_input",
    "observe_input_gap",
    "observe_command_gap",
    "observe_changelog_resend",
    "observe_refusal",
    "observe_restored_record",
    "observe_sink_refused_row",
    "refresh_position_gauge",
    "refusal_category",
    "set_group_leader",
    "set_sink_lag",
]

INPUTS = Counter(
    "pipeline_inputs",
    "Inputs applied by the stream agent, by kind (signal, snapshot, report, deadline).",
    ["kind"],
)
DECISIONS = Counter(
    "pipeline_decisions",
    "Decisions of the state machine, by decision (applied, refused, ignored, duplicate, "
    "redelivered) and input kind.",
    ["decision", "kind"],
)
REFUSALS = Counter(
    "pipeline_refusals",
    "Refused signals, by reason category and by who refused (agent: the state machine; "
    "ingest: validation of the feed).",
    ["reason", "source"],
)
DEAD_LETTERS = Counter(
    "pipeline_dead_letters",
    "Records sent to the dead-letter topic, by source and error type.",
    ["source", "error_type"],
)
POSITIONS = Gauge(
    "pipeline_positions",
    "Open and in-flight positions in this worker's partitions of the table, by status.",
    ["status"],
)
SINK_LAG = Gauge(
    "pipeline_sink_lag_records",
    "Position updates the PostgreSQL sink has not committed yet.",
)
RESTORED_RECORDS = Counter(
    "pipeline_table_restored_records",
    "Changelog records this worker read into its table store, as the active owner (recovery "
    "after an assignment) or as a standby replica (kept hot for a failover).",
    ["replica"],
)
SINK_REFUSED_ROWS = Counter(
    "pipeline_sink_refused_rows",
    "Position rows PostgreSQL's one-live-position index refused (dead-lettered with the row that "
    "holds the key; someone must look): alert on any increase.",
)
INPUT_GAPS = Counter(
    "pipeline_input_gaps",
    "Inputs of position-inputs the consumer skipped between two it delivered to the agent "
    "(should stay 0; a rise means inputs went undecided).",
)
COMMAND_GAPS = Counter(
    "pipeline_command_gaps",
    "Commands of position-commands the consumer skipped or fetched past without delivering them, "
    "read from the log and carried out (a rise is Faust starting a partition late, caught).",
)
CHANGELOG_RESENDS = Counter(
    "pipeline_changelog_resends",
    "Table changelog records Kafka did not acknowledge, sent again with the next batch of states",
)
GROUP_LEADER = Gauge(
    "pipeline_group_leader",
    "1 on the worker that leads the consumer group (and so runs the exchange poller), else 0.",
)
EXCHANGE_ERRORS = Counter(
    "pipeline_exchange_errors",
    "Error answers of the exchange, by the exchange's error code ('none' without one).",
    ["code"],
)

EDGE_FAILURES = Counter(
    "pipeline_edge_failures",
    "Failures of a background part of the exchange edge that is retried with backoff, by component "
    "(poller, order_ledger) and stage (follow_tracked_keys, fetch_positions, publish, follow).",
    ["component", "stage"],
)
_EDGE_COMPONENTS = frozenset({"poller", "order_ledger", "dead_letter_feed"})
_EDGE_STAGES = frozenset({"follow_tracked_keys", "fetch_positions", "publish", "follow", "poll"})

#: The label values ``pipeline_refusals`` may carry. A refusal nobody mapped is ``other``.
REFUSAL_CATEGORIES = (
    "already_open",
    "already_closing",
    "nothing_to_close",
    "invalid_signal",
    "unknown_symbol",
    "invalid_frame",
    "other",
)

#: Refusal codes -> category: the state machine's ``RefusalCode`` and the ingest's validation
#: codes (streams/ingest/validation.py). Codes, never the reason sentences: rewording a reason
#: for people must not move a time series.
_REFUSAL_CATEGORY_OF_CODE: dict[str, str] = {
    **{code.value: code.value for code in RefusalCode},
    "unknown_symbol": "unknown_symbol",
    **dict.fromkeys(("invalid_json", "invalid_frame", "not_an_object"), "invalid_frame"),
    **dict.fromkeys(("missing_field", "invalid_field", "unknown_action", "unknown_exchange", "unknown_side",
                     "non_positive_quantity", "stop_loss_out_of_range"), "invalid_signal"),
}

_INPUT_KIND_OF_PAYLOAD = {
    Signal: "signal",
    ExchangeSnapshot: "snapshot",
    ExecutionReport: "report",
    Deadline: "deadline",
}


class _BoundedLabels:
    """Passes label values through until ``limit`` distinct ones were seen, then says ``other``.

    For labels whose values come from outside (exchange error codes, exception class
    names): a misbehaving peer must not be able to create time series without end.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()  # the executor or a sink may count from threads

    def __call__(self, value: str) -> str:
        with self._lock:
            if value in self._seen:
                return value
            if len(self._seen) >= self._limit:
                return "other"
            self._seen.add(value)
            return value


_exchange_codes = _BoundedLabels(limit=40)
_error_types = _BoundedLabels(limit=40)
_SOURCES = frozenset({"agent", "ingest", "executor", "sink"})


def refusal_category(code: str | None) -> str:
    """The bounded category of a refusal code (see ``REFUSAL_CATEGORIES``); an unknown code is ``other``."""
    return _REFUSAL_CATEGORY_OF_CODE.get(code or "", "other")


def _source(source: str) -> str:
    return source if source in _SOURCES else "other"


# The agent counts every input and decision: a labelled child is looked up once per label
# set, not per call (``labels()`` validates and locks each time; it was ~4% of the agent).
_input_counter = functools.cache(lambda kind: INPUTS.labels(kind=kind))
_decision_counter = functools.cache(lambda decision, kind: DECISIONS.labels(decision=decision, kind=kind))


def observe_input(event: InputEvent) -> None:
    """Counts one input applied by the agent, by the kind of its payload."""
    _input_counter(_INPUT_KIND_OF_PAYLOAD.get(type(event.payload), "other")).inc()


def observe_decision(decision: Decision) -> None:
    """Counts what ``decide`` did with one input; a refusal is also counted by its category.

    A decision without an audit record is an input redelivered after a crash (its offset
    was applied already): counted as ``redelivered``, so replays show up as such.
    """
    audit = decision.audit
    if audit is None:
        _decision_counter("redelivered", "unknown").inc()
        return
    _decision_counter(AuditDecision(audit.decision).value, audit.input_kind.value).inc()
    if audit.decision == AuditDecision.REFUSED:
        code = audit.refusal_code.value if audit.refusal_code is not None else None
        REFUSALS.labels(reason=refusal_category(code), source="agent").inc()


def observe_refusal(code: str, source: str = "ingest") -> None:
    """Counts a refused signal outside the state machine by its refusal code."""
    REFUSALS.labels(reason=refusal_category(code), source=_source(source)).inc()


def observe_dead_letter(source: str, error_type: str) -> None:
    """Counts one record sent to the dead-letter topic (``error_type``: exception name or refusal code)."""
    DEAD_LETTERS.labels(source=_source(source), error_type=_error_types(str(error_type)[:64])).inc()


def observe_exchange_error(code: int | str | None) -> None:
    """Counts one error answer of the exchange by its code (Binance's ``-2019``...; None: ``none``)."""
    label = "none" if code is None else str(code)[:16]
    EXCHANGE_ERRORS.labels(code=_exchange_codes(label)).inc()


def observe_restored_record(replica: str) -> None:
    """Counts one changelog record restored into the local store (``replica``: active or standby)."""
    RESTORED_RECORDS.labels(replica=replica if replica in ("active", "standby") else "other").inc()


def observe_sink_refused_row() -> None:
    """Counts one position row the sink could not write because another live row holds its key."""
    SINK_REFUSED_ROWS.inc()


def observe_input_gap(skipped: int) -> None:
    """Counts inputs the agent never saw between two offsets of one partition."""
    INPUT_GAPS.inc(skipped)


def observe_command_gap(skipped: int) -> None:
    """Counts commands the executor read from the log because the consumer never delivered them."""
    COMMAND_GAPS.inc(skipped)


def observe_changelog_resend() -> None:
    """Counts a table changelog record sent again because Kafka did not acknowledge it."""
    CHANGELOG_RESENDS.inc()


def set_group_leader(is_leader: bool) -> None:
    """Sets whether this worker leads the group (the poller runs on the leader only)."""
    GROUP_LEADER.set(1 if is_leader else 0)
def observe_edge_failure(component: str, stage: str) -> None:
    """Counts one failure of a background part of the exchange edge (it retries with backoff)."""
    EDGE_FAILURES.labels(component=component if component in _EDGE_COMPONENTS else "other",
                         stage=stage if stage in _EDGE_STAGES else "other").inc()


def set_sink_lag(records: int) -> None:
    """Sets how many position updates the sink has not committed (called by the sink)."""
    SINK_LAG.set(max(0, records))


def refresh_position_gauge(positions: Iterable[Position]) -> None:
    """Sets ``pipeline_positions`` from the live positions of this worker's partitions.

    Every live status gets a value (0 included) so a status that empties drops to 0 rather
    than keeping its last count.
    """
    counts = {status: 0 for status in Status if status.is_live}
    for position in positions:
        if position.status in counts:
            counts[position.status] += 1
    for status, count in counts.items():
        POSITIONS.labels(status=status.value).set(count)

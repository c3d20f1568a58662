"""Hostile input, fuzzed: every decoder and validator refuses with a typed error, and the next valid input goes on.

- Avro bytes on every topic the pipeline reads (``position-inputs``, ``position-commands``,
  ``position-updates``, the table's changelog, dead letters): random bytes and valid
  records mutated (flipped, truncated, extended, a huge length prefix) decode or raise
  ``codec.DecodeError``, nothing else, quickly;
- the agent's input processor: a hostile record becomes a dead letter with a reason, and the
  valid input after it is applied;
- WebSocket frames: any text or bytes is a list of items or an ``InvalidFrame``; any item
  is a signal or an ``InvalidSignal`` with a code and a reason;
- web paths, query strings and headers: never a 500, and the server still answers after.
"""

from __future__ import annotations

import asyncio
import json
import socket
from decimal import Decimal
from types import SimpleNamespace

import aiohttp
import pytest
from faust.types import TP
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from streams.wire import codec, serde
from streams.worker.processor import ConsumedRecord, InputProcessor, load_from
from streams.domain import (
    AuditDecision,
    AuditRecord,
    ExchangeSnapshot,
    InputEvent,
    InputKind,
    KeyState,
    Side,
    Signal,
    SignalAction,
)
from streams.ingest.exceptions import InvalidFrame, InvalidSignal
from streams.ingest.validation import parse_frame, validate_signal
from streams.settings import Settings
from streams.topics import TopicNames
from streams.web.server import PositionsWebServer

KEY = "APTUSDT@binance"
TOPICS = TopicNames.for_prefix("fuzz.")
FUZZ = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


def valid_input(offset_ts: int = 1_761_173_440_983, signal_id: str = "s-1") -> bytes:
    return serde.encode_input(InputEvent(
        event_id=f"signal:{signal_id}", key=KEY, ts=offset_ts,
        payload=Signal(signal_id=signal_id, action=SignalAction.OPEN, symbol="APTUSDT", exchange="binance",
                       side=Side.BUY, quantity=Decimal("61.8"), stop_loss_pct=Decimal("2.5"), ts=offset_ts)))


def valid_snapshot() -> bytes:
    return serde.encode_input(InputEvent(
        event_id="snapshot:binance:APTUSDT:1", key=KEY, ts=1,
        payload=ExchangeSnapshot(exchange="binance", symbol="APTUSDT", fetched_at=1, side=Side.BUY,
                                 quantity=Decimal("3"), entry_price=Decimal("10.5"))))


def valid_audit() -> bytes:
    return serde.encode_audit_update(AuditRecord(
        key=KEY, offset=7, event_id="signal:s-1", input_kind=InputKind.SIGNAL, decision=AuditDecision.APPLIED,
        reason="opened", position_id=f"{KEY}/7", ts=1))


def valid_state() -> bytes:
    return codec.encode("KeyState", serde.key_state_to_record(KeyState.initial(KEY)))


SAMPLES = [valid_input(), valid_snapshot(), valid_audit(), valid_state()]
DECODERS = {
    "position-inputs": serde.decode_input,
    "position-commands": serde.decode_command,
    "position-updates": serde.decode_update,
    "changelog": lambda data: serde.key_state_from_record(codec.decode("KeyState", data)),
    "dead-letters": serde.decode_dead_letter,
}


@st.composite
def mutated(draw) -> bytes:
    """A valid record of some topic, damaged the way a broken producer or an attacker would."""
    data = bytearray(draw(st.sampled_from(SAMPLES)))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "splice_length", "header"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            position = draw(st.integers(0, len(data) - 1))
            data[position] = draw(st.integers(0, 255))
    elif how == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "splice_length":
        # A zig-zag varint announcing an enormous string or array right after the header.
        position = draw(st.integers(codec.HEADER_LENGTH, len(data) - 1))
        huge = draw(st.sampled_from([b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff\x01", b"\xfe\xff\xff\xff\x0f",
                                     b"\x81\x80\x80\x80\x80\x80\x80\x80\x80\x01"]))
        data = data[:position] + huge + data[position:]
    else:
        data[2:codec.HEADER_LENGTH] = draw(st.binary(min_size=8, max_size=8))
    return bytes(data)


@FUZZ
@given(topic=st.sampled_from(sorted(DECODERS)), data=st.one_of(st.binary(max_size=512), mutated()))
def test_every_topic_decoder_decodes_or_raises_a_decode_error(topic, data):
    try:
        DECODERS[topic](data)
    except codec.DecodeError as error:
        assert str(error)  # typed, with a reason


class Harness:
    """The agent's processor over a dict table, every output acknowledged at once."""

    def __init__(self) -> None:
        self.table: dict[bytes, dict] = {}
        self.sent: list[tuple[str, bytes]] = []
        self.processor = InputProcessor(
            settings=Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "k:1", "DATABASE_URL": "postgresql://u@h:1/d"}),
            topics=TOPICS, send=self._send, load=load_from(self.table), store=self.table.__setitem__)

    async def _send(self, topic: str, key: bytes, value: bytes, headers: list) -> asyncio.Future:
        self.sent.append((topic, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def apply(self, offset: int, key: bytes | None, value: bytes | None):
        record = ConsumedRecord(TOPICS.inputs, 0, offset, key, value, 0)
        return asyncio.run(self.processor.apply(record))


@FUZZ
@given(key=st.one_of(st.none(), st.binary(max_size=40), st.just(KEY.encode())),
       value=st.one_of(st.none(), st.binary(max_size=256), mutated()))
def test_a_hostile_input_is_a_dead_letter_with_a_reason_and_the_next_valid_input_is_applied(key, value):
    # Arrange
    harness = Harness()

    # Act
    hostile = harness.apply(0, key, value)
    hostile_outputs = list(harness.sent)
    valid = harness.apply(1, KEY.encode(), valid_input(signal_id="after-the-garbage"))

    # Assert: either it was (by chance) a valid input, or exactly one dead letter with a reason
    if hostile is None:
        (topic, letter_bytes), = hostile_outputs
        letter = serde.decode_dead_letter(letter_bytes)
        assert topic == TOPICS.dead_letters and letter.reason and letter.error_type
        assert letter.error_type not in ("Exception", "TypeError", "AttributeError", "KeyError", "IndexError")
        assert (letter.key, letter.value) == (key, value)
    assert valid is not None and valid.audit is not None


def known_symbol(exchange: str, symbol: str) -> bool:
    return exchange == "binance" and symbol in ("APTUSDT", "BTCUSDT")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=20)
signal_like = st.fixed_dictionaries({}, optional={
    "id": json_values | st.text(max_size=300), "action": st.sampled_from(["open", "close", "OPEN", ""]) | json_values,
    "symbol": st.sampled_from(["APTUSDT", "NOPE", ""]) | json_values,
    "exchange": st.sampled_from(["binance", "BINANCE", ""]) | json_values,
    "side": st.sampled_from(["BUY", "SELL", "buy"]) | json_values,
    "quantity": st.sampled_from(["61.8", "0", "-1", "1e9999", "NaN", "Infinity", "0x10"]) | json_values,
    "stop_loss_pct": st.sampled_from(["2.5", "0", "100", "-3"]) | json_values,
    "ts": st.integers() | json_values,
})


@FUZZ
@given(frame=st.one_of(st.text(max_size=300), st.binary(max_size=300),
                       json_values.map(json.dumps), signal_like.map(json.dumps),
                       st.lists(signal_like, max_size=5).map(json.dumps)))
# A valid close carries no quantity (CONTRACT.md section 2); found by this test on 2026-12-04.
@example(frame='{"symbol":"APTUSDT","id":"0","action":"close","ts":1,"":"","exchange":"binance"}')
def test_any_frame_is_items_or_an_invalid_frame_and_any_item_a_signal_or_an_invalid_signal(frame):
    try:
        items = parse_frame(frame)
    except InvalidFrame as refusal:
        assert refusal.code and refusal.reason
        return
    for item in items:
        try:
            signal = validate_signal(item, known_symbol)
        except InvalidSignal as refusal:
            assert refusal.code and refusal.reason
        else:
            assert signal.symbol in ("APTUSDT", "BTCUSDT")
            if signal.action is SignalAction.OPEN:
                assert signal.quantity > 0 and signal.side is not None
            else:
                assert signal.quantity is None and signal.side is None and signal.stop_loss_pct is None


# --------------------------------------------------------------------------- the web server


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _web_server(port: int) -> PositionsWebServer:
    changelog = "fuzz-key_to_state-changelog"
    app = SimpleNamespace(
        conf=SimpleNamespace(canonical_url=URL(f"http://127.0.0.1:{port}"), web_bind="127.0.0.1", web_port=port),
        tables=SimpleNamespace(recovery=SimpleNamespace(completed=SimpleNamespace(is_set=lambda: True))),
        rebalancing=False, in_recovery=False, is_leader=lambda: True,
        router=SimpleNamespace(tables_metadata=lambda: {f"http://127.0.0.1:{port}": {changelog: [0, 1, 2]}}),
        assignor=SimpleNamespace(assigned_actives=lambda: {TP(changelog, p) for p in range(3)}))
    table = {KEY.encode(): serde.key_state_to_record(KeyState.initial(KEY))}
    settings_ = Settings.from_env({"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", "DATABASE_URL": "postgresql://u@h:1/d"},
                                  topic_partitions=3, app_id="fuzz", web_auth_token="fuzz-token")
    server = PositionsWebServer(app, settings_, SimpleNamespace(
        items=lambda: table.items(), get=table.get,
        changelog_topic=SimpleNamespace(get_topic_name=lambda: changelog)))
    return server


path_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_any_path_query_and_header_gets_an_answer_never_a_server_error():
    async def run() -> list[int]:
        port = _free_port()
        server = _web_server(port)
        await server.start()
        statuses: list[int] = []
        try:
            async with aiohttp.ClientSession() as session:
                @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
                @given(path=path_text, query=st.dictionaries(path_text, path_text, max_size=3),
                       header=st.sampled_from(["Authorization", "X-Positions-Peer-Signature", "X-Positions-Peer-Time",
                                               "X-Positions-Routed-By", "Accept", "Host"]),
                       header_value=st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80),
                       authorized=st.booleans())
                def probe(path, query, header, header_value, authorized):
                    headers = {header: header_value}
                    if authorized and header != "Authorization":
                        headers["Authorization"] = "Bearer fuzz-token"
                    url = URL.build(scheme="http", host="127.0.0.1", port=port).with_path(
                        "/" + path.lstrip("/"), encoded=False).with_query(query)
                    statuses.append(asyncio.run_coroutine_threadsafe(_get(session, url, headers), loop).result(10))

                loop = asyncio.get_running_loop()
                await asyncio.to_thread(probe)
                good = await _get(session, URL(f"http://127.0.0.1:{port}/positions/{KEY}/"),
                                  {"Authorization": "Bearer fuzz-token"})
        finally:
            await server.stop()
        return statuses + [good]

    statuses = asyncio.run(run())
    assert all(status < 500 or status == 503 for status in statuses[:-1]), sorted(set(statuses))
    assert statuses[-1] == 404  # the key has no live position: the server still answers correctly


async def _get(session: aiohttp.ClientSession, url: URL, headers: dict[str, str]) -> int:
    try:
        async with session.get(url, headers=headers, allow_redirects=False) as reply:
            await reply.read()
            return reply.status
    except (aiohttp.ClientError, ValueError):
        return 400  # refused before any request left (a header aiohttp itself will not send)

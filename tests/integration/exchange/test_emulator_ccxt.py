"""The REAL ccxt 4.5.90 client, built by ``create_binanceusdm``, against the Binance USD-M emulator.

The emulator runs in-process on 127.0.0.1, port 0; no Kafka, no database, no other host.
Each test gets a fresh emulator and client.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import ccxt.async_support as ccxt
import pytest

from emulator import DEFAULT_API_KEY, DEFAULT_API_SECRET, BinanceUsdmEmulator, default_symbols
from emulator.binance_usdm import CLIENT_ID_UNIQUE_FOREVER
from streams.edge.ccxt_client import PRODUCTION_URL, create_binanceusdm, exchange_error_code

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[3]
APT = "APT/USDT:USDT"
ETH = "ETH/USDT:USDT"


@pytest.fixture
async def emulator():
    """A fresh emulator with the real symbols and a few BENCH ones."""
    emu = BinanceUsdmEmulator("127.0.0.1", 0, symbols=default_symbols(bench_count=3))
    await emu.start()
    yield emu
    await emu.stop()


@pytest.fixture
async def client(emulator):
    """The production ccxt client factory, pointed at the emulator."""
    exchange = create_binanceusdm(emulator.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET, timeout_ms=3000)
    exchange.timeout_on_exit = 0  # ccxt waits 250 ms on close for a TLS shutdown; there is no TLS here
    yield exchange
    await exchange.close()


async def _open_long_apt(client, client_order_id: str = "ppe1-entry", quantity: str = "61.8") -> dict:
    return await client.create_order(APT, "market", "buy", quantity, None, {"newClientOrderId": client_order_id})


async def _place_apt_stop(client, client_order_id: str = "pps1-stop", stop_price: str = "9.7500",
                          quantity: str = "61.8") -> dict:
    # As the executor sends it: a market order with stopPrice + reduceOnly is a STOP_MARKET algo order.
    return await client.create_order(APT, "market", "sell", quantity, None,
                                     {"newClientOrderId": client_order_id, "stopPrice": stop_price,
                                      "reduceOnly": True})


async def _wait_away_from_window_end(interval_s: int, margin_s: float) -> None:
    """Rate-limit windows are fixed and clock-aligned: start a burst well inside one."""
    for _ in range(int(margin_s / 0.05) + 2):  # bounded: at most margin_s of waiting
        if time.time() % interval_s < interval_s - margin_s:
            return
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------------------- markets


async def test_load_markets_fetch_currencies_off_calls_only_fapi_exchange_info(emulator, client):
    # Act
    markets = await client.load_markets()

    # Assert
    apt = markets[APT]
    assert (apt["id"], apt["type"], apt["linear"], apt["settle"]) == ("APTUSDT", "swap", True, "USDT")
    assert (apt["precision"]["price"], apt["precision"]["amount"]) == (0.0001, 0.1)
    assert apt["limits"]["cost"]["min"] == 5.0
    assert {"BTC/USDT:USDT", ETH, "SOL/USDT:USDT", "BENCH2/USDT:USDT"} <= set(markets)
    assert [(r["method"], r["path"]) for r in emulator.requests()] == [("GET", "/fapi/v1/exchangeInfo")]
    assert not any(r["path"].startswith("/sapi") for r in emulator.requests())


async def test_exchange_info_rate_limits_publish_binance_usdm_limits(emulator, client):
    # Act
    await client.load_markets()
    info = await client.fapiPublicGetExchangeInfo()

    # Assert
    limits = {(x["rateLimitType"], x["interval"], x["intervalNum"]): x["limit"] for x in info["rateLimits"]}
    assert limits == {("REQUEST_WEIGHT", "MINUTE", 1): 2400, ("ORDERS", "MINUTE", 1): 1200,
                      ("ORDERS", "SECOND", 10): 300}
    assert {"MARKET", "STOP_MARKET"} <= set(client.markets[APT]["info"]["orderTypes"])


# ---------------------------------------------------------------------------- market orders


async def test_create_order_market_with_client_id_fills_at_mark_price(emulator, client):
    # Arrange
    emulator.set_mark_price("APTUSDT", "12.3400")

    # Act
    order = await _open_long_apt(client, "ppe1-abc")

    # Assert
    assert (order["clientOrderId"], order["status"], order["side"]) == ("ppe1-abc", "closed", "buy")
    assert (order["filled"], order["average"]) == (61.8, 12.34)
    assert (order["info"]["status"], order["info"]["avgPrice"], order["info"]["executedQty"]) == \
        ("FILLED", "12.3400", "61.8")
    [placed] = emulator.orders()
    assert (placed["client_order_id"], placed["type"], placed["status"], placed["avg_price"]) == \
        ("ppe1-abc", "MARKET", "FILLED", "12.3400")
    [request] = emulator.requests(path="/fapi/v1/order")
    assert request["params"]["newClientOrderId"] == "ppe1-abc"
    assert request["params"]["newOrderRespType"] == "RESULT"


async def test_create_order_client_id_of_a_filled_order_is_accepted_again_as_binance_documents(emulator, client):
    # Arrange: Binance: newClientOrderId is "a unique id among open orders"; a market order
    # fills at once, so its id is free again.
    await _open_long_apt(client, "ppe1-dup")

    # Act
    second = await _open_long_apt(client, "ppe1-dup")
    fetched = await client.fetch_order(None, APT, {"clientOrderId": "ppe1-dup"})

    # Assert: two orders, the position doubled; a lookup by id answers the latest.
    orders = emulator.orders(client_order_id="ppe1-dup")
    assert [o["status"] for o in orders] == ["FILLED", "FILLED"]
    assert fetched["id"] == second["id"] == orders[1]["exchange_order_id"]
    assert [p["quantity"] for p in emulator.positions()] == ["123.6"]
    assert emulator.rejections() == []


async def test_create_order_client_id_of_an_open_order_raises_error_with_code_4116(emulator, client):
    # Arrange: a market order that fills in part and rests keeps its id taken.
    emulator.add_fault("partial_fill", quantity="20", remainder="rest")
    await _open_long_apt(client, "ppe1-open")

    # Act
    with pytest.raises(ccxt.ExchangeError) as raised:
        await _open_long_apt(client, "ppe1-open")

    # Assert: off the production URL ccxt raises a plain ExchangeError; the code tells.
    assert exchange_error_code(raised.value) == -4116
    assert [o["status"] for o in emulator.orders(client_order_id="ppe1-open")] == ["PARTIALLY_FILLED"]
    assert [(r["client_order_id"], r["code"]) for r in emulator.rejections()] == [("ppe1-open", -4116)]


async def test_create_order_strict_client_id_rule_refuses_a_filled_orders_id_with_4116():
    # Arrange: the option stricter than Binance, kept to compare against.
    emulator = BinanceUsdmEmulator("127.0.0.1", 0, symbols=default_symbols(bench_count=0),
                                   client_id_rule=CLIENT_ID_UNIQUE_FOREVER)
    await emulator.start()
    client = create_binanceusdm(emulator.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET, timeout_ms=3000)
    try:
        await _open_long_apt(client, "ppe1-strict")

        # Act
        with pytest.raises(ccxt.ExchangeError) as raised:
            await _open_long_apt(client, "ppe1-strict")
    finally:
        await client.close()
        await emulator.stop()

    # Assert
    assert exchange_error_code(raised.value) == -4116
    assert len(emulator.orders(client_order_id="ppe1-strict")) == 1


async def test_create_order_duplicate_stop_client_algo_id_while_open_raises_error_with_code_4116(emulator, client):
    # Arrange
    await _open_long_apt(client)
    await _place_apt_stop(client, "pps1-dup")

    # Act
    with pytest.raises(ccxt.ExchangeError) as raised:
        await _place_apt_stop(client, "pps1-dup")

    # Assert
    assert exchange_error_code(raised.value) == -4116
    assert len(emulator.orders(kind="algo")) == 1


async def test_create_order_stop_client_algo_id_of_a_canceled_stop_is_accepted_again(emulator, client):
    # Arrange: clientAlgoId follows the same documented rule: unique among open orders.
    await _open_long_apt(client)
    await _place_apt_stop(client, "pps1-again")
    await client.cancel_order(None, APT, {"clientOrderId": "pps1-again", "trigger": True})

    # Act
    await _place_apt_stop(client, "pps1-again")

    # Assert
    assert [o["status"] for o in emulator.orders(kind="algo", client_order_id="pps1-again")] == ["CANCELED", "NEW"]


async def test_fault_partial_fill_expire_leaves_an_expired_order_with_executed_quantity(emulator, client):
    # Arrange
    emulator.add_fault("partial_fill", quantity="20")

    # Act
    order = await _open_long_apt(client, "ppe1-part")
    fetched = await client.fetch_order(None, APT, {"clientOrderId": "ppe1-part"})

    # Assert: EXPIRED with executedQty 20; the position holds what was executed.
    assert (order["info"]["status"], order["info"]["executedQty"]) == ("EXPIRED", "20.0")
    assert (fetched["status"], fetched["filled"]) == ("expired", 20.0)
    assert [p["quantity"] for p in emulator.positions()] == ["20.0"]


async def test_fault_partial_fill_rest_fills_the_remainder_at_the_next_mark_price(emulator, client):
    # Arrange
    emulator.add_fault("partial_fill", quantity="20", remainder="rest")
    await _open_long_apt(client, "ppe1-rest")

    # Act
    emulator.set_mark_price("APTUSDT", "10.1000")
    fetched = await client.fetch_order(None, APT, {"clientOrderId": "ppe1-rest"})

    # Assert
    assert (fetched["status"], fetched["filled"]) == ("closed", 61.8)
    assert [p["quantity"] for p in emulator.positions()] == ["61.8"]


async def test_fault_hold_answer_creates_the_order_then_answers_late(emulator, client):
    # Arrange
    emulator.add_fault("hold_answer", method="POST", path="/fapi/v1/order", seconds=1.0)
    started = time.monotonic()

    # Act
    order = await _open_long_apt(client, "ppe1-held")

    # Assert: the order existed during the wait; the answer came after it.
    assert time.monotonic() - started >= 0.9
    assert order["status"] == "closed"
    assert [o["client_order_id"] for o in emulator.orders()] == ["ppe1-held"]


async def test_fetch_order_by_client_id_returns_the_filled_market_order(emulator, client):
    # Arrange
    placed = await _open_long_apt(client, "ppe1-fetch")

    # Act
    fetched = await client.fetch_order(None, APT, {"clientOrderId": "ppe1-fetch"})

    # Assert
    assert (fetched["id"], fetched["clientOrderId"], fetched["status"]) == (placed["id"], "ppe1-fetch", "closed")
    assert (fetched["filled"], fetched["average"], fetched["amount"]) == (61.8, 10.0, 61.8)
    assert emulator.requests(path="/fapi/v1/order")[-1]["params"]["origClientOrderId"] == "ppe1-fetch"


async def test_fetch_order_unknown_client_id_raises_order_not_found_code_2013(emulator, client):
    # Act
    with pytest.raises(ccxt.OrderNotFound) as raised:
        await client.fetch_order(None, APT, {"clientOrderId": "ppe1-never-sent"})

    # Assert
    assert exchange_error_code(raised.value) == -2013


async def test_create_order_reduce_only_on_flat_position_rejected_with_2022(emulator, client):
    # Act
    with pytest.raises(ccxt.ExchangeError) as market_raised:
        await client.create_order(APT, "market", "sell", "1", None,
                                  {"newClientOrderId": "ppc1-flat", "reduceOnly": True})
    with pytest.raises(ccxt.ExchangeError) as stop_raised:
        await _place_apt_stop(client, "pps1-flat", quantity="1")

    # Assert
    assert exchange_error_code(market_raised.value) == -2022
    assert exchange_error_code(stop_raised.value) == -2022
    assert emulator.orders() == []
    assert emulator.positions() == []


async def test_create_order_reduce_only_close_flattens_the_position(emulator, client):
    # Arrange
    await _open_long_apt(client)

    # Act
    close = await client.create_order(APT, "market", "sell", "61.8", None,
                                      {"newClientOrderId": "ppc1-close", "reduceOnly": True})

    # Assert
    assert (close["status"], close["filled"], close["reduceOnly"]) == ("closed", 61.8, True)
    assert await client.fetch_positions() == []


# ---------------------------------------------------------------------------- stop-losses (algo orders)


async def test_create_order_stop_market_reduce_only_goes_to_algo_order_with_right_fields(emulator, client):
    # Arrange
    await _open_long_apt(client)

    # Act
    stop = await _place_apt_stop(client, "pps1-fields", stop_price="9.7500")

    # Assert: the request Binance receives since the algo migration (ccxt trims "9.7500" to "9.75").
    [request] = emulator.requests(path="/fapi/v1/algoOrder")
    assert request["method"] == "POST"
    params = request["params"]
    assert {k: params[k] for k in ("algoType", "type", "side", "quantity", "triggerPrice", "reduceOnly",
                                   "clientAlgoId", "symbol")} == {
        "algoType": "CONDITIONAL", "type": "STOP_MARKET", "side": "SELL", "quantity": "61.8",
        "triggerPrice": "9.75", "reduceOnly": "true", "clientAlgoId": "pps1-fields", "symbol": "APTUSDT"}
    assert "newClientOrderId" not in params and "stopPrice" not in params
    assert emulator.requests(path="/fapi/v1/order")[-1]["params"]["type"] == "MARKET"  # only the entry
    # ... and what ccxt makes of the answer.
    assert (stop["clientOrderId"], stop["status"], stop["triggerPrice"], stop["reduceOnly"], stop["side"]) == \
        ("pps1-fields", "open", 9.75, True, "sell")
    [algo] = emulator.orders(kind="algo")
    assert (algo["type"], algo["stop_price"], algo["reduce_only"], algo["status"]) == \
        ("STOP_MARKET", "9.7500", True, "NEW")


async def test_fetch_order_trigger_by_client_id_returns_the_algo_stop(emulator, client):
    # Arrange
    await _open_long_apt(client)
    stop = await _place_apt_stop(client, "pps1-fetch")

    # Act
    fetched = await client.fetch_order(None, APT, {"clientOrderId": "pps1-fetch", "trigger": True})

    # Assert
    assert (fetched["id"], fetched["clientOrderId"], fetched["status"], fetched["triggerPrice"]) == \
        (stop["id"], "pps1-fetch", "open", 9.75)
    assert emulator.requests(path="/fapi/v1/algoOrder")[-1]["params"]["clientAlgoId"] == "pps1-fetch"


async def test_stop_market_mark_price_crosses_trigger_closes_the_position(emulator, client):
    # Arrange
    await _open_long_apt(client)
    await _place_apt_stop(client, "pps1-hit", stop_price="9.7500")

    # Act
    untouched = emulator.set_mark_price("APTUSDT", "9.8000")
    triggered = emulator.set_mark_price("APTUSDT", "9.7000")

    # Assert
    assert (untouched, triggered) == ([], ["pps1-hit"])
    assert await client.fetch_positions() == []
    stop = await client.fetch_order(None, APT, {"clientOrderId": "pps1-hit", "trigger": True})
    assert (stop["status"], stop["info"]["algoStatus"], stop["info"]["actualPrice"]) == ("closed", "FINISHED", "9.7000")
    fill = next(o for o in emulator.orders(kind="regular") if o["source"] == "trigger")
    assert (fill["side"], fill["executed_qty"], fill["avg_price"], fill["reduce_only"]) == ("SELL", "61.8", "9.7000", True)
    assert fill["exchange_order_id"] == stop["info"]["actualOrderId"]


async def test_create_order_stop_already_crossed_rejected_with_2021(emulator, client):
    # Arrange: mark 10.0000; a SELL stop above it would fire at once.
    await _open_long_apt(client)

    # Act
    with pytest.raises(ccxt.ExchangeError) as raised:
        await _place_apt_stop(client, "pps1-late", stop_price="10.5000")

    # Assert
    assert exchange_error_code(raised.value) == -2021


async def test_cancel_order_stop_by_client_id_cancels_it(emulator, client):
    # Arrange
    await _open_long_apt(client)
    await _place_apt_stop(client, "pps1-cancel")
    [listed] = await client.fetch_open_orders(APT, params={"trigger": True})

    # Act
    canceled = await client.cancel_order(None, APT, {"clientOrderId": "pps1-cancel", "trigger": True})

    # Assert
    assert listed["clientOrderId"] == "pps1-cancel"
    assert canceled["clientOrderId"] == "pps1-cancel"
    assert emulator.requests(path="/fapi/v1/algoOrder")[-1]["method"] == "DELETE"
    assert await client.fetch_open_orders(APT, params={"trigger": True}) == []
    fetched = await client.fetch_order(None, APT, {"clientOrderId": "pps1-cancel", "trigger": True})
    assert fetched["status"] == "canceled"
    assert emulator.set_mark_price("APTUSDT", "9.0000") == []
    assert len(await client.fetch_positions()) == 1


async def test_cancel_order_filled_market_order_raises_order_not_found_code_2011(emulator, client):
    # Arrange
    await _open_long_apt(client, "ppe1-done")

    # Act
    with pytest.raises(ccxt.OrderNotFound) as raised:
        await client.cancel_order(None, APT, {"clientOrderId": "ppe1-done"})

    # Assert
    assert exchange_error_code(raised.value) == -2011


# ---------------------------------------------------------------------------- positions


async def test_fetch_positions_long_then_closed_reports_side_contracts_entry_then_flat(emulator, client):
    # Arrange
    await _open_long_apt(client, "ppe1-a", "30")
    emulator.set_mark_price("APTUSDT", "13.0000")
    await _open_long_apt(client, "ppe1-b", "30")

    # Act
    [position] = await client.fetch_positions()
    await client.create_order(APT, "market", "sell", "60", None, {"newClientOrderId": "ppc1-all", "reduceOnly": True})
    after_close = await client.fetch_positions()

    # Assert: ccxt's reading of positionRisk v3 (weighted entry 11.5, mark 13).
    assert (position["symbol"], position["side"], position["contracts"], position["entryPrice"]) == \
        (APT, "long", 60.0, 11.5)
    assert (position["markPrice"], position["unrealizedPnl"], position["hedged"]) == (13.0, 90.0, False)
    assert after_close == []
    paths = [r["path"] for r in emulator.requests() if r["path"] != "/fapi/v1/order"]
    assert paths == ["/fapi/v1/exchangeInfo", "/fapi/v1/leverageBracket", "/fapi/v3/positionRisk",
                     "/fapi/v3/positionRisk"]  # brackets loaded once


async def test_position_by_hand_open_and_close_visible_through_fetch_positions(emulator, client):
    # Arrange
    emulator.set_position("ETHUSDT", "SELL", "2.5", "3400.00")

    # Act
    opened = await client.fetch_positions()
    emulator.set_position("ETHUSDT", "SELL", "0")
    closed = await client.fetch_positions()

    # Assert
    assert [(p["symbol"], p["side"], p["contracts"], p["entryPrice"]) for p in opened] == [(ETH, "short", 2.5, 3400.0)]
    assert closed == []
    assert emulator.orders() == []  # by hand: no order at the exchange


# ---------------------------------------------------------------------------- authentication


async def test_auth_bad_signature_raises_authentication_error_without_the_secret(emulator):
    # Arrange
    wrong_secret = "definitely-not-the-secret-5f3a"
    exchange = create_binanceusdm(emulator.base_url, DEFAULT_API_KEY, wrong_secret)

    # Act
    try:
        with pytest.raises(ccxt.AuthenticationError) as raised:
            await exchange.fetch_positions()
    finally:
        await exchange.close()

    # Assert
    assert exchange_error_code(raised.value) == -1022
    assert "Signature for this request is not valid." in str(raised.value)
    assert wrong_secret not in str(raised.value) and wrong_secret not in repr(raised.value)
    assert wrong_secret not in repr(exchange)


async def test_auth_unknown_api_key_raises_authentication_error_code_2015(emulator):
    # Arrange
    exchange = create_binanceusdm(emulator.base_url, "some-other-key", DEFAULT_API_SECRET)

    # Act
    try:
        with pytest.raises(ccxt.AuthenticationError) as raised:
            await exchange.create_order(APT, "market", "buy", "1", None, {"newClientOrderId": "ppe1-key"})
    finally:
        await exchange.close()

    # Assert
    assert exchange_error_code(raised.value) == -2015
    assert DEFAULT_API_SECRET not in str(raised.value)
    assert emulator.orders() == []


async def test_auth_timestamp_outside_recv_window_raises_invalid_nonce_code_1021(emulator, client):
    # Arrange: the exchange's clock runs a minute behind the client's.
    emulator.set_clock_offset(-60_000)

    # Act
    with pytest.raises(ccxt.InvalidNonce) as raised:
        await client.fetch_positions()

    # Assert
    assert exchange_error_code(raised.value) == -1021


async def test_ccxt_client_debug_log_never_contains_the_key_or_the_secret(caplog):
    # Arrange
    key, secret = "log-test-key-8c1d", "log-test-secret-93be"
    emu = BinanceUsdmEmulator(symbols=default_symbols(bench_count=0), api_key=key, api_secret=secret)
    await emu.start()
    exchange = create_binanceusdm(emu.base_url, key, secret)
    caplog.set_level(logging.DEBUG)

    # Act
    try:
        await exchange.fetch_positions()
    finally:
        await exchange.close()
        await emu.stop()

    # Assert
    ccxt_lines = [r.getMessage() for r in caplog.records if r.name.startswith("ccxt")]
    assert any("/fapi/v3/positionRisk" in line for line in ccxt_lines)  # the request was logged...
    assert all(key not in line and secret not in line for line in ccxt_lines)  # ...blanked


# ---------------------------------------------------------------------------- faults


async def test_fault_rate_limit_429_raises_ddos_protection_with_code_1003(emulator, client):
    # Arrange
    emulator.add_fault("rate_limit", path="/fapi/v3/positionRisk")

    # Act
    with pytest.raises(ccxt.DDoSProtection) as raised:
        await client.fetch_positions()
    retried = await client.fetch_positions()

    # Assert: one 429, then the fault is used up.
    assert exchange_error_code(raised.value) == -1003
    assert " 429 " in str(raised.value)
    assert retried == []


async def test_rate_limit_orders_over_the_10s_limit_answer_429_code_1015(emulator, client):
    # Arrange
    emulator.set_rate_limits(orders_per_10s=2)
    await client.load_markets()
    await _wait_away_from_window_end(10, 2.0)
    await _open_long_apt(client, "ppe1-r1", "1")
    await _open_long_apt(client, "ppe1-r2", "1")

    # Act
    with pytest.raises(ccxt.DDoSProtection) as raised:
        await _open_long_apt(client, "ppe1-r3", "1")

    # Assert
    assert exchange_error_code(raised.value) == -1015
    assert [o["client_order_id"] for o in emulator.orders()] == ["ppe1-r1", "ppe1-r2"]
    assert client.last_response_headers.get("X-MBX-ORDER-COUNT-10S") == "3"


async def test_rate_limit_ignored_429_with_ban_configured_answers_418(emulator, client):
    # Arrange
    emulator.set_rate_limits(orders_per_10s=1, ban_seconds=30)
    await client.load_markets()
    await _wait_away_from_window_end(10, 2.0)
    await _open_long_apt(client, "ppe1-b1", "1")
    with pytest.raises(ccxt.DDoSProtection):
        await _open_long_apt(client, "ppe1-b2", "1")

    # Act: another order anyway, inside the window the 429 named.
    with pytest.raises(ccxt.DDoSProtection) as raised:
        await _open_long_apt(client, "ppe1-b3", "1")
    with pytest.raises(ccxt.DDoSProtection) as banned:
        await client.fetch_positions()

    # Assert: banned; every request answers 418 until the ban ends.
    assert " 418 " in str(raised.value) and " 418 " in str(banned.value)
    assert exchange_error_code(raised.value) == -1003
    assert [o["client_order_id"] for o in emulator.orders()] == ["ppe1-b1"]


async def test_fault_http_503_raises_exchange_not_available(emulator, client):
    # Arrange
    emulator.add_fault("http_error", status=503, path="/fapi/v1/order")

    # Act
    with pytest.raises(ccxt.ExchangeNotAvailable):
        await _open_long_apt(client, "ppe1-503")

    # Assert
    assert emulator.orders() == []


async def test_fault_accept_then_timeout_leaves_exactly_one_order_and_raises_network_error(emulator, client):
    # Arrange
    emulator.add_fault("accept_then_timeout", method="POST", path="/fapi/v1/order")

    # Act
    with pytest.raises(ccxt.NetworkError):
        await _open_long_apt(client, "ppe1-lost")
    recovered = await client.fetch_order(None, APT, {"clientOrderId": "ppe1-lost"})

    # Assert: the order exists though its answer was lost; a lookup by id finds it.
    assert [(o["client_order_id"], o["status"]) for o in emulator.orders()] == [("ppe1-lost", "FILLED")]
    assert (recovered["status"], recovered["filled"]) == ("closed", 61.8)
    assert emulator.requests(path="/fapi/v1/order")[0]["dropped"] is True


async def test_fault_accept_then_timeout_then_blind_resend_with_the_same_id_doubles_the_position(emulator, client):
    # Arrange: why the executor never re-sends blindly: the documented rule accepts the id again.
    emulator.add_fault("accept_then_timeout", method="POST", path="/fapi/v1/order")
    with pytest.raises(ccxt.NetworkError):
        await _open_long_apt(client, "ppe1-resent")

    # Act
    await _open_long_apt(client, "ppe1-resent")

    # Assert
    assert len(emulator.orders(client_order_id="ppe1-resent")) == 2
    assert [p["quantity"] for p in emulator.positions()] == ["123.6"]


async def test_fault_accept_then_timeout_delay_beyond_client_timeout_raises_request_timeout(emulator):
    # Arrange
    exchange = create_binanceusdm(emulator.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET, timeout_ms=400)
    emulator.add_fault("accept_then_timeout", path="/fapi/v1/algoOrder", seconds=30)
    await _open_long_apt(exchange)

    # Act
    try:
        with pytest.raises(ccxt.RequestTimeout):
            await _place_apt_stop(exchange, "pps1-slow")
    finally:
        await exchange.close()

    # Assert: the stop exists although its answer never came.
    assert [o["client_order_id"] for o in emulator.orders(kind="algo")] == ["pps1-slow"]


async def test_fault_hang_raises_request_timeout_and_places_nothing(emulator):
    # Arrange
    exchange = create_binanceusdm(emulator.base_url, DEFAULT_API_KEY, DEFAULT_API_SECRET, timeout_ms=400)
    emulator.add_fault("hang", path="/fapi/v1/order")
    await exchange.load_markets()

    # Act
    try:
        with pytest.raises(ccxt.RequestTimeout):
            await _open_long_apt(exchange, "ppe1-hang")
    finally:
        await exchange.close()

    # Assert
    assert emulator.orders() == []


async def test_fault_reject_2019_surfaces_the_code_and_places_nothing(emulator, client):
    # Arrange
    emulator.add_fault("reject", code=-2019)

    # Act
    with pytest.raises(ccxt.ExchangeError) as raised:
        await _open_long_apt(client, "ppe1-margin")
    retried = await _open_long_apt(client, "ppe1-margin")

    # Assert
    assert exchange_error_code(raised.value) == -2019
    assert "Margin is insufficient." in str(raised.value)
    assert [(r["client_order_id"], r["code"]) for r in emulator.rejections()] == [("ppe1-margin", -2019)]
    assert retried["status"] == "closed"  # a rejected id was never placed, so it is free


async def test_latency_on_the_stop_endpoint_delays_only_stops(emulator, client):
    # Arrange
    emulator.set_latency(0.3, "POST", "/fapi/v1/algoOrder")
    loop = asyncio.get_running_loop()
    started = loop.time()
    await _open_long_apt(client)
    entry_s = loop.time() - started

    # Act
    started = loop.time()
    await _place_apt_stop(client)
    stop_s = loop.time() - started

    # Assert
    assert stop_s >= 0.3
    assert entry_s < 0.3


# ---------------------------------------------------------------------------- control API, CLI, client factory


async def test_control_api_over_http_drives_the_emulator(emulator, client):
    # Arrange
    control = f"{emulator.base_url}/_emulator"

    async with aiohttp.ClientSession() as http:
        # Act
        async with http.post(f"{control}/positions", json={"symbol": "SOLUSDT", "side": "BUY", "quantity": "3"}) as r:
            by_hand = await r.json()
        async with http.post(f"{control}/faults", json={"kind": "reject", "code": -2019, "count": 1}) as r:
            fault = await r.json()
        async with http.post(f"{control}/mark_price", json={"symbol": "SOLUSDT", "price": "151.25"}) as r:
            mark = await r.json()
        async with http.post(f"{control}/mark_price", json={"symbol": "SOLUSDT", "price": "151.255"}) as r:
            off_tick = (r.status, await r.json())
        with pytest.raises(ccxt.ExchangeError):
            await client.create_order("SOL/USDT:USDT", "market", "buy", "1", None, {"newClientOrderId": "ppe1-sol"})
        async with http.get(f"{control}/positions") as r:
            positions = await r.json()
        async with http.get(f"{control}/rejections") as r:
            rejections = await r.json()
        async with http.get(f"{control}/requests", params={"path": "/fapi/v1/order"}) as r:
            requests = await r.json()
        async with http.post(f"{control}/reset", json={}) as r:
            reset = await r.json()
        async with http.get(f"{control}/positions") as r:
            after_reset = await r.json()

    # Assert
    assert (by_hand["side"], by_hand["quantity"], by_hand["entry_price"]) == ("BUY", "3", "150.00")
    assert (fault["kind"], fault["code"], fault["count"]) == ("reject", -2019, 1)
    assert (mark["price"], mark["triggered"]) == ("151.25", [])
    assert off_tick[0] == 400 and "tick size" in off_tick[1]["error"]
    assert [(p["symbol"], p["quantity"]) for p in positions] == [("SOLUSDT", "3")]
    assert [r["code"] for r in rejections] == [-2019]
    assert [(r["status"], r["code"], r["fault"], r["signed"]) for r in requests] == [(400, -2019, "reject", True)]
    assert "signature" not in requests[0]["params"]
    assert reset == {"ok": True} and after_reset == []


async def test_emulator_cli_with_port_zero_prints_its_base_url_and_serves():
    # Arrange
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "emulator", "--host", "127.0.0.1", "--port", "0", "--bench-symbols", "2",
        cwd=REPO_ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        # Act
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=20)).decode().strip()
        exchange = create_binanceusdm(line, DEFAULT_API_KEY, DEFAULT_API_SECRET)
        try:
            markets = await exchange.load_markets()
        finally:
            await exchange.close()
    finally:
        process.terminate()
        return_code = await asyncio.wait_for(process.wait(), timeout=20)

    # Assert
    assert urlsplit(line).scheme == "http" and urlsplit(line).hostname == "127.0.0.1" and urlsplit(line).port
    assert set(markets) == {"BTC/USDT:USDT", ETH, APT, "SOL/USDT:USDT", "BENCH0/USDT:USDT", "BENCH1/USDT:USDT"}
    assert return_code == 0


async def test_ccxt_client_non_production_url_rehosts_every_api_url_keeping_paths():
    # Arrange
    production = create_binanceusdm(None, "k", "s")
    base = "http://127.0.0.1:6070"

    # Act
    rehosted = create_binanceusdm(base + "/", "k", "s")
    explicit_production = create_binanceusdm(PRODUCTION_URL + "/", "k", "s")

    # Assert
    try:
        original = production.urls["api"]
        assert set(rehosted.urls["api"]) == set(original)
        for name, url in original.items():
            assert rehosted.urls["api"][name] == base + urlsplit(url).path, name
        assert rehosted.urls["api"]["fapiPrivateV3"] == base + "/fapi/v3"
        assert rehosted.urls["api"]["fapiData"] == base + "/futures/data"
        assert not any("binance.com" in url for url in rehosted.urls["api"].values())
        assert explicit_production.urls["api"] == original
        assert original["fapiPublic"] == "https://fapi.binance.com/fapi/v1"
        assert rehosted.options["fetchCurrencies"] is False
    finally:
        for exchange in (production, rehosted, explicit_production):
            await exchange.close()


def test_exchange_error_code_reads_binance_codes_from_ccxt_messages():
    # Arrange
    duplicate = ccxt.ExchangeError('binanceusdm {"code":-4116,"msg":"ClientOrderId is duplicated."}')
    limited = ccxt.DDoSProtection('binanceusdm 429 Too Many Requests {"code":-1003,"msg":"Too many requests"}')
    network = ccxt.RequestTimeout("binanceusdm POST http://127.0.0.1:1/fapi/v1/order")

    # Act
    codes = [exchange_error_code(error) for error in (duplicate, limited, network, ValueError("{not json}"))]

    # Assert
    assert codes == [-4116, -1003, None, None]


async def test_emulator_money_stays_decimal_inside(emulator):
    # Arrange
    book = emulator.book

    # Act
    emulator.set_position("APTUSDT", "BUY", "0.3", "10.1000")

    # Assert: Decimal arithmetic, no binary float drift (0.1 + 0.2 style).
    position = book.positions["APTUSDT"]
    assert position.amount == Decimal("0.3") and isinstance(position.entry_price, Decimal)
    assert emulator.positions()[0]["quantity"] == "0.3"

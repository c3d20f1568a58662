"""The web server's views read from what is stored outside the table: PostgreSQL and the dead-letter topic.

A mixin of ``PositionsWebServer`` (``streams.web.server``): the key's history and its
timeline, the ended positions, and the feed of refusals and dead letters. None of them
depends on which worker owns a key, so every worker answers them the same; the timeline
alone also asks the key's owner for the live position, to set it against the exchange.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from streams.settings import Settings
from streams.web.closed import parse_closed_query, read_closed, render_closed_page
from streams.web.feed import DeadLetterTail, read_feed
from streams.web.history import HistoryUnavailable, PositionHistory, parse_limit
from streams.web.history_page import render_history_page
from streams.web.routing import is_valid_key

__all__ = ["StoredViews", "json_response"]


def json_response(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """``value`` as a JSON answer (UTF-8, not ASCII-escaped)."""
    return web.Response(text=json.dumps(value, ensure_ascii=False), status=status,
                        content_type="application/json", headers=headers)


class StoredViews:
    """Handlers of the views read from PostgreSQL and the dead-letter topic (mixed into the web server)."""

    settings: Settings
    position_history: PositionHistory
    dead_letter_tail: DeadLetterTail

    async def current_position(self, key: str) -> tuple[dict | None, str | None]:
        """The key's live position (None when none is live) or why it cannot be had; see the server."""
        raise NotImplementedError

    @property
    def _title(self) -> str:
        return f"Positions \u00b7 {self.settings.app_id}"

    async def history(self, request: web.Request) -> web.Response:
        """The key's positions newest first, closed ones included, each with its events (from PostgreSQL)."""
        key = request.match_info["key"]
        if not is_valid_key(key):
            return json_response({"error": f"{key!r} is not a SYMBOL@exchange key"}, status=404)
        try:
            limit = parse_limit(request.query.get("limit"))
        except ValueError as error:
            return json_response({"error": str(error)}, status=400)
        try:
            history = await self.position_history.read(key, limit)
        except HistoryUnavailable as error:
            return json_response({"error": str(error)}, status=503, headers={"Retry-After": "5"})
        if history is None:
            return json_response({"error": f"{key} never had a position"}, status=404)
        return json_response(history)

    async def closed(self, request: web.Request) -> web.Response:
        """Positions that ended in the last ``?hours=`` (default 24), newest first; ``?symbol=`` narrows."""
        try:
            asked = parse_closed_query(request.query)
        except ValueError as error:
            return json_response({"error": str(error)}, status=400)
        try:
            return json_response(await read_closed(await self.position_history.connections(), asked))
        except HistoryUnavailable as error:
            return json_response({"error": str(error)}, status=503, headers={"Retry-After": "5"})

    async def closed_page(self, request: web.Request) -> web.Response:
        """The HTML table of ended positions, each linked to its key's timeline."""
        try:
            asked = parse_closed_query(request.query)
        except ValueError as error:
            return web.Response(text=str(error), status=400)
        try:
            positions = await read_closed(await self.position_history.connections(), asked)
        except HistoryUnavailable as error:
            return web.Response(text=render_closed_page([], asked, title=self._title, error=str(error)), status=503,
                                content_type="text/html")
        return web.Response(text=render_closed_page(positions, asked, title=self._title), content_type="text/html")

    async def history_page(self, request: web.Request) -> web.Response:
        """The HTML timeline of the key's positions, its live one set against the exchange's latest snapshot."""
        key = request.match_info["key"]
        if not is_valid_key(key):
            return web.Response(text=render_history_page(None, key=key, title=self._title), status=404,
                                content_type="text/html")
        try:
            history = await self.position_history.read(key, parse_limit(request.query.get("limit")))
        except ValueError as error:
            return web.Response(text=render_history_page(None, key=key, title=self._title, error=str(error)),
                                status=400, content_type="text/html")
        except HistoryUnavailable as error:
            return web.Response(text=render_history_page(None, key=key, title=self._title, error=str(error)),
                                status=503, content_type="text/html")
        current, unavailable = (None, None) if history is None else await self.current_position(key)
        return web.Response(text=render_history_page(history, key=key, title=self._title, current=current,
                                                     current_unavailable=unavailable),
                            status=404 if history is None else 200, content_type="text/html")

    async def refusals(self, request: web.Request) -> web.Response:
        """The latest refusals (PostgreSQL) and dead letters (the topic), newest first; ``problems`` names a part away."""
        return json_response(await read_feed(self.position_history, self.dead_letter_tail))

"""Abandonment signals: sessions that timed out without reaching a goal, as the sessionizer
noticed them, listed after a cursor or streamed as Server-Sent Events.

A signal is written once per session when its timeout passes (``abandonments`` table); the
stream polls that table, so it works the same whether the sessionizer runs in this process or
in another one. The cursor is ``<detected_at ms>:<session_id>``, the order signals are read in:
a client that reconnects with it (``Last-Event-ID``) misses none and sees each once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from fastapi import HTTPException

from services.core.signals import SIGNAL_COLUMNS, Cursor, cursor_of, cursor_text, signal_json
from services.core.warehouse import Warehouse

POLL_SECONDS = 1.0
KEEPALIVE_SECONDS = 15.0

_SIGNALS_SQL = (
    f"\nSELECT {SIGNAL_COLUMNS}"
    + """
FROM abandonments FINAL
WHERE project = {project:String}
  AND (toUnixTimestamp64Milli(detected_at), session_id) > ({after_ms:Int64}, {after_session:String})
ORDER BY detected_at, session_id
LIMIT {limit:UInt32}
"""
)


def parse_cursor(text: str, field: str) -> Cursor:
    """``<ms>:<session_id>`` as given back by the API; 422 naming the field otherwise."""
    head, sep, session_id = text.partition(":")
    if not sep or not head.isdigit():
        raise HTTPException(422, f"{field}: not a cursor given by this API (<detected_at ms>:<session_id>)")
    return int(head), session_id


def signals_after(warehouse: Warehouse, project: str, after: Cursor, limit: int) -> list[dict[str, Any]]:
    """Blocking: the project's signals after the cursor, oldest first."""
    return warehouse.rows(
        _SIGNALS_SQL, {"project": project, "after_ms": after[0], "after_session": after[1], "limit": limit}
    )


async def event_stream(
    fetch: Callable[[Cursor], Awaitable[list[dict[str, Any]]]],
    after: Cursor,
    poll_seconds: float = POLL_SECONDS,
    keepalive_seconds: float = KEEPALIVE_SECONDS,
) -> AsyncIterator[bytes]:
    """Server-Sent Events: each signal once, in order, as it is written; a comment now and then
    so proxies keep the connection open. Ends when the client goes (Starlette cancels it)."""
    quiet = 0.0
    yield b": abandonment signals\n\n"  # headers and a first byte out at once
    while True:
        rows = await fetch(after)
        for r in rows:
            after = cursor_of(r)
            signal = signal_json(r)
            event = b"\nevent: " + signal["kind"].encode() + b"\ndata: "
            yield b"id: " + cursor_text(after).encode() + event + orjson.dumps(signal) + b"\n\n"
        if rows:
            quiet = 0.0
            continue
        await asyncio.sleep(poll_seconds)
        quiet += poll_seconds
        if quiet >= keepalive_seconds:
            quiet = 0.0
            yield b": keep-alive\n\n"

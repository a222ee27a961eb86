"""Turn log records into ClickHouse rows: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from services.core.erasure import Owner
from services.core.identity import links_in
from services.core.schema import EVENT_COLUMNS
from services.core.sessions import SESSION_EVENT_FIELDS


def _dt(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def session_event(record: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """What sessionization needs of one event (its time in ms), from the event's row."""
    out = {name: row[name] for name in SESSION_EVENT_FIELDS}
    out["timestamp"] = int(record["timestamp"])
    return out


# Where an erasure's rule finds its fields in an events line (EVENT_COLUMNS order).
_PROJECT, _ANONYMOUS_ID, _USER_ID, _TIMESTAMP, _RECEIVED_AT = (
    EVENT_COLUMNS.index(c) for c in ("project", "anonymous_id", "user_id", "timestamp", "received_at")
)


def link_rows(records: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [project, link.anonymous_id, link.user_id, _dt(link.first_seen), _dt(link.last_seen)]
        for project, link in links_in(records)
    ]


def rejected_row(record: Mapping[str, Any]) -> list[Any]:
    payload = record.get("payload")
    text = payload if isinstance(payload, str) else orjson.dumps(payload, default=str).decode()
    return [record["project"], _dt(record["received_at"]), int(record.get("index", 0)), record["error"], text[:65536]]


def _sent_id(value: Any) -> str:
    """An id as ingest reads it (a string, or an integer's digits); anything else names nobody."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else ""


def dead_letter_owner(row: Sequence[Any]) -> Owner | None:
    """Whose a ``rejected_row`` is, by the ids its payload names (at the time it was received,
    as the API's erasure reads them: services/api/dead_letters.py); None when it names nobody."""
    text = row[4]
    try:
        payload = orjson.loads(text) if text.startswith("{") else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(payload, dict):
        return None
    anonymous_id, user_id = _sent_id(payload.get("anonymous_id")), _sent_id(payload.get("user_id"))
    if not anonymous_id and not user_id:
        return None
    received = round(row[1].timestamp() * 1000)
    return (row[0], anonymous_id, user_id, received, received)


def owners_of(lines: list[bytes]) -> list[Owner]:
    """Whose each events line is, read back from the line: only when an erasure may have taken
    some (rare), so the hot path builds nothing for it."""
    out: list[Owner] = []
    for line in lines:
        v = orjson.loads(line)
        out.append(
            (
                v[_PROJECT],
                v[_ANONYMOUS_ID],
                v[_USER_ID],
                round(v[_TIMESTAMP] * 1000),
                round(v[_RECEIVED_AT] * 1000),
            )
        )
    return out

"""Turn log records into ClickHouse rows: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from services.core.identity import links_in
from services.core.sessions import SESSION_EVENT_FIELDS


def _dt(ms: int | None) -> datetime | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _str(obj: Any, *path: str) -> str:
    for key in path:
        if not isinstance(obj, dict):
            return ""
        obj = obj.get(key)
    if obj is None or isinstance(obj, (dict, list)):
        return ""
    return str(obj)


def _campaign(context: Mapping[str, Any], url: str) -> tuple[str, str, str]:
    campaign = context.get("campaign")
    if isinstance(campaign, dict) and any(campaign.get(k) for k in ("source", "medium", "name")):
        return _str(campaign, "source"), _str(campaign, "medium"), _str(campaign, "name")
    if "utm_" not in url:
        return "", "", ""
    query = parse_qs(urlparse(url).query)
    return tuple(query.get(f"utm_{k}", [""])[0] for k in ("source", "medium", "campaign"))  # type: ignore[return-value]


def _seconds(ms: int | None) -> float | None:
    """DateTime64(3) as JSON: epoch seconds; orjson's shortest repr keeps the milliseconds exact."""
    return None if ms is None else ms / 1000


def event_json(record: Mapping[str, Any]) -> bytes:
    """One events-table row as a JSONEachRow line (ClickHouse parses it in C++, fast)."""
    return orjson.dumps(event_row(record))


def session_event(record: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
    """What sessionization needs of one event (its time in ms), from the event's row."""
    out = {name: row[name] for name in SESSION_EVENT_FIELDS}
    out["timestamp"] = int(record["timestamp"])
    return out


def event_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One events-table row: the log record flattened into the table's columns."""
    context = record.get("context") or {}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    url = _str(page, "url")
    path = _str(page, "path") or (urlparse(url).path if url else "")
    source, medium, name = _campaign(context, url)
    timing = record.get("timing") or {}
    error = record.get("error") or {}
    ua = record.get("ua") or {}
    geo = record.get("geo") or {}
    return {
        "project": record["project"],
        "event_id": record["event_id"],
        "type": record["type"],
        "name": record["name"],
        "anonymous_id": record["anonymous_id"],
        "user_id": record["user_id"],
        "timestamp": record["timestamp"] / 1000,
        "client_timestamp": _seconds(record.get("client_timestamp")),
        "sent_at": _seconds(record.get("sent_at")),
        "received_at": record["received_at"] / 1000,
        "channel": record["channel"],
        "url": url,
        "path": path,
        "referrer": _str(page, "referrer"),
        "title": _str(page, "title"),
        "campaign_source": source,
        "campaign_medium": medium,
        "campaign_name": name,
        "user_agent": _str(context, "user_agent"),
        "browser": _str(context, "browser", "name") or ua.get("browser", ""),
        "browser_version": _str(context, "browser", "version") or ua.get("browser_version", ""),
        "os": _str(context, "os", "name") or ua.get("os", ""),
        "os_version": _str(context, "os", "version") or ua.get("os_version", ""),
        "device_type": _str(context, "device", "type") or ua.get("device_type", ""),
        "is_bot": 1 if ua.get("bot") else 0,
        "country": _str(context, "location", "country") or geo.get("country", ""),
        "region": _str(context, "location", "region") or geo.get("region", ""),
        "city": _str(context, "location", "city") or geo.get("city", ""),
        "network": _str(context, "network", "effective_type") or _str(context, "network", "type"),
        "ip": record.get("ip", ""),
        "is_late": 1 if record.get("late") else 0,
        "response_ms": timing.get("response_ms"),
        "ttfb_ms": timing.get("ttfb_ms"),
        "load_ms": timing.get("load_ms"),
        "lcp_ms": timing.get("lcp_ms"),
        "inp_ms": timing.get("inp_ms"),
        "cls": timing.get("cls"),
        "error_kind": error.get("kind", ""),
        "error_message": error.get("message", ""),
        "error_fatal": 1 if error.get("fatal") else 0,
        "properties": orjson.dumps(record.get("properties") or {}).decode(),
        "context": orjson.dumps(context).decode(),
    }


def link_rows(records: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [project, link.anonymous_id, link.user_id, _dt(link.first_seen), _dt(link.last_seen)]
        for project, link in links_in(records)
    ]


def rejected_row(record: Mapping[str, Any]) -> list[Any]:
    payload = record.get("payload")
    text = payload if isinstance(payload, str) else orjson.dumps(payload, default=str).decode()
    return [record["project"], _dt(record["received_at"]), int(record.get("index", 0)), record["error"], text[:65536]]

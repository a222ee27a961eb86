"""Turn log records into ClickHouse rows: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from services.core.identity import links_in


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


def event_row(record: Mapping[str, Any]) -> list[Any]:
    """One events-table row in EVENT_COLUMNS order."""
    context = record.get("context") or {}
    page = context.get("page") if isinstance(context.get("page"), dict) else {}
    url = _str(page, "url")
    path = _str(page, "path") or (urlparse(url).path if url else "")
    source, medium, name = _campaign(context, url)
    timing = record.get("timing") or {}
    error = record.get("error") or {}
    return [
        record["project"],
        record["event_id"],
        record["type"],
        record["name"],
        record["anonymous_id"],
        record["user_id"],
        _dt(record["timestamp"]),
        _dt(record.get("client_timestamp")),
        _dt(record.get("sent_at")),
        _dt(record["received_at"]),
        record["channel"],
        url,
        path,
        _str(page, "referrer"),
        _str(page, "title"),
        source,
        medium,
        name,
        _str(context, "user_agent"),
        _str(context, "browser", "name"),
        _str(context, "os", "name"),
        _str(context, "device", "type"),
        _str(context, "location", "country"),
        _str(context, "network", "effective_type") or _str(context, "network", "type"),
        record.get("ip", ""),
        timing.get("response_ms"),
        timing.get("ttfb_ms"),
        timing.get("load_ms"),
        timing.get("lcp_ms"),
        timing.get("inp_ms"),
        timing.get("cls"),
        error.get("kind", ""),
        error.get("message", ""),
        1 if error.get("fatal") else 0,
        orjson.dumps(record.get("properties") or {}).decode(),
        orjson.dumps(context).decode(),
    ]


def link_rows(records: Sequence[Mapping[str, Any]]) -> list[list[Any]]:
    return [
        [project, link.anonymous_id, link.user_id, _dt(link.first_seen), _dt(link.last_seen)]
        for project, link in links_in(records)
    ]


def rejected_row(record: Mapping[str, Any]) -> list[Any]:
    payload = record.get("payload")
    text = payload if isinstance(payload, str) else orjson.dumps(payload, default=str).decode()
    return [record["project"], _dt(record["received_at"]), int(record.get("index", 0)), record["error"], text[:65536]]

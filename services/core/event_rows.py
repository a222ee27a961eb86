"""An event's row of the events table, and how rows travel in the event log.

Ingest builds each event's row once, where it validated the event, and packs one device's rows
of one request into one log record: ``ROWS_PREFIX`` and the rows as ``JSONCompactEachRow``
lines (values in ``EVENT_COLUMNS`` order). The sessionizer hands those lines to ClickHouse as
they are and reads only the few fields a session needs. Building the row in the sessionizer
instead (its one Python thread, one event after another) was most of its time per event.
Records written before rows travelled (a JSON array of event records) are still read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Final
from urllib.parse import parse_qs, urlparse

import orjson

from .schema import EVENT_COLUMNS

# A log record of rows starts with this: not JSON, so never mistaken for an older record.
ROWS_PREFIX: Final = b"TPR1\n"
PACK_BYTES: Final = 256 * 1024  # a record's most bytes: well under Kafka's default 1 MiB message limit


def pack_rows(lines: list[bytes]) -> Iterator[bytes]:
    """One device's rows of one request as log records of at most PACK_BYTES each (unless one
    row alone is larger).

    Why: a log record per event costs the Kafka client ~20 µs each way; a batch from one
    tracker becomes one record, and the sessionizer unpacks it. JSON text never holds a raw
    newline (it is escaped in strings), so a newline separates rows."""
    start, size = 0, len(ROWS_PREFIX)
    for i, line in enumerate(lines):
        if size + len(line) > PACK_BYTES and i > start:
            yield ROWS_PREFIX + b"\n".join(lines[start:i])
            start, size = i, len(ROWS_PREFIX)
        size += len(line) + 1
    yield ROWS_PREFIX + b"\n".join(lines[start:])


def unpack_rows(value: bytes) -> list[bytes] | None:
    """The rows of a log record, or None when it is not a record of rows."""
    if not value.startswith(ROWS_PREFIX):
        return None
    return value[len(ROWS_PREFIX) :].split(b"\n")


def rows_in(value: bytes) -> list[dict[str, Any]]:
    """Each row of a log record of rows as {column: value}: for tools and tests reading the log."""
    lines = unpack_rows(value)
    if lines is None:
        raise ValueError("not a log record of rows")
    return [dict(zip(EVENT_COLUMNS, orjson.loads(line), strict=True)) for line in lines]


_EMPTY: Mapping[str, Any] = {}


def _text(value: Any) -> str:
    """A scalar as text; nothing (None, an object, a list) as ''."""
    if value is None or isinstance(value, (dict, list)):
        return ""
    return value if isinstance(value, str) else str(value)


def _obj(parent: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = parent.get(key)
    return value if isinstance(value, dict) else _EMPTY


def _campaign(context: Mapping[str, Any], url: str) -> tuple[str, str, str]:
    campaign = context.get("campaign")
    if isinstance(campaign, dict) and any(campaign.get(k) for k in ("source", "medium", "name")):
        return _text(campaign.get("source")), _text(campaign.get("medium")), _text(campaign.get("name"))
    if "utm_" not in url:
        return "", "", ""
    query = parse_qs(urlparse(url).query)
    return tuple(query.get(f"utm_{k}", [""])[0] for k in ("source", "medium", "campaign"))  # type: ignore[return-value]


def event_values_json(row: Mapping[str, Any]) -> bytes:
    """One events-table row as a JSONCompactEachRow line: its values in ``EVENT_COLUMNS`` order."""
    return orjson.dumps(list(row.values()))


def event_row(record: Mapping[str, Any]) -> dict[str, Any]:
    """One events-table row: the log record flattened into the table's columns.

    ``properties`` and ``context`` stay objects: ClickHouse stores an object read into a
    ``String`` column as its JSON text (``input_format_json_read_objects_as_strings``, set on
    the insert), the same text as encoding it here first, without encoding it twice. This
    function runs once per event (at ingest; in the sessionizer for records written before
    rows travelled): plain lookups, no generic path walking (which was a third of its time).

    Keys come in ``EVENT_COLUMNS`` order (a test checks it): the sessionizer sends only the
    values, as ``JSONCompactEachRow``, which ClickHouse parses half again as fast as named fields."""
    context = record.get("context")
    if not isinstance(context, dict):
        context = _EMPTY
    page = _obj(context, "page")
    url = _text(page.get("url"))
    path = _text(page.get("path")) or (urlparse(url).path if url else "")
    source, medium, name = _campaign(context, url)
    timing = record.get("timing") or _EMPTY
    error = record.get("error") or _EMPTY
    ua = record.get("ua") or _EMPTY
    geo = record.get("geo") or _EMPTY
    browser = _obj(context, "browser")
    os = _obj(context, "os")
    location = _obj(context, "location")
    network = _obj(context, "network")
    client_timestamp = record.get("client_timestamp")
    sent_at = record.get("sent_at")
    return {
        "project": record["project"],
        "event_id": record["event_id"],
        "type": record["type"],
        "name": record["name"],
        "anonymous_id": record["anonymous_id"],
        "user_id": record["user_id"],
        # DateTime64(3) as epoch seconds: orjson's shortest repr keeps the milliseconds exact.
        "timestamp": record["timestamp"] / 1000,
        "client_timestamp": None if client_timestamp is None else client_timestamp / 1000,
        "sent_at": None if sent_at is None else sent_at / 1000,
        "received_at": record["received_at"] / 1000,
        "channel": record["channel"],
        "url": url,
        "path": path,
        "referrer": _text(page.get("referrer")),
        "title": _text(page.get("title")),
        "campaign_source": source,
        "campaign_medium": medium,
        "campaign_name": name,
        "user_agent": _text(context.get("user_agent")),
        "browser": _text(browser.get("name")) or ua.get("browser", ""),
        "browser_version": _text(browser.get("version")) or ua.get("browser_version", ""),
        "os": _text(os.get("name")) or ua.get("os", ""),
        "os_version": _text(os.get("version")) or ua.get("os_version", ""),
        "device_type": _text(_obj(context, "device").get("type")) or ua.get("device_type", ""),
        "is_bot": 1 if ua.get("bot") else 0,
        "country": _text(location.get("country")) or geo.get("country", ""),
        "region": _text(location.get("region")) or geo.get("region", ""),
        "city": _text(location.get("city")) or geo.get("city", ""),
        "network": _text(network.get("effective_type")) or _text(network.get("type")),
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
        "properties": record.get("properties") or _EMPTY,
        "context": context,
    }



"""An event's row of the events table, and how rows travel in the event log.

Ingest builds each event's row once, where it validated the event, and packs one device's rows
of one request into one log record: ``ROWS_PREFIX``, one line with each event's *head* (the
fields sessions, identity links, erasures and the ingestion delay need: ``HEAD_FIELDS``), then
the rows as ``JSONCompactEachRow`` lines (values in ``EVENT_COLUMNS`` order). The sessionizer
hands the row lines to ClickHouse as they are and parses only the heads: building the row in
the sessionizer (its one Python thread, one event after another) was most of its time per
event, and parsing a whole row for a session's fields a fifth of what was left.
Records written before rows travelled (a JSON array of event records) are still read.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Final
from urllib.parse import parse_qs, urlparse

import orjson

from .schema import EVENT_COLUMNS
from .sessions import SESSION_EVENT_FIELDS

# A log record of rows starts with this: not JSON, so never mistaken for an older record.
ROWS_PREFIX: Final = b"TPR1\n"
PACK_BYTES: Final = 192 * 1024  # a record's most bytes of rows: with the heads, well under Kafka's 1 MiB
# An event's head: what sessionization reads (times in ms), then when ingest received it and
# whether it came later than the allowed lateness.
HEAD_FIELDS: Final = (*SESSION_EVENT_FIELDS, "received_at", "is_late")
_MS_FIELDS: Final = frozenset({"timestamp", "received_at"})  # epoch seconds in the row, ms in the head


def event_head(row: Mapping[str, Any]) -> list[Any]:
    """The head of an event, from its row."""
    return [round(row[f] * 1000) if f in _MS_FIELDS else row[f] for f in HEAD_FIELDS]


def pack_rows(events: Sequence[tuple[bytes, list[Any]]]) -> Iterator[bytes]:
    """One device's events of one request, as (row line, head), in log records of at most
    PACK_BYTES of rows each (unless one row alone is larger).

    Why: a log record per event costs the Kafka client ~20 µs each way; a batch from one
    tracker becomes one record, and the sessionizer unpacks it. JSON text never holds a raw
    newline (it is escaped in strings), so a newline separates the lines."""
    start, size = 0, 0
    for i, (line, _) in enumerate(events):
        if size + len(line) > PACK_BYTES and i > start:
            yield _record(events[start:i])
            start, size = i, 0
        size += len(line) + 1
    yield _record(events[start:])


def _record(events: Sequence[tuple[bytes, list[Any]]]) -> bytes:
    heads = orjson.dumps([head for _, head in events])
    return ROWS_PREFIX + heads + b"\n" + b"\n".join(line for line, _ in events)


def merge_packed(values: Sequence[bytes]) -> list[bytes]:
    """Records of rows (``pack_rows``'s) as few records as hold them, in order, each with at
    most PACK_BYTES of rows (unless one record alone is larger). Nothing is parsed: the heads'
    JSON arrays are joined as text.

    Why: the Kafka writer sends the records of every request of one transaction that go to
    one partition as one record. Per record, the clients on both sides spend ~20 µs of Python
    (a relay's request of 50 devices was 50 records, a single beacon one), which
    capped the sessionizer; per event nothing changes, and a device's events keep their order."""
    out: list[bytes] = []
    heads: list[bytes] = []
    lines: list[bytes] = []
    size = 0
    for value in values:
        if not value.startswith(ROWS_PREFIX):
            raise ValueError("not a log record of rows")
        head, _, rest = value[len(ROWS_PREFIX) :].partition(b"\n")
        if heads and size + len(rest) > PACK_BYTES:
            out.append(_joined(heads, lines))
            heads, lines, size = [], [], 0
        heads.append(head[1:-1])  # the array's items, without its brackets
        lines.append(rest)
        size += len(rest) + 1
    if heads:
        out.append(_joined(heads, lines))
    return out


def _joined(heads: list[bytes], lines: list[bytes]) -> bytes:
    return ROWS_PREFIX + b"[" + b",".join(heads) + b"]\n" + b"\n".join(lines)


def unpack_rows(value: bytes) -> tuple[list[list[Any]], list[bytes]] | None:
    """The heads and the row lines of a log record, or None when it is not a record of rows."""
    if not value.startswith(ROWS_PREFIX):
        return None
    heads_line, _, rest = value[len(ROWS_PREFIX) :].partition(b"\n")
    heads = orjson.loads(heads_line)
    lines = rest.split(b"\n")
    if not isinstance(heads, list) or len(heads) != len(lines):
        raise ValueError(f"a record of rows whose heads do not match its {len(lines)} rows")
    width = len(HEAD_FIELDS)
    if any(not isinstance(h, list) or len(h) != width for h in heads):
        raise ValueError("a record of rows with a head of the wrong shape")
    if any(not (line.startswith(b"[") and line.endswith(b"]")) for line in lines):
        raise ValueError("a record of rows with a row that is not a JSON array")
    return heads, lines


def rows_in(value: bytes) -> list[dict[str, Any]]:
    """Each row of a log record of rows as {column: value}: for tools and tests reading the log."""
    unpacked = unpack_rows(value)
    if unpacked is None:
        raise ValueError("not a log record of rows")
    return [dict(zip(EVENT_COLUMNS, orjson.loads(line), strict=True)) for line in unpacked[1]]


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

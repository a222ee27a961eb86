"""Export of one person (the right of access and to data portability): everything stored about
them, as newline-delimited JSON.

The twin of erasure (``erasure.py``): the same person (``resolve_person``, the stitching rules of
``GET /v1/journeys``), the same events (a shared device's other users' events are not theirs),
all of time and every stored field, where a journey shows a window and the fields an analyst
reads. Lines, each an object with a ``kind``:

- ``person``: the id, whether it is a user id, the identities;
- ``identity_link``: each device linked to their user id, first and last seen;
- ``event``: each event, every stored column, oldest first (the copy written last of a resent one);
- ``session``: each stored session of theirs;
- ``abandonment``: each abandonment signal about them;
- ``rejected``: each event of theirs that ingest refused (kept 30 days), as sent, with why;
- ``end``: how many of each were written. A stream cut short has none, so a reader can tell.

Events are read in pages (keyset on time and id), so a long history streams in bounded memory.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import orjson

from services.core.events import iso
from services.core.identity import events_of_person
from services.core.signals import SIGNAL_COLUMNS, STORED_SESSION_COLUMNS, signal_json, stored_session_json
from services.core.warehouse import Warehouse

from .dead_letters import dead_letters_of, payload_as_sent
from .journeys import PERSON_EVENTS_WHERE, Person, ms, resolve_person

PAGE_EVENTS = 5_000
JSON_COLUMNS = ("properties", "context")


def _line(kind: str, fields: Mapping[str, Any]) -> bytes:
    """One line; ``kind`` replaces a field of that name (a signal's own kind: its ``recovered`` says it)."""
    return orjson.dumps({"kind": kind, **{k: v for k, v in fields.items() if k != "kind"}}) + b"\n"


def _event_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """A stored event as exported: times as ISO 8601, the JSON columns as objects."""
    out: dict[str, Any] = {}
    for name, value in row.items():
        if name in ("ts_ms", "project"):
            continue
        if name == "timestamp":
            value = iso(int(row["ts_ms"]))
        elif isinstance(value, datetime):
            value = iso(ms(value))
        elif name in JSON_COLUMNS:
            value = orjson.loads(value or "{}")
        out[name] = value
    return out


def export_person(
    warehouse: Warehouse, project: str, identifier: str, page: int = PAGE_EVENTS
) -> Iterator[bytes] | None:
    """NDJSON lines of everything stored about the person ``identifier`` names; None when
    nothing is (no event, no link). Reads lazily: the caller streams the lines as they come."""
    who = resolve_person(warehouse, project, identifier)
    params: dict[str, Any] = {
        "project": project,
        "person": who.person_id if who.is_user else "",
        "devices": who.devices,
    }
    first = warehouse.rows(f"SELECT 1 FROM events WHERE {PERSON_EVENTS_WHERE} LIMIT 1", params)
    if not first and not (who.is_user and who.devices) and not dead_letters_of(warehouse, project, who):
        return None
    return _lines(warehouse, project, who, params, page)


def _lines(warehouse: Warehouse, project: str, who: Person, params: dict[str, Any], page: int) -> Iterator[bytes]:
    person, is_user = who.person_id, who.is_user
    own_links = [link for link in who.links if link.user_id == person]
    yield _line(
        "person",
        {
            "person_id": person,
            "identified": is_user,
            "identities": {"user_ids": [person] if is_user else [], "anonymous_ids": who.devices},
        },
    )
    for link in sorted(own_links, key=lambda link: (link.first_seen, link.anonymous_id)):
        yield _line(
            "identity_link",
            {
                "anonymous_id": link.anonymous_id,
                "user_id": link.user_id,
                "first_seen": iso(link.first_seen),
                "last_seen": iso(link.last_seen),
            },
        )
    counts = {"identity_links": len(own_links), "events": 0, "sessions": 0, "abandonments": 0, "rejected": 0}
    after: tuple[int, str, str] = (-(1 << 62), "", "")
    while True:
        rows = warehouse.rows(
            # The copy written last of a resent event, as every other reader counts it (journeys.py).
            "SELECT * EXCEPT (inserted_at), toUnixTimestamp64Milli(timestamp) AS ts_ms FROM ("
            f"  SELECT * FROM events WHERE {PERSON_EVENTS_WHERE}"
            "  ORDER BY inserted_at DESC LIMIT 1 BY anonymous_id, event_id"
            ") WHERE (toUnixTimestamp64Milli(timestamp), event_id, anonymous_id) "
            "  > ({after_ts:Int64}, {after_id:String}, {after_device:String}) "
            "ORDER BY timestamp, event_id, anonymous_id LIMIT {page:UInt32}",
            {**params, "after_ts": after[0], "after_id": after[1], "after_device": after[2], "page": page},
        )
        if not rows:
            break
        last = rows[-1]
        after = (int(last["ts_ms"]), str(last["event_id"]), str(last["anonymous_id"]))
        for row in rows:
            row["timestamp"] = row["ts_ms"]  # the stitching rules read the time as ms
        mine = events_of_person(person, rows, who.links) if is_user else rows
        for event in mine:
            yield _line("event", _event_fields(event))
        counts["events"] += len(mine)
        if len(rows) < page:
            break
    for kind, table, columns, as_json in (
        ("session", "sessions", STORED_SESSION_COLUMNS, stored_session_json),
        ("abandonment", "abandonments", SIGNAL_COLUMNS, signal_json),
    ):
        for row in warehouse.rows(
            f"SELECT {columns} FROM {table} FINAL WHERE project = {{project:String}} AND person = {{person:String}} "
            "ORDER BY started_at, session_id",
            {"project": project, "person": person},
        ):
            counts[f"{kind}s"] += 1
            yield _line(kind, as_json(row))
    for letter in dead_letters_of(warehouse, project, who):
        counts["rejected"] += 1
        yield _line(
            "rejected",
            {
                "received_at": iso(int(letter["timestamp"])),
                "index": letter["batch_index"],
                "error": letter["error"],
                "payload": payload_as_sent(letter["payload"]),
            },
        )
    yield _line("end", counts)

"""Journeys: everything one person did, across devices and channels, as sessions.

Reads events and identity links with bound parameters, then applies the pure
stitching and sessionization rules of services.core, the same code every mode uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from services.core.events import TIMING_FIELDS, iso
from services.core.identity import Link, events_of_person, person_of
from services.core.links import stored_links
from services.core.sessions import Session, sessionize
from services.core.warehouse import Warehouse

MAX_EVENTS = 10_000

_EVENT_FIELDS = (
    "event_id, type, name, anonymous_id, user_id, timestamp, received_at, channel, url, path, referrer, title, "
    "campaign_source, campaign_medium, campaign_name, browser, os, device_type, country, network, "
    "response_ms, ttfb_ms, load_ms, lcp_ms, inp_ms, cls, error_kind, error_message, error_fatal, properties, context, "
    "is_late"
)


def ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


@dataclass(frozen=True)
class Person:
    """Whom an id names: a user id (with every device linked to it) or a lone device."""

    person_id: str
    is_user: bool
    devices: list[str]  # anonymous ids: linked to the user, or the lone device itself
    links: list[Link]  # every link of those devices, other users' too (a shared device)


def resolve_person(warehouse: Warehouse, project: str, identifier: str) -> Person:
    """The person ``identifier`` names, by the stitching rules of services.core.identity."""
    direct = stored_links(warehouse, project, devices=[identifier], users=[identifier])
    is_user = any(link.user_id == identifier for link in direct) or bool(
        warehouse.rows(
            "SELECT 1 FROM events WHERE project = {project:String} AND user_id = {id:String} LIMIT 1",
            {"project": project, "id": identifier},
        )
    )
    person = person_of(identifier, direct, {identifier} if is_user else set())
    if not (is_user or person != identifier):
        return Person(identifier, False, [identifier], [])
    own = stored_links(warehouse, project, users=[person])
    devices = sorted({link.anonymous_id for link in own})
    links = stored_links(warehouse, project, devices=devices)
    return Person(person, True, devices, links)


# The stored events that may be a person's (their user id's, their devices'), before the rules
# give a shared device's events to whoever owned it at the time.
PERSON_EVENTS_WHERE = (
    "project = {project:String} "
    "AND ((user_id = {person:String} AND user_id != '') OR anonymous_id IN {devices:Array(String)})"
)


def load_journey(
    warehouse: Warehouse, project: str, identifier: str, start_ms: int, end_ms: int, timeout_minutes: int
) -> dict[str, Any] | None:
    """The journey of the person ``identifier`` names, or None when nothing is known."""
    who = resolve_person(warehouse, project, identifier)
    person, person_is_user, devices, links = who.person_id, who.is_user, who.devices, who.links
    rows = warehouse.rows(
        # Of an event's resent copies the one written last counts, as `FINAL` picks it for every
        # other reader (copies may differ in time, even by month). Dedup before the time range, so a
        # superseded copy inside it cannot stand in for the kept one outside; as fast as the
        # earlier `LIMIT 1 BY event_id` by time, where `FINAL` took twice as long on a device.
        f"SELECT * FROM (SELECT {_EVENT_FIELDS} FROM events WHERE {PERSON_EVENTS_WHERE} "
        "ORDER BY inserted_at DESC LIMIT 1 BY anonymous_id, event_id) "
        "WHERE timestamp >= fromUnixTimestamp64Milli({start:Int64}) "
        "AND timestamp < fromUnixTimestamp64Milli({end:Int64}) "
        "ORDER BY timestamp, event_id LIMIT {limit:UInt32}",
        {
            "project": project,
            "person": person if person_is_user else "",
            "devices": devices,
            "start": start_ms,
            "end": end_ms,
            "limit": MAX_EVENTS,
        },
    )
    for row in rows:
        row["timestamp"] = ms(row["timestamp"])
        row["received_at"] = ms(row["received_at"])
        row["project"] = project
    mine = events_of_person(person, rows, links) if person_is_user else rows
    if not mine:
        return None
    sessions = sessionize(mine, timeout_minutes * 60_000)
    traits: dict[str, Any] = {}
    for event in sorted(mine, key=lambda e: e["timestamp"]):
        if event["type"] == "identify":
            traits.update(orjson.loads(event["properties"] or "{}"))
    identities = sorted({e["anonymous_id"] for e in mine if e["anonymous_id"]})
    return {
        "person_id": person,
        "identified": person_is_user,
        "identities": {
            "user_ids": [person] if person_is_user else [],
            "anonymous_ids": identities,
        },
        "traits": traits,
        "sessions": [_session_json(s) for s in sessions],
        "truncated": len(rows) >= MAX_EVENTS,
    }


def _session_json(session: Session) -> dict[str, Any]:
    first = session.first
    return {
        "session_id": session.session_id,
        "anonymous_id": first["anonymous_id"],
        "channel": session.channel,
        "device": {"type": first["device_type"]},
        "browser": first["browser"],
        "os": first["os"],
        "country": first["country"],
        "network": first["network"],
        "started_at": iso(session.started_at),
        "ended_at": iso(session.ended_at),
        "duration_seconds": (session.ended_at - session.started_at) / 1000,
        "event_count": len(session.events),
        "events": [_event_json(e) for e in session.events],
    }


def _event_json(event: dict[str, Any] | Any) -> dict[str, Any]:
    timing = {k: event[k] for k in TIMING_FIELDS if event[k] is not None}
    return {
        "event_id": event["event_id"],
        "type": event["type"],
        "name": event["name"],
        "timestamp": iso(event["timestamp"]),
        "channel": event["channel"],
        "anonymous_id": event["anonymous_id"],
        "user_id": event["user_id"],
        "url": event["url"],
        "path": event["path"],
        "properties": orjson.loads(event["properties"] or "{}"),
        "timing": timing,
        "late": bool(event["is_late"]),
        "error": {"kind": event["error_kind"], "message": event["error_message"], "fatal": bool(event["error_fatal"])}
        if event["error_kind"]
        else None,
    }

"""Erasure of one person (the right to be forgotten): everything stored about them, on every device.

The person is the one ``GET /v1/journeys/{id}`` shows (the same stitching rules): a user id with
every device linked to it, or a lone device. A device shared with another user keeps that user's
events and sessions. Rows go by ClickHouse lightweight ``DELETE`` (gone from every query at once,
from disk at the next merge). Each erasure is recorded in ``erasures`` (who, how much, when, no
event data), which the sessionizers poll to let go of the devices' sessions held in memory, so a
device that comes back starts afresh from storage instead of extending an erased session.
"""

from __future__ import annotations

from typing import Any

from services.core.events import iso
from services.core.identity import events_of_person
from services.core.warehouse import Warehouse

from .journeys import PERSON_EVENTS_WHERE, ms, resolve_person

DELETE_CHUNK = 10_000  # (anonymous id, event id) pairs per DELETE statement


def erase_person(warehouse: Warehouse, project: str, identifier: str) -> dict[str, Any] | None:
    """Delete the person ``identifier`` names; None when nothing is stored about them.

    Not one transaction: several DELETEs, the identity links last, so that running it again
    after a failure finds the person and finishes the job."""
    who = resolve_person(warehouse, project, identifier)
    params: dict[str, Any] = {
        "project": project,
        "person": who.person_id if who.is_user else "",
        "devices": who.devices,
    }
    candidates = warehouse.rows(
        "SELECT DISTINCT anonymous_id, user_id, event_id, toUnixTimestamp64Milli(timestamp) AS timestamp "
        f"FROM events WHERE {PERSON_EVENTS_WHERE}",
        params,
    )
    mine = events_of_person(who.person_id, candidates, who.links) if who.is_user else candidates
    pairs = sorted({(str(e["anonymous_id"]), str(e["event_id"])) for e in mine})
    sessions = [
        r["session_id"]
        for r in warehouse.rows(
            "SELECT session_id FROM sessions FINAL WHERE project = {project:String} AND person = {person:String}",
            {"project": project, "person": who.person_id},
        )
    ]
    # A user's links alone still name them: an erasure cut short after its first DELETEs (they
    # run in this order, links last) is completed by running it again.
    if not pairs and not sessions and not (who.is_user and who.devices):
        return None
    for start in range(0, len(pairs), DELETE_CHUNK):
        warehouse.command(
            "DELETE FROM events WHERE project = {project:String} "
            "AND (anonymous_id, event_id) IN {pairs:Array(Tuple(String, String))}",
            {"project": project, "pairs": pairs[start : start + DELETE_CHUNK]},
        )
    for start in range(0, len(sessions), DELETE_CHUNK):
        warehouse.command(
            "DELETE FROM sessions WHERE project = {project:String} AND session_id IN {ids:Array(String)}",
            {"project": project, "ids": sessions[start : start + DELETE_CHUNK]},
        )
    warehouse.command(
        "DELETE FROM abandonments WHERE project = {project:String} AND person = {person:String}",
        {"project": project, "person": who.person_id},
    )
    if who.is_user:  # the links that made the devices theirs; a shared device keeps its other users'
        warehouse.command(
            "DELETE FROM identity_links WHERE project = {project:String} AND user_id = {person:String}",
            {"project": project, "person": who.person_id},
        )
    # The sessionizer keys a device by its anonymous id, and events without one by "user:<id>".
    devices = sorted({*who.devices, *([f"user:{who.person_id}"] if who.is_user else [])})
    warehouse.insert(
        "erasures",
        [[project, who.person_id, devices, len(pairs), len(sessions)]],
        ["project", "person", "devices", "events", "sessions"],
    )
    erased_at = warehouse.rows(
        "SELECT max(erased_at) AS at FROM erasures WHERE project = {project:String} AND person = {person:String}",
        {"project": project, "person": who.person_id},
    )[0]["at"]
    return {
        "person_id": who.person_id,
        "identified": who.is_user,
        "identities": {
            "user_ids": [who.person_id] if who.is_user else [],
            "anonymous_ids": sorted({p[0] for p in pairs if p[0]} | set(who.devices)),
        },
        "deleted": {"events": len(pairs), "sessions": len(sessions)},
        "erased_at": iso(ms(erased_at)),
    }

"""Erasure of one person (the right to be forgotten): everything stored about them, on every device.

The person is the one ``GET /v1/journeys/{id}`` shows (the same stitching rules): a user id with
every device linked to it, or a lone device. A device shared with another user keeps that user's
events and sessions. Rows go by ClickHouse lightweight ``DELETE`` (gone from every query at once,
from disk at the next merge). Each erasure is recorded in ``erasures`` (who, how much, when, and
when each device was theirs; no event data), which the sessionizers read after each batch: they
drop the person's events accepted before the erasure but still in the log, and let
go of the devices' sessions held in memory, so a device that comes back starts afresh from
storage instead of extending an erased session.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from services.core.erasure import (
    USER_DEVICE_PREFIX,
    delete_dead_letters,
    delete_sessions,
    delete_stored,
    owned_spans,
    record_erasure,
)
from services.core.events import iso
from services.core.identity import events_of_person
from services.core.warehouse import Warehouse

from .dead_letters import dead_letters_of, letter_keys
from .journeys import PERSON_EVENTS_WHERE, Person, ms, resolve_person

# Recomputes some devices' sessions from their stored events; returns the ids that no longer exist
# (``OpenSessions.recompute_after_erasure``).
Recompute = Callable[[str, Sequence[str]], list[str]]


def erase_person(
    warehouse: Warehouse, project: str, identifier: str, recompute: Recompute | None = None
) -> dict[str, Any] | None:
    """Delete the person ``identifier`` names; None when nothing is stored about them.

    Not one transaction: several DELETEs, the identity links last, so that running it again
    after a failure finds the person and finishes the job. The erasure is recorded between two
    passes: a sessionizer that reads it drops the person's events still in the log (accepted
    before it), and the second pass deletes what one wrote while the first pass ran (the sessions
    of those devices recomputed by ``recompute``: by then her links are gone, and a session the
    sessionizer stitched to another user may hold her events)."""
    who = resolve_person(warehouse, project, identifier)
    pairs, sessions = _stored_of(warehouse, project, who)
    letters = dead_letters_of(warehouse, project, who)
    # A user's links alone still name them: an erasure cut short after its first DELETEs (they
    # run in this order, links last) is completed by running it again.
    if not pairs and not sessions and not letters and not (who.is_user and who.devices):
        return None
    rejected = delete_dead_letters(warehouse, project, letter_keys(letters))
    delete_stored(warehouse, project, who.person_id, who.is_user, pairs, sessions)
    # The sessionizer keys a device by its anonymous id, and events without one by "user:<id>".
    devices = sorted({*who.devices, *([USER_DEVICE_PREFIX + who.person_id] if who.is_user else [])})
    spans = owned_spans(who.person_id, who.devices, who.links)
    record_erasure(warehouse, project, who.person_id, (len(pairs), len(sessions)), devices, spans, rejected=rejected)
    erased_at = warehouse.rows(
        "SELECT max(erased_at) AS at FROM erasures WHERE project = {project:String} AND person = {person:String}",
        {"project": project, "person": who.person_id},
    )[0]["at"]
    late_pairs, late_sessions = _stored_of(warehouse, project, who)
    late_rejected = delete_dead_letters(warehouse, project, letter_keys(dead_letters_of(warehouse, project, who)))
    if late_pairs or late_sessions:
        delete_stored(warehouse, project, who.person_id, who.is_user, late_pairs, late_sessions)
    # Counted once: a session of the first pass that a batch rewrote in between (extended by
    # events of hers still in the log) is found again; deleted again, not counted again.
    counted = set(sessions)
    late_session_count = len([s for s in late_sessions if s not in counted])
    if late_pairs and recompute is not None:
        devices = sorted({a or USER_DEVICE_PREFIX + who.person_id for a, _ in late_pairs})
        gone = [s for s in recompute(project, devices) if s not in late_sessions]
        # Signals and links went in the line above; counted: the gone sessions still stored.
        delete_sessions(warehouse, project, [s for s in gone if s in counted])
        late_session_count += delete_sessions(warehouse, project, [s for s in gone if s not in counted])
    if late_pairs or late_session_count or late_rejected:  # added to the record: GET /v1/erasures sums them
        record_erasure(
            warehouse,
            project,
            who.person_id,
            (len(late_pairs), late_session_count),
            erased_at_ms=ms(erased_at),
            rejected=late_rejected,
        )
    return {
        "person_id": who.person_id,
        "identified": who.is_user,
        "identities": {
            "user_ids": [who.person_id] if who.is_user else [],
            "anonymous_ids": sorted({p[0] for p in [*pairs, *late_pairs] if p[0]} | set(who.devices)),
        },
        "deleted": {
            "events": len(pairs) + len(late_pairs),
            "sessions": len(sessions) + late_session_count,
            "rejected": rejected + late_rejected,
        },
        "erased_at": iso(ms(erased_at)),
    }


def _stored_of(warehouse: Warehouse, project: str, who: Person) -> tuple[list[tuple[str, str]], list[str]]:
    """The stored events (anonymous id, event id) and sessions that are the person's."""
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
        str(r["session_id"])
        for r in warehouse.rows(
            "SELECT session_id FROM sessions FINAL WHERE project = {project:String} AND person = {person:String}",
            {"project": project, "person": who.person_id},
        )
    ]
    return pairs, sessions

"""Whose events an erasure took: the rule that tells an erased person's event from the rest.

``DELETE /v1/persons/{id}`` deletes what is stored. Events accepted before it but not yet stored
(in the log's lag, or read again after a crash) would otherwise come back after it: the
sessionizer drops those that were received before the erasure and belong to the erased person,
by the same stitching rules ``services.core.identity`` gives every query.

What an erasure keeps of the person's devices is when each one was theirs (``owned_spans``), not
their links: a device shared with another user stays that user's outside the erased person's
time on it, and no other user's id is copied into the erasure's record. ``delete_stored`` runs
the DELETEs, for the API and for the sessionizer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from .identity import Link, is_placeholder
from .warehouse import Warehouse

NEVER: Final = -(2**63)
FOREVER: Final = 2**63 - 1
USER_DEVICE_PREFIX: Final = "user:"  # the sessionizer's device for events with a user id only

Span = tuple[str, int, int]  # (anonymous id, from ms inclusive, until ms exclusive)
# What the rule needs of an event: (project, anonymous id, user id, event time ms, received ms).
Owner = tuple[str, str, str, int, int]


def owned_spans(person: str, devices: Iterable[str], links: Sequence[Link]) -> list[Span]:
    """When each device belonged to ``person``, by ``identity.device_owner``'s rule: a device
    nobody is linked to is the (anonymous) person's always; a linked one belongs to the user of
    the latest link begun at or before the time, and before its first link to that first user."""
    by_device: dict[str, list[Link]] = {}
    for link in links:
        by_device.setdefault(link.anonymous_id, []).append(link)
    spans: list[Span] = []
    for device in sorted(set(devices)):
        ordered = sorted(by_device.get(device, ()), key=lambda link: (link.first_seen, link.user_id))
        if not ordered:
            spans.append((device, NEVER, FOREVER))
            continue
        for i, link in enumerate(ordered):
            if link.user_id != person:
                continue
            lo = NEVER if i == 0 else link.first_seen
            hi = ordered[i + 1].first_seen if i + 1 < len(ordered) else FOREVER
            if lo < hi:
                spans.append((device, lo, hi))
    return spans


@dataclass(frozen=True, slots=True)
class Erasure:
    """One recorded erasure, as the ``erasures`` table holds it."""

    project: str
    person: str
    devices: tuple[str, ...]  # every sessionizer device of the person (``user:<id>`` for a user)
    spans: tuple[Span, ...]
    erased_at: int  # ms, ClickHouse's clock

    @property
    def identified(self) -> bool:
        return USER_DEVICE_PREFIX + self.person in self.devices


class ErasedOwners:
    """The erasures in force, indexed for one lookup per event."""

    def __init__(self, erasures: Iterable[Erasure] = ()) -> None:
        self._users: dict[tuple[str, str], Erasure] = {}
        self._spans: dict[tuple[str, str], list[tuple[int, int, Erasure]]] = {}
        self.newest_ms = NEVER
        for erasure in erasures:
            self.add(erasure)

    def __bool__(self) -> bool:
        return bool(self._users or self._spans)

    def add(self, erasure: Erasure) -> None:
        if erasure.identified:
            key = (erasure.project, erasure.person)
            known = self._users.get(key)
            if known is None or known.erased_at < erasure.erased_at:
                self._users[key] = erasure
        for device, lo, hi in erasure.spans:
            self._spans.setdefault((erasure.project, device), []).append((lo, hi, erasure))
        self.newest_ms = max(self.newest_ms, erasure.erased_at)

    def prune(self, before_ms: int) -> None:
        """Forget erasures older than ``before_ms``: no event received before them is still unread."""
        self._users = {k: e for k, e in self._users.items() if e.erased_at >= before_ms}
        spans = {k: [s for s in v if s[2].erased_at >= before_ms] for k, v in self._spans.items()}
        self._spans = {k: v for k, v in spans.items() if v}

    def erasure_of(self, event: Owner) -> Erasure | None:
        """The erasure that took this event, or None. An event received after the erasure is the
        person coming back: new data, kept."""
        project, anonymous_id, user_id, ts, received = event
        if received > self.newest_ms:
            return None
        if user_id and not is_placeholder(user_id):  # the event names its person itself
            erasure = self._users.get((project, user_id))
            return erasure if erasure is not None and received <= erasure.erased_at else None
        found = self._spans.get((project, anonymous_id))
        if found:
            for lo, hi, erasure in found:
                if lo <= ts < hi and received <= erasure.erased_at:
                    return erasure
        return None


DELETE_CHUNK: Final = 10_000  # (anonymous id, event id) pairs or session ids per DELETE statement


def delete_stored(
    warehouse: Warehouse,
    project: str,
    person: str,
    identified: bool,
    event_pairs: Sequence[tuple[str, str]],
    session_ids: Sequence[str],
) -> None:
    """The DELETEs of an erasure (ClickHouse lightweight deletes: gone from every query at once,
    from disk at the next merge): these events and sessions, the person's abandonment signals,
    and a user's identity links, last, so that running it again after a failure still finds
    the person. Used by the API and by the sessionizer's sweep after a write that raced one."""
    for start in range(0, len(event_pairs), DELETE_CHUNK):
        warehouse.command(
            "DELETE FROM events WHERE project = {project:String} "
            "AND (anonymous_id, event_id) IN {pairs:Array(Tuple(String, String))}",
            {"project": project, "pairs": list(event_pairs[start : start + DELETE_CHUNK])},
        )
    delete_sessions(warehouse, project, session_ids)
    warehouse.command(
        "DELETE FROM abandonments WHERE project = {project:String} AND person = {person:String}",
        {"project": project, "person": person},
    )
    if identified:  # the links that made the devices theirs; a shared device keeps its other users'
        warehouse.command(
            "DELETE FROM identity_links WHERE project = {project:String} AND user_id = {person:String}",
            {"project": project, "person": person},
        )


def delete_sessions(warehouse: Warehouse, project: str, session_ids: Sequence[str]) -> int:
    """Every version of these sessions; how many of them were stored (a recompute also names
    sessions an earlier DELETE took, which an erasure's record must not count twice)."""
    stored = 0
    for start in range(0, len(session_ids), DELETE_CHUNK):
        params = {"project": project, "ids": list(session_ids[start : start + DELETE_CHUNK])}
        stored += int(
            warehouse.rows(
                "SELECT uniqExact(session_id) AS n FROM sessions "
                "WHERE project = {project:String} AND session_id IN {ids:Array(String)}",
                params,
            )[0]["n"]
        )
        warehouse.command(
            "DELETE FROM sessions WHERE project = {project:String} AND session_id IN {ids:Array(String)}", params
        )
    return stored


def delete_dead_letters(warehouse: Warehouse, project: str, letters: Sequence[tuple[int, int, str]]) -> int:
    """Delete these dead letters, each named by (received ms, index in its batch, payload as
    stored): the rows have no id. Returns how many were named."""
    keys = sorted(set(letters))
    for start in range(0, len(keys), DELETE_CHUNK):
        warehouse.command(
            "DELETE FROM rejected_events WHERE project = {project:String} "
            "AND (toUnixTimestamp64Milli(received_at), batch_index, payload) "
            "IN {keys:Array(Tuple(Int64, UInt32, String))}",
            {"project": project, "keys": keys[start : start + DELETE_CHUNK]},
        )
    return len(keys)


def record_erasure(
    warehouse: Warehouse,
    project: str,
    person: str,
    counts: tuple[int, int],
    devices: Sequence[str] = (),
    spans: Sequence[tuple[str, int, int]] = (),
    erased_at_ms: int | None = None,
    rejected: int = 0,
) -> None:
    """A row of ``erasures``: (events, sessions) deleted, and for the sessionizers the devices
    and spans to drop events of (none for a row that only adds what a later pass deleted).
    ``erased_at_ms`` None: now, by the server's clock (the erasure itself); else the time of the
    erasure the row adds to, so ``GET /v1/erasures`` sums them into that one. ``rejected``: the
    person's dead letters deleted."""
    columns = ["project", "person", "devices", "spans", "events", "sessions", "rejected"]
    row: list[Any] = [project, person, list(devices), list(spans), counts[0], counts[1], rejected]
    if erased_at_ms is not None:
        columns.append("erased_at")
        row.append(datetime.fromtimestamp(erased_at_ms / 1000, tz=UTC))
    warehouse.insert("erasures", [row], columns)


# One entry per erasure, newest first: its rows (the API's record, and what its second pass, a
# sweep or a device found later deleted, each recorded at the erasure's time) summed.
ERASURES_LISTED: Final = """
SELECT person, arraySort(arrayDistinct(arrayFlatten(groupArray(devices)))) AS devices,
       sum(events) AS events, sum(sessions) AS sessions, sum(rejected) AS rejected, erased_at
FROM erasures WHERE project = {project:String}
GROUP BY person, erased_at
ORDER BY erased_at DESC, person
LIMIT {limit:UInt32}
"""

"""The erasures a sessionizer honours: the erasure step of each batch's write.

``Erasures`` reads ClickHouse's ``erasures`` table: the last ``HORIZON_MS`` before the first
write, then what is new after each write and on idle ticks (one small read each).
``ErasureGuard`` applies them around the write: before it, drops the events that known erasures
took; after it, sweeps what the batch stored of persons erased meanwhile and erases the devices
found late. Which events an erasure takes is the pure rule of services.core.erasure;
``docs/design.md`` ("Erasing a person") says why each step is there.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import Counter

from services.core.erasure import (
    USER_DEVICE_PREFIX,
    ErasedOwners,
    Erasure,
    Owner,
    delete_dead_letters,
    delete_sessions,
    delete_stored,
    owned_spans,
    record_erasure,
)
from services.core.identity import Link
from services.core.links import stored_links
from services.core.warehouse import Warehouse

from .open_sessions import OpenSessions
from .rows import dead_letter_owner, owners_of

if TYPE_CHECKING:
    from .pipeline import Decoded

log = logging.getLogger("touchpoint.sessionizer")

ERASED = Counter(
    "touchpoint_sessionizer_erased_events_total",
    "Events of an erased person accepted before the erasure: dropped before the write, or deleted right after it",
)

# Events accepted longer ago than this are not waiting in the log any more (Kafka keeps a topic's
# records 7 days unless told otherwise; the embedded log drops what was committed).
HORIZON_MS: Final = 30 * 24 * 3600 * 1000

# Erasures a second apart or less are read twice (the clock is ClickHouse's and two may share a
# millisecond); the ones already known are told apart by (project, person, time, devices): a
# device found later is recorded with its erasure's time.
_OVERLAP_MS: Final = 1000

_SQL: Final = """
SELECT project, person, devices, spans, toUnixTimestamp64Milli(erased_at) AS at FROM erasures
WHERE erased_at >= fromUnixTimestamp64Milli({since:Int64})
"""


class Erasures:
    def __init__(self, warehouse: Warehouse, horizon_ms: int = HORIZON_MS) -> None:
        self.warehouse = warehouse
        self.horizon_ms = horizon_ms
        self.owners = ErasedOwners()
        self._since: int | None = None  # ms: the newest erasure read, less the overlap
        self._known: set[tuple[str, str, int, tuple[str, ...]]] = set()

    @property
    def read(self) -> bool:
        """Read at least once (the horizon's erasures are known)."""
        return self._since is not None

    def refresh(self) -> list[Erasure]:
        """Blocking: read the erasures recorded since the last look; returns the new ones."""
        now = time.time_ns() // 1_000_000
        since = now - self.horizon_ms if self._since is None else self._since
        rows: list[dict[str, Any]] = self.warehouse.rows(_SQL, {"since": since})
        new = []
        for row in rows:
            erasure = Erasure(
                project=str(row["project"]),
                person=str(row["person"]),
                devices=tuple(row["devices"]),
                spans=tuple((str(d), int(lo), int(hi)) for d, lo, hi in row["spans"]),
                erased_at=int(row["at"]),
            )
            key = (erasure.project, erasure.person, erasure.erased_at, erasure.devices)
            if key in self._known:
                continue
            self._known.add(key)
            self.owners.add(erasure)
            new.append(erasure)
        newest = max((int(r["at"]) for r in rows), default=since + _OVERLAP_MS)
        self._since = max(since, newest - _OVERLAP_MS)
        if new:  # the known keys only matter within the overlap; the owners, for the horizon
            self._known = {k for k in self._known if k[2] >= self._since}
            self.owners.prune(now - self.horizon_ms)
        return new


class ErasureGuard:
    """The erasure step around one batch's write (in the writer thread, one batch at a time)."""

    def __init__(self, warehouse: Warehouse, sessions: OpenSessions | None) -> None:
        self.warehouse = warehouse
        self.sessions = sessions
        self.erasures = Erasures(warehouse)
        self._unswept: list[Erasure] = []  # read after a write whose sweep has not finished
        self._unclaimed: dict[tuple[Erasure, str], int] = {}  # see _claim

    def before_insert(self, decoded: Decoded) -> tuple[list[bytes], list[tuple[str, str, str]]]:
        """Drop the batch's events that known erasures took; returns the batch's lines and keys as
        they were, for ``after_write`` (after a failed attempt, erasures read after its write may
        have taken events it stored, which this attempt drops before its insert)."""
        # Erasures are read after each write (the read that a sweep needs anyway); the drop uses
        # what that read found, and a process reads the last 30 days before its first write.
        if not self.erasures.read:
            self._let_go(self.erasures.refresh())
        as_written = (decoded.events, decoded.event_keys)
        dropped = decoded.drop_erased(self.erasures.owners)
        ERASED.inc(len(dropped))
        self._unclaimed.update(devices_found(dropped))
        return as_written

    def after_write(
        self, lines: list[bytes], keys: list[tuple[str, str, str]], dead_letters: Sequence[Sequence[Any]] = ()
    ) -> None:
        """An erasure recorded while the batch was written found none of it stored yet."""
        self._unswept += self.erasures.refresh()
        self._sweep(self._unswept, lines, keys)
        self._sweep_dead_letters(self._unswept, dead_letters)
        self._unswept = []
        self._claim(self._unclaimed)
        self._unclaimed = {}

    def idle(self) -> None:
        """Nothing to read: erasures still let go of the sessions held."""
        try:
            self._let_go(self.erasures.refresh())
        except Exception as exc:
            log.warning("erasures not read", extra={"error": repr(exc)[:300]})

    def _let_go(self, erasures: list[Erasure]) -> None:
        if self.sessions is not None:
            for erasure in erasures:
                self.sessions.forget_devices(erasure.project, erasure.devices)

    def _sweep(self, erasures: list[Erasure], lines: list[bytes], keys: list[tuple[str, str, str]]) -> None:
        """Undo what this batch just wrote for persons erased since the last read: their events
        it stored (accepted before the erasure; the API's second pass deletes what was stored
        before it recorded the erasure, not what landed after), with their links and signals,
        and the sessions of every erased device it touched, recomputed from what is left (a
        session held in memory and extended here still counted the erased events)."""
        if not erasures:
            return
        owners = ErasedOwners(erasures)  # new ones: read back the batch's lines once per erasure
        by_device = {(e.project, d): e for e in erasures for d in e.devices}
        taken: dict[Erasure, set[tuple[str, str]]] = {}
        touched: dict[Erasure, set[str]] = {}
        took: list[tuple[Owner, Erasure]] = []
        for owner, key in zip(owners_of(lines), keys, strict=True):
            project, anonymous_id, user_id = owner[0], owner[1], owner[2]
            device = anonymous_id or USER_DEVICE_PREFIX + user_id
            erasure = owners.erasure_of(owner)
            if erasure is not None:
                taken.setdefault(erasure, set()).add((key[1], key[2]))
                touched.setdefault(erasure, set()).add(device)
                took.append((owner, erasure))
            elif (project, device) in by_device:
                touched.setdefault(by_device[(project, device)], set()).add(device)
        self._unclaimed.update(devices_found(took))
        for erasure, devices in touched.items():
            pairs = sorted(taken.get(erasure, ()))
            if pairs:  # with their links and signals (not when the person came back: kept)
                delete_stored(self.warehouse, erasure.project, erasure.person, erasure.identified, pairs, [])
            gone = self._recompute_sessions(erasure.project, sorted(devices))
            if pairs:  # added to the erasure's record (GET /v1/erasures sums its rows): the events
                # only; a session of hers the batch rewrote was counted when the API deleted it
                record_erasure(
                    self.warehouse, erasure.project, erasure.person, (len(pairs), 0), erased_at_ms=erasure.erased_at
                )
            ERASED.inc(len(pairs))
            log.info(
                "a batch written while a person was erased swept",
                extra={"project": erasure.project, "events": len(pairs), "sessions": gone},
            )
        self._let_go(erasures)

    def _sweep_dead_letters(self, erasures: list[Erasure], rows: Sequence[Sequence[Any]]) -> None:
        """The batch's dead letters of persons erased while it was written (the API's passes
        found none of them stored yet): deleted, and added to the erasure's record."""
        if not erasures or not rows:
            return
        owners = ErasedOwners(erasures)
        taken: dict[Erasure, list[tuple[int, int, str]]] = {}
        for row in rows:
            owner = dead_letter_owner(row)
            erasure = None if owner is None else owners.erasure_of(owner)
            if owner is not None and erasure is not None:  # named by (received ms, index, payload)
                taken.setdefault(erasure, []).append((owner[4], int(row[2]), str(row[4])))
        for erasure, letters in taken.items():
            deleted = delete_dead_letters(self.warehouse, erasure.project, letters)
            record_erasure(
                self.warehouse,
                erasure.project,
                erasure.person,
                (0, 0),
                erased_at_ms=erasure.erased_at,
                rejected=deleted,
            )
            log.info("dead letters written while a person was erased swept", extra={"project": erasure.project})

    def _recompute_sessions(self, project: str, devices: list[str]) -> int:
        """The devices' sessions from their events left; those gone deleted, and how many of
        them were stored."""
        if self.sessions is None:
            return 0
        return delete_sessions(self.warehouse, project, self.sessions.recompute_after_erasure(project, devices))

    def _claim(self, found: dict[tuple[Erasure, str], int]) -> None:
        """A device first linked to an erased user by an event that was itself still in the log
        when the erasure ran: by the stitching rules her anonymous events on it (from before
        that login on) were hers too, and no erasure could see them. They go now, those
        accepted before the erasure, with the device's sessions recomputed; the device is
        added to the erasure (a row of ``erasures`` at the same time) for what is still unread."""
        for (erasure, device), first_ts in found.items():
            links = stored_links(self.warehouse, erasure.project, devices=[device])
            links.append(Link(device, erasure.person, first_ts, first_ts))
            spans = tuple(owned_spans(erasure.person, [device], links))
            claimed = Erasure(erasure.project, erasure.person, (device,), spans, erasure.erased_at)
            rule = ErasedOwners([claimed])
            stored = self.warehouse.rows(
                "SELECT DISTINCT project, anonymous_id, user_id, event_id, toUnixTimestamp64Milli(timestamp) AS ts, "
                "toUnixTimestamp64Milli(received_at) AS received FROM events "
                "WHERE project = {project:String} AND anonymous_id = {device:String}",
                {"project": erasure.project, "device": device},
            )
            pairs = sorted(
                {
                    (device, str(r["event_id"]))
                    for r in stored
                    if rule.erasure_of((r["project"], device, r["user_id"], int(r["ts"]), int(r["received"])))
                }
            )
            delete_stored(self.warehouse, erasure.project, device, False, pairs, [])
            gone = self._recompute_sessions(erasure.project, [device])
            record_erasure(
                self.warehouse,
                erasure.project,
                erasure.person,
                (len(pairs), gone),
                [device],
                spans,
                erasure.erased_at,  # the erasure's own time
            )
            self.erasures.owners.add(claimed)
            ERASED.inc(len(pairs))
            log.info(
                "a device of an erased person found in the log; its events before the erasure erased",
                extra={"project": erasure.project, "events": len(pairs), "sessions": gone},
            )


def devices_found(dropped: list[tuple[Owner, Erasure]]) -> dict[tuple[Erasure, str], int]:
    """Devices an erased user logged in on that her erasure did not know (the login was still in
    the log), with the time of her first event there."""
    found: dict[tuple[Erasure, str], int] = {}
    for (_, anonymous_id, user_id, ts, _), erasure in dropped:
        if anonymous_id and user_id == erasure.person and anonymous_id not in erasure.devices:
            key = (erasure, anonymous_id)
            found[key] = min(found.get(key, ts), ts)
    return found

"""Sessions as a table: fold each batch's events into the open sessions and write their rows.

In order, the common case, an event extends (or closes) its device's open session held
in memory, or falls inside it a little out of order: no read. Otherwise — an event before
that session or one that would split it, a resent event, a device this process does not
hold (after a restart or a rebalance), a new identity link — the device's sessions
around the new events are recomputed from the stored events with the same pure rule
(``services.core.sessions``), sessions that no longer exist get a tombstone, and sessions
whose person changed are rewritten. Rows carry a
version (``ReplacingMergeTree(version, is_deleted)``); queries read ``FINAL``.

Called by the pipeline after the batch's events and links are stored, in one thread at
a time; the in-memory state changes only once the rows are written. A held session whose
timeout passes without a goal is written to ``abandonments`` as it happens: the real-time
abandonment signals (by the newest event time after a batch, by the clock when idle).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Gauge

from services.core.identity import Link, identified_user
from services.core.links import stored_links
from services.core.schema import ABANDONMENT_COLUMNS, SESSION_COLUMNS
from services.core.sessions import (
    SESSION_EVENT_FIELDS,
    SessionSummary,
    abandonment_signal,
    device_of,
    event_key,
    recovered_signal,
    session_person,
    span_to_recompute,
    summarize,
)
from services.core.settings import Projects
from services.core.warehouse import Warehouse

log = logging.getLogger("touchpoint.sessionizer")

SESSIONS_WRITTEN = Counter("touchpoint_sessionizer_session_rows_written_total", "Session rows written (new versions)")
RECOMPUTED = Counter(
    "touchpoint_sessionizer_session_recomputes_total",
    "Devices whose sessions were recomputed from stored events (late or out-of-order events, restarts, links)",
)
OPEN_SESSIONS = Gauge(
    "touchpoint_sessionizer_open_sessions", "Sessions held in memory that can still grow (within their timeout)"
)

ABANDONMENTS = Counter(
    "touchpoint_sessionizer_abandonments_total", "Sessions that timed out without reaching a goal (signals written)"
)
RECOVERIES = Counter(
    "touchpoint_sessionizer_abandonment_recoveries_total",
    "Abandoned sessions whose person reached a goal later (signals rewritten as recovered)",
)
SIGNALS_LOST = Counter(
    "touchpoint_sessionizer_abandonment_signals_lost_total", "Abandonment signals that could not be written"
)

DEFAULT_TIMEOUT_MS = 30 * 60_000

# A session that ended longer ago than this when it times out here (a backlog read after
# downtime) is not signalled: nobody can act on it any more. The abandonment report still has it.
SIGNAL_MAX_AGE_MS = 24 * 3600_000


@dataclass(slots=True)
class _Device:
    newest: SessionSummary  # the device's newest session: the only one extended without a read
    links: dict[str, int]  # user id -> first seen (ms): who the device belongs to when
    version: int
    signalled: bool = False  # its newest session timed out and was looked at for abandonment


_NO_LINKS: dict[str, int] = {}  # shared by every device without links: never mutated


def _links(anonymous_id: str, links: Mapping[str, int]) -> list[Link]:
    return [Link(anonymous_id, user_id, first, first) for user_id, first in links.items()]


@dataclass
class Fold:
    """A batch folded into the sessions held, not yet written (``OpenSessions.fold``)."""

    generation: int
    by_device: dict[tuple[str, str], list[Mapping[str, Any]]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    updates: dict[tuple[str, str], _Device | None] = field(default_factory=dict)
    timed_out: list[dict[str, Any]] = field(default_factory=list)  # signalled once the rows are written
    slow: dict[str, list[tuple[str, list[Mapping[str, Any]]]]] = field(default_factory=dict)  # to recompute
    newest_ts: int = 0


class OpenSessions:
    def __init__(
        self,
        warehouse: Warehouse,
        projects: Projects | None = None,
        max_held: int = 2_000_000,
        on_signals: Callable[[Sequence[Mapping[str, Any]]], None] | None = None,
    ) -> None:
        self.warehouse = warehouse
        self.max_held = max_held
        self.on_signals = on_signals  # told of each batch of abandonment signals once written
        self._timeouts = {p.id: p.session_timeout_minutes * 60_000 for p in (projects.items if projects else ())}
        self._goals = {p.id: p.goals for p in (projects.items if projects else ())}
        self._held: OrderedDict[tuple[str, str], _Device] = OrderedDict()
        self._clock = 0
        self._newest_ts = 0
        self._generation = 0  # bumped by forget(): a write begun before must not refill what it let go
        self._signals: list[dict[str, Any]] = []  # abandonment signals not yet written
        # When each held device's newest session times out, for projects with goals (a heap; one
        # entry per device, moved on lazily when the session grew since it was queued).
        self._deadlines: list[tuple[int, tuple[str, str]]] = []
        self._queued: set[tuple[str, str]] = set()

    def timeout_ms(self, project: str) -> int:
        return self._timeouts.get(project, DEFAULT_TIMEOUT_MS)

    def forget(self) -> None:
        """Partitions were revoked: another process now extends these sessions."""
        self._generation += 1
        self._held.clear()
        self._deadlines.clear()
        self._queued.clear()
        OPEN_SESSIONS.set(0)

    def _version(self, floor: int = 0) -> int:
        self._clock = max(time.time_ns(), self._clock + 1, floor + 1)
        return self._clock

    def apply(self, events: Sequence[Mapping[str, Any]]) -> int:
        """Blocking: fold the batch's (already stored) events into sessions; write the rows.

        Returns the number of session rows written."""
        return self.finish(self.fold(events))

    def fold(self, events: Sequence[Mapping[str, Any]]) -> Fold:
        """Python alone, no ClickHouse: fold the batch's events into the sessions held (the
        cheap path), so it can run while ClickHouse stores the same events. ``finish`` does the
        rest once they are stored; ``discard`` when they could not be."""
        fold = Fold(self._generation)
        for event in events:
            fold.by_device.setdefault((str(event["project"]), device_of(event)), []).append(event)
        try:
            for key, device_events in fold.by_device.items():
                device_events.sort(key=event_key)
                if not self._extend(key, device_events, fold.rows, fold.updates, fold.timed_out):
                    fold.slow.setdefault(key[0], []).append((key[1], device_events))
        except BaseException:
            self.discard(fold)
            raise
        fold.newest_ts = max((int(e["timestamp"]) for e in events), default=0)
        return fold

    def discard(self, fold: Fold) -> None:
        """The batch was not stored: its devices' summaries may hold its events; let go of them."""
        for key in fold.by_device:
            self._held.pop(key, None)

    def finish(self, fold: Fold) -> int:
        """Blocking, once the batch's events are stored: recompute the devices the cheap path
        could not extend (from storage), write every session row, keep the new state."""
        rows, updates, timed_out = fold.rows, fold.updates, fold.timed_out
        generation = fold.generation
        for project, items in fold.slow.items():
            RECOMPUTED.inc(len(items))
            self._recompute(project, items, rows, updates)
        try:
            self.warehouse.insert_json("sessions", [orjson.dumps(r) for r in rows], SESSION_COLUMNS)
        except Exception:
            self.discard(fold)
            raise
        SESSIONS_WRITTEN.inc(len(rows))
        self._signals.extend(timed_out)
        if generation == self._generation:  # else a rebalance let go of these devices meanwhile
            for key, state in updates.items():
                if state is None:
                    self._held.pop(key, None)
                else:
                    self._held[key] = state
                    self._held.move_to_end(key)
                    self._watch(key, state)
            if fold.by_device:  # event time, but never ahead of the clock (a device's clock may be a day ahead)
                newest = min(fold.newest_ts, time.time_ns() // 1_000_000)
                self._newest_ts = max(self._newest_ts, newest)
            self._signal_timeouts()
            self._sweep()
        self._write_signals()
        self._find_recoveries(rows)  # after: a signal of this very batch can be recovered by it too
        self._write_signals()
        return len(rows)

    def idle(self) -> int:
        """Blocking: the log has nothing new. Time now passes by the clock, not only by the
        events' times, so sessions past their timeout are let go (and signalled when they
        abandoned) while no device sends anything. Returns the signals written.

        Only when idle: while a backlog is read, the clock is ahead of the events, and letting
        go by it would send every held device down the slow path."""
        self._newest_ts = max(self._newest_ts, time.time_ns() // 1_000_000)
        self._signal_timeouts()
        self._sweep()
        return self._write_signals()

    def forget_devices(self, project: str, devices: Iterable[str]) -> None:
        """Let go of these devices (their person was erased): one that comes back is recomputed
        from storage, where its past is gone, instead of extending an erased session held here."""
        for device in devices:
            self._held.pop((project, device), None)

    def _find_recoveries(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Signals of the last day whose person has now reached a goal in a later session, on any
        device or channel, come again marked recovered (abandoned in the app, bought on the web:
        not a loss). One read per project, only for batches with goal sessions; best effort."""
        buyers: dict[tuple[str, str], Mapping[str, Any]] = {}
        for row in rows:
            if row["goals"] and not row["is_deleted"] and self._goals.get(row["project"]):
                key = (row["project"], row["person"])
                if key not in buyers or row["ended_at"] > buyers[key]["ended_at"]:
                    buyers[key] = row
        if not buyers:
            return
        now = time.time_ns() // 1_000_000
        for project in {p for p, _ in buyers}:
            persons = sorted(person for p, person in buyers if p == project)
            try:
                stored = self.warehouse.rows(
                    _OPEN_SIGNALS_SQL, {"project": project, "persons": persons, "since": now - SIGNAL_MAX_AGE_MS}
                )
            except Exception as exc:
                log.warning("abandonment recoveries not looked up", extra={"error": repr(exc)[:300]})
                continue
            for signal in stored:
                recovered = recovered_signal({**signal, "recovered_at": None}, buyers[(project, signal["person"])], now)
                if recovered is not None:
                    self._signals.append(recovered)

    def _watch(self, key: tuple[str, str], state: _Device) -> None:
        if key not in self._queued and self._goals.get(key[0]):
            heapq.heappush(self._deadlines, (state.newest.ended_at + self.timeout_ms(key[0]), key))
            self._queued.add(key)

    def _signal_timeouts(self) -> None:
        """Look at each held session whose timeout passed (by ``_newest_ts``, the clock the sweep
        uses too, so none is let go unseen): without a goal, it abandoned. In deadline order,
        not in the order devices were written, so a device that sent old events (an offline
        queue) is not kept waiting behind the others."""
        clock, now = self._newest_ts, time.time_ns() // 1_000_000
        while self._deadlines and self._deadlines[0][0] < clock:
            _, key = heapq.heappop(self._deadlines)
            self._queued.discard(key)
            state = self._held.get(key)
            if state is None or state.signalled:
                continue  # let go of meanwhile (its sessions are final then), or already looked at
            if state.newest.ended_at + self.timeout_ms(key[0]) >= clock:
                self._watch(key, state)  # the session grew since: wait for its new deadline
                continue
            state.signalled = True
            goals = self._goals.get(key[0], ())
            row = state.newest.row(_links(key[1], state.links), goals, state.version)
            signal = abandonment_signal(row, goals, now, SIGNAL_MAX_AGE_MS)
            if signal is not None:
                self._signals.append(signal)

    def _write_signals(self) -> int:
        """Best effort: a failed write loses these signals (counted and logged), never the batch."""
        signals, self._signals = self._signals, []
        if not signals:
            return 0
        try:
            self.warehouse.insert_json("abandonments", [orjson.dumps(s) for s in signals], ABANDONMENT_COLUMNS)
        except Exception as exc:
            SIGNALS_LOST.inc(len(signals))
            log.warning("abandonment signals not written", extra={"signals": len(signals), "error": repr(exc)[:300]})
            return 0
        recovered = sum(1 for s in signals if s["recovered_at"] is not None)
        ABANDONMENTS.inc(len(signals) - recovered)
        RECOVERIES.inc(recovered)
        if self.on_signals is not None:
            self.on_signals(signals)
        return len(signals)

    def _extend(
        self,
        key: tuple[str, str],
        events: list[Mapping[str, Any]],
        rows: list[dict[str, Any]],
        updates: dict[tuple[str, str], _Device | None],
        signals: list[dict[str, Any]],
    ) -> bool:
        """The cheap path: every event extends the device's newest session, opens the next one, or
        falls inside it (out of order by a little, as concurrent requests of one device arrive).
        A session the device left for longer than the timeout before it came back timed out: it
        is signalled here when the clock had not yet shown it (both in one batch)."""
        state = self._held.get(key)
        if state is None:
            return False
        ids = [str(e["event_id"]) for e in events]
        if len(set(ids)) < len(ids) or any(i in state.newest.seen for i in ids):
            return False  # a resent event (or a hash collision): the stored events say which copy counts
        for event in events:
            user_id = identified_user(event) if event.get("user_id") else ""
            if user_id and event.get("anonymous_id"):
                first = state.links.get(user_id)
                if first is None or int(event["timestamp"]) < first:
                    return False  # a new link may change whose earlier sessions were
        project, device = key
        timeout = self.timeout_ms(project)
        touched = [state.newest]
        for event in events:  # in key order
            current = touched[-1]
            order = event_key(event)
            if order > current.last_key:
                if current.continues_with(event, timeout):
                    current.add(event, order)
                else:
                    touched.append(SessionSummary(event))
            elif current.holds_inside(event):
                current.add(event, order)  # out of order by a little (concurrent requests): inside the session
            else:  # before the session, or splitting it: recompute (the summary may hold some events now)
                self._held.pop(key, None)
                return False
        version = self._version(state.version)
        links = _links(device, state.links)
        goals = self._goals.get(project, ())
        written = [s.row(links, goals, version) for s in touched]
        rows.extend(written)
        updates[key] = _Device(touched[-1], state.links, version)
        if goals:  # sessions this batch shows timed out before the device came back
            now = time.time_ns() // 1_000_000
            for i, (session, row) in enumerate(zip(touched[:-1], written, strict=False)):
                if touched[i + 1].started_at > session.ended_at + timeout and not (i == 0 and state.signalled):
                    signal = abandonment_signal(row, goals, now, SIGNAL_MAX_AGE_MS)
                    if signal is not None:
                        signals.append(signal)
        return True

    def rebuild(self, project: str, devices: Sequence[str]) -> int:
        """Blocking: recompute every session of these devices from their stored events (events
        stored before the sessions table existed, or a repair). Returns the rows written."""
        return len(self._rebuild(project, devices))

    def _rebuild(self, project: str, devices: Sequence[str]) -> list[dict[str, Any]]:
        everything = {device: (0, _YEAR_2100_MS) for device in devices}
        items: list[tuple[str, list[Mapping[str, Any]]]] = [
            (d, sorted(events, key=event_key)) for d, events in self._stored_events(project, everything).items()
        ]
        rows: list[dict[str, Any]] = []
        if items:
            self._recompute(project, items, rows, {})
            self.warehouse.insert_json("sessions", [orjson.dumps(r) for r in rows], SESSION_COLUMNS)
        for device in devices:
            self._held.pop((project, device), None)
        return rows

    def recompute_after_erasure(self, project: str, devices: Sequence[str]) -> list[str]:
        """Blocking: some of these devices' stored events were just deleted (a person erased).
        Their sessions are recomputed from what is left; returns the ids of every other session
        stored for them (tombstoned or not: they held erased events), whose rows the caller deletes."""
        alive = {str(r["session_id"]) for r in self._rebuild(project, devices) if not r["is_deleted"]}
        stored = self.warehouse.rows(
            "SELECT DISTINCT session_id FROM sessions "
            "WHERE project = {project:String} AND device IN {devices:Array(String)}",
            {"project": project, "devices": list(devices)},
        )
        return sorted({str(r["session_id"]) for r in stored} - alive)

    def _recompute(
        self,
        project: str,
        items: list[tuple[str, list[Mapping[str, Any]]]],
        rows: list[dict[str, Any]],
        updates: dict[tuple[str, str], _Device | None],
    ) -> None:
        """The exact path: recompute the devices' sessions around the new events from storage."""
        devices = [device for device, _ in items]
        timeout = self.timeout_ms(project)
        goals = self._goals.get(project, ())
        stored: dict[str, list[dict[str, Any]]] = {}
        for row in self.warehouse.rows(
            "SELECT * EXCEPT (started_at, ended_at), toUnixTimestamp64Milli(started_at) AS start_ms, "
            "toUnixTimestamp64Milli(ended_at) AS end_ms FROM sessions FINAL "
            "WHERE project = {project:String} AND device IN {devices:Array(String)}",
            {"project": project, "devices": devices},
        ):
            stored.setdefault(row["device"], []).append(row)
        links: dict[str, dict[str, int]] = {}
        for link in stored_links(self.warehouse, project, devices=devices):
            links.setdefault(link.anonymous_id, {})[link.user_id] = link.first_seen
        spans: dict[str, tuple[int, int]] = {}
        for device, events in items:
            lo = int(events[0]["timestamp"])
            hi = max(int(e["timestamp"]) for e in events)
            spans[device] = span_to_recompute(
                ((s["start_ms"], s["end_ms"]) for s in stored.get(device, ())), lo, hi, timeout
            )
        reread = {d: spans[d] for d in devices if any(_inside(s, spans[d]) for s in stored.get(d, ()))}
        stored_events = self._stored_events(project, reread)
        for device, events in items:
            span = spans[device]
            device_links = _links(device, links.get(device, {}))
            inside = [s for s in stored.get(device, ()) if _inside(s, span)]
            outside = [s for s in stored.get(device, ()) if not _inside(s, span)]
            merged: dict[str, Mapping[str, Any]] = {}
            for event in (*stored_events.get(device, ()), *events):
                merged.setdefault(str(event["event_id"]), event)
            summaries = summarize(merged.values(), timeout)
            version = self._version(max((int(s["version"]) for s in stored.get(device, ())), default=0))
            rows.extend(s.row(device_links, goals, version) for s in summaries)
            now_ids = {s.session_id for s in summaries}
            for old in inside:
                if old["session_id"] not in now_ids:
                    rows.append(_stored_row(old, version, is_deleted=1))
            for old in outside:
                person = session_person(old["user_id"], device, old["start_ms"], device_links)
                if person != old["person"]:
                    rows.append(_stored_row(old, version, person=person))
            newest_stored = max((s["start_ms"] for s in outside), default=None)
            newest = summaries[-1] if summaries else None
            key = (project, device)
            if newest is not None and (newest_stored is None or newest.started_at > newest_stored):
                updates[key] = _Device(newest, links.get(device, _NO_LINKS), version)
            else:
                updates[key] = None  # the newest session is an older stored one: not held

    def _stored_events(self, project: str, spans: Mapping[str, tuple[int, int]]) -> dict[str, list[dict[str, Any]]]:
        """The stored events of each device within its span (the batch's own included)."""
        if not spans:
            return {}
        anonymous = [d for d in spans if not d.startswith("user:")]
        users = [d[5:] for d in spans if d.startswith("user:")]
        rows = self.warehouse.rows(
            _STORED_EVENTS_SQL,
            {
                "project": project,
                "anonymous": anonymous,
                "users": users,
                "lo": min(lo for lo, _ in spans.values()),
                "hi": max(hi for _, hi in spans.values()),
            },
        )
        out: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            row["timestamp"] = row.pop("ts")
            device = device_of(row)
            lo, hi = spans.get(device, (1, 0))
            if lo <= row["timestamp"] <= hi:
                out.setdefault(device, []).append(row)
        return out

    def _sweep(self) -> None:
        """Let go of sessions past their timeout, least recently extended first, and of the
        oldest beyond ``max_held``. Held in order of their last write, the expired ones come
        first: this stops at the first that may still grow, so it costs what it lets go."""
        while self._held:
            key, state = next(iter(self._held.items()))
            expired = state.newest.ended_at < self._newest_ts - self.timeout_ms(key[0])
            if not expired and len(self._held) <= self.max_held:
                break
            del self._held[key]
        OPEN_SESSIONS.set(len(self._held))


# Signals of these persons not yet recovered, noticed since then, with times in epoch seconds.
_OPEN_SIGNALS_SQL = f"""
SELECT {
    ", ".join(
        f"toUnixTimestamp64Milli({c}) / 1000 AS {c}" if c in ("started_at", "ended_at", "detected_at") else c
        for c in ABANDONMENT_COLUMNS
        if c != "recovered_at"
    )
}
FROM abandonments FINAL
WHERE project = {{project:String}} AND person IN {{persons:Array(String)}} AND recovered_at IS NULL
  AND detected_at >= fromUnixTimestamp64Milli({{since:Int64}})
"""

_YEAR_2100_MS = 4_102_444_800_000
_STORED_EVENTS_SQL = f"""
SELECT {", ".join("toUnixTimestamp64Milli(timestamp) AS ts" if f == "timestamp" else f for f in SESSION_EVENT_FIELDS)}
FROM events FINAL
WHERE project = {{project:String}}
  AND (anonymous_id IN {{anonymous:Array(String)}} OR (anonymous_id = '' AND user_id IN {{users:Array(String)}}))
  AND timestamp >= fromUnixTimestamp64Milli({{lo:Int64}}) AND timestamp <= fromUnixTimestamp64Milli({{hi:Int64}})
  AND is_late = 0
"""


def _inside(session: Mapping[str, Any], span: tuple[int, int]) -> bool:
    return bool(span[0] <= session["start_ms"] and session["end_ms"] <= span[1])


def _stored_row(stored: Mapping[str, Any], version: int, **changes: Any) -> dict[str, Any]:
    row = {name: stored[name] for name in SESSION_COLUMNS if name not in ("started_at", "ended_at")}
    row.update(started_at=stored["start_ms"] / 1000, ended_at=stored["end_ms"] / 1000, version=version, is_deleted=0)
    row.update(changes)
    return row

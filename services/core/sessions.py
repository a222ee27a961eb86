"""Sessionization as pure functions: one device's activity, closed by inactivity.

A session is one device's events in time order; a gap longer than the project's
timeout, a new campaign (UTM source, medium, name), or a user id other than the
session's (a shared device where someone else logs in) starts the next one. The
session id is derived from the device and its first event, so every mode and
every re-run computes the same id.

The sessionizer keeps a ``SessionSummary`` per open session and folds each new
event into it (no re-read); an event that arrives out of order makes it
recompute the sessions around it from the stored events, with the same rule.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from services.core.identity import Link, device_owner, identified_user
from services.core.schema import ABANDONMENT_COLUMNS

_NAMESPACE = uuid.UUID("6f1c1f0e-3c1b-4a8e-9d0a-7a6b1e2f4c3d")
_NAMESPACE_BYTES = _NAMESPACE.bytes


@dataclass(slots=True)
class Session:
    session_id: str
    device: str
    started_at: int
    ended_at: int
    channel: str
    events: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def first(self) -> Mapping[str, Any]:
        return self.events[0]


def device_of(event: Mapping[str, Any]) -> str:
    """Sessions are per device; an event with only a user id is its own 'device'."""
    return str(event.get("anonymous_id") or f"user:{event.get('user_id', '')}")


def campaign_of(event: Mapping[str, Any]) -> tuple[str, str, str]:
    return (
        str(event.get("campaign_source") or ""),
        str(event.get("campaign_medium") or ""),
        str(event.get("campaign_name") or ""),
    )


def starts_new_session(
    ended_at: int, first_campaign: tuple[str, str, str], user_id: str, event: Mapping[str, Any], timeout_ms: int
) -> bool:
    """The rule: the next event of a device starts a new session after a gap longer than the
    timeout, when it carries a campaign other than the session's first event's, or when it
    names a user other than the one the session already has (``user_id``, "" for none): one
    session never holds two people, so a shared device's sessions each belong to one of them."""
    if int(event["timestamp"]) - ended_at > timeout_ms:
        return True
    has_campaign = event.get("campaign_source") or event.get("campaign_medium") or event.get("campaign_name")
    if has_campaign and campaign_of(event) != first_campaign:
        return True
    if not user_id or not event.get("user_id"):  # most events: no user to compare
        return False
    user = identified_user(event)
    return bool(user and user != user_id)


def session_id(project: str, device: str, first_event_id: str) -> str:
    """``uuid5(namespace, project \\0 device \\0 first event id)``, formatted without building a UUID
    object (a third of the cost of folding a one-event session)."""
    digest = bytearray(hashlib.sha1(_NAMESPACE_BYTES + f"{project}\x00{device}\x00{first_event_id}".encode()).digest())
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    x = digest[:16].hex()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:32]}"


def sessionize(events: Iterable[Mapping[str, Any]], timeout_ms: int) -> list[Session]:
    """Split events (with ms ``timestamp``) into sessions, ordered by start time.

    Independent of arrival order: events are sorted by (time, event_id) first.
    """
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for event in events:
        by_device.setdefault(device_of(event), []).append(event)
    sessions: list[Session] = []
    for device, device_events in by_device.items():
        device_events.sort(key=lambda e: (int(e["timestamp"]), str(e["event_id"])))
        current: Session | None = None
        user = ""  # the current session's user, once an event names one
        for event in device_events:
            ts = int(event["timestamp"])
            if current is None or starts_new_session(
                current.ended_at, campaign_of(current.first), user, event, timeout_ms
            ):
                user = ""
                current = Session(
                    session_id=session_id(str(event.get("project", "")), device, str(event["event_id"])),
                    device=device,
                    started_at=ts,
                    ended_at=ts,
                    channel=str(event.get("channel") or ""),
                )
                sessions.append(current)
            current.events.append(event)
            current.ended_at = ts
            user = user or identified_user(event)
    sessions.sort(key=lambda s: (s.started_at, s.session_id))
    return sessions


# The event fields a session is built from: what the sessionizer keeps and reads back.
SESSION_EVENT_FIELDS: Final = (
    "project",
    "event_id",
    "anonymous_id",
    "user_id",
    "timestamp",
    "type",
    "name",
    "path",
    "channel",
    "campaign_source",
    "campaign_medium",
    "campaign_name",
    "browser",
    "os",
    "device_type",
    "country",
    "network",
    "response_ms",
    "error_kind",
)
_FIRST_EVENT_ATTRIBUTES: Final = ("channel", "browser", "os", "device_type", "country", "network")


def _intern(text: str) -> str:
    """Short texts (channels, browsers, countries, project ids) shared, not copied per session."""
    return sys.intern(text) if len(text) <= 32 else text


def label_of(event: Mapping[str, Any]) -> str:
    """A touchpoint as the query API names it: ``page /cart`` or ``track Order Completed``."""
    if event.get("type") == "page":
        return f"page {event.get('path') or ''}"
    return f"{event.get('type') or ''} {event.get('name') or ''}"


def event_key(event: Mapping[str, Any]) -> tuple[int, str]:
    """Events of a device are ordered by time, then id: the same order in every mode."""
    return int(event["timestamp"]), str(event["event_id"])


class RunningMedian:
    """The median of a growing series in O(log n) per value (two heaps), for sessions of any length."""

    __slots__ = ("_high", "_low")

    def __init__(self) -> None:
        self._low: list[float] = []  # max-heap (negated): the lower half
        self._high: list[float] | None = None  # min-heap: the upper half, from the second value on

    def add(self, value: float) -> None:
        if not self._low:  # the first value (the lower half is never the shorter one)
            self._low.append(-value)
            return
        high = self._high
        if high is None:
            high = self._high = []
        if value > -self._low[0]:
            heapq.heappush(high, value)
        else:
            heapq.heappush(self._low, -value)
        if len(self._low) > len(high) + 1:
            heapq.heappush(high, -heapq.heappop(self._low))
        elif len(high) > len(self._low):
            heapq.heappush(self._low, -heapq.heappop(high))

    def median(self) -> float | None:
        if not self._low:
            return None
        if not self._high or len(self._low) > len(self._high):
            return -self._low[0]
        return (-self._low[0] + self._high[0]) / 2


class SeenIds:
    """The event ids a session holds, as a set of their 64-bit hashes (about 60 bytes each).

    "No" is certain; "yes" is a resent event, or one chance in ~10^19 per pair of a hash
    collision. Either way the sessionizer recomputes the session exactly from storage, so a
    collision costs a read, never a miscount. (A Bloom filter was smaller, but its ~1% false
    "yes" per lookup turned every batch of a long session into a recompute.) Python's ``hash``
    is salted per process; the set never leaves it.
    """

    __slots__ = ("_first", "_more")

    def __init__(self) -> None:
        # Most held sessions hold one event: its hash alone, a set (216 bytes) only from the second.
        self._first: int | None = None
        self._more: set[int] | None = None

    def add(self, event_id: str) -> None:
        h = hash(event_id)
        if self._first is None:
            self._first = h
        elif h != self._first:
            if self._more is None:
                self._more = set()
            self._more.add(h)

    def __contains__(self, event_id: object) -> bool:
        if not isinstance(event_id, str):
            return False
        h = hash(event_id)
        return h == self._first or (self._more is not None and h in self._more)


class SessionSummary:
    """One session, folded event by event: everything its stored row holds, without its events.

    Folding is order-independent for events inside the session (after its first event, no
    campaign of their own): each order-dependent field keeps the key of the event it came from.
    """

    __slots__ = (
        "attributes",
        "device",
        "ended_at",
        "entry",
        "entry_key",
        "errors",
        "events",
        "exit",
        "exit_key",
        "first_campaign",
        "first_key",
        "goals",
        "last_key",
        "pageviews",
        "project",
        "response_max",
        "response_median",
        "seen",
        "session_id",
        "started_at",
        "user_id",
        "user_key",
    )

    def __init__(self, first: Mapping[str, Any]) -> None:
        # Low-cardinality texts are interned: a million held sessions share one "Chrome".
        self.project = _intern(str(first.get("project") or ""))
        self.device = device_of(first)
        self.session_id = session_id(self.project, self.device, str(first["event_id"]))
        self.started_at = self.ended_at = int(first["timestamp"])
        self.first_campaign = campaign_of(first)
        self.attributes = tuple(_intern(str(first.get(k) or "")) for k in _FIRST_EVENT_ATTRIBUTES)
        self.first_key = self.last_key = self.entry_key = self.exit_key = self.user_key = event_key(first)
        self.user_id = ""
        self.entry = self.exit = ""
        self.events = self.pageviews = self.errors = 0
        self.response_median: RunningMedian | None = None  # from the first response time on
        self.response_max: float | None = None
        self.goals: tuple[str, ...] = ()  # distinct event names: a tuple, 170 bytes lighter than a set
        self.seen = SeenIds()
        self.add(first)

    def continues_with(self, event: Mapping[str, Any], timeout_ms: int) -> bool:
        """Whether ``event``, later than every event so far, belongs to this session."""
        return not starts_new_session(self.ended_at, self.first_campaign, self.user_id, event, timeout_ms)

    def holds_inside(self, event: Mapping[str, Any]) -> bool:
        """Whether ``event``, earlier than the newest so far, falls inside this session without
        changing its bounds: after its first event, and no campaign or user of its own (either
        would split it)."""
        campaign = campaign_of(event)
        user = identified_user(event)
        return (
            event_key(event) > self.first_key
            and (not any(campaign) or campaign == self.first_campaign)
            and (not user or not self.user_id or user == self.user_id)
        )

    def add(self, event: Mapping[str, Any], key: tuple[int, str] | None = None) -> None:
        """Fold in an event that belongs to this session (``continues_with`` or ``holds_inside``);
        ``key`` is its ``event_key`` when the caller has it. It runs once per event stored, so it
        compares instead of calling ``max`` and asks for the user only of events naming one."""
        if key is None:
            key = event_key(event)
        if key[0] > self.ended_at:
            self.ended_at = key[0]
        if key > self.last_key:
            self.last_key = key
        self.events += 1
        if event.get("user_id"):
            user_id = identified_user(event)
            if user_id and (not self.user_id or key < self.user_key):
                self.user_id, self.user_key = user_id, key
        event_type = event.get("type")
        if event_type == "page":
            self.pageviews += 1
        if event.get("error_kind"):
            self.errors += 1
        response = event.get("response_ms")
        if response is not None:
            if self.response_median is None:
                self.response_median = RunningMedian()
            self.response_median.add(float(response))
            if self.response_max is None or response > self.response_max:
                self.response_max = float(response)
        if event_type != "identify":
            label = label_of(event)
            if not self.entry or key < self.entry_key:
                self.entry, self.entry_key = label, key
            if not self.exit or key > self.exit_key:
                self.exit, self.exit_key = label, key
        name = str(event.get("name") or "")
        if name not in self.goals:
            self.goals += (name,)
        self.seen.add(str(event["event_id"]))

    def person(self, links: Sequence[Link]) -> str:
        return session_person(self.user_id, self.device, self.started_at, links)

    def row(self, links: Sequence[Link], goals: Collection[str], version: int) -> dict[str, Any]:
        """The sessions-table row (JSONEachRow: times in epoch seconds)."""
        channel, browser, os_name, device_type, country, network = self.attributes
        source, medium, name = self.first_campaign
        return {
            "project": self.project,
            "device": self.device,
            "session_id": self.session_id,
            "person": self.person(links),
            "user_id": self.user_id,
            "channel": channel,
            "browser": browser,
            "os": os_name,
            "device_type": device_type,
            "country": country,
            "network": network,
            "campaign_source": source,
            "campaign_medium": medium,
            "campaign_name": name,
            "started_at": self.started_at / 1000,
            "ended_at": self.ended_at / 1000,
            "duration_ms": self.ended_at - self.started_at,
            "entry_touchpoint": self.entry,
            "exit_touchpoint": self.exit,
            "events": self.events,
            "pageviews": self.pageviews,
            "errors": self.errors,
            "response_ms_median": None if self.response_median is None else self.response_median.median(),
            "response_ms_max": self.response_max,
            "goals": sorted(g for g in goals if g in self.goals),
            "version": version,
            "is_deleted": 0,
        }


def abandonment_signal(
    row: Mapping[str, Any], goals: Collection[str], now_ms: int, max_age_ms: int
) -> dict[str, Any] | None:
    """The signal for a session row that just timed out, or None when it did not abandon.

    A session abandons when it timed out without reaching one of the project's goals. A project
    without goals has nothing to abandon, and a session that ended more than ``max_age_ms`` ago
    (a backlog read after downtime) is too late to act on. A bot's session (a crawler, a monitor,
    a headless browser: ``device_type`` "bot" from its user agent) is no customer leaving."""
    if not goals or row["goals"] or now_ms - row["ended_at"] * 1000 > max_age_ms or row.get("device_type") == "bot":
        return None
    signal = {name: row[name] for name in ABANDONMENT_COLUMNS if name in row}
    signal.update(detected_at=now_ms / 1000, recovered_at=None, recovered_channel="")
    return signal


def recovered_signal(signal: Mapping[str, Any], goal_session: Mapping[str, Any], now_ms: int) -> dict[str, Any] | None:
    """The signal again, marked recovered, when the person reached a goal in a session that ended
    after the abandoned one (on any device or channel: left the app, bought on the web); None
    when that session does not come after it or the signal is recovered already. Times in
    epoch seconds, as in the rows."""
    if signal["recovered_at"] is not None or goal_session["ended_at"] <= signal["ended_at"]:
        return None
    return {
        **{name: signal[name] for name in ABANDONMENT_COLUMNS},
        "detected_at": now_ms / 1000,
        "recovered_at": goal_session["ended_at"],
        "recovered_channel": goal_session["channel"],
    }


def session_person(user_id: str, device: str, started_at: int, links: Sequence[Link]) -> str:
    """Whose session: the user it names, else its device's owner when it started, else the device."""
    if user_id:
        return user_id
    if device.startswith("user:"):
        return device[5:]
    return device_owner(links, started_at) or device


def summarize(events: Iterable[Mapping[str, Any]], timeout_ms: int) -> list[SessionSummary]:
    """The sessions of ``sessionize``, folded into summaries; an event id counts once (the
    first copy given). Ordered by start time."""
    unique: dict[str, Mapping[str, Any]] = {}
    for event in events:
        unique.setdefault(str(event["event_id"]), event)
    by_device: dict[str, list[Mapping[str, Any]]] = {}
    for event in unique.values():
        by_device.setdefault(device_of(event), []).append(event)
    out: list[SessionSummary] = []
    for device_events in by_device.values():
        device_events.sort(key=event_key)
        current: SessionSummary | None = None
        for event in device_events:
            if current is not None and current.continues_with(event, timeout_ms):
                current.add(event)
            else:
                current = SessionSummary(event)
                out.append(current)
    out.sort(key=lambda s: (s.started_at, s.session_id))
    return out


def span_to_recompute(stored: Iterable[tuple[int, int]], lo: int, hi: int, timeout_ms: int) -> tuple[int, int]:
    """The time span whose sessions new events at ``lo``..``hi`` can change.

    ``stored`` are the (start, end) of the device's stored sessions. A session within the
    timeout of the span may merge with it (or, split by a campaign, change), so it joins the
    span, and so on; a session further away is bounded by a gap that new events outside it
    cannot close. Every stored session overlapping the result lies wholly inside it.
    """
    spans = sorted(stored)
    changed = True
    while changed:
        changed = False
        for start, end in spans:
            if start <= hi + timeout_ms and end >= lo - timeout_ms and (start < lo or end > hi):
                lo, hi, changed = min(lo, start), max(hi, end), True
    return lo, hi

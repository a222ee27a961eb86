"""Identity stitching as pure functions: who is a person, which device is whose, when.

A person is a user id with every anonymous id linked to it by an event carrying
both, or a lone anonymous id. Links are retroactive: a device's events before
its first link belong to the first user. Two user ids are never merged: once a
device is linked to another user, its events from then on belong to that user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

PLACEHOLDER_IDS: Final = frozenset(
    {
        "",
        "null",
        "undefined",
        "none",
        "nil",
        "nan",
        "anonymous",
        "anon",
        "guest",
        "unknown",
        "0",
        "-1",
        "[object object]",
        "n/a",
        "na",
        "user",
        "id",
        "00000000-0000-0000-0000-000000000000",
    }
)


def is_placeholder(value: str) -> bool:
    """Ids that buggy trackers send for everyone; they must never link two devices."""
    return value.strip().lower() in PLACEHOLDER_IDS


@dataclass(frozen=True, slots=True)
class Link:
    """An anonymous id seen together with a user id, first and last at these times (ms)."""

    anonymous_id: str
    user_id: str
    first_seen: int
    last_seen: int


def links_in(events: Iterable[Mapping[str, Any]]) -> list[tuple[str, Link]]:
    """The (project, link) pairs that a batch of event records establishes."""
    seen: dict[tuple[str, str, str], list[int]] = {}
    for event in events:
        anonymous_id, user_id = event.get("anonymous_id", ""), event.get("user_id", "")
        if not anonymous_id or not user_id or is_placeholder(anonymous_id) or is_placeholder(user_id):
            continue
        key = (event["project"], anonymous_id, user_id)
        ts = int(event["timestamp"])
        span = seen.get(key)
        if span is None:
            seen[key] = [ts, ts]
        else:
            span[0] = min(span[0], ts)
            span[1] = max(span[1], ts)
    return [(p, Link(a, u, lo, hi)) for (p, a, u), (lo, hi) in seen.items()]


def device_owner(links: Sequence[Link], ts: int) -> str | None:
    """The user a device (all links share its anonymous id) belongs to at time ts."""
    if not links:
        return None
    ordered = sorted(links, key=lambda link: (link.first_seen, link.user_id))
    owner = ordered[0].user_id
    for link in ordered:
        if link.first_seen <= ts:
            owner = link.user_id
        else:
            break
    return owner


def identified_user(event: Mapping[str, Any]) -> str:
    """The event's user id, or "" when it has none or a placeholder (``undefined``, ``0`` ...)."""
    user_id = str(event.get("user_id") or "")
    return "" if not user_id or is_placeholder(user_id) else user_id


def owner_of(event: Mapping[str, Any], links_by_device: Mapping[str, Sequence[Link]]) -> str:
    """The person an event belongs to: its user id, its device's owner, or the device."""
    user_id = identified_user(event)
    if user_id:
        return user_id
    anonymous_id = event.get("anonymous_id") or ""
    owner = device_owner(links_by_device.get(anonymous_id, ()), int(event["timestamp"]))
    return owner if owner is not None else anonymous_id


def events_of_person(
    person_id: str, events: Iterable[Mapping[str, Any]], links: Iterable[Link]
) -> list[Mapping[str, Any]]:
    """Keep only the events that belong to person_id under the stitching rules."""
    by_device: dict[str, list[Link]] = {}
    for link in links:
        by_device.setdefault(link.anonymous_id, []).append(link)
    return [e for e in events if owner_of(e, by_device) == person_id]


def person_of(identifier: str, links: Sequence[Link], known_user_ids: set[str]) -> str:
    """The person an id names: a user id names itself; a device, its current owner."""
    if identifier in known_user_ids:
        return identifier
    device_links = [link for link in links if link.anonymous_id == identifier]
    owner = device_owner(device_links, max((link.last_seen for link in device_links), default=0))
    return owner if owner is not None else identifier

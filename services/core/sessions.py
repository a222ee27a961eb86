"""Sessionization as pure functions: one device's activity, closed by inactivity.

A session is one device's events in time order; a gap longer than the project's
timeout, or a new campaign (UTM source, medium, name), starts the next one. The
session id is derived from the device and its first event, so every mode and
every re-run computes the same id.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_NAMESPACE = uuid.UUID("6f1c1f0e-3c1b-4a8e-9d0a-7a6b1e2f4c3d")


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


def session_id(project: str, device: str, first_event_id: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{project}\x00{device}\x00{first_event_id}"))


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
        for event in device_events:
            ts = int(event["timestamp"])
            campaign = campaign_of(event)
            new_campaign = any(campaign) and current is not None and campaign != campaign_of(current.first)
            if current is None or ts - current.ended_at > timeout_ms or new_campaign:
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
    sessions.sort(key=lambda s: (s.started_at, s.session_id))
    return sessions

"""What an abandonment signal looks like to the outside: the API's JSON and the webhook body.

One shape for both, from a stored row (``abandonments``, with ``start_ms``, ``end_ms`` and
``detected_ms``) or from the signal the sessionizer just wrote (times in epoch seconds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from .events import iso

Cursor = tuple[int, str]


def cursor_text(cursor: Cursor) -> str:
    """``<detected_at ms>:<session_id>``: the order signals are read in, and where to resume."""
    return f"{cursor[0]}:{cursor[1]}"


def cursor_of(r: Mapping[str, Any]) -> Cursor:
    return int(r["detected_ms"]), str(r["session_id"])


# What a SELECT of ``sessions`` (or ``abandonments``) gives ``stored_session_json`` (or
# ``signal_json``): every column, and the times as epoch ms.
STORED_SESSION_COLUMNS: Final = (
    "*, toUnixTimestamp64Milli(started_at) AS start_ms, toUnixTimestamp64Milli(ended_at) AS end_ms"
)
SIGNAL_COLUMNS: Final = (
    f"{STORED_SESSION_COLUMNS}, toUnixTimestamp64Milli(detected_at) AS detected_ms, "
    "toUnixTimestamp64Milli(recovered_at) AS recovered_ms"
)


def stored_session_json(r: Mapping[str, Any]) -> dict[str, Any]:
    """A row of the sessions table (or a signal, which has its columns) as the API answers it."""
    return {
        "session_id": r["session_id"],
        "person_id": r["person"],
        "anonymous_id": "" if r["device"].startswith("user:") else r["device"],
        "user_id": r["user_id"],
        "channel": r["channel"],
        "device": {"type": r["device_type"]},
        "browser": r["browser"],
        "os": r["os"],
        "country": r["country"],
        "network": r["network"],
        "campaign": {"source": r["campaign_source"], "medium": r["campaign_medium"], "name": r["campaign_name"]},
        "started_at": iso(r["start_ms"]),
        "ended_at": iso(r["end_ms"]),
        "duration_seconds": r["duration_ms"] / 1000,
        "entry_touchpoint": r["entry_touchpoint"],
        "exit_touchpoint": r["exit_touchpoint"],
        "event_count": r["events"],
        "pageviews": r["pageviews"],
        "errors": r["errors"],
        "response_ms": {"median": r["response_ms_median"], "max": r["response_ms_max"]},
        "goals_reached": list(r["goals"]),
    }


def signal_json(r: Mapping[str, Any]) -> dict[str, Any]:
    """A stored signal as the API answers it: ``kind`` is ``abandonment``, or ``recovery`` once
    the person reached a goal later (the same session again, with where and when)."""
    recovered = r.get("recovered_ms")
    return {
        "kind": "abandonment" if recovered is None else "recovery",
        **stored_session_json(r),
        "detected_at": iso(r["detected_ms"]),
        "recovered": None if recovered is None else {"at": iso(recovered), "channel": r["recovered_channel"]},
        "cursor": cursor_text(cursor_of(r)),
    }


def written_signal_json(signal: Mapping[str, Any]) -> dict[str, Any]:
    """A signal as the sessionizer wrote it (times in epoch seconds), in the API's shape."""
    return signal_json(
        {
            **signal,
            "start_ms": round(signal["started_at"] * 1000),
            "end_ms": round(signal["ended_at"] * 1000),
            "detected_ms": round(signal["detected_at"] * 1000),
            "recovered_ms": None if signal["recovered_at"] is None else round(signal["recovered_at"] * 1000),
        }
    )

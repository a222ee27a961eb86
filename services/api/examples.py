"""Response examples for the OpenAPI description of the GET endpoints (POST bodies carry theirs)."""

from __future__ import annotations

JOURNEY = {
    "person_id": "user-42",
    "identified": True,
    "identities": {"user_ids": ["user-42"], "anonymous_ids": ["a1f3", "ios-77"]},
    "traits": {"plan": "gold"},
    "sessions": [
        {
            "session_id": "4563cb83-b736-5066-a81d-6c176c2fd5ce",
            "anonymous_id": "a1f3",
            "channel": "web",
            "device": {"type": "desktop"},
            "browser": "Chrome",
            "os": "Windows",
            "country": "DE",
            "network": "4g",
            "started_at": "2026-11-22T09:00:00.000Z",
            "ended_at": "2026-11-22T09:04:10.000Z",
            "duration_seconds": 250.0,
            "event_count": 1,
            "events": [
                {
                    "event_id": "0190c6a2-1f9e-7c11-9d3e-5b8f2a6c4d01",
                    "type": "page",
                    "name": "Search",
                    "timestamp": "2026-11-22T09:00:00.000Z",
                    "channel": "web",
                    "anonymous_id": "a1f3",
                    "user_id": "",
                    "url": "https://shop.example/search?q=shoes",
                    "path": "/search",
                    "properties": {},
                    "timing": {"response_ms": 3400.0},
                    "error": None,
                }
            ],
        }
    ],
    "truncated": False,
}

JOURNEY_MAP = {
    "stages": [
        {
            "stage": "consideration",
            "people": 1200,
            "conversion_to_next": {"people": 300, "rate": 0.25, "ci95": [0.226, 0.275]},
            "touchpoints": [{"touchpoint": "page /search", "channel": "web", "people": 900, "events": 1500}],
            "channels": {"web": 900, "app": 500},
            "pain_points": {
                "abandonment": [
                    {"touchpoint": "page /search", "channel": "web", "people": 900, "exits": 400, "exit_share": 0.44}
                ],
                "slowest": [
                    {"touchpoint": "page /search", "channel": "web", "people": 900, "median_response_ms": 1480.0}
                ],
                "errors": [{"touchpoint": "screen Search", "channel": "app", "people": 500, "error_rate": 0.04}],
            },
            "note": None,
        }
    ]
}

REJECTED = {
    "rejected": [
        {
            "received_at": "2026-11-22T10:00:00.000Z",
            "index": 1,
            "error": "name: required for track events",
            "payload": {"type": "track", "anonymous_id": "a1"},
        }
    ]
}

CONFLICTS = {
    "conflicts": [
        {
            "anonymous_id": "family-ipad",
            "users": [
                {"user_id": "alice", "first_seen": "2026-11-20T08:00:00.000Z", "last_seen": "2026-11-20T09:00:00.000Z"},
                {"user_id": "bob", "first_seen": "2026-11-21T19:00:00.000Z", "last_seen": "2026-11-21T19:30:00.000Z"},
            ],
        }
    ]
}

ERASURE = {
    "person_id": "user-42",
    "identified": True,
    "identities": {"user_ids": ["user-42"], "anonymous_ids": ["3f0c2a9e-web", "app-7c1d"]},
    "deleted": {"events": 318, "sessions": 12, "rejected": 2},
    "erased_at": "2026-11-23T19:02:11.418Z",
}

ERASURES = {
    "erasures": [
        {
            "person_id": "user-42",
            "devices": ["3f0c2a9e-web", "app-7c1d", "user:user-42"],
            "deleted": {"events": 318, "sessions": 12, "rejected": 2},
            "erased_at": "2026-11-23T19:02:11.418Z",
        }
    ]
}

BEHAVIOUR = {
    "by_hour": [
        {
            "hour": 20,
            "channel": "app",
            "sessions": 310,
            "events": 2400,
            "converted": 41,
            "conversion_rate": 0.132,
            "ci95": [0.099, 0.175],
        }
    ],
    "by_weekday": [
        {
            "weekday": 7,
            "channel": "web",
            "sessions": 980,
            "events": 6100,
            "converted": 88,
            "conversion_rate": 0.09,
            "ci95": [0.073, 0.109],
        }
    ],
}

SESSION: dict[str, object] = {
    "session_id": "4563cb83-b736-5066-a81d-6c176c2fd5ce",
    "person_id": "user-42",
    "anonymous_id": "a1f3",
    "user_id": "",
    "channel": "web",
    "device": {"type": "desktop"},
    "browser": "Chrome",
    "os": "Windows",
    "country": "DE",
    "network": "4g",
    "campaign": {"source": "newsletter", "medium": "email", "name": "black-friday"},
    "started_at": "2026-11-22T09:00:00.000Z",
    "ended_at": "2026-11-22T09:04:10.000Z",
    "duration_seconds": 250.0,
    "entry_touchpoint": "page /",
    "exit_touchpoint": "page /search",
    "event_count": 4,
    "pageviews": 3,
    "errors": 1,
    "response_ms": {"median": 820.0, "max": 3400.0},
    "goals_reached": [],
}

SESSIONS = {
    "sessions": [SESSION],
    "count": 1,
}

ABANDONMENTS = {
    "abandonments": [
        {
            "kind": "abandonment",
            **SESSION,
            "detected_at": "2026-11-22T09:34:11.250Z",
            "recovered": None,
            "cursor": "1795253651250:4563cb83-b736-5066-a81d-6c176c2fd5ce",
        }
    ],
    "next": "1795253651250:4563cb83-b736-5066-a81d-6c176c2fd5ce",
}

ABANDONMENT_STREAM = (
    ": abandonment signals\n\n"
    "id: 1795253651250:4563cb83-b736-5066-a81d-6c176c2fd5ce\n"
    "event: abandonment\n"
    'data: {"kind": "abandonment", "session_id": "4563cb83-b736-5066-a81d-6c176c2fd5ce", "person_id": "user-42", '
    '"exit_touchpoint": "page /search", "goals_reached": [], "detected_at": "2026-11-22T09:34:11.250Z", '
    '"recovered": null, ...}\n\n'
    "id: 1795257251800:4563cb83-b736-5066-a81d-6c176c2fd5ce\n"
    "event: recovery\n"
    'data: {"kind": "recovery", "session_id": "4563cb83-b736-5066-a81d-6c176c2fd5ce", ... '
    '"recovered": {"at": "2026-11-22T10:31:40.120Z", "channel": "app"}, ...}\n\n'
)

EXPORT = (
    '{"kind": "person", "person_id": "user-42", "identified": true, '
    '"identities": {"user_ids": ["user-42"], "anonymous_ids": ["3f0c2a9e-web", "app-7c1d"]}}\n'
    '{"kind": "identity_link", "anonymous_id": "3f0c2a9e-web", "user_id": "user-42", '
    '"first_seen": "2026-11-20T08:01:12.004Z", "last_seen": "2026-11-22T10:31:40.120Z"}\n'
    '{"kind": "event", "event_id": "0193a0c1-...", "type": "page", "name": "Search", "anonymous_id": "3f0c2a9e-web", '
    '"user_id": "", "timestamp": "2026-11-20T08:00:55.310Z", "received_at": "2026-11-20T08:00:55.402Z", '
    '"channel": "web", "url": "https://shop.example/search?q=boots", "path": "/search", "browser": "Firefox", '
    '"country": "DE", "ip": "203.0.113.0", "response_ms": 1840.0, "properties": {}, "context": {...}, ...}\n'
    '{"kind": "session", "session_id": "4563cb83-b736-5066-a81d-6c176c2fd5ce", "person_id": "user-42", ...}\n'
    '{"kind": "abandonment", "session_id": "4563cb83-b736-5066-a81d-6c176c2fd5ce", "recovered": null, ...}\n'
    '{"kind": "end", "identity_links": 2, "events": 318, "sessions": 12, "abandonments": 1}\n'
)

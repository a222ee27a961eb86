"""The OpenAPI description of ``POST /v1/batch`` (the validator in services.core.events is the authority)."""

from __future__ import annotations

from typing import Any

from .segment import BATCH_PATH, SINGLE_PATHS

EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type"],
    "properties": {
        "event_id": {"type": "string", "description": "idempotency key (a UUID); assigned when missing"},
        "type": {"type": "string", "enum": ["page", "screen", "track", "identify"]},
        "name": {"type": "string"},
        "anonymous_id": {"type": "string", "description": "required unless user_id is given"},
        "user_id": {"type": "string"},
        "timestamp": {"type": "string", "format": "date-time"},
        "channel": {"type": "string"},
        "properties": {"type": "object"},
        "context": {"type": "object"},
        "timing": {
            "type": "object",
            "properties": {
                k: {"type": "number"} for k in ("response_ms", "ttfb_ms", "load_ms", "lcp_ms", "inp_ms", "cls")
            },
        },
        "error": {
            "type": "object",
            "properties": {
                "kind": {"type": "string", "enum": ["js", "crash", "http", "anr", "other"]},
                "message": {"type": "string"},
                "fatal": {"type": "boolean"},
            },
        },
    },
}

BATCH_EXAMPLE = {
    "sent_at": "2026-11-22T10:00:00Z",
    "events": [
        {
            "event_id": "0190c6a2-1f9e-7c11-9d3e-5b8f2a6c4d01",
            "type": "page",
            "name": "Search",
            "anonymous_id": "a1",
            "timestamp": "2026-11-22T09:59:58Z",
            "context": {"page": {"path": "/search", "url": "https://shop.example/search?q=shoes"}},
            "timing": {"response_ms": 850},
        }
    ],
}

_RESPONSES: dict[str, Any] = {
    "200": {
        "description": "Accepted events are durable; rejected ones are listed by index with the field at fault",
        "content": {
            "application/json": {
                "example": {"accepted": 1, "rejected": [{"index": 1, "error": "name: required for track events"}]}
            }
        },
    },
    "400": {"description": "The body is not a batch"},
    "401": {"description": "Missing or unknown write key"},
    "413": {"description": "Body over the limit"},
    "415": {"description": "Unsupported Content-Encoding"},
    "503": {
        "description": "The event log cannot take events now and stored none of them; retry after Retry-After seconds"
    },
    "504": {
        "description": "The event log did not confirm the commit in time, so the events may or may not be stored. "
        "Retry after Retry-After seconds with the same event_id values (the answer's event_ids lists them in request "
        "order, including ids the server assigned): they are stored once either way"
    },
}

TOUCHPOINT_BATCH: dict[str, Any] = {
    "type": "object",
    "required": ["events"],
    "properties": {
        "sent_at": {"type": "string", "format": "date-time"},
        "write_key": {"type": "string"},
        "events": {"type": "array", "items": EVENT_SCHEMA},
    },
}

# Segment's message (services/ingest/segment.py maps each to the event it means).
SEGMENT_MESSAGE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "type": {"type": "string", "enum": ["track", "page", "screen", "identify", "alias"]},
        "messageId": {"type": "string", "description": "becomes event_id"},
        "anonymousId": {"type": "string"},
        "userId": {"type": "string"},
        "previousId": {"type": "string", "description": "alias: the earlier id, linked to userId"},
        "event": {"type": "string", "description": "track: the event's name"},
        "name": {"type": "string", "description": "page, screen: the name"},
        "properties": {"type": "object"},
        "traits": {"type": "object", "description": "identify: the person's traits"},
        "context": {"type": "object", "description": "userAgent, ip, network.wifi/cellular, app, os, device, page"},
        "timestamp": {"type": "string", "format": "date-time"},
        "sentAt": {"type": "string", "format": "date-time"},
        "writeKey": {"type": "string", "description": "or the write key as the Basic auth user name"},
    },
}

SEGMENT_BATCH: dict[str, Any] = {
    "type": "object",
    "required": ["batch"],
    "properties": {
        "batch": {"type": "array", "items": SEGMENT_MESSAGE},
        "context": {"type": "object", "description": "shared by every message"},
        "sentAt": {"type": "string", "format": "date-time"},
        "writeKey": {"type": "string"},
    },
}

SEGMENT_TRACK_EXAMPLE: dict[str, Any] = {
    "type": "track",
    "messageId": "0190c6a2-1f9e-7c11-9d3e-5b8f2a6c4d02",
    "anonymousId": "a1",
    "userId": "user-42",
    "event": "Order Completed",
    "properties": {"revenue": 59.9},
    "context": {"userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"},
    "timestamp": "2026-11-22T09:59:58Z",
}
SEGMENT_BATCH_EXAMPLE: dict[str, Any] = {"batch": [SEGMENT_TRACK_EXAMPLE], "sentAt": "2026-11-22T10:00:00Z"}

BATCH_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"anyOf": [TOUCHPOINT_BATCH, SEGMENT_BATCH]},
                "examples": {
                    "touchpoint": {"summary": "Touchpoint's batch", "value": BATCH_EXAMPLE},
                    "segment": {
                        "summary": "Segment's batch (write key as the Basic auth user name)",
                        "value": SEGMENT_BATCH_EXAMPLE,
                    },
                },
            }
        },
    },
    "responses": _RESPONSES,
}


def _segment_single(kind: str) -> dict[str, Any]:
    example: dict[str, Any] = {k: v for k, v in SEGMENT_TRACK_EXAMPLE.items() if k != "type"}
    if kind != "track":
        example.pop("event", None)
        example.pop("properties", None)
    if kind in ("page", "screen"):
        example["name"] = "Cart"
    elif kind == "identify":
        example["traits"] = {"plan": "pro"}
    elif kind == "alias":
        example = {"previousId": "a1", "userId": "user-42", "messageId": example["messageId"]}
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": SEGMENT_MESSAGE, "example": example}},
        },
        "responses": _RESPONSES,
    }


_SINGLE_SUMMARIES = {
    "track": "Segment: one track call",
    "page": "Segment: one page call",
    "screen": "Segment: one screen call",
    "identify": "Segment: one identify call",
    "alias": "Segment: one alias call (an identify linking previousId to userId)",
    "group": "Segment: group calls are refused (Touchpoint has no accounts)",
}

# Segment's own paths (``/v1/batch`` serves both formats and is documented above).
SEGMENT_OPENAPI: dict[str, tuple[str, dict[str, Any]]] = {
    BATCH_PATH: ("Segment: a batch (where Segment's mobile libraries send)", BATCH_OPENAPI),
    **{path: (_SINGLE_SUMMARIES[kind], _segment_single(kind)) for path, kind in SINGLE_PATHS.items()},
}

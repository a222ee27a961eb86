"""The OpenAPI description of ``POST /v1/batch`` (the validator in services.core.events is the authority)."""

from __future__ import annotations

from typing import Any

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

BATCH_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["events"],
                    "properties": {
                        "sent_at": {"type": "string", "format": "date-time"},
                        "write_key": {"type": "string"},
                        "events": {"type": "array", "items": EVENT_SCHEMA},
                    },
                },
                "example": BATCH_EXAMPLE,
            }
        },
    },
    "responses": _RESPONSES,
}

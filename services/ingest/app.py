"""The ingest HTTP endpoints: ``POST /v1/batch``.

A 200 is sent only after the event log said every accepted event is durable.
Invalid events are answered per index and kept as dead letters, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import Counter, Histogram

from services.core.eventlog import LogUnavailable, LogWriter
from services.core.events import InvalidEvent, normalize, now_ms, parse_time_ms, partition_key, rejected_record
from services.core.settings import Projects, Settings

from .body import BodyError, decompress, parse_json, read_limited
from .openapi import BATCH_OPENAPI

log = logging.getLogger("touchpoint.ingest")

REQUESTS = Counter("touchpoint_ingest_requests_total", "Batch requests by HTTP status", ["status"])
ACCEPTED = Counter("touchpoint_ingest_events_accepted_total", "Events accepted and durable")
REJECTED = Counter("touchpoint_ingest_events_rejected_total", "Events refused, by field", ["field"])
APPEND_SECONDS = Histogram(
    "touchpoint_ingest_append_seconds",
    "Time for the event log to make a batch durable",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RETRY_AFTER_SECONDS = 5
PACK_BYTES = 256 * 1024  # well under Kafka's default 1 MiB message limit
UNSTORABLE = "holds a value that cannot be stored (an integer beyond 64 bits, or invalid text)"


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    REQUESTS.labels(str(status)).inc()
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return _json(status, {"error": detail}, headers)


def pack(values: list[bytes]) -> Iterator[bytes]:
    """One device's records of one request as JSON arrays of at most PACK_BYTES each.

    Why: a log record per event costs the Kafka client ~20 µs each way; a batch
    from one tracker becomes one record, and the sessionizer unpacks it."""
    start, size = 0, 2
    for i, value in enumerate(values):
        if size + len(value) > PACK_BYTES and i > start:
            yield b"[" + b",".join(values[start:i]) + b"]"
            start, size = i, 2
        size += len(value) + 1
    yield b"[" + b",".join(values[start:]) + b"]"


def safe_payload(raw: Any) -> Any:
    """The rejected event as sent, or its repr when it cannot be serialised as JSON."""
    try:
        orjson.dumps(raw)
    except orjson.JSONEncodeError:
        return repr(raw)[:65536]
    return raw


class Ingest:
    """The collector: validates batches and appends them to the event log."""

    def __init__(self, settings: Settings, projects: Projects, writer: LogWriter) -> None:
        self.settings = settings
        self.projects = projects
        self.writer = writer
        self.router = APIRouter()
        self.router.add_api_route(
            "/v1/batch",
            self.batch,
            methods=["POST"],
            tags=["ingest"],
            summary="Send a batch of events",
            openapi_extra=BATCH_OPENAPI,
        )

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    def ready(self) -> bool:
        return self.writer.healthy()

    async def batch(self, request: Request) -> Response:
        """Accept ``{"sent_at", "events": [...]}``; answer which events were accepted."""
        received = now_ms()
        limit = self.settings.max_body_bytes
        try:
            raw = await read_limited(request, limit)
            body = parse_json(decompress(raw, request.headers.get("content-encoding", ""), limit))
        except BodyError as exc:
            return _error(exc.status, exc.detail)
        if not isinstance(body, dict):
            return _error(400, "body: must be a JSON object with an 'events' list")
        key = request.headers.get("x-write-key") or request.query_params.get("write_key") or body.get("write_key")
        if not key:
            return _error(
                401, "write_key: missing; send the X-Write-Key header, write_key query parameter or body field"
            )
        project = self.projects.by_write_key.get(str(key))
        if project is None:
            return _error(401, "write_key: unknown")
        events = body.get("events")
        if not isinstance(events, list):
            return _error(400, "events: must be a list")
        sent_at: int | None = None
        if body.get("sent_at") is not None:
            try:
                sent_at = parse_time_ms(body["sent_at"], "sent_at")
            except InvalidEvent as exc:
                return _error(400, str(exc))

        ip = request.client.host if request.client else ""
        packs: dict[bytes, list[bytes]] = {}  # partition key → serialised records
        rejected: list[dict[str, Any]] = []
        for index, raw_event in enumerate(events):
            try:
                record = normalize(
                    raw_event,
                    project=project.id,
                    received_ms=received,
                    sent_at_ms=sent_at,
                    ip=ip,
                    anonymize=project.anonymize_ip,
                )
                value = orjson.dumps(record)
            except orjson.JSONEncodeError:
                problem = InvalidEvent("event", UNSTORABLE)
            except InvalidEvent as invalid:
                problem = invalid
            else:
                packs.setdefault(partition_key(record), []).append(value)
                continue
            rejected.append({"index": index, "error": str(problem)})
            REJECTED.labels(problem.field).inc()
            dead = rejected_record(project.id, index, str(problem), safe_payload(raw_event), received)
            packs.setdefault(project.id.encode(), []).append(orjson.dumps(dead))
        records = [(key, value) for key, values in packs.items() for value in pack(values)]

        started = time.perf_counter()
        try:
            await self.writer.append(records)
        except LogUnavailable as exc:
            log.warning("event log unavailable; answering 503", extra={"error": str(exc)[:300]})
            return _error(
                503,
                "event log unavailable, nothing was stored; retry later",
                {"Retry-After": str(RETRY_AFTER_SECONDS)},
            )
        APPEND_SECONDS.observe(time.perf_counter() - started)
        accepted = len(events) - len(rejected)
        ACCEPTED.inc(accepted)
        return _json(200, {"accepted": accepted, "rejected": rejected})

"""The ingest HTTP endpoints: ``POST /v1/batch``.

A 200 is sent only after the event log said every accepted event is durable.
Invalid events are answered per index and kept as dead letters, never dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlparse

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import Counter, Gauge, Histogram
from starlette.types import ASGIApp, Receive, Scope, Send

from services.core.event_rows import event_head, event_row, event_values_json, pack_rows
from services.core.eventlog import LogOutcomeUnknown, LogUnavailable, LogWriter
from services.core.events import (
    InvalidEvent,
    after_tie,
    normalize,
    now_ms,
    parse_time_ms,
    partition_key,
    rejected_record,
    untimed_times,
)
from services.core.openapi import response_example
from services.core.settings import Project, Projects, Settings

from .body import BodyError, decompress, parse_json, read_limited
from .geo import Geo
from .openapi import BATCH_OPENAPI, SEGMENT_OPENAPI
from .segment import SEGMENT_PATHS, SINGLE_PATHS, basic_auth_user, is_segment_batch, segment_events, single_as_batch
from .tracker import TRACKER

log = logging.getLogger("touchpoint.ingest")

REQUESTS = Counter("touchpoint_ingest_requests_total", "Batch requests by HTTP status", ["status"])
ACCEPTED = Counter("touchpoint_ingest_events_accepted_total", "Events accepted and durable")
REJECTED = Counter("touchpoint_ingest_events_rejected_total", "Events refused, by field", ["field"])
APPEND_SECONDS = Histogram(
    "touchpoint_ingest_append_seconds",
    "Time for the event log to make a batch durable",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
BATCH_EVENTS = Histogram(
    "touchpoint_ingest_batch_events",
    "Events per accepted request",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 10_000),
)
IN_FLIGHT = Gauge(
    "touchpoint_ingest_in_flight_requests", "Requests waiting for the event log", multiprocess_mode="livesum"
)
RETRY_AFTER_SECONDS = 5
UNSTORABLE = "holds a value that cannot be stored (an integer beyond 64 bits, or invalid text)"


@dataclass(frozen=True, slots=True)
class Answer:
    """What to send back, independent of the HTTP layer that sends it."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    media_type: str | None = "application/json"

    def response(self) -> Response:
        return Response(self.body, status_code=self.status, media_type=self.media_type, headers=dict(self.headers))

    async def send(self, send: Send) -> None:
        """Straight onto the ASGI channel, for the fast path that skips the framework."""
        headers = [(b"content-length", str(len(self.body)).encode())]
        if self.media_type and self.body:
            headers.append((b"content-type", self.media_type.encode()))
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in self.headers.items())
        await send({"type": "http.response.start", "status": self.status, "headers": headers})
        await send({"type": "http.response.body", "body": self.body})


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> Answer:
    REQUESTS.labels(str(status)).inc()
    return Answer(status, orjson.dumps(body), headers or {})


def _error(status: int, detail: str, headers: Mapping[str, str] | None = None) -> Answer:
    return _json(status, {"error": detail}, headers)


def safe_payload(raw: Any) -> Any:
    """The rejected event as sent, or its repr when it cannot be serialised as JSON."""
    try:
        orjson.dumps(raw)
    except orjson.JSONEncodeError:
        return repr(raw)[:65536]
    return raw


@dataclass
class Prepared:
    """One request's log records: events packed per device, dead letters, and the answer's list."""

    records: list[tuple[bytes, bytes]]
    dead_letters: list[tuple[bytes, bytes]]
    rejected: list[dict[str, Any]]
    event_ids: list[str | None]  # per event of the request (None: rejected), for an unknown outcome


class Ingest:
    """The collector: validates batches and appends them to the event log."""

    def __init__(self, settings: Settings, projects: Projects, writer: LogWriter) -> None:
        self.settings = settings
        self.projects = projects
        self.writer = writer
        self.geo = Geo(settings.geoip_mmdb)
        self.router = APIRouter()
        prefixes = [""] + ([settings.collect_prefix] if settings.collect_prefix else [])
        for prefix in prefixes:
            hidden = prefix != ""  # the first-party alias is the same endpoint: documented once
            self.router.add_api_route(
                f"{prefix}/v1/batch",
                self.batch,
                methods=["POST"],
                tags=["ingest"],
                summary="Send a batch of events",
                openapi_extra=BATCH_OPENAPI,
                include_in_schema=not hidden,
            )
            self.router.add_api_route(
                f"{prefix}/v1/batch", self.preflight, methods=["OPTIONS"], include_in_schema=False
            )
            for path, (summary, extra) in SEGMENT_OPENAPI.items():
                self.router.add_api_route(
                    f"{prefix}{path}",
                    self.batch,
                    methods=["POST"],
                    tags=["ingest: Segment compatible"],
                    summary=summary,
                    openapi_extra=extra,
                    include_in_schema=not hidden,
                )
            self.router.add_api_route(
                f"{prefix}/v1/pixel.gif",
                self.pixel,
                methods=["GET"],
                tags=["ingest"],
                summary="One event as query parameters, for places without JavaScript",
                openapi_extra=PIXEL_OPENAPI,
                include_in_schema=not hidden,
            )
            self.router.add_api_route(
                f"{prefix}/v1/tracker.js",
                self.tracker,
                methods=["GET"],
                tags=["ingest"],
                summary="The web tracker",
                openapi_extra=response_example(
                    '<script src="https://collect.shop.example/v1/tracker.js" '
                    'data-write-key="wk_shop_1" defer></script>',
                    "application/javascript",
                ),
                include_in_schema=not hidden,
            )

    def fast_routes(self) -> dict[tuple[str, str], ASGIApp]:
        """``POST /v1/batch`` (and its first-party alias) for the server's fast path."""
        prefixes = [""] + ([self.settings.collect_prefix] if self.settings.collect_prefix else [])
        paths = ("/v1/batch", *SEGMENT_PATHS)
        return {("POST", f"{prefix}{path}"): self.asgi_batch for prefix in prefixes for path in paths}

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    def ready(self) -> bool:
        return self.writer.healthy()

    async def batch(self, request: Request) -> Response:
        """Accept ``{"sent_at", "events": [...]}``; answer which events were accepted.

        With ``?beacon=1`` a success is a bodiless 204, which is all ``sendBeacon`` expects.
        Segment's batch body (``{"batch": [...]}``, the write key as Basic auth user) is taken
        too, here and at ``/v1/b``: a Segment or RudderStack library needs only its host changed.
        Real traffic takes ``asgi_batch`` (same answers, without the framework's per-request
        work); this route documents the endpoint and serves any app built without it.
        """
        ip = request.client.host if request.client else ""
        single = self._single_kind(request.url.path)
        answer = await self.answer_batch(request.headers, request.query_params, ip, request.receive, single)
        return answer.response()

    def _single_kind(self, path: str) -> str | None:
        """The message type a Segment one-message path means (``/v1/track``: track), else None."""
        prefix = self.settings.collect_prefix
        return SINGLE_PATHS.get(path[len(prefix) :] if prefix and path.startswith(prefix + "/") else path)

    async def asgi_batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """``POST /v1/batch`` as a bare ASGI app: the hot path of every tracker."""
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        raw_query = scope.get("query_string", b"")
        query = dict(parse_qsl(raw_query.decode("latin-1"))) if raw_query else {}
        client = scope.get("client")
        ip = client[0] if client else ""
        answer = await self.answer_batch(headers, query, ip, receive, self._single_kind(scope["path"]))
        await answer.send(send)

    async def answer_batch(
        self, headers: Mapping[str, str], query: Mapping[str, str], ip: str, receive: Receive, single: str | None = None
    ) -> Answer:
        received = now_ms()
        limit = self.settings.max_body_bytes
        origin = headers.get("origin")
        try:
            raw = await read_limited(receive, headers.get("content-length"), limit)
            body = parse_json(decompress(raw, headers.get("content-encoding", ""), limit))
        except BodyError as exc:
            return _error(exc.status, exc.detail, self._cors(origin, None))
        if not isinstance(body, dict):
            return _error(400, "body: must be a JSON object with an 'events' list", self._cors(origin, None))
        if single is not None:  # Segment's POST /v1/track and the like: one message
            body = single_as_batch(body, single)
        segment = is_segment_batch(body)
        key = (
            headers.get("x-write-key")
            or query.get("write_key")
            or body.get("write_key")
            or (basic_auth_user(headers.get("authorization")) or body.get("writeKey") if segment else None)
        )
        if not key:
            return _error(
                401,
                "write_key: missing; send the X-Write-Key header, write_key query parameter or body field",
                self._cors(origin, None),
            )
        project = self.projects.by_write_key.get(str(key))
        if project is None:
            return _error(401, "write_key: unknown", self._cors(origin, None))
        cors = self._cors(origin, project)
        events: Any
        raw_sent_at = body.get("sent_at")
        if segment:
            events, raw_sent_at = segment_events(body)
        else:
            events = body.get("events")
        if not isinstance(events, list):
            return _error(400, "events: must be a list", cors)
        if len(events) > self.settings.max_batch_events:
            return _error(413, f"events: more than {self.settings.max_batch_events} in one batch; split it", cors)
        sent_at: int | None = None
        if raw_sent_at is not None:
            try:
                sent_at = parse_time_ms(raw_sent_at, "sent_at")
            except InvalidEvent as exc:
                return _error(400, str(exc), cors)
        prepared = self._records(project, events, sent_at, ip, received)
        rejected = prepared.rejected
        failure = await self._append(prepared, cors)
        if failure is not None:
            return failure
        accepted = len(events) - len(rejected)
        ACCEPTED.inc(accepted)
        BATCH_EVENTS.observe(len(events))
        if query.get("beacon") == "1":
            REQUESTS.labels("204").inc()
            return Answer(204, b"", cors, None)
        return _json(200, {"accepted": accepted, "rejected": rejected}, cors)

    async def pixel(self, request: Request) -> Response:
        """``GET /v1/pixel.gif?write_key=…&type=page&anonymous_id=…&url=…``: answers a 1x1 GIF.

        Dotted parameters fill objects (``properties.plan=gold``, ``timing.response_ms=120``).
        """
        received = now_ms()
        params = request.query_params
        project = self.projects.by_write_key.get(params.get("write_key", ""))
        if project is None:
            return _error(401, "write_key: missing or unknown").response()
        event = pixel_event(params.multi_items())
        ip = request.client.host if request.client else ""
        prepared = self._records(project, [event], None, ip, received)
        rejected = prepared.rejected
        failure = await self._append(prepared, {})
        if failure is not None:
            return failure.response()
        ACCEPTED.inc(1 - len(rejected))
        REQUESTS.labels("200").inc()
        headers = {"Cache-Control": "no-store"}
        if rejected:
            headers["X-Touchpoint-Rejected"] = rejected[0]["error"][:200]
        return Response(PIXEL_GIF, media_type="image/gif", headers=headers)

    async def tracker(self, request: Request) -> Response:
        """The tracker, gzipped when the browser takes it, 304 when its copy is current."""
        status, body, headers = TRACKER.answer(
            request.headers.get("if-none-match", ""), request.headers.get("accept-encoding", ""), 3600
        )
        return Response(body, status_code=status, media_type=TRACKER.media_type, headers=headers)

    async def preflight(self, request: Request) -> Response:
        """CORS preflight: allowed when the origin is allowed by the project named in ``write_key``,
        or by any project when the key travels in a header (browsers do not send it on preflight)."""
        origin = request.headers.get("origin")
        project = self.projects.by_write_key.get(request.query_params.get("write_key", ""))
        headers = self._cors(origin, project)
        if not headers:
            return Response(status_code=403)
        headers.update(
            {
                "Access-Control-Allow-Methods": "POST, OPTIONS",
                "Access-Control-Allow-Headers": "Content-Type, Content-Encoding, X-Write-Key",
                "Access-Control-Max-Age": "86400",
            }
        )
        return Response(status_code=204, headers=headers)

    def _cors(self, origin: str | None, project: Project | None) -> dict[str, str]:
        if not origin:
            return {}
        allowed = (
            project.allowed_origins if project else tuple(o for p in self.projects.items for o in p.allowed_origins)
        )
        if "*" in allowed or origin in allowed:
            return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}
        return {}

    def _records(self, project: Project, events: list[Any], sent_at: int | None, ip: str, received: int) -> Prepared:
        """Validate every event; valid ones packed per device, invalid ones as dead letters."""
        packs: dict[bytes, list[tuple[bytes, list[Any]]]] = {}  # partition key → its events' (row, head)
        rejected: list[dict[str, Any]] = []
        dead_letters: list[tuple[bytes, bytes]] = []
        event_ids: list[str | None] = []
        max_event = self.settings.max_event_bytes
        untimed = untimed_times(events, received)
        last_times: dict[bytes, tuple[int, int]] = {}  # per device: the previous event's sent and stored times
        for index, raw_event in enumerate(events):
            try:
                record = normalize(
                    raw_event,
                    project=project.id,
                    received_ms=received,
                    sent_at_ms=sent_at,
                    ip=ip,
                    anonymize=project.anonymize_ip,
                    allowed_lateness_ms=self.settings.allowed_lateness_s * 1000,
                    untimed_ms=untimed[index],
                )
                record["geo"] = self.geo.lookup(record["ip"])
                row = event_row(record)  # the events table's row, built once, here
                value = event_values_json(row)  # first: an event that cannot be stored is refused here
                if len(value) > max_event:
                    raise InvalidEvent("event", f"larger than {max_event} bytes once stored; trim properties")
                device = partition_key(record)
                sent = record["client_timestamp"]
                if sent is not None:
                    at = after_tie(sent, record["timestamp"], last_times.get(device))
                    if at != record["timestamp"]:  # a tie: moved by a millisecond or so
                        row["timestamp"] = at / 1000
                        value = event_values_json(row)
                    last_times[device] = (sent, at)
            except orjson.JSONEncodeError:
                problem = InvalidEvent("event", UNSTORABLE)
            except InvalidEvent as invalid:
                problem = invalid
            else:
                packs.setdefault(device, []).append((value, event_head(row)))
                event_ids.append(record["event_id"])
                continue
            event_ids.append(None)
            rejected.append({"index": index, "error": str(problem)})
            REJECTED.labels(problem.field).inc()
            dead = rejected_record(project.id, index, str(problem), safe_payload(raw_event), received)
            dead_letters.append((project.id.encode(), orjson.dumps(dead)))
        records = [(key, value) for key, values in packs.items() for value in pack_rows(values)]
        return Prepared(records, dead_letters, rejected, event_ids)

    async def _append(self, prepared: Prepared, cors: Mapping[str, str]) -> Answer | None:
        """None once durable; a 503 with Retry-After when the log cannot take them; a 504 when
        it cannot tell whether it did (retrying with the ids in the answer stores them once)."""
        started = time.perf_counter()
        try:
            with IN_FLIGHT.track_inprogress():
                await self.writer.append(prepared.records, prepared.dead_letters)
        except LogUnavailable as exc:
            log.warning("event log unavailable; answering 503", extra={"error": str(exc)[:300]})
            return _error(
                503,
                "event log unavailable, nothing was stored; retry later",
                {"Retry-After": str(RETRY_AFTER_SECONDS), **cors},
            )
        except LogOutcomeUnknown as exc:
            log.warning("event log outcome unknown; answering 504", extra={"error": str(exc)[:300]})
            body = {
                "error": "event log did not confirm in time; the events may be stored: retry later with the "
                "same event_id values (listed in event_ids, in request order), which are stored once",
                "event_ids": prepared.event_ids,
            }
            return _json(504, body, {"Retry-After": str(RETRY_AFTER_SECONDS), **cors})
        APPEND_SECONDS.observe(time.perf_counter() - started)
        return None


PIXEL_OPENAPI: dict[str, Any] = {
    "parameters": [
        {
            "name": name,
            "in": "query",
            "required": name in ("write_key", "anonymous_id"),
            "schema": {"type": "string"},
            "example": example,
        }
        for name, example in (
            ("write_key", "wk_shop_1"),
            ("type", "page"),
            ("name", "Newsletter opened"),
            ("anonymous_id", "a1"),
            ("user_id", "user-42"),
            ("url", "https://shop.example/mail/open?utm_source=news"),
            ("properties.issue", "42"),
            ("timing.response_ms", "120"),
        )
    ],
    "responses": {"200": {"description": "a 1x1 GIF", "content": {"image/gif": {}}}},
}
PIXEL_GIF = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")
_PIXEL_TOP = {"type", "name", "anonymous_id", "user_id", "event_id", "timestamp", "channel"}


def pixel_event(items: list[tuple[str, str]]) -> dict[str, Any]:
    """Query parameters to an event: top-level fields, ``url``/``referrer``/``title`` as page context,
    and dotted names (``properties.plan``, ``timing.response_ms``) as nested values."""
    event: dict[str, Any] = {"type": "page"}
    for key, value in items:
        if key in _PIXEL_TOP:
            event[key] = value
        elif key in ("url", "referrer", "title", "path"):
            page = event.setdefault("context", {}).setdefault("page", {})
            page[key] = value
            if key == "url" and "path" not in page:
                page["path"] = urlparse(value).path
        elif key.startswith(("properties.", "timing.")) and key.count(".") == 1:
            group, name = key.split(".")
            number: Any = value
            if group == "timing":
                try:
                    number = float(value)
                except ValueError:
                    number = value  # the validator names the field
            event.setdefault(group, {})[name] = number
    return event

"""Query API routes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import StreamingResponse

from services.core.erasure import ERASURES_LISTED
from services.core.events import iso
from services.core.openapi import response_example
from services.core.settings import Project, Projects
from services.core.signals import STORED_SESSION_COLUMNS, Cursor, cursor_text, signal_json, stored_session_json
from services.core.warehouse import Warehouse
from services.sessionizer.open_sessions import OpenSessions

from . import examples
from .analytics import (
    DEFAULT_THRESHOLDS,
    DIMENSIONS,
    MAX_TREND_POINTS,
    Source,
    abandonment,
    behaviour,
    correlations,
    errors,
    funnel,
    journey_map,
    paths,
    performance,
    retention,
    trend_buckets,
    trends,
)
from .auth import project_for
from .console import add_console
from .dead_letters import payload_as_sent
from .erasure import erase_person
from .export import export_person
from .journeys import load_journey, ms
from .json_bodies import JsonBodyRoute
from .models import (
    AbandonmentRequest,
    BehaviourRequest,
    Breakdown,
    CorrelationRequest,
    ErrorsRequest,
    FunnelRequest,
    PathsRequest,
    PerformanceRequest,
    RetentionRequest,
    TrendsRequest,
)
from .signals import event_stream, parse_cursor, signals_after
from .stats import MIN_OBSERVATIONS, wilson
from .steps import step_condition, step_label

T = TypeVar("T")

SEGMENT_QUERY = Query(
    None,
    alias="filter",
    description="a segment, as DIMENSION:VALUE (repeat it: values of one dimension are alternatives), "
    "e.g. filter=campaign_source:google&filter=country:DE; the dimensions of `filters` in the POST bodies",
)

log = logging.getLogger("touchpoint.api")


def time_range(from_: str | datetime | None, to: str | datetime | None) -> tuple[int, int]:
    """The contract's defaults (from: 7 days ago, to: now) as epoch ms; 422 naming the field."""
    now = datetime.now(UTC)
    start = _instant(from_, "from", now - timedelta(days=7))
    end = _instant(to, "to", now + timedelta(seconds=1))
    if start >= end:
        raise HTTPException(422, "from: must be before to")
    return start, end


def _instant(value: str | datetime | None, field: str, default: datetime) -> int:
    if value is None:
        return ms(default)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise HTTPException(422, f"{field}: not an ISO 8601 time") from None
    return ms(value if value.tzinfo else value.replace(tzinfo=UTC))


def _start_cursor(after: str | None, since: str | None, last_event_id: str | None = None) -> Cursor:
    """Where a listing or stream of signals starts: a cursor the API gave, else an instant
    (default an hour ago): (that ms - 1, "~") comes before every signal noticed at that ms or
    later, since "~" sorts after any session id."""
    if last_event_id:  # an EventSource reconnecting says where it was
        return parse_cursor(last_event_id, "Last-Event-ID")
    if after:
        return parse_cursor(after, "after")
    return _instant(since, "since", datetime.now(UTC) - timedelta(hours=1)) - 1, "~"


class QueryApi:
    def __init__(self, projects: Projects, warehouse: Warehouse) -> None:
        self.projects = projects
        self.warehouse = warehouse
        self._ready = False
        self.router = APIRouter(route_class=JsonBodyRoute)
        add_console(self.router)
        routes: list[tuple[str, Callable[..., Any], str, str, str]] = [  # path, endpoint, method, tag, summary
            ("/v1/journeys/{identifier}", self.journey, "GET", "query", "Everything one person did, as sessions"),
            (
                "/v1/funnels",
                self.funnels,
                "POST",
                "query",
                "How many journeys (or sessions) reach each step in order within the window",
            ),
            (
                "/v1/abandonment",
                self.abandonment,
                "POST",
                "query",
                "Where journeys that miss the goal stop, and what they met there",
            ),
            (
                "/v1/correlations",
                self.correlations,
                "POST",
                "query",
                "How a timing or error metric relates to conversion",
            ),
            (
                "/v1/paths",
                self.paths,
                "POST",
                "query",
                "The most common touchpoints right before and after a touchpoint",
            ),
            (
                "/v1/errors",
                self.errors,
                "POST",
                "query",
                "Which errors hit journeys, and how many of those still reached the goal",
            ),
            (
                "/v1/performance",
                self.performance,
                "POST",
                "query",
                "Response times and Web Vitals per touchpoint, browser, network, ...: who waits most, what it costs",
            ),
            (
                "/v1/trends",
                self.trends,
                "POST",
                "query",
                "People, sessions, conversion, response time and errors per hour, day or week",
            ),
            (
                "/v1/behaviour",
                self.behaviour,
                "POST",
                "query",
                "Activity and conversion by hour of day and weekday, per channel",
            ),
            (
                "/v1/retention",
                self.retention,
                "POST",
                "query",
                "Cohorts by their first event; how many come back (or buy again) in each later period",
            ),
            (
                "/v1/journey-map",
                self.journey_map,
                "GET",
                "query",
                "The customer journey map: stages, people, conversion to the next stage, pain points",
            ),
            (
                "/v1/sessions",
                self.sessions,
                "GET",
                "query",
                "Stored sessions, newest first: entry and exit touchpoints, errors, response times, goals",
            ),
            (
                "/v1/abandonments",
                self.abandonments,
                "GET",
                "signals",
                "Abandonment signals: sessions that just timed out without reaching a goal, after a cursor",
            ),
            (
                "/v1/abandonments/stream",
                self.abandonment_stream,
                "GET",
                "signals",
                "The same signals as Server-Sent Events, each as the sessionizer notices it",
            ),
            (
                "/v1/rejected",
                self.rejected,
                "GET",
                "operations",
                "Dead letters: events refused at ingest or undecodable, with the reason",
            ),
            (
                "/v1/identity-conflicts",
                self.identity_conflicts,
                "GET",
                "operations",
                "Devices linked to more than one user id (shared devices); never merged",
            ),
            (
                "/v1/persons/{identifier}",
                self.erase,
                "DELETE",
                "privacy",
                "Erase a person: their events on every device, sessions, identity links and signals",
            ),
            (
                "/v1/persons/{identifier}/export",
                self.export,
                "GET",
                "privacy",
                "Export a person (right of access): everything stored about them, as newline-delimited JSON",
            ),
            (
                "/v1/erasures",
                self.erasures,
                "GET",
                "privacy",
                "The erasures done, newest first: whom, how much, when (the record for an audit)",
            ),
        ]
        response_examples = {
            "/v1/journeys/{identifier}": examples.JOURNEY,
            "/v1/journey-map": examples.JOURNEY_MAP,
            "/v1/rejected": examples.REJECTED,
            "/v1/sessions": examples.SESSIONS,
            "/v1/identity-conflicts": examples.CONFLICTS,
            "/v1/behaviour": examples.BEHAVIOUR,
            "/v1/abandonments": examples.ABANDONMENTS,
            "/v1/persons/{identifier}": examples.ERASURE,
            "/v1/erasures": examples.ERASURES,
        }
        for path, endpoint, method, tag, summary in routes:
            example = response_examples.get(path)
            options: dict[str, Any] = {"openapi_extra": response_example(example) if example else None}
            if path == "/v1/persons/{identifier}/export":
                options.update(
                    openapi_extra=response_example(examples.EXPORT, "application/x-ndjson"),
                    response_class=StreamingResponse,
                )
            if path == "/v1/abandonments/stream":
                options.update(
                    openapi_extra=response_example(examples.ABANDONMENT_STREAM, "text/event-stream"),
                    response_class=StreamingResponse,
                )
            self.router.add_api_route(path, endpoint, methods=[method], tags=[tag], summary=summary, **options)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a blocking warehouse call in a worker thread; a query over its limits is a clear 4xx/5xx."""
        try:
            return await asyncio.to_thread(fn, *args)
        except Exception as exc:
            text = str(exc)
            if "TOO_MANY_ROWS" in text or "TOO_MANY_BYTES" in text:
                raise HTTPException(
                    413, "query: would read more rows than TOUCHPOINT_QUERY_MAX_ROWS allows; narrow from/to"
                ) from None
            if "TIMEOUT_EXCEEDED" in text:
                raise HTTPException(
                    504, "query: took longer than TOUCHPOINT_QUERY_TIMEOUT_SECONDS; narrow from/to"
                ) from None
            raise

    async def start(self) -> None:
        await asyncio.to_thread(self.warehouse.migrate)
        self._ready = True

    async def stop(self) -> None:
        self._ready = False

    def ready(self) -> bool:
        return self._ready

    async def journey(
        self,
        request: Request,
        identifier: str,
        from_: str | None = Query(None, alias="from", description="ISO 8601; default 7 days ago"),
        to: str | None = Query(None, description="ISO 8601; default now"),
    ) -> dict[str, Any]:
        """The person behind a user id or anonymous id, with their sessions in time order."""
        project = project_for(request, self.projects)
        start, end = time_range(from_, to)
        journey = await self._call(
            load_journey, self.warehouse, project.id, identifier, start, end, project.session_timeout_minutes
        )
        if journey is None:
            raise HTTPException(404, f"identifier: no events for {identifier!r} between from and to")
        return journey

    async def sessions(
        self,
        request: Request,
        person: str | None = Query(None, description="only this person's sessions (a user id, or a lone device)"),
        device: str | None = Query(None, description="only this device's sessions (its anonymous id)"),
        channel: str | None = Query(None, description="web, mobile_web, app, ..."),
        goal: str | None = Query(None, description="only sessions that reached this goal"),
        from_: str | None = Query(
            None, alias="from", description="ISO 8601, sessions started from; default 7 days ago"
        ),
        to: str | None = Query(None, description="ISO 8601, sessions started before; default now"),
        limit: int = Query(100, ge=1, le=10_000),
        include_bots: bool = Query(False, description="list sessions of known bots (device type bot) too"),
    ) -> dict[str, Any]:
        """Sessions as the sessionizer stored them (one row per session, rewritten when a late event
        or a new login changes it), newest first; as the analyses count them, without bots'."""
        project = project_for(request, self.projects)
        start, end = time_range(from_, to)
        params: dict[str, Any] = {"p": project.id, "s": start, "e": end, "n": limit}
        where = [
            "project = {p:String}",
            "started_at >= fromUnixTimestamp64Milli({s:Int64})",
            "started_at < fromUnixTimestamp64Milli({e:Int64})",
            *([] if include_bots else ["device_type != 'bot'"]),
        ]
        for name, value, condition in (
            ("person", person, "person = {person:String}"),
            ("device", device, "device = {device:String}"),
            ("channel", channel, "channel = {channel:String}"),
            ("goal", goal, "has(goals, {goal:String})"),
        ):
            if value is not None:
                params[name] = value
                where.append(condition)
        rows = await self._call(
            self.warehouse.rows,
            f"SELECT {STORED_SESSION_COLUMNS} FROM sessions FINAL WHERE {' AND '.join(where)} "
            "ORDER BY started_at DESC, session_id LIMIT {n:UInt32}",
            params,
        )
        return {"sessions": [stored_session_json(r) for r in rows], "count": len(rows)}

    async def abandonments(
        self,
        request: Request,
        after: str | None = Query(None, description="the cursor of the last signal read (its `cursor`)"),
        since: str | None = Query(None, description="ISO 8601: signals noticed from then on; default 1 hour ago"),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> dict[str, Any]:
        """Sessions that timed out without reaching one of the project's goals, oldest first,
        each once. Poll with `after` = the `next` of the previous answer."""
        project = project_for(request, self.projects)
        start = _start_cursor(after, since)
        rows = await self._call(signals_after, self.warehouse, project.id, start, limit)
        signals = [signal_json(r) for r in rows]
        return {"abandonments": signals, "next": signals[-1]["cursor"] if signals else cursor_text(start)}

    async def abandonment_stream(
        self,
        request: Request,
        after: str | None = Query(None, description="the cursor of the last signal read"),
        since: str | None = Query(None, description="ISO 8601: signals noticed from then on; default now"),
        last_event_id: str | None = Header(None, description="sent by an EventSource when it reconnects"),
    ) -> StreamingResponse:
        """`text/event-stream`: one `abandonment` event per signal, its `id` the cursor."""
        project = project_for(request, self.projects)
        start = _start_cursor(after, since or datetime.now(UTC).isoformat(), last_event_id)

        async def fetch(cursor: Cursor) -> list[dict[str, Any]]:
            return await self._call(signals_after, self.warehouse, project.id, cursor, 1000)

        return StreamingResponse(
            event_stream(fetch, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def rejected(
        self,
        request: Request,
        from_: str | None = Query(None, alias="from", description="ISO 8601; default 7 days ago"),
        to: str | None = Query(None, description="ISO 8601; default now"),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> dict[str, Any]:
        """The newest rejected events of the key's project, each with the field at fault."""
        project = project_for(request, self.projects)
        start, end = time_range(from_, to)
        rows = await self._call(
            self.warehouse.rows,
            "SELECT received_at, batch_index, error, payload FROM rejected_events "
            "WHERE project = {p:String} AND received_at >= fromUnixTimestamp64Milli({s:Int64}) "
            "AND received_at < fromUnixTimestamp64Milli({e:Int64}) ORDER BY received_at DESC LIMIT {n:UInt32}",
            {"p": project.id, "s": start, "e": end, "n": limit},
        )
        return {
            "rejected": [
                {
                    "received_at": iso(ms(r["received_at"])),
                    "index": r["batch_index"],
                    "error": r["error"],
                    "payload": payload_as_sent(r["payload"]),
                }
                for r in rows
            ]
        }

    async def identity_conflicts(self, request: Request, limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        """Each device seen with several user ids, with when each user first and last used it.
        The device belongs to each user from that user's first link on; the users stay apart."""
        project = project_for(request, self.projects)
        rows = await self._call(
            self.warehouse.rows,
            "SELECT anonymous_id, arraySort(x -> x.2, groupArray((user_id, toUnixTimestamp64Milli(fs), "
            "toUnixTimestamp64Milli(ls)))) AS users FROM ("
            "  SELECT anonymous_id, user_id, min(first_seen) AS fs, max(last_seen) AS ls FROM identity_links"
            "  WHERE project = {p:String} GROUP BY anonymous_id, user_id"
            ") GROUP BY anonymous_id HAVING length(users) > 1 ORDER BY anonymous_id LIMIT {n:UInt32}",
            {"p": project.id, "n": limit},
        )
        return {
            "conflicts": [
                {
                    "anonymous_id": r["anonymous_id"],
                    "users": [
                        {"user_id": u, "first_seen": iso(f), "last_seen": iso(last)} for u, f, last in r["users"]
                    ],
                }
                for r in rows
            ]
        }

    async def erase(self, request: Request, identifier: str) -> dict[str, Any]:
        """The right to be forgotten: everything stored about the person ``identifier`` names (a
        user id with every device linked to it, or a lone anonymous id; as ``GET /v1/journeys``
        resolves it), gone from every answer at once. A device shared with another user keeps
        that user's events. Their events accepted before it but still on their way (see
        ``GET /v1/status``) are dropped when the sessionizer reads them; events accepted after it
        are the person coming back, and kept. Recorded in ``erasures`` without any event data."""
        project = project_for(request, self.projects)
        recompute = OpenSessions(self.warehouse, self.projects).recompute_after_erasure
        erased = await self._call(erase_person, self.warehouse, project.id, identifier, recompute)
        if erased is None:
            raise HTTPException(404, f"identifier: nothing is stored about {identifier!r}")
        log.info("person erased", extra={"project": project.id, **erased["deleted"]})  # who: in erasures only
        return erased

    async def export(self, request: Request, identifier: str) -> StreamingResponse:
        """The right of access and to data portability: everything stored about the person
        ``identifier`` names (as ``GET /v1/journeys`` and ``DELETE /v1/persons`` resolve it), all of
        time and every stored field, one JSON object per line: ``person``, ``identity_link``,
        ``event`` (oldest first), ``session``, ``abandonment``, then ``end`` with the counts (a
        stream cut short has no ``end``). A shared device's other users' events are not included."""
        project = project_for(request, self.projects)
        lines = await self._call(export_person, self.warehouse, project.id, identifier)
        if lines is None:
            raise HTTPException(404, f"identifier: nothing is stored about {identifier!r}")
        log.info("person exported", extra={"project": project.id})  # who: not in the logs
        filename = "person-" + "".join(c if c.isalnum() or c in "-_." else "_" for c in identifier)[:100] + ".ndjson"
        return StreamingResponse(
            lines,
            media_type="application/x-ndjson",
            headers={"Content-Disposition": f'attachment; filename="{filename}"'},
        )

    async def erasures(self, request: Request, limit: int = Query(100, ge=1, le=10_000)) -> dict[str, Any]:
        """The key's project's erasures, newest first, each with all it deleted (the API's passes,
        sweeps and devices found later); kept when retention removes everything else."""
        project = project_for(request, self.projects)
        rows = await self._call(self.warehouse.rows, ERASURES_LISTED, {"project": project.id, "limit": limit})
        return {
            "erasures": [
                {
                    "person_id": r["person"],
                    "devices": list(r["devices"]),
                    "deleted": {
                        "events": int(r["events"]),
                        "sessions": int(r["sessions"]),
                        "rejected": int(r["rejected"]),
                    },
                    "erased_at": iso(ms(r["erased_at"])),
                }
                for r in rows
            ]
        }

    def _source(
        self,
        project: Project,
        from_: str | datetime | None,
        to: str | datetime | None,
        include_bots: bool = False,
        filters: Mapping[Breakdown, list[str]] | None = None,
    ) -> Source:
        segment = tuple((dimension, tuple(values)) for dimension, values in sorted((filters or {}).items()))
        return Source(self.warehouse, project.id, *time_range(from_, to), include_bots=include_bots, segment=segment)

    @staticmethod
    def _goal(project: Project, goal: object, params: dict[str, Any]) -> str:
        if goal is None:
            if not project.goals:
                raise HTTPException(422, "goal: required (the project has no default goals)")
            goal = project.goals[0]
        return step_condition(goal, "goal", params, "goal")

    async def funnels(self, request: Request, body: FunnelRequest) -> dict[str, Any]:
        """Counts per step with conversion from step 1 and from the previous step, drop-off and
        the median time from the previous step (ClickHouse ``windowFunnel`` semantics)."""
        project = project_for(request, self.projects)
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        conds = [step_condition(step, f"s{i}", params, f"steps[{i}]") for i, step in enumerate(body.steps)]
        labels = [step_label(step) for step in body.steps]

        def run(breakdown: str | None) -> dict[str, list[dict[str, Any]]]:
            return funnel(
                source,
                conds,
                body.window_seconds * 1000,
                body.scope,
                breakdown,
                dict(params),
            )

        def labelled(steps: list[dict[str, Any]] | None) -> list[dict[str, Any]]:
            if steps is None:
                steps = [
                    {
                        "count": 0,
                        "conversion_rate": None,
                        "step_conversion_rate": None,
                        "conversion_rate_ci95": None,
                        "drop_off": 0,
                        "median_seconds_from_previous": None,
                    }
                    for _ in labels
                ]
            return [{"step": label, **step} for label, step in zip(labels, steps, strict=True)]

        out: dict[str, Any] = {"steps": labelled((await self._call(run, None)).get(""))}
        if body.breakdown:
            by = await self._call(run, body.breakdown)
            out["breakdown"] = {value: labelled(steps) for value, steps in sorted(by.items())}
        return out

    async def paths(self, request: Request, body: PathsRequest) -> dict[str, Any]:
        """Next and previous touchpoints around each visit; with a goal, among those who never reached it."""
        project = project_for(request, self.projects)
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        visit = step_condition(body.touchpoint, "tp", params, "touchpoint")
        goal = step_condition(body.goal, "goal", params, "goal") if body.goal is not None else None
        result = await self._call(
            paths,
            source,
            visit,
            goal,
            body.scope,
            body.limit,
            params,
        )
        return {"touchpoint": step_label(body.touchpoint), **result}

    async def errors(self, request: Request, body: ErrorsRequest) -> dict[str, Any]:
        """Error groups by the journeys (or sessions) they hit, with conversion after them."""
        project = project_for(request, self.projects)
        if body.breakdown is not None:
            raise HTTPException(422, "breakdown: not supported by errors")
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        goal = self._goal(project, body.goal, params)
        return await self._call(errors, source, goal, body.scope, body.limit, params)

    async def performance(self, request: Request, body: PerformanceRequest) -> dict[str, Any]:
        """Percentiles, good / needs-improvement / poor shares and the conversion after each, per group."""
        project = project_for(request, self.projects)
        if body.breakdown is not None:
            raise HTTPException(422, "breakdown: not supported by performance (use by: each event's own value)")
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        goal = self._goal(project, body.goal, params)
        visit = "1" if body.touchpoint is None else step_condition(body.touchpoint, "tp", params, "touchpoint")
        thresholds = body.thresholds or DEFAULT_THRESHOLDS[body.metric]
        answer = await self._call(
            performance,
            source,
            body.metric,
            body.by,
            goal,
            visit,
            body.window_seconds * 1000,
            thresholds,
            body.limit,
            params,
        )
        return {
            "metric": body.metric,
            "by": body.by,
            "touchpoint": None if body.touchpoint is None else step_label(body.touchpoint),
            "thresholds": {"good": thresholds[0], "poor": thresholds[1]},
            **answer,
        }

    async def trends(self, request: Request, body: TrendsRequest) -> dict[str, Any]:
        """The range as a series: did conversion drop after Tuesday's release, did search get slower?"""
        project = project_for(request, self.projects)
        if body.breakdown is not None:
            raise HTTPException(422, "breakdown: not supported by trends (use filters for a segment)")
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        buckets = trend_buckets(source.start_ms, source.end_ms, body.interval, body.timezone)
        if len(buckets) > MAX_TREND_POINTS:
            raise HTTPException(
                422, f"interval: the range holds more than {MAX_TREND_POINTS} {body.interval}s; use a longer interval"
            )
        params: dict[str, Any] = {}
        goal = self._goal(project, body.goal, params)
        perf = "1" if body.touchpoint is None else step_condition(body.touchpoint, "tp", params, "touchpoint")
        points = await self._call(trends, source, goal, perf, body.interval, buckets, body.timezone, params)
        return {
            "interval": body.interval,
            "timezone": body.timezone,
            "touchpoint": None if body.touchpoint is None else step_label(body.touchpoint),
            "points": points,
        }

    async def behaviour(self, request: Request, body: BehaviourRequest) -> dict[str, Any]:
        """Sessions by the hour and weekday they started (weekday 1 = Monday), per channel."""
        project = project_for(request, self.projects)
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        goal = self._goal(project, body.goal, params)
        return await self._call(
            behaviour,
            source,
            goal,
            body.timezone,
            params,
        )

    async def retention(self, request: Request, body: RetentionRequest) -> dict[str, Any]:
        """Loyalty: people by the day, week or month of their first ``start`` event in the range
        (with ``cohort: new``, of all time, when it is in the range), and the share of each cohort
        doing ``return`` (default: ``start`` again) in each later one."""
        project = project_for(request, self.projects)
        if body.breakdown is not None:
            raise HTTPException(422, "breakdown: not supported by retention")
        start = body.from_
        if start is None:  # long enough to follow the first cohort through every period asked for
            days = {"day": 1, "week": 7, "month": 31}[body.period] * (body.periods + 1)
            start = (body.to or datetime.now(UTC)) - timedelta(days=days)
        source = self._source(project, start, body.to, body.include_bots, body.filters)
        new_from_ms = None
        if body.cohort == "new":  # all history read, to know whose first start came before the range
            source, new_from_ms = replace(source, start_ms=0), source.start_ms
        params: dict[str, Any] = {}
        start_cond = step_condition(body.start, "start", params, "start")
        return_step = body.start if body.return_ is None else body.return_
        return_cond = step_condition(return_step, "ret", params, "return")
        return await self._call(
            retention, source, start_cond, return_cond, body.period, body.periods, body.timezone, params, new_from_ms
        )

    async def journey_map(
        self,
        request: Request,
        from_: str | None = Query(None, alias="from", description="ISO 8601; default 7 days ago"),
        to: str | None = Query(None, description="ISO 8601; default now"),
        top: int = Query(5, ge=1, le=50, description="touchpoints listed per stage and per pain point"),
        include_bots: bool = Query(False, description="count events of known bots (by user agent) too"),
        filter_: list[str] | None = SEGMENT_QUERY,
    ) -> dict[str, Any]:
        """Stages as configured in the project's ``[[projects.stages]]``, from data."""
        project = project_for(request, self.projects)
        if not project.stages:
            raise HTTPException(
                422,
                "stages: none configured; add [[projects.stages]] tables (name, touchpoints) "
                "to the projects file, e.g. awareness, consideration, purchase, retention, advocacy",
            )
        source = self._source(project, from_, to, include_bots, filters_from_query(filter_ or []))
        params: dict[str, Any] = {}
        conds = []
        for k, stage in enumerate(project.stages):
            steps = [step_condition(t, f"st{k}_{j}", params, f"stages[{k}]") for j, t in enumerate(stage.touchpoints)]
            conds.append("(" + " OR ".join(steps) + ")")
        summary, rows = await self._call(journey_map, source, conds, params)
        return {
            "stages": [_stage_json(stage.name, k + 1, summary[k], rows, top) for k, stage in enumerate(project.stages)]
        }

    async def abandonment(self, request: Request, body: AbandonmentRequest) -> dict[str, Any]:
        """Journeys that miss the goal within the window, by the touchpoint where they stopped."""
        project = project_for(request, self.projects)
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        goal = self._goal(project, body.goal, params)
        begin = step_condition(body.start, "start", params, "start") if body.start is not None else None

        def run(breakdown: str | None) -> dict[str, Any]:
            return abandonment(
                source,
                goal,
                begin,
                body.window_seconds * 1000,
                body.scope,
                breakdown,
                body.limit,
                dict(params),
            )

        overall: dict[str, Any] = (await self._call(run, None)).get("", _empty_abandonment())
        if body.breakdown:
            overall["breakdown"] = await self._call(run, body.breakdown)
        return overall

    async def correlations(self, request: Request, body: CorrelationRequest) -> dict[str, Any]:
        """Conversion by metric bucket, Spearman's rho and the odds ratio per second (or per error)."""
        project = project_for(request, self.projects)
        source = self._source(project, body.from_, body.to, body.include_bots, body.filters)
        params: dict[str, Any] = {}
        goal = self._goal(project, body.goal, params)
        visit = step_condition(body.touchpoint, "tp", params, "touchpoint") if body.touchpoint is not None else None
        edges = body.buckets if body.metric != "errors" else [1.0, 2.0, 3.0]

        def run(breakdown: str | None) -> dict[str, dict[str, Any]]:
            return correlations(
                source,
                body.metric,
                goal,
                visit,
                body.window_seconds * 1000,
                breakdown,
                edges,
                dict(params),
            )

        overall = (await self._call(run, None)).get("")
        out: dict[str, Any] = _correlation_json(overall, body.metric, edges)
        if body.breakdown:
            by = await self._call(run, body.breakdown)
            out["by"] = {k: _correlation_json(v, body.metric, edges) for k, v in by.items()}
        return out


def filters_from_query(items: list[str]) -> dict[Breakdown, list[str]]:
    """``filter=DIMENSION:VALUE`` query parameters as the ``filters`` of a POST body."""
    filters: dict[Breakdown, list[str]] = {}
    for item in items:
        dimension, sep, value = item.partition(":")
        if not sep or dimension not in DIMENSIONS:
            raise HTTPException(
                422, f"filter: expected DIMENSION:VALUE with DIMENSION one of {', '.join(DIMENSIONS)}, got {item!r}"
            )
        filters.setdefault(cast(Breakdown, dimension), []).append(value)
    return filters


def _stage_json(name: str, index: int, summary: dict[str, Any], rows: list[dict[str, Any]], top: int) -> dict[str, Any]:
    mine = [r for r in rows if r["stage"] == index]
    people, onward = summary["people"], summary["onward"]
    channels: dict[str, int] = {}
    for r in mine:
        channels[r["channel"]] = channels.get(r["channel"], 0) + int(r["people"])

    def point(r: dict[str, Any], **extra: Any) -> dict[str, Any]:
        return {"touchpoint": r["label"], "channel": r["channel"], "people": int(r["people"]), **extra}

    enough = [r for r in mine if r["people"] >= MIN_OBSERVATIONS]
    exits = sorted(enough, key=lambda r: (-r["exits"] / r["people"], r["label"]))
    slow = sorted((r for r in enough if r["timed"] >= MIN_OBSERVATIONS), key=lambda r: (-r["median_ms"], r["label"]))
    errors = sorted(enough, key=lambda r: (-r["error_rate"], r["label"]))
    conversion = None
    if onward is not None:
        conversion = {"people": onward, "rate": onward / people if people else None, "ci95": wilson(onward, people)}
    return {
        "stage": name,
        "people": people,
        "conversion_to_next": conversion,
        "touchpoints": [point(r, events=int(r["events"])) for r in mine[:top]],
        "channels": dict(sorted(channels.items(), key=lambda kv: -kv[1])),
        "pain_points": {
            "abandonment": [
                point(r, exits=int(r["exits"]), exit_share=r["exits"] / r["people"]) for r in exits[:top] if r["exits"]
            ],
            "slowest": [point(r, median_response_ms=float(r["median_ms"])) for r in slow[:top]],
            "errors": [point(r, error_rate=float(r["error_rate"])) for r in errors[:top] if r["error_rate"] > 0],
        },
        "note": None if enough or not mine else f"fewer than {MIN_OBSERVATIONS} people per touchpoint: no pain points",
    }


def _empty_abandonment() -> dict[str, Any]:
    return {
        "journeys": 0,
        "converted": 0,
        "abandoned": 0,
        "recovered_cross_channel": 0,
        "points": [],
        "converting": {"median_response_ms": None, "error_rate": None, "avg_repeats": None},
        "conversion_rate": None,
        "conversion_rate_ci95": None,
    }


def _correlation_json(summary: dict[str, Any] | None, metric: str, edges: list[float]) -> dict[str, Any]:
    from .analytics import summarize

    summary = summary or summarize([], edges, 1.0)
    fit = summary.pop("odds_ratio_per_unit")
    key = "odds_ratio_per_error" if metric == "errors" else "odds_ratio_per_second"
    summary[key] = fit["odds_ratio"] if fit else None
    summary[f"{key}_ci95"] = fit["ci95"] if fit else None
    return summary

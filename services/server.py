"""Compose components (ingest, sessionizer, query API) into one HTTP process.

Every process serves ``/health`` and ``/metrics``; ``touchpoint up`` serves all
three components on one port. Components start in order and stop in reverse,
so the sessionizer drains before the log it reads from closes.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, multiprocess
from starlette.types import ASGIApp, Receive, Scope, Send

from services.core.openapi import response_example

log = logging.getLogger("touchpoint.server")


START_HINTS = {
    "ingest": "check that Kafka answers at TOUCHPOINT_KAFKA_BOOTSTRAP (or unset it for the embedded log)",
    "sessionizer": "check TOUCHPOINT_KAFKA_BOOTSTRAP and TOUCHPOINT_CLICKHOUSE_URL",
    "api": "check TOUCHPOINT_CLICKHOUSE_URL",
}


class Component(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def ready(self) -> bool: ...


class FastPaths:
    """Hands the few hot routes (``POST /v1/batch``) straight to their bare ASGI handlers.

    Why: FastAPI's routing, dependency solving and middleware stack cost more per
    request than validating a tracker's beacon. Everything else, the lifespan and
    the OpenAPI documentation of the hot routes included, stays with the app.
    """

    def __init__(self, app: ASGIApp, routes: Mapping[tuple[str, str], ASGIApp]) -> None:
        self.app = app
        self.routes = dict(routes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            handler = self.routes.get((scope["method"], scope["path"]))
            if handler is not None:
                await handler(scope, receive, send)
                return
        await self.app(scope, receive, send)


# Measured with make bench's paced runs: with CPython's default thresholds (700, 10, 10) the
# cyclic collector ran every few requests of 50 events and its pauses made most of the p99.
GC_THRESHOLDS = (50_000, 50, 1000)


def tune_gc() -> None:
    """Move everything alive after start-up (modules, app, clients) out of the collector's sight
    and collect young objects far less often: request garbage is acyclic and freed by refcount."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def build_app(components: Sequence[tuple[str, Component]], version: str = "0.1.0") -> ASGIApp:
    started: list[tuple[str, Component]] = []

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            for name, component in components:
                try:
                    await component.start()
                except Exception as exc:
                    log.error(
                        "component failed to start",
                        extra={"component": name, "error": repr(exc)[:500], "hint": START_HINTS.get(name, "")},
                    )
                    raise
                started.append((name, component))
                log.info("component started", extra={"component": name})
            tune_gc()
            yield
        finally:
            for name, component in reversed(started):
                try:
                    await component.stop()
                    log.info("component stopped", extra={"component": name})
                except Exception:
                    log.exception("component failed to stop", extra={"component": name})

    app = FastAPI(
        title="Touchpoint",
        version=version,
        description="Self-hosted customer-journey tracking: ingest, sessions, journeys.",
        lifespan=lifespan,
    )
    for _, component in components:
        router = getattr(component, "router", None)
        if isinstance(router, APIRouter):
            app.include_router(router)

    @app.get(
        "/health",
        tags=["operations"],
        summary="200 once events can be accepted and stored",
        openapi_extra=response_example(
            {"status": "ok", "components": {"ingest": True, "sessionizer": True, "api": True}}
        ),
    )
    async def health() -> Response:
        states: dict[str, Any] = {name: c.ready() for name, c in components}
        ok = all(states.values()) and len(started) == len(components)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "components": states}, status_code=200 if ok else 503
        )

    @app.get(
        "/v1/status",
        tags=["operations"],
        summary="Where is my data: consumer lag, ingestion delay, last write, errors",
        openapi_extra=response_example(
            {
                "sessionizer": {
                    "consumer_lag": 0,
                    "events_written": 120345,
                    "newest_event_received_at": 1795339999.8,
                    "ingestion_delay_seconds": 0.0,
                    "last_write_at": 1795340000.5,
                    "seconds_since_last_write": 0.4,
                    "last_error": None,
                }
            }
        ),
    )
    async def status() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, component in components:
            describe = getattr(component, "status", None)
            if callable(describe):
                out[name] = describe()
        return out

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        openapi_extra=response_example("touchpoint_ingest_events_accepted_total 120345.0\n", "text/plain"),
    )
    async def metrics() -> Response:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # several ingest workers: count them all
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    fast: dict[tuple[str, str], ASGIApp] = {}
    for _, component in components:
        routes = getattr(component, "fast_routes", None)
        if callable(routes):
            fast.update(routes())
    return FastPaths(app, fast) if fast else app

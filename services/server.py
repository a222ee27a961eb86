"""Compose components (ingest, sessionizer, query API) into one HTTP process.

Every process serves ``/health`` and ``/metrics``; ``touchpoint up`` serves all
three components on one port. Components start in order and stop in reverse,
so the sessionizer drains before the log it reads from closes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any, Protocol

from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

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


def build_app(components: Sequence[tuple[str, Component]], version: str = "0.1.0") -> FastAPI:
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
        summary="Where is my data: consumer lag, last write, errors",
        openapi_extra=response_example(
            {
                "sessionizer": {
                    "consumer_lag": 0,
                    "events_written": 120345,
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
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app

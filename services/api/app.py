"""Query API routes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request

from services.core.settings import Projects
from services.core.warehouse import Warehouse

from .auth import project_for
from .journeys import load_journey, ms


def _time(value: str | None, field: str, default: datetime) -> int:
    if value is None:
        return ms(default)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{field}: not an ISO 8601 time") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return ms(parsed)


class QueryApi:
    def __init__(self, projects: Projects, warehouse: Warehouse) -> None:
        self.projects = projects
        self.warehouse = warehouse
        self._ready = False
        self.router = APIRouter()
        self.router.add_api_route(
            "/v1/journeys/{identifier}",
            self.journey,
            methods=["GET"],
            tags=["query"],
            summary="Everything one person did, as sessions",
        )

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
        now = datetime.now(UTC)
        start = _time(from_, "from", now - timedelta(days=7))
        end = _time(to, "to", now + timedelta(seconds=1))
        if start >= end:
            raise HTTPException(422, "from: must be before to")
        journey = await asyncio.to_thread(
            load_journey, self.warehouse, project.id, identifier, start, end, project.session_timeout_minutes
        )
        if journey is None:
            raise HTTPException(404, f"identifier: no events for {identifier!r} between from and to")
        return journey

"""The sessionizer as a long-running component: schema, consumer, pipeline task."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from services.core.eventlog import LogReader
from services.core.settings import Projects, Settings
from services.core.warehouse import Warehouse

from .open_sessions import OpenSessions
from .pipeline import Pipeline
from .webhooks import WebhookSender

log = logging.getLogger("touchpoint.sessionizer")


DRAIN_TIMEOUT_S = 20.0


class Sessionizer:
    def __init__(self, settings: Settings, reader: LogReader, warehouse: Warehouse, projects: Projects) -> None:
        self.reader = reader
        self.warehouse = warehouse
        self.retention_days = settings.retention_days
        webhooks = WebhookSender(projects)
        self.webhooks = webhooks if webhooks.wanted else None
        self.pipeline = Pipeline(
            reader,
            warehouse,
            settings.batch_max_events,
            settings.batch_max_seconds,
            settings.batch_max_bytes,
            OpenSessions(
                warehouse, projects, settings.max_open_sessions, self.webhooks.submit if self.webhooks else None
            ),
        )
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await asyncio.to_thread(self.warehouse.migrate)
        await asyncio.to_thread(self.warehouse.apply_retention, self.retention_days)
        await self.reader.start()
        if self.webhooks is not None:
            await self.webhooks.start()
        self._stop.clear()
        self._task = asyncio.create_task(self._run(), name="sessionizer")

    async def _run(self) -> None:
        try:
            await self.pipeline.run(self._stop)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("sessionizer pipeline crashed")
            raise

    async def stop(self) -> None:
        """Drain: the batch in hand is written and committed before the consumer leaves."""
        self._stop.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(task, DRAIN_TIMEOUT_S)  # cancels the task when it expires
            except TimeoutError:
                log.warning("sessionizer did not drain in time; uncommitted records will be read again")
            except Exception:
                log.exception("sessionizer stopped with an error")
        await self.reader.stop()
        if self.webhooks is not None:
            await self.webhooks.stop()

    def status(self) -> dict[str, Any]:
        state = self.pipeline.state
        lag = self.reader.lag()
        newest = None if state.newest_received_ms is None else state.newest_received_ms / 1000
        return {
            "consumer_lag": lag,
            "events_written": state.events_written,
            "newest_event_received_at": newest,
            # How far stored data trails what ingest accepted: none once everything is read,
            # else how long ago ingest received the newest event stored so far.
            "ingestion_delay_seconds": 0.0 if lag == 0 else None if newest is None else max(0.0, time.time() - newest),
            "last_write_at": state.last_write_at,
            "seconds_since_last_write": None if state.last_write_at is None else time.time() - state.last_write_at,
            "last_error": state.last_error,
        }

    def ready(self) -> bool:
        """Alive and consuming. ClickHouse errors show in /v1/status and metrics, not here:
        events are still accepted durably while the warehouse recovers."""
        return self._task is not None and not self._task.done()

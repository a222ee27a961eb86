"""Abandonment webhooks: each signal this process wrote, POSTed to its project's URL.

Best effort by design: the process that noticed the signal sends it, so several sessionizers
never send one twice; a bounded queue (full: dropped and counted), a few retries with backoff on
network errors and 5xx, none on 4xx. A crash loses what was queued. Every signal is still in
``GET /v1/abandonments``, the record to reconcile from (the ``X-Touchpoint-Delivery`` header is
its cursor, also the key to deduplicate retries on).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import httpx
import orjson
from prometheus_client import Counter

from services.core.settings import Project, Projects
from services.core.signals import written_signal_json

log = logging.getLogger("touchpoint.webhooks")

DELIVERIES = Counter(
    "touchpoint_webhook_deliveries_total",
    "Abandonment webhooks by outcome (delivered, refused: 4xx, failed: gave up after retries, dropped: queue full)",
    ["outcome"],
)

QUEUE_SIZE = 10_000
TIMEOUT_S = 5.0
RETRY_DELAYS_S = (1.0, 5.0, 25.0)


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>``: the receiver recomputes it over the raw body with the shared secret."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender:
    def __init__(self, projects: Projects, retry_delays_s: Sequence[float] = RETRY_DELAYS_S) -> None:
        self._targets: Mapping[str, Project] = {p.id: p for p in projects.items if p.abandonment_webhook}
        self._retry_delays_s = tuple(retry_delays_s)
        self._queue: asyncio.Queue[tuple[Project, dict[str, Any]]] = asyncio.Queue(QUEUE_SIZE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def wanted(self) -> bool:
        return bool(self._targets)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def submit(self, signals: Sequence[Mapping[str, Any]]) -> None:
        """Thread-safe: queue the signals just written (called from the sessionizer's write thread)."""
        loop = self._loop
        if loop is None:
            return
        for signal in signals:
            project = self._targets.get(str(signal["project"]))
            if project is not None:
                loop.call_soon_threadsafe(self._put, project, written_signal_json(signal))

    def _put(self, project: Project, payload: dict[str, Any]) -> None:
        try:
            self._queue.put_nowait((project, payload))
        except asyncio.QueueFull:
            DELIVERIES.labels("dropped").inc()

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            while True:
                project, payload = await self._queue.get()
                await self._deliver(client, project, payload)

    async def _deliver(self, client: httpx.AsyncClient, project: Project, payload: dict[str, Any]) -> None:
        body = orjson.dumps({"type": payload["kind"], "project": project.id, "signal": payload})
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "Touchpoint-Webhooks/1",
            "X-Touchpoint-Event": payload["kind"],
            "X-Touchpoint-Delivery": payload["cursor"],
        }
        if project.webhook_secret:
            headers["X-Touchpoint-Signature"] = signature(project.webhook_secret, body)
        for attempt, delay in enumerate((*self._retry_delays_s, None)):
            try:
                r = await client.post(project.abandonment_webhook, content=body, headers=headers)
                if r.status_code < 300:
                    DELIVERIES.labels("delivered").inc()
                    return
                if r.status_code < 500 and r.status_code != 429:
                    DELIVERIES.labels("refused").inc()
                    log.warning(
                        "abandonment webhook refused; not retried",
                        extra={"project": project.id, "status": r.status_code, "delivery": payload["cursor"]},
                    )
                    return
                why = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                why = repr(exc)[:200]
            if delay is None:
                break
            log.info(
                "abandonment webhook failed; retrying",
                extra={"project": project.id, "attempt": attempt + 1, "error": why, "retry_in_s": delay},
            )
            await asyncio.sleep(delay)
        DELIVERIES.labels("failed").inc()
        log.warning(
            "abandonment webhook given up; the signal stays in GET /v1/abandonments",
            extra={"project": project.id, "delivery": payload["cursor"]},
        )

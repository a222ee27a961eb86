"""Send generated traffic over HTTP: as fast as possible or at a target rate, with progress."""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from .generator import Batch


@dataclass
class SendResult:
    """Which batches got which answer; latencies in seconds."""

    accepted_ids: set[str] = field(default_factory=set)
    refused_ids: set[str] = field(default_factory=set)  # answered 4xx/503, or never connected
    unknown_ids: set[str] = field(default_factory=set)  # connection broken mid-request, or 504: outcome unknown
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed_s: float = 0.0


def _now_ms() -> int:
    return int(time.time() * 1000)


async def send(
    url: str,
    write_key: str,
    batches: list[Batch],
    concurrency: int = 16,
    rate: float | None = None,
    progress: bool = True,
    retry_503: bool = False,
    deadline_s: float | None = None,
) -> SendResult:
    """POST every batch to ``{url}/v1/batch``; ``rate`` is batches per second (None: max)."""
    result = SendResult()
    queue: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=concurrency * 2)
    started = time.monotonic()
    done = 0

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal done
        while (batch := await queue.get()) is not None:
            body = orjson.dumps(batch.body(_now_ms()))
            while True:
                t = time.perf_counter()
                try:
                    r = await client.post(
                        f"{url}/v1/batch",
                        content=body,
                        headers={"X-Write-Key": write_key, "Content-Type": "application/json"},
                    )
                    status = r.status_code
                except httpx.ConnectError:
                    status = -1  # never reached the server: certainly not stored
                except httpx.HTTPError:
                    status = 0
                result.latencies.append(time.perf_counter() - t)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if (
                    status in (503, 504, 0, -1)
                    and retry_503
                    and (deadline_s is None or time.monotonic() - started < deadline_s)
                ):
                    await asyncio.sleep(0.2)
                    continue
                break
            ids = {e["event_id"] for e in batch.events if "event_id" in e}
            if status == 200:
                refused = {batch.events[r["index"]].get("event_id") for r in r.json()["rejected"]}
                result.accepted_ids |= ids - refused
                result.refused_ids |= refused - {None}
            elif status in (0, 504):  # 504: the log could not tell whether it stored them
                result.errors += 1
                result.unknown_ids |= ids
            else:
                result.errors += 1
                result.refused_ids |= ids
            done += 1

    async def report() -> None:
        while True:
            await asyncio.sleep(1)
            elapsed = time.monotonic() - started
            print(
                f"  sent {done}/{len(batches)} batches ({done / max(elapsed, 1e-9):.0f}/s), "
                f"statuses {dict(sorted(result.statuses.items()))}",
                file=sys.stderr,
                flush=True,
            )

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:
        workers = [asyncio.create_task(worker(client)) for _ in range(concurrency)]
        reporter = asyncio.create_task(report()) if progress else None
        for i, batch in enumerate(batches):
            if rate:
                delay = started + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            await queue.put(batch)
        for _ in workers:
            await queue.put(None)
        await asyncio.gather(*workers)
        if reporter:
            reporter.cancel()
            print(
                f"  sent {done}/{len(batches)} batches in {time.monotonic() - started:.1f}s, "
                f"statuses {dict(sorted(result.statuses.items()))}",
                file=sys.stderr,
                flush=True,
            )
    result.elapsed_s = time.monotonic() - started
    result.refused_ids -= result.accepted_ids  # a retried copy got its 200: the event must be stored
    result.unknown_ids -= result.accepted_ids
    return result


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def summary(result: SendResult) -> dict[str, Any]:
    return {
        "batches": sum(result.statuses.values()),
        "statuses": {str(code): n for code, n in sorted(result.statuses.items())},
        "p50_ms": round(percentile(result.latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(result.latencies, 99) * 1000, 2),
        "elapsed_s": round(result.elapsed_s, 2),
    }

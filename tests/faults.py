"""Helpers for fault tests: load in the background, catching up, exact accounting."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from loadtests.generator import Traffic, generate
from loadtests.sender import SendResult, send
from tests.harness import WRITE_KEY, Proc, wait_for


def traffic(seed: int, people: int, duplicate_rate: float = 0.03) -> Traffic:
    """Generated journeys; ``duplicate_rate`` of the batches are sent again (a client's retry)."""
    now = int(time.time() * 1000)
    return generate(seed, people, now - 20 * 3600_000, now, duplicate_rate=duplicate_rate)


@dataclass
class BackgroundLoad:
    """Sends batches from a thread; ``result`` is ready after ``join``."""

    url: str
    traffic: Traffic
    rate: float | None = None
    concurrency: int = 8
    result: SendResult = field(default_factory=SendResult)
    _thread: threading.Thread | None = None

    def start(self) -> BackgroundLoad:
        def run() -> None:
            self.result = asyncio.run(
                send(self.url, WRITE_KEY, self.traffic.batches, self.concurrency, self.rate, progress=False)
            )

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        return self

    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout: float = 180) -> SendResult:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the load generator did not finish"
        return self.result


def sessionizer_status(proc: Proc) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{proc.url}/v1/status", timeout=10).json()["sessionizer"]
    return status


def wait_caught_up(proc: Proc, timeout: float = 120) -> None:
    """Until the sessionizer has read everything (lag 0 twice in a row)."""
    streak = 0

    def check() -> bool:
        nonlocal streak
        lag = sessionizer_status(proc)["consumer_lag"]
        streak = streak + 1 if lag == 0 else 0
        return streak >= 3

    wait_for(check, timeout, "the sessionizer to catch up")


def stored_counts(proc: Proc, project: str = "shop") -> dict[str, int]:
    """Run the audit in its own process (chDB: one engine path per process)."""
    url = f"chdb://{proc.data_dir / 'clickhouse'}"
    out = subprocess.run(
        [sys.executable, "-m", "loadtests.audit", url, project], capture_output=True, check=True, timeout=120
    )
    counts: dict[str, int] = orjson.loads(out.stdout)
    return counts


def assert_exact_accounting(result: SendResult, counts: dict[str, int]) -> None:
    """Every 200 stored exactly once; no 4xx/503 stored; unknown outcomes at most once."""
    assert result.accepted_ids, "nothing was accepted: the test proved nothing"
    missing = [i for i in result.accepted_ids if counts.get(i, 0) == 0]
    doubled = {i: n for i, n in counts.items() if n > 1}
    leaked = [i for i in result.refused_ids if i in counts]
    assert not missing, f"{len(missing)} acknowledged events lost, e.g. {missing[:5]}"
    assert not doubled, f"{len(doubled)} events stored more than once, e.g. {list(doubled.items())[:5]}"
    assert not leaked, f"{len(leaked)} refused events stored anyway, e.g. {leaked[:5]}"
    unknown_extra = set(counts) - result.accepted_ids - result.unknown_ids
    assert not unknown_extra, f"events stored that were never sent: {sorted(unknown_extra)[:5]}"

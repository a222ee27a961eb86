"""Test harness: run real ``touchpoint`` processes and talk to them over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from services.testing.kafka_broker import free_port

WRITE_KEY = "wk_test_shop"
API_KEY = "ak_test_shop"
OTHER_WRITE_KEY = "wk_test_other"
OTHER_API_KEY = "ak_test_other"

PROJECTS_TOML = f"""
[[projects]]
id = "shop"
write_keys = ["{WRITE_KEY}"]
api_keys = ["{API_KEY}"]
allowed_origins = ["*"]
goals = ["Order Completed"]
session_timeout_minutes = 30

[[projects.stages]]
name = "awareness"
touchpoints = ["Home"]

[[projects.stages]]
name = "consideration"
touchpoints = ["Search", "Product", "Product Added"]

[[projects.stages]]
name = "purchase"
touchpoints = ["Cart", "Checkout", "Order Completed"]

[[projects]]
id = "other"
write_keys = ["{OTHER_WRITE_KEY}"]
api_keys = ["{OTHER_API_KEY}"]
"""


@dataclass
class Proc:
    """One running ``touchpoint <command>`` process."""

    command: str
    env: dict[str, str]
    data_dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 90.0) -> Proc:
        n = len(self.logs)
        out = self.data_dir / f"{self.command}-{self.port}-{n}.stdout"
        err = self.data_dir / f"{self.command}-{self.port}-{n}.stderr"
        self.logs += [out, err]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.cli", self.command],
            env=self.env,
            stdout=open(out, "wb"),
            stderr=open(err, "wb"),
            cwd=self.data_dir,
        )
        STARTED.append(self.proc)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"touchpoint {self.command} exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"touchpoint {self.command} not healthy after {timeout}s:\n{self.tail()}")

    def tail(self, chars: int = 4000) -> str:
        return "\n".join(p.read_text(errors="replace")[-chars:] for p in self.logs[-2:] if p.exists())

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 40.0) -> int:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise
        return self.proc.returncode if self.proc else 0

    # HTTP helpers -----------------------------------------------------------------
    def post_batch(self, events: list[dict[str, Any]], key: str = WRITE_KEY, **body: Any) -> httpx.Response:
        return httpx.post(
            f"{self.url}/v1/batch", json={"events": events, **body}, headers={"X-Write-Key": key}, timeout=30
        )

    def journey(self, identifier: str, key: str = API_KEY, **params: str) -> httpx.Response:
        return httpx.get(
            f"{self.url}/v1/journeys/{identifier}",
            params=params,
            headers={"Authorization": f"Bearer {key}"},
            timeout=30,
        )


def sessions_of(
    proc: Proc, device: str, expected: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0
) -> list[dict[str, Any]]:
    """Wait until GET /v1/sessions?device= answers what ``expected`` accepts; return the sessions, oldest first."""

    def check() -> list[dict[str, Any]] | None:
        r = httpx.get(
            f"{proc.url}/v1/sessions",
            params={"device": device, "from": "2000-01-01T00:00:00Z"},
            headers={"Authorization": f"Bearer {API_KEY}"},
            timeout=30,
        )
        if r.status_code != 200:
            return None
        sessions: list[dict[str, Any]] = r.json()["sessions"][::-1]
        return sessions if expected(sessions) else None

    result: list[dict[str, Any]] = wait_for(check, timeout, f"the sessions of {device}")
    return result


def make_env(data_dir: Path, port: int, **extra: str) -> dict[str, str]:
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "test-projects.toml"
    config.write_text(PROJECTS_TOML)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOUCHPOINT_")}
    env.update(
        TOUCHPOINT_DATA_DIR=str(data_dir),
        TOUCHPOINT_PORT=str(port),
        TOUCHPOINT_CONFIG=str(config),
        TOUCHPOINT_BATCH_MAX_SECONDS="0.3",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


# Every service process a test started: a test that fails before its proc.stop() must not
# leave a server running (and holding CPU and memory) after the test run.
STARTED: list[subprocess.Popen[bytes]] = []


def kill_leftovers() -> int:
    """SIGKILL every started process still running; returns how many there were."""
    left = [p for p in STARTED if p.poll() is None]
    for p in left:
        p.kill()
        p.wait(10)
    STARTED.clear()
    return len(left)


def new_proc(command: str, data_dir: Path, **extra: str) -> Proc:
    port = free_port()
    return Proc(command, make_env(data_dir, port, **extra), data_dir, port)


def event_ids(journey: dict[str, Any]) -> list[str]:
    return [e["event_id"] for s in journey["sessions"] for e in s["events"]]


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll until check() returns something truthy; the last value on timeout is reported."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


def journey_with(
    proc: Proc, identifier: str, expected_ids: set[str], timeout: float = 30.0, since: str | None = None
) -> dict[str, Any]:
    """Wait until the journey (from ``since``, when given) holds every expected event id; return it."""

    def check() -> dict[str, Any] | None:
        r = proc.journey(identifier, **({"from": since} if since else {}))
        if r.status_code != 200:
            return None
        body: dict[str, Any] = r.json()
        return body if expected_ids <= set(event_ids(body)) else None

    result: dict[str, Any] = wait_for(check, timeout, f"events {sorted(expected_ids)[:3]}... in journey {identifier}")
    return result


def uid(prefix: str) -> str:
    """A name no other test (or earlier run on the same data) uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ago(minutes: float) -> str:
    """An ISO time in the recent past, inside the API's default 7-day range."""
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()

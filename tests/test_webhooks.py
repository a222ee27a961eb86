"""Abandonment webhooks through `touchpoint up`: signed, retried after a 5xx, never for a buyer."""

from __future__ import annotations

import hashlib
import hmac
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.harness import Proc, new_proc, wait_for

SECRET = "s3cret-for-tests"


class Receiver(BaseHTTPRequestHandler):
    """Records every POST; answers 500 to the first one, then 200."""

    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((dict(self.headers), body))
        self.send_response(500 if len(self.received) == 1 else 200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[ThreadingHTTPServer]:
    Receiver.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def test_an_abandoned_session_is_posted_to_the_projects_webhook(tmp_path: Path, receiver: ThreadingHTTPServer) -> None:
    config = tmp_path / "hooked.toml"
    config.write_text(
        "[[projects]]\n"
        'id = "hooked"\n'
        'write_keys = ["wk_hooked"]\n'
        'api_keys = ["ak_hooked"]\n'
        'goals = ["Order Completed"]\n'
        f'abandonment_webhook = "http://127.0.0.1:{receiver.server_address[1]}/hook"\n'
        f'webhook_secret = "{SECRET}"\n'
    )
    proc: Proc = new_proc("up", tmp_path / "data", TOUCHPOINT_CONFIG=str(config)).start()
    try:
        left, bought = f"left-{uuid.uuid4().hex[:8]}", f"bought-{uuid.uuid4().hex[:8]}"

        def visit(dev: str, goal: bool) -> list[dict[str, Any]]:
            # Ended 44 minutes ago: past the 30 minute timeout as soon as it is read.
            at = [(datetime.now(UTC) - timedelta(minutes=m)).isoformat() for m in (45, 44)]
            last = {"type": "track", "name": "Order Completed"} if goal else {"type": "page"}
            return [
                {"type": "page", "anonymous_id": dev, "timestamp": at[0]},
                {"anonymous_id": dev, "timestamp": at[1], **last},
            ]

        r = proc.post_batch(visit(left, False) + visit(bought, True), key="wk_hooked")
        assert r.status_code == 200, r.text
        # The first POST gets a 500: the same signal comes again (after 1 s), and is then taken.
        wait_for(lambda: len(Receiver.received) >= 2, 30, "the webhook and its retry")
        (h1, b1), (h2, b2) = Receiver.received[:2]
        assert b1 == b2 and h1["X-Touchpoint-Delivery"] == h2["X-Touchpoint-Delivery"]
        expected = "sha256=" + hmac.new(SECRET.encode(), b1, hashlib.sha256).hexdigest()
        assert hmac.compare_digest(h1["X-Touchpoint-Signature"], expected)
        body = orjson.loads(b1)
        assert body["type"] == "abandonment" and body["project"] == "hooked"
        assert body["signal"]["anonymous_id"] == left and body["signal"]["goals_reached"] == []
        assert body["signal"]["cursor"] == h1["X-Touchpoint-Delivery"]
        # The same signal, as the API lists it.
        listed = httpx.get(
            f"{proc.url}/v1/abandonments", headers={"Authorization": "Bearer ak_hooked"}, timeout=10
        ).json()["abandonments"]
        assert [s["cursor"] for s in listed] == [body["signal"]["cursor"]]
        assert bought not in {orjson.loads(b)["signal"]["anonymous_id"] for _, b in Receiver.received}
    finally:
        proc.stop()

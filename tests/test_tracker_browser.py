"""The web tracker in a real headless Chromium: page view with timings, an action, an
identify and a JavaScript error arrive through the real ingest and show in the journey."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from services.testing.kafka_broker import free_port
from tests.conftest import IN_CI
from tests.harness import WRITE_KEY, Proc, journey_with, new_proc, wait_for

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

PAGE = """<!doctype html><html><head><title>Shop search</title>
<script src="{collector}/v1/tracker.js" data-write-key="{write_key}" defer></script></head>
<body><h1>Search</h1><script>
window.addEventListener("load", function () {{
  setTimeout(function () {{
    touchpoint.track("Products Searched", {{query: "shoes"}}, 850);
    touchpoint.identify("browser-user-1", {{plan: "gold"}});
    document.body.setAttribute("data-aid", localStorage.getItem("tp_aid"));
    setTimeout(function () {{ throw new Error("search widget failed"); }}, 50);
    setTimeout(function () {{ touchpoint.flush(); document.title = "flushed"; }}, 300);
  }}, 100);
}});
</script></body></html>"""


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = new_proc("up", tmp_path_factory.mktemp("browser")).start()
    yield proc
    proc.stop()


def serve_page(html: str) -> tuple[str, http.server.ThreadingHTTPServer]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = html.encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            return None

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}/search", server


def test_tracker_in_headless_chromium(up: Proc, tmp_path: Path) -> None:
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("CI=true and chromium is missing: `make test` installs it with apt-get")
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
    url, server = serve_page(PAGE.format(collector=up.url, write_key=WRITE_KEY))
    try:
        out = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--virtual-time-budget=6000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
    match = re.search(r'data-aid="([0-9a-f-]{36})"', out.stdout)
    assert match, f"the page did not run the tracker:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}"
    anonymous_id = match.group(1)

    def complete() -> dict[str, Any] | None:
        r = up.journey("browser-user-1")
        if r.status_code != 200:
            return None
        events = [e for s in r.json()["sessions"] for e in s["events"]]
        names = {(e["type"], e["name"]) for e in events}
        return (
            r.json() if {("page", "Shop search"), ("track", "Products Searched"), ("track", "Error")} <= names else None
        )

    journey = wait_for(complete, 30, "the browser's events in the journey")
    assert anonymous_id in journey["identities"]["anonymous_ids"]
    assert journey["traits"] == {"plan": "gold"}
    events = [e for s in journey["sessions"] for e in s["events"]]
    page = next(e for e in events if e["type"] == "page")
    assert page["path"] == "/search" and "ttfb_ms" in page["timing"]
    searched = next(e for e in events if e["name"] == "Products Searched")
    assert searched["properties"] == {"query": "shoes"} and searched["timing"]["response_ms"] == 850
    error = next(e for e in events if e["name"] == "Error")
    assert error["error"]["kind"] == "js" and "search widget failed" in error["error"]["message"]
    session = journey["sessions"][0]
    assert session["browser"].startswith("Chrome") or session["browser"] == "HeadlessChrome"
    journey_with(up, anonymous_id, {page["event_id"]})  # the device id names the same person

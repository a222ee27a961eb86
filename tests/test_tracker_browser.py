"""The web tracker in a real headless Chromium: page view with timings, an action, an
identify and a JavaScript error arrive through the real ingest and show in the journey."""

from __future__ import annotations

import http.server
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from services.testing.kafka_broker import free_port
from tests.conftest import IN_CI
from tests.harness import API_KEY, WRITE_KEY, Proc, journey_with, new_proc, wait_for

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


def serve_page(html: str, later: str = "") -> tuple[str, http.server.ThreadingHTTPServer]:
    """The site: ``html`` at ``/search``, and ``later`` at ``/later`` (same origin, same storage)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = (later if self.path == "/later" else html).encode()
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


def run_chromium(url: str, profile: Path, budget_ms: int = 6000) -> str:
    if CHROMIUM is None:
        if IN_CI:
            pytest.fail("CI=true and chromium is missing: `make test` installs it with apt-get")
        pytest.skip("chromium not installed (Debian: apt-get install chromium)")
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
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={budget_ms}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return out.stdout + out.stderr


def visit(html: str, profile: Path) -> str:
    """One visit of headless Chromium to a page that writes the tracker's anonymous id into the
    DOM (``data-aid``); that id."""
    url, server = serve_page(html)
    try:
        out = run_chromium(url, profile)
    finally:
        server.shutdown()
    match = re.search(r'data-aid="([0-9a-f-]{36})"', out)
    assert match, f"the page did not run the tracker:\n{out[-4000:]}"
    return match.group(1)


def test_tracker_in_headless_chromium(up: Proc, tmp_path: Path) -> None:
    anonymous_id = visit(PAGE.format(collector=up.url, write_key=WRITE_KEY), tmp_path / "profile")

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


RETRY_PAGE = """<!doctype html><html><head><title>Retry</title>
<script src="{collector}/v1/tracker.js" data-write-key="{write_key}" data-auto-page="false" defer></script></head>
<body><script>
window.addEventListener("load", function () {{
  touchpoint.track("Order Completed", {{order: "o-1"}});
  touchpoint.flush();
  document.body.setAttribute("data-aid", localStorage.getItem("tp_aid"));
}});
</script></body></html>"""


def relay_failing_first(
    target: str, failures: float = 1
) -> tuple[str, http.server.ThreadingHTTPServer, list[list[str]]]:
    """Forwards to ``target``, but answers the first ``failures`` ``POST /v1/batch`` with ingest's
    504 (the log could not tell whether it stored them). Returns its URL and each POST's event ids."""
    posts: list[list[str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            r = httpx.get(f"{target}{self.path}", timeout=30)
            self._answer(r.status_code, {"Content-Type": r.headers["content-type"]}, r.content)

        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ids = [e["event_id"] for e in orjson.loads(body)["events"]]
            posts.append(ids)
            cors = {"Access-Control-Allow-Origin": self.headers.get("Origin", "*")}
            if len(posts) <= failures:
                answer = {"error": "event log did not confirm in time; the events may be stored", "event_ids": ids}
                self._answer(
                    504, {**cors, "Retry-After": "1", "Content-Type": "application/json"}, orjson.dumps(answer)
                )
                return
            r = httpx.post(f"{target}{self.path}", content=body, headers={"Content-Type": "text/plain"}, timeout=30)
            self._answer(r.status_code, cors, r.content)

        def log_message(self, *args: object) -> None:
            return None

    port = free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{port}", server, posts


def test_tracker_sends_a_batch_again_after_a_504_and_it_is_stored_once(up: Proc, tmp_path: Path) -> None:
    collector, relay, posts = relay_failing_first(up.url)
    url, server = serve_page(RETRY_PAGE.format(collector=collector, write_key=WRITE_KEY))
    try:
        out = run_chromium(url, tmp_path / "profile")
    finally:
        server.shutdown()
        relay.shutdown()
    match = re.search(r'data-aid="([0-9a-f-]{36})"', out)
    assert match, f"the page did not run the tracker:\n{out[-3000:]}"
    assert len(posts) >= 2, f"the tracker did not send the batch again after the 504: {posts}"
    assert posts[1] == posts[0], "the retry must carry the same events with the same event ids"
    (event_id,) = posts[0]
    journey = journey_with(up, match.group(1), {event_id})
    stored = [e for s in journey["sessions"] for e in s["events"] if e["event_id"] == event_id]
    assert len(stored) == 1 and stored[0]["name"] == "Order Completed"


def test_tracker_gives_a_batch_up_after_six_retries(up: Proc, tmp_path: Path) -> None:
    """A collector that keeps failing is not hammered: 1 + 6 tries, 1 to 30 s apart."""
    collector, relay, posts = relay_failing_first(up.url, failures=float("inf"))
    url, server = serve_page(RETRY_PAGE.format(collector=collector, write_key=WRITE_KEY))
    try:
        run_chromium(url, tmp_path / "profile", budget_ms=180_000)
    finally:
        server.shutdown()
        relay.shutdown()
    order = [p for p in posts if p == posts[0]]
    assert len(order) == 7, f"{len(order)} tries of the same batch"


QUIET_PAGE = """<!doctype html><html><head><title>Later</title>
<script src="{collector}/v1/tracker.js" data-write-key="{write_key}" data-auto-page="false" defer></script></head>
<body><script>
window.addEventListener("load", function () {{
  document.body.setAttribute("data-aid", localStorage.getItem("tp_aid"));
}});
</script></body></html>"""


def test_events_not_confirmed_are_sent_by_the_next_page(up: Proc, tmp_path: Path) -> None:
    """The collector fails for the whole first visit (every try answered 504): the events stay in
    the site's localStorage, and the next page of the site, even one that tracks nothing, sends
    them. They are stored once."""
    failing, relay, posts = relay_failing_first(up.url, failures=float("inf"))
    quiet = QUIET_PAGE.format(collector=up.url, write_key=WRITE_KEY)
    url, server = serve_page(RETRY_PAGE.format(collector=failing, write_key=WRITE_KEY), later=quiet)
    profile = tmp_path / "profile"
    try:
        try:
            first = run_chromium(url, profile, budget_ms=4000)
        finally:
            relay.shutdown()
        match = re.search(r'data-aid="([0-9a-f-]{36})"', first)
        assert match, f"the page did not run the tracker:\n{first[-3000:]}"
        assert posts, "the first visit sent nothing"
        (event_id,) = posts[0]
        second = run_chromium(url.replace("/search", "/later"), profile)
    finally:
        server.shutdown()
    assert f'data-aid="{match.group(1)}"' in second, "the second visit is not the same browser"
    journey = journey_with(up, match.group(1), {event_id})
    stored = [e for s in journey["sessions"] for e in s["events"] if e["event_id"] == event_id]
    assert len(stored) == 1 and stored[0]["name"] == "Order Completed"


SPA_PAGE = """<!doctype html><html><head><title>Shop search</title>
<script src="{collector}/v1/tracker.js" data-write-key="{write_key}" defer></script></head>
<body><script>
window.addEventListener("load", function () {{
  setTimeout(function () {{
    history.pushState({{}}, "", "/product?id=1");
    document.title = "Product";
    setTimeout(function () {{ history.replaceState({{tab: 2}}, "", "/product?id=1#reviews"); }}, 50);
    setTimeout(function () {{ history.back(); }}, 100);
    setTimeout(function () {{
      touchpoint.flush();
      document.body.setAttribute("data-aid", localStorage.getItem("tp_aid"));
    }}, 400);
  }}, 100);
}});
</script></body></html>"""


def test_a_single_page_apps_route_changes_are_page_views(up: Proc, tmp_path: Path) -> None:
    """pushState to a product, a change of hash alone, the back button: three page views (the
    hash alone is none), each later one with the page it left as referrer and without the first
    document's navigation timing (that load happened once)."""
    anonymous_id = visit(SPA_PAGE.format(collector=up.url, write_key=WRITE_KEY), tmp_path / "profile")
    export = f"{up.url}/v1/persons/{anonymous_id}/export"

    def pages() -> list[dict[str, Any]] | None:
        r = httpx.get(export, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        lines = [orjson.loads(line) for line in r.text.splitlines()] if r.status_code == 200 else []
        found = [x for x in lines if x["kind"] == "event" and x["type"] == "page"]
        return found if len(found) >= 3 else None

    time.sleep(1)  # a fourth page view, were there one, would be in the same flush
    first, product, back = wait_for(pages, 30, "three page views of the single-page app")
    assert [(p["path"], p["name"]) for p in (first, product, back)] == [
        ("/search", "Shop search"),
        ("/product", "Product"),
        ("/search", "Product"),  # the app did not set the title back
    ]
    assert product["url"].endswith("/product?id=1") and product["referrer"].endswith("/search")
    assert back["referrer"].endswith("/product?id=1#reviews")
    assert first["ttfb_ms"] is not None and first["response_ms"] is not None
    assert product["ttfb_ms"] is None and product["response_ms"] is None and back["ttfb_ms"] is None


CONSENT_PAGE = """<!doctype html><html><head><title>Consent</title>
<script src="{collector}/v1/tracker.js" data-write-key="{write_key}" {consent} defer></script></head>
<body><script>
function show(name) {{
  document.body.setAttribute(name, String(localStorage.getItem("tp_aid")) + "|" + localStorage.getItem("tp_consent")
    + "|" + localStorage.getItem("tp_unsent"));
}}
window.addEventListener("load", function () {{
  setTimeout(function () {{
    touchpoint.track("Banner Seen");
    show("data-before");
    setTimeout(function () {{ {then} }}, 2500);  // a flush interval passes first
    setTimeout(function () {{ touchpoint.track("After"); touchpoint.flush(); show("data-after"); }}, 2800);
  }}, 100);
}});
</script></body></html>"""


def _consent_visits(
    up: Proc, tmp_path: Path, consent: str, thens: tuple[str, ...], profile: str
) -> list[tuple[str, list[list[str]]]]:
    """Visits of one browser (profile) to one site (origin: its storage), the i-th page running
    ``thens[i]``; each visit's output and the POSTs it sent (through a relay that counts them)."""
    relay_url, relay, posts = relay_failing_first(up.url, failures=0)
    pages = [CONSENT_PAGE.format(collector=relay_url, write_key=WRITE_KEY, consent=consent, then=t) for t in thens]
    url, server = serve_page(pages[0], later=pages[-1])
    out = []
    try:
        for i in range(len(pages)):
            seen = len(posts)
            page_url = url if i == 0 else url.replace("/search", "/later")
            out.append((run_chromium(page_url, tmp_path / profile, budget_ms=6000), posts[seen:]))
    finally:
        server.shutdown()
        relay.shutdown()
    return out


def test_consent_required_sends_and_stores_nothing_until_opt_in(up: Proc, tmp_path: Path) -> None:
    """data-consent="required": before touchpoint.optIn() no anonymous id in the browser's storage
    and no request, through a flush interval; after it, the events that waited (the page view and
    the banner's) go with the new id, and so do later ones. Without opt-in nothing ever goes."""
    ((out, posts),) = _consent_visits(up, tmp_path, 'data-consent="required"', ("",), "never")
    assert 'data-before="null|null|null"' in out and 'data-after="null|null|null"' in out, out[-2000:]
    assert posts == []

    ((out, posts),) = _consent_visits(up, tmp_path, 'data-consent="required"', ("touchpoint.optIn();",), "yes")
    assert 'data-before="null|null|null"' in out, out[-2000:]
    match = re.search(r'data-after="([0-9a-f-]{36})\|yes\|', out)
    assert match, out[-2000:]
    sent = [event_id for post in posts for event_id in post]
    journey = journey_with(up, match.group(1), set(sent))
    names = [e["name"] for s in journey["sessions"] for e in s["events"]]
    # The page view and "Banner Seen" that waited, then "After" (and the page's timings when it hid).
    assert names[:3] == ["Consent", "Banner Seen", "After"] and set(names[3:]) <= {"Page Timing"}, names


def test_opt_out_stops_everything_and_forgets_the_id(up: Proc, tmp_path: Path) -> None:
    """touchpoint.optOut() on a site that tracks without asking: what the flush interval sent
    before it stays, nothing after it is sent (not "After", nor the page's timings when it hides),
    the anonymous id is forgotten; the choice holds on the next visit."""
    (out, posts), (again, again_posts) = _consent_visits(up, tmp_path, "", ("touchpoint.optOut();", ""), "out")
    before = re.search(r'data-before="([0-9a-f-]{36})\|null\|', out)
    assert before, out[-2000:]
    assert 'data-after="null|no|null"' in out, out[-2000:]
    assert len(posts) == 1 and len(posts[0]) == 2, posts  # the page view and "Banner Seen", by the interval
    journey = journey_with(up, before.group(1), set(posts[0]))
    assert [e["name"] for s in journey["sessions"] for e in s["events"]] == ["Consent", "Banner Seen"]
    assert 'data-before="null|no|null"' in again and again_posts == [], (again[-2000:], again_posts)

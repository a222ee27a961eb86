"""Collection details through the real HTTP path: pixel, tracker, CORS, beacons, prefix, limits."""

from __future__ import annotations

import gzip
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.harness import API_KEY, OTHER_WRITE_KEY, WRITE_KEY, Proc, journey_with, new_proc, uid, wait_for


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = new_proc(
        "up",
        tmp_path_factory.mktemp("collect"),
        TOUCHPOINT_COLLECT_PREFIX="/t",
        TOUCHPOINT_MAX_BATCH_EVENTS="100",
        TOUCHPOINT_MAX_EVENT_BYTES="4096",
    ).start()
    yield proc
    proc.stop()


def test_pixel_records_one_event(up: Proc) -> None:
    dev, eid = uid("px"), uid("e")
    r = httpx.get(
        f"{up.url}/v1/pixel.gif",
        params={
            "write_key": WRITE_KEY,
            "type": "page",
            "name": "Newsletter",
            "anonymous_id": dev,
            "event_id": eid,
            "url": "https://shop.example/mail/open?utm_source=news",
            "properties.issue": "42",
            "timing.response_ms": "120",
        },
    )
    assert r.status_code == 200 and r.headers["content-type"] == "image/gif" and r.content.startswith(b"GIF89a")
    event = journey_with(up, dev, {eid})["sessions"][0]["events"][0]
    assert event["path"] == "/mail/open" and event["properties"] == {"issue": "42"}
    assert event["timing"] == {"response_ms": 120.0}
    assert httpx.get(f"{up.url}/v1/pixel.gif", params={"write_key": "nope"}).status_code == 401
    bad = httpx.get(f"{up.url}/v1/pixel.gif", params={"write_key": WRITE_KEY, "type": "page"})
    assert bad.status_code == 200 and bad.headers["x-touchpoint-rejected"].startswith("anonymous_id:")


def test_tracker_js_is_served(up: Proc) -> None:
    r = httpx.get(f"{up.url}/v1/tracker.js")
    assert r.status_code == 200 and "javascript" in r.headers["content-type"]
    assert "sendBeacon" in r.text and "/v1/batch?beacon=1" in r.text and "tp_aid" in r.text
    assert httpx.get(f"{up.url}/t/v1/tracker.js").text == r.text
    # Gzipped for browsers that take it (httpx does, and decodes), plain otherwise; 304 when current.
    assert r.headers["content-encoding"] == "gzip" and int(r.headers["content-length"]) < len(r.content) / 2
    plain = httpx.get(f"{up.url}/v1/tracker.js", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == r.content
    again = httpx.get(f"{up.url}/v1/tracker.js", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == r.headers["etag"]


def test_cors_preflight_and_response_headers(up: Proc) -> None:
    origin = "https://shop.example"
    pre = httpx.options(
        f"{up.url}/v1/batch",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert pre.status_code == 204 and pre.headers["access-control-allow-origin"] == origin
    assert "POST" in pre.headers["access-control-allow-methods"]
    # The 'other' project allows no origin at all.
    denied = httpx.options(f"{up.url}/v1/batch?write_key={OTHER_WRITE_KEY}", headers={"Origin": origin})
    assert denied.status_code == 403 and "access-control-allow-origin" not in denied.headers
    r = httpx.post(f"{up.url}/v1/batch", json={"events": []}, headers={"Origin": origin, "X-Write-Key": WRITE_KEY})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin


def test_beacon_mode_text_plain_and_prefix(up: Proc) -> None:
    dev, e1, e2 = uid("bc"), uid("e"), uid("e")
    body = orjson.dumps({"events": [{"event_id": e1, "type": "page", "anonymous_id": dev}]})
    r = httpx.post(
        f"{up.url}/v1/batch?beacon=1&write_key={WRITE_KEY}",
        content=body,
        headers={"Content-Type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 204 and r.content == b""
    r = httpx.post(
        f"{up.url}/t/v1/batch",
        json={"events": [{"event_id": e2, "type": "page", "anonymous_id": dev}]},
        headers={"X-Write-Key": WRITE_KEY},
    )
    assert r.status_code == 200  # first-party collection under the configured prefix
    journey_with(up, dev, {e1, e2})


def test_gzip_without_header_and_decompression_bombs(up: Proc) -> None:
    dev, eid = uid("gz"), uid("e")
    gz = gzip.compress(orjson.dumps({"events": [{"event_id": eid, "type": "page", "anonymous_id": dev}]}))
    r = httpx.post(f"{up.url}/v1/batch", content=gz, headers={"X-Write-Key": WRITE_KEY})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    bomb = gzip.compress(b"[" + b" " * (50 << 20) + b"]")
    assert len(bomb) < 100_000
    r = httpx.post(f"{up.url}/v1/batch", content=bomb, headers={"X-Write-Key": WRITE_KEY, "Content-Encoding": "gzip"})
    assert r.status_code == 413 and "decompressed" in r.json()["error"]
    journey_with(up, dev, {eid})


def test_limits_answer_clearly(up: Proc) -> None:
    too_many = [{"type": "page", "anonymous_id": "x"}] * 101
    r = httpx.post(f"{up.url}/v1/batch", json={"events": too_many}, headers={"X-Write-Key": WRITE_KEY})
    assert r.status_code == 413 and r.json()["error"].startswith("events: more than 100")
    dev, eid = uid("lim"), uid("e")
    deep: dict[str, object] = {}
    node = deep
    for _ in range(20):
        node["d"] = {}
        node = node["d"]  # type: ignore[assignment]
    events = [
        {"type": "page", "anonymous_id": dev, "properties": {"blob": "x" * 5000}},
        {"type": "page", "anonymous_id": dev, "properties": deep},
        {"event_id": eid, "type": "page", "anonymous_id": dev},
    ]
    r = httpx.post(f"{up.url}/v1/batch", json={"events": events}, headers={"X-Write-Key": WRITE_KEY})
    assert r.status_code == 200
    errors = {x["index"]: x["error"] for x in r.json()["rejected"]}
    assert errors[0].startswith("event: larger than 4096 bytes")
    assert errors[1].startswith("properties: nested deeper than 16")
    assert r.json()["accepted"] == 1
    journey_with(up, dev, {eid})


def test_bad_prefix_is_a_clear_config_error(tmp_path: Path) -> None:
    proc = new_proc("up", tmp_path / "badprefix", TOUCHPOINT_COLLECT_PREFIX="/t?x")
    proc.start(wait=False)
    assert proc.proc is not None and proc.proc.wait(60) == 2
    assert "TOUCHPOINT_COLLECT_PREFIX" in proc.logs[-1].read_text()


def test_rejected_events_are_listed_for_operators(up: Proc) -> None:
    import subprocess
    import sys

    from tests.harness import API_KEY, wait_for

    marker = uid("dead")
    r = httpx.post(
        f"{up.url}/v1/batch",
        json={"events": [{"type": "track", "anonymous_id": marker}]},
        headers={"X-Write-Key": WRITE_KEY},
    )
    assert r.json()["rejected"] == [{"index": 0, "error": "name: required for track events"}]

    def listed() -> dict[str, object] | None:
        items = httpx.get(f"{up.url}/v1/rejected", headers={"Authorization": f"Bearer {API_KEY}"}).json()["rejected"]
        return next(
            (i for i in items if isinstance(i["payload"], dict) and i["payload"].get("anonymous_id") == marker), None
        )

    item = wait_for(listed, 30, "the dead letter to be listed")
    assert item["error"] == "name: required for track events" and item["index"] == 0
    out = subprocess.run(
        [sys.executable, "-m", "services.cli", "rejected", "--limit", "50"],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert marker in out.stdout


def test_enrichment_user_agent_country_and_anonymised_ip(up: Proc) -> None:
    dev, eid = uid("enr"), uid("e")
    iphone = (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/18.1 Mobile/15E148 Safari/604.1"
    )
    r = httpx.post(
        f"{up.url}/v1/batch",
        json={
            "events": [
                {
                    "event_id": eid,
                    "type": "page",
                    "anonymous_id": dev,
                    "context": {"user_agent": iphone, "page": {"path": "/"}},
                }
            ]
        },
        # uvicorn trusts X-Forwarded-For from 127.0.0.1 (FORWARDED_ALLOW_IPS), as behind a local proxy.
        headers={"X-Write-Key": WRITE_KEY, "X-Forwarded-For": "81.2.69.160"},
    )
    assert r.status_code == 200
    session = journey_with(up, dev, {eid})["sessions"][0]
    assert session["channel"] == "mobile_web"
    assert (session["browser"], session["os"], session["device"]["type"]) == ("Mobile Safari", "iOS", "mobile")
    assert session["country"] == "GB"


def _basic(key: str) -> str:
    import base64

    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


def test_a_segment_library_sends_to_touchpoint_by_changing_its_host(up: Proc) -> None:
    """Segment's batch body with the write key as Basic auth user, to /v1/batch (server libraries)
    and /v1/b (mobile libraries): pages, screens, tracks, identify with traits and an alias are
    stored as the events they mean (Segment names turned into Touchpoint's, the clock skew
    corrected by sentAt); a group call is refused with its index, the rest kept."""
    web, app, old, user = uid("seg-web"), uid("seg-app"), uid("seg-old"), uid("seg-user")
    ids = {
        k: uid("m") for k in ("page", "track", "identify", "alias", "group", "screen", "single_track", "single_page")
    }
    skewed = "2020-01-01T00:00:00.000Z"  # the device's clock is years behind: sentAt tells
    batch = {
        "batch": [
            {
                "type": "page",
                "name": "Home",
                "messageId": ids["page"],
                "anonymousId": web,
                "properties": {"path": "/"},
                "context": {"page": {"path": "/", "url": "https://shop.example/"}, "userAgent": "Mozilla/5.0 (X11)"},
                "timestamp": "2019-12-31T23:59:58.000Z",
            },
            {
                "type": "track",
                "event": "Product Added",
                "messageId": ids["track"],
                "anonymousId": web,
                "properties": {"sku": "A1"},
                "timestamp": "2019-12-31T23:59:59.000Z",
            },
            {
                "type": "identify",
                "messageId": ids["identify"],
                "anonymousId": web,
                "userId": user,
                "traits": {"plan": "gold"},
                "timestamp": skewed,
            },
            {"type": "alias", "messageId": ids["alias"], "previousId": old, "userId": user, "timestamp": skewed},
            {"type": "group", "messageId": ids["group"], "userId": user, "groupId": "acme"},
        ],
        "context": {"library": {"name": "analytics-node"}, "ip": "198.51.100.77"},
        "sentAt": skewed,
    }
    r = httpx.post(f"{up.url}/v1/batch", json=batch, headers={"Authorization": _basic(WRITE_KEY)})
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 4 and [x["index"] for x in r.json()["rejected"]] == [4]
    assert r.json()["rejected"][0]["error"].startswith("type: ")
    mobile = {
        "batch": [
            {
                "type": "screen",
                "name": "Cart",
                "messageId": ids["screen"],
                "anonymousId": app,
                "userId": user,
                "context": {"app": {"name": "Shop", "version": "3.2"}, "network": {"wifi": True, "carrier": "T"}},
            }
        ],
        "writeKey": WRITE_KEY,
    }
    assert httpx.post(f"{up.url}/v1/b", json=mobile).status_code == 200
    wrong = httpx.post(f"{up.url}/v1/batch", json=mobile | {"writeKey": "nope"})
    assert wrong.status_code == 401

    # analytics.js: one message per call at the short paths, text/plain, the key in the body;
    # here through the first-party prefix too.
    for path, message in (
        ("/v1/t", {"event": "Checkout Started", "messageId": ids["single_track"], "anonymousId": web}),
        ("/t/v1/p", {"name": "Cart", "messageId": ids["single_page"], "anonymousId": web}),
    ):
        single = httpx.post(
            f"{up.url}{path}",
            content=orjson.dumps(message | {"writeKey": WRITE_KEY, "sentAt": skewed}),
            headers={"Content-Type": "text/plain"},
        )
        assert single.status_code == 200 and single.json() == {"accepted": 1, "rejected": []}, (path, single.text)
    wanted = {ids[k] for k in ("page", "track", "identify", "alias", "screen", "single_track", "single_page")}
    journey = journey_with(up, user, wanted)
    assert journey["traits"] == {"plan": "gold"}
    assert sorted(journey["identities"]["anonymous_ids"]) == sorted([web, app, old])
    events = {e["event_id"]: e for s in journey["sessions"] for e in s["events"]}
    assert events[ids["page"]]["type"] == "page" and events[ids["page"]]["path"] == "/"
    assert events[ids["track"]]["name"] == "Product Added" and events[ids["track"]]["properties"] == {"sku": "A1"}
    assert events[ids["screen"]]["channel"] == "app" and events[ids["screen"]]["name"] == "Cart"
    assert events[ids["single_track"]]["type"] == "track" and events[ids["single_track"]]["name"] == "Checkout Started"
    assert events[ids["single_page"]]["type"] == "page" and events[ids["single_page"]]["name"] == "Cart"
    identify = events[ids["identify"]]
    lag = datetime.now(UTC) - datetime.fromisoformat(identify["timestamp"].replace("Z", "+00:00"))
    assert abs(lag.total_seconds()) < 60  # sent "in 2020" just now: corrected to now
    export = httpx.get(f"{up.url}/v1/persons/{user}/export", headers={"Authorization": f"Bearer {API_KEY}"})
    stored = {x["event_id"]: x for x in map(orjson.loads, export.text.splitlines()) if x["kind"] == "event"}
    assert stored[ids["page"]]["user_agent"] == "Mozilla/5.0 (X11)" and stored[ids["screen"]]["network"] == "wifi"
    assert stored[ids["page"]]["ip"] == "198.51.100.0"  # the user's address the server sent, anonymised
    assert stored[ids["screen"]]["ip"] == "127.0.0.0"  # none sent: the request's


def test_importing_a_file_stores_each_event_once_whatever_its_format(up: Proc, tmp_path: Path) -> None:
    """`touchpoint import` (gzip): 1,500 old page views (flagged late), a login, a Segment
    message and a `touchpoint export` event line all land in one journey; a line that is not
    JSON and an invalid event are refused by line number, export lines of other kinds skipped.
    Batches of 1,000 meet this collector's limit of 100 (413): halved until taken. Importing the
    file again stores nothing twice (ids made from each line's content)."""
    device, user, phone = uid("imported"), uid("imported-user"), uid("segment-phone")
    start = datetime.now(UTC) - timedelta(days=10)
    lines = [
        orjson.dumps(
            {
                "type": "page",
                "anonymous_id": device,
                "timestamp": (start + timedelta(seconds=i)).isoformat(),
                "context": {"page": {"path": f"/p{i % 5}"}},
            }
        )
        for i in range(1500)
    ]
    lines.append(
        orjson.dumps({"type": "identify", "anonymous_id": device, "user_id": user, "timestamp": start.isoformat()})
    )
    lines += [b"", b"{not json", orjson.dumps({"type": "nope", "anonymous_id": device})]
    now = datetime.now(UTC)
    segment = {"type": "track", "event": "Order Completed", "messageId": uid("m"), "anonymousId": phone, "userId": user}
    lines.append(orjson.dumps({**segment, "timestamp": (now - timedelta(minutes=5)).isoformat()}))
    lines.append(orjson.dumps({"kind": "person", "person_id": user}))
    exported = {
        "kind": "event",
        "event_id": uid("exported"),
        "type": "page",
        "name": "Moved",
        "anonymous_id": device,
        "user_id": "",
        "timestamp": (now - timedelta(minutes=4)).isoformat(),
        "client_timestamp": (now - timedelta(minutes=4)).isoformat(),
        "path": "/moved",
        "browser": "Firefox",
        "context": {"page": {"path": "/moved"}},
        "properties": {},
        "response_ms": 321.0,
        "error_kind": "",
    }
    lines.append(orjson.dumps(exported))
    path = tmp_path / "history.ndjson.gz"
    path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n"))

    def run() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "services.cli", "import", str(path)],
            env=up.env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    stopped = subprocess.run(
        [sys.executable, "-m", "services.cli", "import", str(path)],
        env={**up.env, "TOUCHPOINT_PORT": "9"},  # nothing listens there
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert stopped.returncode == 1 and "is `touchpoint up` or `touchpoint ingest` running?" in stopped.stderr
    first = run()
    assert first.returncode == 1, first.stderr  # two lines refused
    assert f"refused line {len(lines) - 4}: not JSON" in first.stderr
    assert f"refused line {len(lines) - 3}: type: must be one of" in first.stderr
    assert "1,503 events accepted, 2 refused, 2 lines skipped" in first.stderr
    assert "1,501 events are older than the allowed lateness" in first.stderr

    since = (start - timedelta(days=1)).isoformat()

    def journey_events() -> list[dict[str, Any]]:
        r = up.journey(user, **{"from": since})
        return [e for s in r.json()["sessions"] for e in s["events"]] if r.status_code == 200 else []

    def all_of_them() -> list[dict[str, Any]] | None:
        found = journey_events()
        return found if len(found) >= 1503 else None

    events: list[dict[str, Any]] = wait_for(all_of_them, 60, "the imported journey")
    assert len(events) == 1503
    moved = next(e for e in events if e["event_id"] == exported["event_id"])
    assert moved["path"] == "/moved" and moved["timing"]["response_ms"] == 321.0
    bought = next(e for e in events if e["name"] == "Order Completed")
    assert bought["event_id"] == segment["messageId"]
    second = run()
    assert "1,503 events accepted" in second.stderr
    wait_for(lambda: httpx.get(f"{up.url}/v1/status").json()["sessionizer"]["consumer_lag"] == 0, 60, "the log read")
    time.sleep(1.5)  # a batch being written as the lag reached zero
    assert len(journey_events()) == 1503  # stored once


def test_one_event_too_large_for_the_collector_does_not_slow_the_rest_of_an_import(up: Proc, tmp_path: Path) -> None:
    """An event whose body alone is over the collector's limit (413 at one event) is refused by
    its line number; the events after it go in batches again (this collector takes 100 at a
    time), not one request each as when the importer kept its smallest batch size."""
    device = uid("big-import")
    start = datetime.now(UTC) - timedelta(hours=2)

    def page(i: int) -> bytes:
        at = (start + timedelta(seconds=i)).isoformat()
        return orjson.dumps(
            {"type": "page", "anonymous_id": device, "timestamp": at, "context": {"page": {"path": "/a"}}}
        )

    huge = {"type": "track", "name": "Huge", "anonymous_id": device, "properties": {"blob": "x" * (1 << 20)}}
    lines = [page(i) for i in range(150)] + [orjson.dumps(huge)] + [page(i) for i in range(150, 1150)]
    path = tmp_path / "with-a-huge-event.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")

    def requests_taken() -> float:
        text = httpx.get(f"{up.url}/metrics", timeout=10).text
        found = re.search(r'^touchpoint_ingest_requests_total\{status="200"\} (\S+)$', text, re.M)
        return float(found[1]) if found else 0.0

    before = requests_taken()
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "import", str(path)],
        env=up.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, done.stderr
    assert "refused line 151: event: larger than the collector takes" in done.stderr
    assert "1,150 events accepted, 1 refused" in done.stderr
    taken = requests_taken() - before
    assert taken < 60, f"{taken:.0f} requests for 1,150 events: the batch size did not recover"

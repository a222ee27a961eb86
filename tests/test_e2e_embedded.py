"""`touchpoint up` on the embedded default: HTTP → embedded log → sessionizer → chDB → API."""

from __future__ import annotations

import gzip
import select
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.harness import (
    API_KEY,
    OTHER_API_KEY,
    OTHER_WRITE_KEY,
    WRITE_KEY,
    Proc,
    ago,
    event_ids,
    journey_with,
    new_proc,
    sessions_of,
    uid,
    wait_for,
)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = new_proc("up", tmp_path_factory.mktemp("up")).start()
    yield proc
    proc.stop()


def test_health_and_metrics(up: Proc) -> None:
    health = httpx.get(f"{up.url}/health")
    assert health.status_code == 200
    assert health.json()["components"] == {"ingest": True, "sessionizer": True, "api": True}
    up.post_batch([{"type": "page", "anonymous_id": uid("m"), "name": "Home"}])
    metrics = httpx.get(f"{up.url}/metrics").text
    assert "touchpoint_ingest_events_accepted_total" in metrics
    assert "touchpoint_sessionizer_batch_write_seconds" in metrics
    for name in (
        "touchpoint_ingest_requests_total",
        "touchpoint_ingest_append_seconds_bucket",
        "touchpoint_ingest_batch_events_bucket",
        "touchpoint_ingest_in_flight_requests",
        "touchpoint_ingest_events_rejected_total",
        "touchpoint_sessionizer_consumer_lag",
    ):
        assert name in metrics, name


def test_status_answers_where_the_data_is(up: Proc) -> None:
    """GET /v1/status: consumer lag, when the newest stored event was received, the ingestion delay."""
    import time

    sent = time.time()
    anon = uid("status")
    event_id = str(uuid.uuid4())
    assert up.post_batch([{"type": "page", "anonymous_id": anon, "event_id": event_id}]).status_code == 200
    journey_with(up, anon, {event_id})

    def caught_up() -> dict[str, object] | None:
        status = httpx.get(f"{up.url}/v1/status", timeout=10).json()["sessionizer"]
        return status if status["consumer_lag"] == 0 else None

    status = wait_for(caught_up, 30, "the sessionizer to read everything")
    assert isinstance(status["newest_event_received_at"], float)
    assert sent - 1 <= status["newest_event_received_at"] <= time.time()
    assert status["ingestion_delay_seconds"] == 0.0
    metrics = httpx.get(f"{up.url}/metrics").text
    newest = [line for line in metrics.splitlines() if line.startswith("touchpoint_sessionizer_newest_event_received")]
    assert newest and float(newest[0].split()[-1]) >= sent - 1
    cli = subprocess.run(
        [sys.executable, "-m", "services.cli", "status"], env=up.env, capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0, cli.stderr
    assert cli.stdout.startswith("touchpoint: sessionizer: up to date: every accepted event is stored;"), cli.stdout


def test_status_in_words_says_what_is_wrong() -> None:
    from services.cli import describe_status

    lines, healthy = describe_status(
        {
            "sessionizer": {
                "consumer_lag": 1200,
                "events_written": 5,
                "ingestion_delay_seconds": 42.0,
                "seconds_since_last_write": 30.5,
                "last_error": "ClickHouse unavailable",
            }
        }
    )
    assert not healthy and len(lines) == 1
    assert "behind: consumer lag 1,200" in lines[0] and "received 42.0 s ago" in lines[0]
    assert "last write 30.5 s ago" in lines[0] and "last error: ClickHouse unavailable" in lines[0]
    assert "TOUCHPOINT_CLICKHOUSE_URL" in lines[0]
    assert describe_status({}) == (
        ["no sessionizer in this process: ask the one running `touchpoint sessionizer`"],
        True,
    )


def test_cross_device_journey_with_retroactive_link(up: Proc) -> None:
    web, phone, user = uid("web"), uid("phone"), uid("user")
    web_events: list[dict[str, Any]] = [
        {
            "event_id": uid("e"),
            "type": "page",
            "name": "Search",
            "anonymous_id": web,
            "timestamp": ago(90),
            "context": {"page": {"path": "/search", "url": "https://shop.example/search?utm_source=ads"}},
            "timing": {"response_ms": 3400},
        },
        {
            "event_id": uid("e"),
            "type": "track",
            "name": "Login",
            "anonymous_id": web,
            "user_id": user,
            "timestamp": ago(89),
        },
        {
            "event_id": uid("e"),
            "type": "identify",
            "user_id": user,
            "anonymous_id": web,
            "timestamp": ago(88.9),
            "properties": {"plan": "gold"},
        },
    ]
    r = up.post_batch(web_events)
    assert r.status_code == 200 and r.json() == {"accepted": 3, "rejected": []}
    # The app: anonymous first (before the device is linked), logged in later; sent late from an offline queue.
    app_events: list[dict[str, Any]] = [
        {
            "event_id": uid("e"),
            "type": "screen",
            "name": "Cart",
            "anonymous_id": phone,
            "timestamp": ago(30),
            "context": {"app": {"name": "Shop", "version": "3.1"}},
        },
        {
            "event_id": uid("e"),
            "type": "track",
            "name": "Order Completed",
            "anonymous_id": phone,
            "user_id": user,
            "timestamp": ago(25),
            "context": {"app": {"name": "Shop"}},
        },
    ]
    assert up.post_batch(app_events).status_code == 200
    expected = {e["event_id"] for e in web_events + app_events}
    journey = journey_with(up, user, expected)
    assert journey["person_id"] == user and journey["identified"] is True
    assert set(journey["identities"]["anonymous_ids"]) == {web, phone}
    assert journey["traits"] == {"plan": "gold"}
    assert [s["channel"] for s in journey["sessions"]] == ["web", "app"]  # time order across devices
    ids = event_ids(journey)
    assert len(ids) == 5 and set(ids) == expected
    search = journey["sessions"][0]["events"][0]
    assert search["name"] == "Search" and search["timing"] == {"response_ms": 3400.0}
    assert search["path"] == "/search"
    # The anonymous phone id names the same person: its events before the link are stitched in.
    assert up.journey(phone).json()["person_id"] == user


def test_clock_skew_is_corrected_with_sent_at(up: Proc) -> None:
    dev, eid = uid("skew"), uid("e")
    # The device clock runs 3 hours behind: the event happened 1 minute before the batch was sent.
    skewed_sent = datetime.now(UTC) - timedelta(hours=3)
    event = {
        "event_id": eid,
        "type": "screen",
        "name": "Home",
        "anonymous_id": dev,
        "timestamp": (skewed_sent - timedelta(minutes=1)).isoformat(),
    }
    assert up.post_batch([event], sent_at=skewed_sent.isoformat()).status_code == 200
    journey = journey_with(up, dev, {eid})
    stored = datetime.fromisoformat(journey["sessions"][0]["events"][0]["timestamp"])
    expected = datetime.now(UTC) - timedelta(minutes=1)
    assert abs((stored - expected).total_seconds()) < 30


def test_bad_input_gets_clear_4xx_and_loses_nothing_else(up: Proc) -> None:
    dev = uid("dev")
    good = {"event_id": uid("e"), "type": "page", "name": "Home", "anonymous_id": dev}
    r = up.post_batch([good, {"type": "track", "anonymous_id": dev}, {"type": "nope", "anonymous_id": dev}])
    assert r.status_code == 200
    assert r.json() == {
        "accepted": 1,
        "rejected": [
            {"index": 1, "error": "name: required for track events"},
            {"index": 2, "error": "type: must be one of identify, page, screen, track"},
        ],
    }
    journey_with(up, dev, {good["event_id"]})

    batch = f"{up.url}/v1/batch"
    assert httpx.post(batch, content=b"{}", headers={"X-Write-Key": "wk_nope"}).status_code == 401
    missing = httpx.post(batch, json={"events": []})
    assert missing.status_code == 401 and "write_key" in missing.json()["error"]
    broken = httpx.post(batch, content=b"{not json", headers={"X-Write-Key": "wk_test_shop"})
    assert broken.status_code == 400 and broken.json()["error"].startswith("body:")
    not_list = httpx.post(batch, json={"events": {}}, headers={"X-Write-Key": "wk_test_shop"})
    assert not_list.status_code == 400 and not_list.json()["error"].startswith("events:")
    huge = httpx.post(batch, content=b"x" * (2 << 20), headers={"X-Write-Key": "wk_test_shop"})
    assert huge.status_code == 413
    br = httpx.post(batch, content=b"{}", headers={"X-Write-Key": "wk_test_shop", "Content-Encoding": "br"})
    assert br.status_code == 415


def test_beacon_text_plain_gzip_and_key_in_body(up: Proc) -> None:
    dev = uid("beacon")
    e1, e2 = uid("e"), uid("e")
    body = {"write_key": "wk_test_shop", "events": [{"event_id": e1, "type": "page", "anonymous_id": dev}]}
    r = httpx.post(f"{up.url}/v1/batch", content=orjson.dumps(body), headers={"Content-Type": "text/plain"})
    assert r.status_code == 200 and r.json()["accepted"] == 1
    gz = gzip.compress(orjson.dumps({"events": [{"event_id": e2, "type": "page", "anonymous_id": dev}]}))
    r = httpx.post(
        f"{up.url}/v1/batch?write_key=wk_test_shop",
        content=gz,
        headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
    )
    assert r.status_code == 200 and r.json()["accepted"] == 1
    journey_with(up, dev, {e1, e2})


def test_duplicate_event_id_is_stored_once(up: Proc) -> None:
    dev, eid = uid("dup"), uid("e")
    event = {"event_id": eid, "type": "page", "name": "Home", "anonymous_id": dev, "timestamp": ago(5)}
    for _ in range(3):
        assert up.post_batch([event]).status_code == 200
    other = uid("e")
    up.post_batch([{"event_id": other, "type": "page", "anonymous_id": dev}])
    journey = journey_with(up, dev, {eid, other})
    assert sorted(event_ids(journey)) == sorted([eid, other])


def test_a_resend_whose_corrected_time_crosses_a_month_boundary_is_stored_once(up: Proc) -> None:
    """A device's clock is set right between two sends of the same event: the skew correction
    puts the copies on both sides of a month boundary, and the journey still shows one of them."""
    dev, eid, marker = uid("month"), uid("e"), uid("e")
    now = datetime.now(UTC)
    month_start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    since = (month_start - timedelta(days=1)).isoformat()
    event = {
        "event_id": eid,
        "type": "screen",
        "name": "Home",
        "anonymous_id": dev,
        "timestamp": (month_start - timedelta(seconds=2)).isoformat(),
    }
    # First send: the clock is right, the event lands 2 s before the month starts.
    assert up.post_batch([event], sent_at=now.isoformat()).json()["accepted"] == 1
    first = journey_with(up, dev, {eid}, since=since)
    assert datetime.fromisoformat(first["sessions"][0]["events"][0]["timestamp"]) < month_start
    # The resend, once the first copy is stored, claims it was sent 5 s ago: its corrected time
    # is 3 s after the month started.
    resent_at = datetime.now(UTC) - timedelta(seconds=5)
    assert up.post_batch([event], sent_at=resent_at.isoformat()).json()["accepted"] == 1
    # An event of the same device posted after it: once it shows, the resend was written too.
    marked = up.post_batch([{"event_id": marker, "type": "screen", "name": "Cart", "anonymous_id": dev}])
    assert marked.status_code == 200
    journey = journey_with(up, dev, {eid, marker}, since=since)
    assert sorted(event_ids(journey)) == sorted([eid, marker])
    kept = next(e for s in journey["sessions"] for e in s["events"] if e["event_id"] == eid)
    assert datetime.fromisoformat(kept["timestamp"]) >= month_start  # the copy written last wins


def test_api_keys_are_per_project(up: Proc) -> None:
    dev, eid = uid("iso"), uid("e")
    r = up.post_batch([{"event_id": eid, "type": "page", "anonymous_id": dev}], key=OTHER_WRITE_KEY)
    assert r.status_code == 200
    journey = journey_with_key(up, dev, OTHER_API_KEY, eid)
    assert event_ids(journey) == [eid]
    assert up.journey(dev, key=API_KEY).status_code == 404  # the shop key never sees 'other'
    assert up.journey(dev, key="wk_test_other").status_code == 401  # write keys cannot read
    assert httpx.get(f"{up.url}/v1/journeys/{dev}").status_code == 401
    assert up.journey(dev, key=API_KEY, **{"from": "yesterday"}).status_code == 422


def journey_with_key(up: Proc, dev: str, key: str, eid: str) -> dict[str, Any]:
    from tests.harness import wait_for

    def check() -> dict[str, Any] | None:
        r = up.journey(dev, key=key)
        return r.json() if r.status_code == 200 and eid in event_ids(r.json()) else None

    journey: dict[str, Any] = wait_for(check, 30, "journey in the other project")
    return journey


def test_sigkill_right_after_200_loses_nothing(tmp_path: Path) -> None:
    proc = new_proc("up", tmp_path / "kill", TOUCHPOINT_BATCH_MAX_SECONDS="2").start()
    dev = uid("kill")
    sent: list[str] = []
    for batch in range(20):
        events = [{"event_id": uid("e"), "type": "page", "name": f"P{batch}", "anonymous_id": dev} for _ in range(25)]
        r = proc.post_batch(events)
        assert r.status_code == 200 and r.json()["accepted"] == 25
        sent += [e["event_id"] for e in events]
    proc.kill()  # SIGKILL right after the last 200, before a batch window closed
    proc.start()
    try:
        journey = journey_with(proc, dev, set(sent), timeout=60)
        ids = event_ids(journey)
        assert len(ids) == len(sent) == 500
        assert set(ids) == set(sent)
    finally:
        proc.stop()


def test_default_project_keys_are_printed(tmp_path: Path) -> None:
    proc = new_proc("up", tmp_path / "fresh")
    proc.env.pop("TOUCHPOINT_CONFIG")
    proc.start()
    try:
        banner = proc.logs[0].read_text()
        assert "project 'default'" in banner and "write key wk_" in banner and "api key ak_" in banner
        assert "curl" in banner
        assert "no goals: set `goals`" in banner  # the generated project has none: say how to get signals
        write_key = banner.split("write key ")[1].split()[0]
        api_key = banner.split("api key ")[1].split()[0]
        dev, eid = uid("d"), uid("e")
        r = proc.post_batch([{"event_id": eid, "type": "page", "anonymous_id": dev}], key=write_key)
        assert r.status_code == 200
        from tests.harness import wait_for

        def check() -> bool:
            r = proc.journey(dev, key=api_key)
            return r.status_code == 200 and event_ids(r.json()) == [eid]

        wait_for(check, 30, "event in the default project")
    finally:
        proc.stop()


def test_shared_device_switches_user_without_merging_and_is_reported(up: Proc) -> None:
    from tests.harness import wait_for

    device, alice, bob = uid("shared"), uid("alice"), uid("bob")
    events = [
        {"event_id": uid("e"), "type": "page", "name": "Home", "anonymous_id": device, "timestamp": ago(60)},
        {"event_id": uid("e"), "type": "identify", "anonymous_id": device, "user_id": alice, "timestamp": ago(59)},
        {"event_id": uid("e"), "type": "page", "name": "Cart", "anonymous_id": device, "timestamp": ago(58)},
        {"event_id": uid("e"), "type": "identify", "anonymous_id": device, "user_id": bob, "timestamp": ago(20)},
        {"event_id": uid("e"), "type": "page", "name": "Deals", "anonymous_id": device, "timestamp": ago(19)},
        {
            "event_id": uid("e"),
            "type": "identify",
            "anonymous_id": device,
            "user_id": "undefined",
            "timestamp": ago(18),
        },
    ]
    assert up.post_batch(events).status_code == 200
    ids = [e["event_id"] for e in events]
    alice_journey = journey_with(up, alice, set(ids[:3]))
    assert sorted(event_ids(alice_journey)) == sorted(ids[:3])  # before the link too; never Bob's
    bob_journey = journey_with(up, bob, set(ids[3:]))  # the placeholder "undefined" stays with the owner
    assert sorted(event_ids(bob_journey)) == sorted(ids[3:])
    assert up.journey(device).json()["person_id"] == bob  # the device's current owner

    def conflict() -> dict[str, Any] | None:
        r = httpx.get(f"{up.url}/v1/identity-conflicts", headers={"Authorization": f"Bearer {API_KEY}"})
        return next((c for c in r.json()["conflicts"] if c["anonymous_id"] == device), None)

    found = wait_for(conflict, 30, "the shared device to be reported")
    assert [u["user_id"] for u in found["users"]] == [alice, bob]  # the placeholder never linked


def test_erasing_a_person_removes_them_from_every_answer_and_leaves_the_other_user(up: Proc) -> None:
    """DELETE /v1/persons/{id}: Alice's events on her three devices (before her login too), her
    sessions, links and journey are gone from every answer; Bob, who logged in on her shared
    device later, keeps his; her web device coming back starts afresh, not in her erased session."""
    web, app, shared, alice, bob, cart = uid("web"), uid("app"), uid("shared"), uid("alice"), uid("bob"), uid("Cart")
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def event(**fields: str) -> dict[str, str]:
        return {"event_id": uid("e"), **fields}

    alices = [
        event(type="page", name="Home", anonymous_id=web, timestamp=ago(6)),  # before the login: hers too
        event(type="identify", anonymous_id=web, user_id=alice, timestamp=ago(5)),
        event(type="screen", name=cart, anonymous_id=app, user_id=alice, timestamp=ago(40)),
        event(type="page", name="Deals", anonymous_id=shared, user_id=alice, timestamp=ago(60)),
    ]
    bobs = [
        event(type="identify", anonymous_id=shared, user_id=bob, timestamp=ago(20)),
        event(type="page", name="Deals", anonymous_id=shared, timestamp=ago(19)),
    ]
    # Refused events name their senders too (kept 30 days for the operator): hers by her user id
    # and her browser; Bob's on the shared browser, his since his login there.
    refused = [
        {"type": "track", "anonymous_id": app, "user_id": alice},
        {"type": "nope", "anonymous_id": web},
        {"type": "nope", "anonymous_id": shared},
    ]
    r = up.post_batch(alices + bobs + refused)
    assert r.status_code == 200 and [x["index"] for x in r.json()["rejected"]] == [6, 7, 8]
    journey_with(up, alice, {e["event_id"] for e in alices})
    journey_with(up, bob, {e["event_id"] for e in bobs})

    def refused_ids() -> list[str]:
        r = httpx.get(f"{up.url}/v1/rejected", headers=auth, params={"limit": 10_000}, timeout=30)
        devices = [x["payload"].get("anonymous_id") for x in r.json()["rejected"] if isinstance(x["payload"], dict)]
        return sorted(d for d in devices if d in (web, app, shared))

    wait_for(lambda: refused_ids() == sorted([web, app, shared]) or None, 30, "the refused events to be stored")
    for device, count in ((web, 1), (app, 1), (shared, 2)):
        sessions_of(up, device, lambda s, n=count: len(s) == n)  # type: ignore[misc]

    def funnel_count() -> int:
        r = httpx.post(f"{up.url}/v1/funnels", json={"steps": [cart, "Order Completed"]}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        return int(r.json()["steps"][0]["count"])

    assert funnel_count() == 1
    write_key = {"Authorization": f"Bearer {WRITE_KEY}"}
    assert httpx.delete(f"{up.url}/v1/persons/{alice}", headers=write_key).status_code == 401
    r = httpx.delete(f"{up.url}/v1/persons/{web}", headers=auth, timeout=60)  # her device names her
    assert r.status_code == 200, r.text
    erased = r.json()
    assert erased["person_id"] == alice and erased["deleted"] == {"events": 4, "sessions": 3, "rejected": 2}
    assert sorted(erased["identities"]["anonymous_ids"]) == sorted([web, app, shared])

    for identifier in (alice, web, app):
        assert up.journey(identifier).status_code == 404, identifier
    assert sorted(event_ids(up.journey(bob).json())) == sorted(e["event_id"] for e in bobs)
    assert up.journey(shared).json()["person_id"] == bob
    assert funnel_count() == 0
    assert refused_ids() == [shared]  # Bob's
    person_sessions = httpx.get(f"{up.url}/v1/sessions", params={"person": alice}, headers=auth, timeout=30)
    assert person_sessions.json()["sessions"] == []
    assert [s["person_id"] for s in sessions_of(up, shared, lambda s: len(s) == 1)] == [bob]
    conflicts = httpx.get(f"{up.url}/v1/identity-conflicts", headers=auth, timeout=30).json()["conflicts"]
    assert shared not in {c["anonymous_id"] for c in conflicts}  # Alice's link went with her

    # Within the timeout of the erased session, which the sessionizer held in memory.
    back = event(type="page", name="Back", anonymous_id=web, timestamp=ago(1))
    assert up.post_batch([back]).status_code == 200
    (again,) = sessions_of(up, web, lambda s: len(s) == 1 and s[0]["event_count"] == 1)
    assert again["person_id"] == web and again["started_at"] == again["ended_at"]
    assert event_ids(journey_with(up, web, {back["event_id"]})) == [back["event_id"]]
    assert httpx.delete(f"{up.url}/v1/persons/{alice}", headers=auth, timeout=60).status_code == 404
    # The operator's command for the same: the lone device, now its own person, goes too.
    cli = subprocess.run(
        [sys.executable, "-m", "services.cli", "erase", web], env=up.env, capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0, cli.stderr
    assert orjson.loads(cli.stdout)["deleted"]["events"] == 1
    assert up.journey(web).status_code == 404
    listed = httpx.get(f"{up.url}/v1/erasures", headers=auth, timeout=30).json()["erasures"]
    mine = [(e["person_id"], e["deleted"]) for e in listed if e["person_id"] in (alice, web)]
    # Newest first.
    assert mine == [
        (web, {"events": 1, "sessions": 1, "rejected": 0}),
        (alice, {"events": 4, "sessions": 3, "rejected": 2}),
    ]
    other = httpx.get(f"{up.url}/v1/erasures", headers={"Authorization": f"Bearer {OTHER_API_KEY}"}, timeout=30)
    assert alice not in {e["person_id"] for e in other.json()["erasures"]}  # another project's key


def test_exporting_a_person_gives_everything_stored_about_them_and_no_one_else(up: Proc) -> None:
    """GET /v1/persons/{id}/export (the right of access): Erin's events on both devices, all of
    time (one from 40 days ago, outside any journey's default window), every stored field, her
    sessions and links, as NDJSON ending with the counts; not Finn's, who logged in on her shared
    browser later; nothing for a write key or another project's key; `touchpoint export` the same."""
    web, app, erin, finn = uid("web"), uid("app"), uid("erin"), uid("finn")
    auth = {"Authorization": f"Bearer {API_KEY}"}

    def event(**fields: Any) -> dict[str, Any]:
        return {"event_id": uid("e"), **fields}

    erins = [
        event(type="page", name="Old", anonymous_id=app, user_id=erin, timestamp=ago(40 * 24 * 60)),
        event(type="page", name="Home", anonymous_id=web, timestamp=ago(30), properties={"ab": "b"}),
        event(type="identify", anonymous_id=web, user_id=erin, timestamp=ago(29)),
        event(type="track", name="Crash", anonymous_id=app, timestamp=ago(10), error={"kind": "js", "message": "x"}),
    ]
    finns = [event(type="identify", anonymous_id=web, user_id=finn, timestamp=ago(5))]
    refused = {"type": "nope", "anonymous_id": app, "properties": {"plan": "pro"}}  # hers, refused
    assert up.post_batch([*erins, *finns, refused]).json()["accepted"] == 5
    journey_with(up, finn, {e["event_id"] for e in finns})
    journey_with(up, erin, {e["event_id"] for e in erins[1:]})
    url = f"{up.url}/v1/persons/{erin}/export"

    def export() -> list[dict[str, Any]] | None:
        r = httpx.get(url, headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        lines = [orjson.loads(line) for line in r.text.splitlines()]
        has_app_session = [x for x in lines if x["kind"] == "session" and x["anonymous_id"] == app]
        return lines if has_app_session and [x for x in lines if x["kind"] == "rejected"] else None

    lines: list[dict[str, Any]] = wait_for(export, 30, "Erin's sessions in her export")
    r = httpx.get(url, headers=auth, timeout=60)
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert r.headers["content-disposition"] == f'attachment; filename="person-{erin}.ndjson"'
    assert lines[0]["kind"] == "person" and lines[0]["person_id"] == erin
    assert sorted(lines[0]["identities"]["anonymous_ids"]) == sorted([web, app])
    events = [x for x in lines if x["kind"] == "event"]
    assert [e["event_id"] for e in events] == [e["event_id"] for e in erins]  # oldest first, not Finn's
    assert events[0]["is_late"] == 1 and events[1]["properties"] == {"ab": "b"}
    assert events[3]["error_kind"] == "js" and events[3]["ip"].endswith(".0")  # anonymised before storage
    assert {"user_agent", "received_at", "context", "browser", "country", "network"} <= set(events[1])
    sessions = [x for x in lines if x["kind"] == "session"]
    assert {s["person_id"] for s in sessions} == {erin}
    links = [(x["anonymous_id"], x["user_id"]) for x in lines if x["kind"] == "identity_link"]
    assert sorted(links) == sorted([(web, erin), (app, erin)])
    assert lines[-1]["kind"] == "end" and lines[-1]["events"] == 4 and lines[-1]["sessions"] == len(sessions)
    (refused_line,) = [x for x in lines if x["kind"] == "rejected"]
    assert refused_line["payload"] == refused and refused_line["error"].startswith("type:")
    assert lines[-1]["rejected"] == 1

    # The shared browser names its current user, as in GET /v1/journeys: Finn, with his event only.
    finn_export = httpx.get(f"{up.url}/v1/persons/{web}/export", headers=auth, timeout=60).text.splitlines()
    finn_events = [x["event_id"] for x in map(orjson.loads, finn_export) if x["kind"] == "event"]
    assert orjson.loads(finn_export[0])["person_id"] == finn and finn_events == [finns[0]["event_id"]]
    assert httpx.get(url, headers={"Authorization": f"Bearer {WRITE_KEY}"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {OTHER_API_KEY}"}, timeout=30).status_code == 404
    assert httpx.get(f"{up.url}/v1/persons/{uid('nobody')}/export", headers=auth, timeout=30).status_code == 404
    cli = subprocess.run(
        [sys.executable, "-m", "services.cli", "export", erin], env=up.env, capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 0, cli.stderr
    assert [orjson.loads(line) for line in cli.stdout.splitlines()] == lines
    assert f"exported {erin}: 4 events, {len(sessions)} sessions, 2 identity links" in cli.stderr
    assert cli.stderr.rstrip().endswith("abandonments, 1 refused events")


def test_retention_follows_cohorts_across_days_and_devices(up: Proc) -> None:
    """POST /v1/retention by day over the last four days: who signed up when, and who came back
    on which later day, counted once per person and day, across devices (Dee signed up on the web
    anonymously and came back in the app after logging in); a return on the sign-up day or before
    it is not a return; days not reached yet have no rate."""
    signed, back = uid("Signed Up"), uid("Came Back")
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)

    def at(days_ago: int, hour: int = 12) -> str:
        return (today - timedelta(days=days_ago) + timedelta(hours=hour)).isoformat()

    ann, bo, cy, dee_web, dee, dee_app, ed = (uid(n) for n in ("ann", "bo", "cy", "dee-web", "dee", "dee-app", "ed"))

    def track(name: str, anonymous_id: str, when: str, **more: str) -> dict[str, str]:
        return {
            "event_id": uid("e"),
            "type": "track",
            "name": name,
            "anonymous_id": anonymous_id,
            "timestamp": when,
            **more,
        }

    events = [
        track(signed, ann, at(4)),
        track(back, ann, at(3)),
        track(back, ann, at(1)),
        track(back, ann, at(1, 15)),
        track(signed, bo, at(4, 9)),
        track(back, bo, at(4, 20)),
        track(back, bo, at(2)),  # same day: not a return
        track(back, cy, at(3, 8)),
        track(signed, cy, at(3, 9)),
        track(signed, cy, at(2)),
        track(back, cy, at(1)),
        track(signed, dee_web, at(2, 10)),
        {"event_id": uid("e"), "type": "identify", "anonymous_id": dee_web, "user_id": dee, "timestamp": at(2, 11)},
        track(back, dee_app, at(1), user_id=dee),
        track(back, ed, at(2)),  # never signed up: in no cohort
    ]
    assert up.post_batch(events).json()["accepted"] == len(events)
    journey_with(up, dee, {events[-2]["event_id"], events[-4]["event_id"]})
    journey_with(up, ed, {events[-1]["event_id"]})
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"start": signed, "return": back, "period": "day", "periods": 4, "from": at(4, 0)}
    r = httpx.post(f"{up.url}/v1/retention", json=body, headers=auth, timeout=30)
    assert r.status_code == 200, r.text
    answer = r.json()

    def day(days_ago: int) -> str:
        return (today - timedelta(days=days_ago)).date().isoformat()

    cohorts = {c["cohort"]: (c["people"], [k["people"] for k in c["retained"]]) for c in answer["cohorts"]}
    assert cohorts == {
        day(4): (2, [1, 1, 1, 0]),  # Ann back on days 1 and 3, Bo on day 2; today so far: nobody
        day(3): (1, [0, 1, 0, None]),  # Cy back two days later; tomorrow is not observed yet
        day(2): (1, [1, 0, None, None]),  # Dee, back in the app the day after
    }
    assert [k["complete"] for k in answer["cohorts"][0]["retained"]] == [True, True, True, False]
    assert [(k["people"], k["of"]) for k in answer["overall"]] == [(2, 4), (2, 4), (1, 3), (0, 2)]
    assert answer["people"] == 4 and answer["note"]  # four people: too few for reliable rates
    assert answer["cohorts"][0]["retained"][0]["rate"] == 0.5 and answer["cohorts"][0]["retained"][0]["ci95"]

    # Without "return": doing the start event again (Cy signed up twice).
    again = httpx.post(f"{up.url}/v1/retention", json={**body, "return": None}, headers=auth, timeout=30).json()
    assert {c["cohort"]: [k["people"] for k in c["retained"]] for c in again["cohorts"]}[day(3)] == [1, 0, 0, None]

    # From day 2 on: Cy signed up on day 2 again, a first in the range but not of all time, so the
    # new customers of day 2 are Dee alone; Ann and Bo (day 4) are in neither.
    later = {**body, "from": at(2, 0), "periods": 2}
    in_range = httpx.post(f"{up.url}/v1/retention", json=later, headers=auth, timeout=30).json()
    new = httpx.post(f"{up.url}/v1/retention", json={**later, "cohort": "new"}, headers=auth, timeout=30).json()
    assert [(c["cohort"], c["people"], [k["people"] for k in c["retained"]]) for c in in_range["cohorts"]] == [
        (day(2), 2, [2, 0])  # Cy and Dee back the day after
    ]
    assert [(c["cohort"], c["people"], [k["people"] for k in c["retained"]]) for c in new["cohorts"]] == [
        (day(2), 1, [1, 0])
    ]
    wrong = httpx.post(f"{up.url}/v1/retention", json={**later, "cohort": "old"}, headers=auth, timeout=30)
    assert wrong.status_code == 422 and "cohort" in wrong.text
    bad = httpx.post(f"{up.url}/v1/retention", json={**body, "period": "year"}, headers=auth, timeout=30)
    assert bad.status_code == 422 and "period" in bad.text
    other = httpx.post(f"{up.url}/v1/retention", json=body, headers={"Authorization": f"Bearer {OTHER_API_KEY}"})
    assert other.json()["cohorts"] == []  # another project's key


@pytest.mark.parametrize("sent_time", [None, "one second"])
def test_a_batch_without_distinct_times_keeps_its_order_in_every_answer(up: Proc, sent_time: str | None) -> None:
    """A server-side integration sends Home, Search, Product, Cart in one batch without times, or
    with one time to the second (its clock reads seconds): they happened in that order, so they
    are stored a millisecond apart in it; the journey lists them so, the abandonment point is Cart
    (it was Product: the tie went by touchpoint) and what came after Search is Product."""
    tag = uuid.uuid4().hex[:8]
    names = [f"{step}-{tag}" for step in ("Home", "Search", "Product", "Cart")]
    devices = [uid("server") for _ in range(3)]
    timed = {"timestamp": ago(3).split(".")[0] + "+00:00"} if sent_time else {}
    batch = [{"type": "track", "name": name, "anonymous_id": device, **timed} for device in devices for name in names]
    r = up.post_batch(batch)
    assert r.status_code == 200 and r.json()["accepted"] == 12, r.text
    journey = wait_for(lambda: (j := up.journey(devices[-1])).status_code == 200 and j.json(), 30, "the journey")
    events = [e for s in journey["sessions"] for e in s["events"]]
    assert [e["name"] for e in events] == names
    if sent_time:
        times = [datetime.fromisoformat(e["timestamp"]) for e in events]
        assert [round((t - times[0]).total_seconds() * 1000) for t in times] == [0, 1, 2, 3]
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"goal": f"Never-{tag}", "start": names[0]}
    gone = httpx.post(f"{up.url}/v1/abandonment", json=body, headers=auth, timeout=30).json()
    assert gone["journeys"] == 3 and [(p["touchpoint"], p["abandoned"]) for p in gone["points"]] == [
        (f"track {names[-1]}", 3)
    ], gone
    around = httpx.post(f"{up.url}/v1/paths", json={"touchpoint": names[1]}, headers=auth, timeout=30).json()
    assert [(p["touchpoint"], p["count"]) for p in around["next"]] == [(f"track {names[2]}", 3)]
    assert [(p["touchpoint"], p["count"]) for p in around["previous"]] == [(f"track {names[0]}", 3)]


def test_retention_is_set_at_start_and_not_again_when_unchanged(tmp_path: Path) -> None:
    """TOUCHPOINT_RETENTION_DAYS reaches the tables through the sessionizer's start (the TTLs
    themselves are checked in tests/test_warehouse.py); a restart with the same value alters
    nothing (altering a TTL rewrites the table's expired rows away, a mutation)."""
    proc = new_proc("up", tmp_path / "retention", TOUCHPOINT_RETENTION_DAYS="30")

    def altered(log: Path) -> list[str]:
        lines = [orjson.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return sorted(line["table"] for line in lines if line.get("msg") == "retention applied")

    for expected in (["events", "identity_links", "sessions"], []):
        proc.start()
        proc.stop()
        assert altered(proc.logs[-1]) == expected, proc.tail()


def test_another_user_logging_in_mid_session_starts_a_session_of_their_own(up: Proc) -> None:
    """Bob logs in on Alice's browser six minutes into her session: the stored sessions and the
    journeys give each person only their own activity, with the same session ids."""
    device, alice, bob = uid("kiosk"), uid("alice"), uid("bob")
    events = [
        {"event_id": uid("e"), "type": "page", "name": "Home", "anonymous_id": device, "timestamp": ago(30)},
        {"event_id": uid("e"), "type": "identify", "anonymous_id": device, "user_id": alice, "timestamp": ago(29)},
        {"event_id": uid("e"), "type": "page", "name": "Cart", "anonymous_id": device, "timestamp": ago(28)},
        {"event_id": uid("e"), "type": "identify", "anonymous_id": device, "user_id": bob, "timestamp": ago(24)},
        {"event_id": uid("e"), "type": "page", "name": "Deals", "anonymous_id": device, "timestamp": ago(23)},
    ]
    # In two requests, Bob's in order after Alice's: the sessionizer extends, then splits.
    assert up.post_batch(events[:3]).status_code == 200
    sessions_of(up, device, lambda s: len(s) == 1 and s[0]["event_count"] == 3)
    assert up.post_batch(events[3:]).status_code == 200
    stored = sessions_of(up, device, lambda s: [x["event_count"] for x in s] == [3, 2])
    assert [x["person_id"] for x in stored] == [alice, bob]
    assert [x["user_id"] for x in stored] == [alice, bob]
    ids = [e["event_id"] for e in events]
    bob_journey = journey_with(up, bob, set(ids[3:]))
    assert [[e["event_id"] for e in s["events"]] for s in bob_journey["sessions"]] == [ids[3:]]
    assert [s["session_id"] for s in bob_journey["sessions"]] == [stored[1]["session_id"]]


def test_openapi_has_an_example_for_every_endpoint(up: Proc) -> None:
    spec = httpx.get(f"{up.url}/openapi.json").json()
    schemas = spec["components"]["schemas"]

    def has_example(op: dict[str, Any]) -> bool:
        for content in op.get("requestBody", {}).get("content", {}).values():
            ref = content.get("schema", {}).get("$ref", "")
            if "example" in content or "example" in schemas.get(ref.split("/")[-1], {}):
                return True
        for response in op.get("responses", {}).values():
            if any("example" in c for c in response.get("content", {}).values()):
                return True
        return any("example" in p for p in op.get("parameters", []))

    missing = [
        f"{m.upper()} {path}" for path, ops in spec["paths"].items() for m, op in ops.items() if not has_example(op)
    ]
    assert not missing, missing
    assert {
        "/v1/batch",
        "/v1/journeys/{identifier}",
        "/v1/funnels",
        "/v1/abandonment",
        "/v1/correlations",
        "/v1/paths",
        "/v1/journey-map",
        "/v1/behaviour",
        "/v1/errors",
        "/v1/trends",
        "/v1/performance",
        "/v1/retention",
        "/v1/pixel.gif",
        "/v1/tracker.js",
        "/v1/b",  # Segment's paths, each with its message's schema
        "/v1/track",
        "/v1/identify",
    } <= set(spec["paths"])
    track = spec["paths"]["/v1/track"]["post"]["requestBody"]["content"]["application/json"]
    assert track["example"]["event"] == "Order Completed" and "anonymousId" in track["schema"]["properties"]
    batch = spec["paths"]["/v1/batch"]["post"]["requestBody"]["content"]["application/json"]
    assert set(batch["examples"]) == {"touchpoint", "segment"}


def test_events_later_than_the_allowed_lateness_are_stored_and_flagged(up: Proc) -> None:
    dev, old, fresh = uid("late"), uid("e"), uid("e")
    late_before = late_events_counted(up)
    events = [
        {"event_id": old, "type": "screen", "name": "Home", "anonymous_id": dev, "timestamp": ago(8 * 24 * 60)},
        {"event_id": fresh, "type": "screen", "name": "Cart", "anonymous_id": dev, "timestamp": ago(1)},
    ]
    assert up.post_batch(events).json() == {"accepted": 2, "rejected": []}
    ten_days = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    from tests.harness import wait_for

    def both() -> dict[str, Any] | None:
        r = up.journey(dev, **{"from": ten_days})
        return r.json() if r.status_code == 200 and {old, fresh} <= set(event_ids(r.json())) else None

    journey = wait_for(both, 30, "both events")
    late = {e["event_id"]: e["late"] for s in journey["sessions"] for e in s["events"]}
    assert late == {old: True, fresh: False}
    assert late_events_counted(up) == late_before + 1  # other tests of the module send late events too


def late_events_counted(up: Proc) -> float:
    for line in httpx.get(f"{up.url}/metrics").text.splitlines():
        if line.startswith("touchpoint_sessionizer_late_events_total "):
            return float(line.split()[1])
    raise AssertionError("touchpoint_sessionizer_late_events_total missing from /metrics")


def test_errors_say_what_to_do(up: Proc, tmp_path: Path) -> None:
    from services.testing.kafka_broker import free_port

    second = Proc("up", {**up.env, "TOUCHPOINT_PORT": str(free_port())}, up.data_dir, 0)
    second.start(wait=False)
    assert second.proc is not None and second.proc.wait(60) == 2
    assert "another process may hold this chDB path" in second.tail()
    ingest = new_proc("ingest", tmp_path / "nokafka", TOUCHPOINT_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}")
    ingest.start(wait=False)
    assert ingest.proc is not None and ingest.proc.wait(120) != 0
    assert "check that Kafka answers at TOUCHPOINT_KAFKA_BOOTSTRAP" in ingest.tail()


def test_ctrl_c_stops_cleanly(tmp_path: Path) -> None:
    import signal

    proc = new_proc("up", tmp_path / "ctrlc").start()
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGINT)
    assert proc.proc.wait(60) == 130
    stderr = proc.logs[-1].read_text()
    assert "Traceback" not in stderr and '"msg":"component stopped","component":"ingest"' in stderr


def test_a_session_that_times_out_without_the_goal_is_signalled_as_it_happens(up: Proc) -> None:
    """Real-time abandonment: listed after a cursor and streamed as Server-Sent Events."""
    left, bought, later = uid("left"), uid("bought"), uid("later")
    since = datetime.now(UTC).isoformat()

    def visit(dev: str, goal: bool = False) -> list[dict[str, Any]]:
        # Ended 44 minutes ago: past the shop's 30 minute timeout, so over as soon as it is read.
        last = (
            {"type": "track", "name": "Order Completed"}
            if goal
            else {"type": "page", "context": {"page": {"path": "/cart"}}}
        )
        return [
            {
                "event_id": uid("e"),
                "type": "page",
                "anonymous_id": dev,
                "timestamp": ago(45),
                "context": {"page": {"path": "/"}},
            },
            {"event_id": uid("e"), "anonymous_id": dev, "user_id": f"u-{dev}", "timestamp": ago(44), **last},
        ]

    assert up.post_batch(visit(left) + visit(bought, goal=True)).status_code == 200
    headers = {"Authorization": f"Bearer {API_KEY}"}

    def listing(**params: str) -> httpx.Response:
        return httpx.get(f"{up.url}/v1/abandonments", params=params, headers=headers, timeout=10)

    def devices_after(cursor: str) -> set[str]:
        return {s["anonymous_id"] for s in listing(after=cursor).json()["abandonments"]}

    def listed() -> dict[str, Any] | None:
        r = listing(since=since)
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body if left in {s["anonymous_id"] for s in body["abandonments"]} else None

    body = wait_for(listed, 30, "the abandonment signal")
    mine = [s for s in body["abandonments"] if s["anonymous_id"] in (left, bought)]
    assert len(mine) == 1 and mine[0]["exit_touchpoint"] == "page /cart" and mine[0]["goals_reached"] == []
    assert mine[0]["person_id"] == f"u-{left}" and mine[0]["event_count"] == 2
    # Nothing after the last cursor yet, for this device.
    assert left not in devices_after(body["next"])

    # The stream from the same instant brings the same signal, its id the cursor ...
    first = next_streamed(up, {"since": since}, {}, {left})
    assert first["id"] == mine[0]["cursor"] and first["data"]["session_id"] == mine[0]["session_id"]
    # ... and an EventSource reconnecting with Last-Event-ID gets what came after it (even what
    # was noticed before it reconnected), not that signal again.
    assert up.post_batch(visit(later)).status_code == 200
    wait_for(lambda: later in devices_after(first["id"]) or None, 30, "the second signal")
    resumed = next_streamed(up, {}, {"Last-Event-ID": first["id"]}, {left, later})
    assert resumed["data"]["anonymous_id"] == later
    r = listing(after="yesterday")
    assert r.status_code == 422 and "after" in r.text
    for params, extra, field in (({}, {"Last-Event-ID": "x"}, "Last-Event-ID"), ({"since": "soon"}, {}, "since")):
        r = httpx.get(f"{up.url}/v1/abandonments/stream", params=params, headers={**headers, **extra}, timeout=10)
        assert r.status_code == 422 and field in r.text, r.text
    assert httpx.get(f"{up.url}/v1/abandonments/stream", timeout=10).status_code == 401
    # The person comes back on another device and buys: not a loss. The signal comes again,
    # marked recovered, after the cursor of everything read so far.
    phone = uid("phone")
    buyer = [
        {"type": "track", "name": "Order Completed", "anonymous_id": phone, "user_id": f"u-{left}", "channel": "app"}
    ]
    assert up.post_batch(buyer).status_code == 200

    def recovery() -> dict[str, Any] | None:
        signals = listing(after=first["id"]).json()["abandonments"]
        return next((s for s in signals if s["session_id"] == first["data"]["session_id"]), None)

    recovered = wait_for(recovery, 30, "the recovery")
    assert recovered["kind"] == "recovery" and recovered["recovered"]["channel"] == "app"
    # `touchpoint abandonments` follows the stream in a terminal, one JSON line per signal.
    follow = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "abandonments", "--since", since],
        env=up.env,
        stdout=subprocess.PIPE,
        bufsize=0,  # unbuffered: select() sees every line that is not read yet
    )
    try:
        assert follow.stdout is not None
        deadline = time.monotonic() + 30
        while True:  # other tests' signals may come first
            ready, _, _ = select.select([follow.stdout], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, "touchpoint abandonments printed nothing of ours in 30 s"
            if orjson.loads(follow.stdout.readline())["anonymous_id"] == left:
                break
    finally:
        follow.terminate()
        follow.wait(10)


def next_streamed(up: Proc, params: dict[str, str], headers: dict[str, str], devices: set[str]) -> dict[str, Any]:
    """The first abandonment event of one of these devices on /v1/abandonments/stream."""
    deadline = time.monotonic() + 30
    with httpx.stream(
        "GET",
        f"{up.url}/v1/abandonments/stream",
        params=params,
        headers={"Authorization": f"Bearer {API_KEY}", **headers},
        timeout=httpx.Timeout(30, read=20),
    ) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, Any] = {}
        for line in r.iter_lines():
            assert time.monotonic() < deadline, "no abandonment event streamed in 30 s"
            if line.startswith("id: "):
                event["id"] = line[4:]
            elif line.startswith("data: "):
                event["data"] = orjson.loads(line[6:])
            elif not line and event:
                if event["data"]["anonymous_id"] in devices:
                    return event
                event = {}
    raise AssertionError("the stream ended")


def test_errors_report_which_errors_hit_journeys_and_who_still_converted(up: Proc) -> None:
    """POST /v1/errors on seven journeys six days ago (no other test writes there): a script
    error at several lines (one group: numbers are <n>) hit Ann (bought after it), Bo (left on
    it), Cy (went on) and Dee (hit after buying: not a conversion after it); a timeout, each with
    its own request id (ids are <id>), hit Ed (bought after it) and Cy on the next page (left on
    it); Fay bought and Gus left without any error. The report counts each exactly, beside the
    conversion of the journeys no error hit."""
    tag = "".join(chr(103 + int(c, 16)) for c in uuid.uuid4().hex[:10])  # g-v: no number nor hex in it
    bought = uid("Bought")
    t0 = datetime.now(UTC).replace(hour=1, minute=0, second=0, microsecond=0) - timedelta(days=6)
    script, timeout = f"TypeError {tag} at line", f"{tag} timeout after"
    events: list[dict[str, Any]] = []

    def visit(person: str, minute: int, what: str, error: tuple[str, str] | None = None) -> None:
        event: dict[str, Any] = {"event_id": uid("e"), "anonymous_id": person}
        event["timestamp"] = (t0 + timedelta(minutes=minute)).isoformat()
        page = {"type": "page", "context": {"page": {"path": what}}}
        event.update(page if what.startswith("/") else {"type": "track"})
        event["name"] = what.strip("/") or "Home"
        if error:
            event["error"] = {"kind": error[0], "message": error[1]}
        events.append(event)

    ann, bo, cy, dee, ed, fay, gus = (uid(n) for n in ("ann", "bo", "cy", "dee", "ed", "fay", "gus"))
    visit(ann, 0, "/search", ("js", f"{script} 12"))
    visit(ann, 2, bought)
    visit(bo, 1, "/", None)
    visit(bo, 3, "/search", ("js", f"{script} 40"))
    visit(cy, 2, "/search", ("js", f"{script} 7"))
    visit(cy, 4, "/product", ("http", f"{timeout} 2990 ms, request {uuid.uuid4()}"))
    visit(dee, 3, bought)
    visit(dee, 5, "/thanks", ("js", f"{script} 3"))
    visit(ed, 4, "/cart", ("http", f"{timeout} 3012 ms, request {uuid.uuid4().hex}"))
    visit(ed, 6, bought)
    visit(fay, 5, bought)
    visit(gus, 6, "/")
    assert up.post_batch(events).json()["accepted"] == len(events)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"goal": bought, "from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}

    def report(**more: Any) -> dict[str, Any]:
        r = httpx.post(f"{up.url}/v1/errors", json={**body, **more}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    wait_for(lambda: report(scope="session")["journeys"] == 7, 30, "the seven sessions stored")

    for scope in ("journey", "session"):  # one session each: the same counts
        answer = report(scope=scope)
        assert (answer["scope"], answer["journeys"], answer["converted"]) == (scope, 7, 4)
        clean = answer["without_errors"]
        assert (clean["journeys"], clean["converted"], clean["conversion_rate"]) == (2, 1, 0.5)
        groups = {(g["kind"], g["message"]): g for g in answer["errors"]}
        timeouts = ("http", f"{timeout} <n> ms, request <id>")  # request ids told apart no errors
        assert list(groups) == [("js", f"{script} <n>"), timeouts]  # the widest first
        js = groups[("js", f"{script} <n>")]
        assert (js["journeys"], js["occurrences"], js["converted_after"], js["left_with_it"]) == (4, 4, 1, 1)
        assert js["conversion_rate"] == 0.25 and js["difference"] == -0.25 and js["ci95"]
        assert js["first_hit_at"][0] == "page /search" and set(js["first_hit_at"]) == {"page /search", "page /thanks"}
        assert js["enough"] is False and answer["note"]
        http = groups[timeouts]
        assert (http["journeys"], http["converted_after"], http["left_with_it"]) == (2, 1, 1)  # Ed bought, Cy left
        assert http["conversion_rate"] == 0.5
    assert [g["kind"] for g in report(limit=1)["errors"]] == ["js"]
    bad = httpx.post(f"{up.url}/v1/errors", json={**body, "breakdown": "browser"}, headers=auth, timeout=30)
    assert bad.status_code == 422 and "breakdown" in bad.text
    bad = httpx.post(f"{up.url}/v1/errors", json={**body, "limit": 0}, headers=auth, timeout=30)
    assert bad.status_code == 422 and "limit" in bad.text
    other = httpx.post(f"{up.url}/v1/errors", json=body, headers={"Authorization": f"Bearer {OTHER_API_KEY}"})
    assert other.status_code == 200 and other.json()["errors"] == [] and other.json()["journeys"] == 0


def test_performance_rates_each_network_by_its_slow_loads_and_the_conversion_after_them(up: Proc) -> None:
    """POST /v1/performance six days ago at 03:00 (no other test writes there). 36 people load
    search on 4g in 100-450 ms (good), five of them then the cart in 1,500 ms (needs
    improvement); 36 on 3g in 4,100-4,450 ms (poor); three on wifi in 2-3 s. 27 of the 4g people
    buy within the ten-minute window after (one bought before, one 20 minutes after: neither
    counts), 9 of the 3g ones, one on wifi. Percentiles, ratings, conversion per rating and the
    order (slowest 75th percentile first, too few last) are exact."""
    tag = uid("perf")
    bought = uid("Bought")
    t0 = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0) - timedelta(days=6)
    search, cart = f"/{tag}-search", f"/{tag}-cart"
    events: list[dict[str, Any]] = []

    def event(person: str, second: int, what: str, network: str, response_ms: float | None = None) -> None:
        e: dict[str, Any] = {
            "event_id": uid("e"),
            "anonymous_id": person,
            "timestamp": (t0 + timedelta(seconds=second)).isoformat(),
        }
        if what.startswith("/"):
            e.update(type="page", name=what, context={"page": {"path": what}, "network": {"effective_type": network}})
        else:
            e.update(type="track", name=what, context={"network": {"effective_type": network}})
        if response_ms is not None:
            e["timing"] = {"response_ms": response_ms, **({"lcp_ms": 3000 + response_ms} if what == cart else {})}
        if network == "wifi":
            e["context"]["app"] = {"version": "2.1.0"}
        events.append(e)

    for i in range(36):
        fast, slow = uid("fast"), uid("slow")
        at = 60 * i
        event(fast, at, search, "4g", 100 + 10 * i)
        if i < 5:
            event(fast, at + 60, cart, "4g", 1500)
        if i < 27:
            event(fast, at + 120, bought, "4g")
        elif i == 27:
            event(fast, at - 60, bought, "4g")  # before: not a conversion after the load
        elif i == 28:
            event(fast, at + 1200, bought, "4g")  # after the window
        event(slow, at + 30, search, "3g", 4100 + 10 * i)
        if i < 9:
            event(slow, at + 90, bought, "3g")
    for k in range(3):
        person = uid("wifi")
        event(person, 100 + k, "/", "wifi")  # no timing: not an observation
        event(person, 110 + k, search, "wifi", 2000 + 500 * k)
        if k == 0:
            event(person, 200, bought, "wifi")
    assert up.post_batch(events).json()["accepted"] == len(events)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body = {"goal": bought, "window_seconds": 600, "from": t0.isoformat(), "to": (t0 + timedelta(hours=1)).isoformat()}

    def report(**more: Any) -> dict[str, Any]:
        r = httpx.post(f"{up.url}/v1/performance", json={**body, **more}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    wait_for(lambda: report()["overall"]["observations"] == 80, 30, "the 80 timed loads stored")
    answer = report(by="network")
    assert (answer["metric"], answer["by"], answer["thresholds"]) == (
        "response_ms",
        "network",
        {"good": 1000, "poor": 4000},
    )
    overall = answer["overall"]
    rated = {k: (v["observations"], v["converted"]) for k, v in overall["ratings"].items()}
    assert rated == {"good": (36, 27), "needs_improvement": (8, 6), "poor": (36, 9)}
    assert overall["poor_vs_good"] == 9 / 36 - 27 / 36 and answer["note"] is None
    assert [g["value"] for g in answer["groups"]] == ["3g", "4g", "wifi"]  # slowest first, too few last
    g3, g4, wifi = answer["groups"]
    assert (g3["observations"], g3["p50"], g3["p75"], g3["p95"], g3["rating"]) == (36, 4280, 4370, 4440, "poor")
    assert g3["ratings"]["poor"]["conversion_rate"] == 0.25 and g3["apdex"] == 0
    assert (g4["observations"], g4["p50"], g4["p75"], g4["p95"], g4["rating"]) == (41, 300, 400, 1500, "good")
    assert g4["ratings"]["good"]["converted"] == 27 and g4["ratings"]["needs_improvement"]["converted"] == 5
    assert g4["apdex"] == (36 + 5 / 2) / 41 and g4["poor_vs_good"] is None  # no poor loads on 4g
    assert (wifi["observations"], wifi["enough"], wifi["ratings"]["needs_improvement"]["converted"]) == (3, False, 1)

    pages = report()["groups"]  # by touchpoint
    assert [(g["value"], g["observations"]) for g in pages] == [(f"page {search}", 75), (f"page {cart}", 5)]
    only_cart = report(touchpoint={"type": "page", "path": cart})
    assert only_cart["touchpoint"] == f"page {cart}" and only_cart["overall"]["observations"] == 5
    assert only_cart["overall"]["p50"] == 1500 and only_cart["note"]
    strict = report(thresholds=[200, 300])["overall"]["ratings"]
    assert (strict["good"]["observations"], strict["needs_improvement"]["observations"]) == (11, 10)
    assert report(limit=1, by="network")["groups"][0]["value"] == "3g"
    versions = report(by="app_version")["groups"]
    assert [(g["value"], g["observations"]) for g in versions] == [("", 77), ("2.1.0", 3)]
    lcp = report(metric="lcp_ms")  # Core Web Vitals' thresholds; only the cart loads have one
    assert lcp["thresholds"] == {"good": 2500, "poor": 4000} and lcp["overall"]["observations"] == 5
    assert (lcp["overall"]["p50"], lcp["overall"]["rating"]) == (4500, "poor")

    for bad, field in (
        ({"thresholds": [4000, 1000]}, "thresholds"),
        ({"metric": "fid_ms"}, "metric"),
        ({"by": "planet"}, "by"),
        ({"breakdown": "browser"}, "breakdown"),
    ):
        r = httpx.post(f"{up.url}/v1/performance", json={**body, **bad}, headers=auth, timeout=30)
        assert r.status_code == 422 and field in r.text, (bad, r.text)
    other = httpx.post(f"{up.url}/v1/performance", json=body, headers={"Authorization": f"Bearer {OTHER_API_KEY}"})
    assert other.status_code == 200 and other.json()["overall"]["observations"] == 0 and other.json()["groups"] == []


def test_trends_count_each_day_in_its_time_zone_with_empty_days_shown(up: Proc) -> None:
    """POST /v1/trends by day over three days five to three days ago, for the people a campaign
    of this test's own brought (a segment: other tests write on these days too). Ann searched
    and bought on day 5 and searched again on day 4; Bo hit an error at search on day 5 and came
    back at 23:30 UTC on day 3; Cy bought on day 4; Dee searched on day 5. Each day's people,
    sessions, events, buyers, median response and errors are exact; in Berlin Bo's return falls
    on day 2, and day 3 is shown empty rather than skipped."""
    tag = uid("trend")
    d5 = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=5)
    bought = uid("Bought")
    events: list[dict[str, Any]] = []

    def at(who: str, day: int, hour: int, minute: int, what: str, response: float | None = None, **more: Any) -> None:
        when = (d5 + timedelta(days=5 - day, hours=hour, minutes=minute)).isoformat()
        event: dict[str, Any] = {"event_id": uid("e"), "anonymous_id": who, "timestamp": when, **more}
        if what.startswith("/"):
            event.update(type="page", name=what, context={"page": {"path": what}, "campaign": {"source": tag}})
        else:
            event.update(type="track", name=what)
        if response is not None:
            event["timing"] = {"response_ms": response}
        events.append(event)

    ann, bo, cy, dee = (uid(n) for n in ("ann", "bo", "cy", "dee"))
    at(ann, 5, 10, 0, "/search", 800.0)
    at(ann, 5, 10, 5, bought)
    at(ann, 4, 9, 0, "/search", 1200.0)
    at(bo, 5, 11, 0, "/search", 2000.0, error={"kind": "js", "message": "broken"})
    at(bo, 5, 11, 1, "/")
    at(bo, 3, 23, 30, "/", 100.0)
    at(cy, 4, 12, 0, "/")
    at(cy, 4, 12, 10, bought)
    at(dee, 5, 12, 0, "/search", 1000.0)
    assert up.post_batch(events).json()["accepted"] == len(events)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    body: dict[str, Any] = {"goal": bought, "from": d5.isoformat(), "to": (d5 + timedelta(days=3)).isoformat()}
    body["filters"] = {"campaign_source": [tag]}

    def trend(**more: Any) -> dict[str, Any]:
        r = httpx.post(f"{up.url}/v1/trends", json={**body, **more}, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        answer: dict[str, Any] = r.json()
        return answer

    wait_for(lambda: sum(p["sessions"] for p in trend()["points"]) == 6, 30, "the six sessions stored")
    answer = trend()
    day = [(d5 + timedelta(days=k)).date().isoformat() for k in range(4)]
    shape = ("start", "people", "sessions", "events", "converted", "median_response_ms", "errors")
    assert [tuple(p[k] for k in shape) for p in answer["points"]] == [
        (day[0], 3, 3, 5, 1, 1000.0, 1),  # Ann, Bo, Dee; Ann bought; responses 800, 2000, 1000
        (day[1], 2, 2, 3, 1, 1200.0, 0),  # Ann again (a new session), Cy who bought
        (day[2], 1, 1, 1, 0, 100.0, 0),  # Bo back late in the evening
    ]
    first = answer["points"][0]
    assert first["conversion_rate"] == 1 / 3 and first["error_rate"] == 0.2 and first["ci95"]
    search = trend(touchpoint={"type": "page", "path": "/search"})
    assert [p["median_response_ms"] for p in search["points"]] == [1000.0, 1200.0, None]
    assert search["touchpoint"] == "page /search"
    berlin = trend(timezone="Europe/Berlin")
    assert [(p["start"], p["people"], p["conversion_rate"]) for p in berlin["points"]] == [
        (day[0], 3, 1 / 3),
        (day[1], 2, 0.5),
        (day[2], 0, None),  # shown, empty
        (day[3], 1, 0.0),  # Bo's 23:30 UTC is half past midnight in Berlin
    ]
    weeks = trend(interval="week")["points"]
    assert sum(p["events"] for p in weeks) == len(events) and len(weeks) in (1, 2)
    hours = trend(interval="hour")["points"]
    assert len(hours) == 72 and sum(p["events"] for p in hours) == len(events)
    bad = httpx.post(f"{up.url}/v1/trends", json={**body, "interval": "minute"}, headers=auth, timeout=30)
    assert bad.status_code == 422 and "interval" in bad.text
    year = {**body, "from": (d5 - timedelta(days=200)).isoformat(), "interval": "hour"}
    bad = httpx.post(f"{up.url}/v1/trends", json=year, headers=auth, timeout=30)
    assert bad.status_code == 422 and "interval" in bad.text

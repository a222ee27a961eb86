"""The console at ``/`` in a real headless Chromium against ``touchpoint up``: its tables show
the API's own answers (funnel, abandonment, a journey, live signals), tracked text stays text,
and a refused key asks for another."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.harness import API_KEY, Proc, ago, journey_with, new_proc, uid, wait_for
from tests.test_tracker_browser import run_chromium


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = new_proc("up", tmp_path_factory.mktemp("console")).start()
    yield proc
    proc.stop()


def rows(dom: str, kind: str, *attributes: str) -> list[tuple[str, ...]]:
    """The rows of the console's table ``kind``: the given data- attributes of each."""
    match = re.search(rf'<table data-result="{re.escape(kind)}">(.*?)</table>', dom, re.S)
    assert match, f"no {kind} table in the page:\n{dom[-3000:]}"
    out = []
    for tag in re.findall(r"<tr ([^>]*)>", match.group(1)):
        values = dict(re.findall(r'data-([\w-]+)="([^"]*)"', tag))
        out.append(tuple(html.unescape(values[a]) for a in attributes))
    return out


def test_the_console_shows_the_apis_answers(up: Proc, tmp_path: Path) -> None:
    """Three people reached a landing page (the map's first stage); Ann bought, Ben left there two hours ago (a live
    abandonment signal by now), Cy hit an error on the way. The page's funnel, abandonment and
    journey tables hold exactly what the API answers, which matches that truth."""
    ann, ben, cy, landing, buy = uid("ann"), uid("ben"), uid("cy"), f"/land-{uid('p')}", uid("Buy")
    hostile = "<img src=x onerror=\"document.title='pwned'\">"

    def page(person: str, minutes: int, network: str, **more: Any) -> dict[str, Any]:
        return {
            "event_id": uid("e"),
            "type": "page",
            "name": "Home",  # the first stage of the test projects' journey map
            "anonymous_id": person,
            "timestamp": ago(minutes),
            "context": {"page": {"path": landing}, "network": {"type": network}},
            "timing": {"response_ms": 900.0},
            **more,
        }

    events = [
        page(ann, 20, "wifi"),
        {"event_id": uid("e"), "type": "track", "name": buy, "anonymous_id": ann, "timestamp": ago(19)},
        {"event_id": uid("e"), "type": "track", "name": hostile, "anonymous_id": ann, "timestamp": ago(18)},
        page(ben, 120, "cellular"),
        page(cy, 10, "cellular", error={"kind": "js", "message": "checkout broke"}),
    ]
    assert up.post_batch(events).json()["accepted"] == 5
    journey_with(up, ann, {e["event_id"] for e in events[:3]})
    auth = {"Authorization": f"Bearer {API_KEY}"}
    steps = [{"type": "page", "path": landing}, buy]
    funnel = httpx.post(f"{up.url}/v1/funnels", json={"steps": steps}, headers=auth, timeout=30).json()
    assert [s["count"] for s in funnel["steps"]] == [3, 1]  # the truth, before the page is asked
    signal = wait_for(
        lambda: [
            s
            for s in httpx.get(f"{up.url}/v1/abandonments", headers=auth, timeout=30).json()["abandonments"]
            if s["person_id"] == ben
        ],
        60,
        "Ben's abandonment signal",
    )
    assert signal[0]["exit_touchpoint"] == f"page {landing}"

    state = {"key": API_KEY, "goal": buy, "steps": f"page {landing}\n{buy}", "person": ann, "around": f"page {landing}"}
    state.update({"cohort-start": f"page {landing}", "cohort-return": buy, "cohort-period": "day"})
    state["abandonment-breakdown"] = "network"
    state["perf-by"] = "network"
    dom = run_chromium(f"{up.url}/#{urlencode(state)}", tmp_path / "profile", budget_ms=8000)

    assert rows(dom, "funnel", "step", "count") == [(f"page {landing}", "3"), (buy, "1")]
    abandonment = httpx.post(f"{up.url}/v1/abandonment", json={"goal": buy, "limit": 15}, headers=auth, timeout=30)
    points = {(p["touchpoint"], p["channel"]): str(p["abandoned"]) for p in abandonment.json()["points"]}
    assert points[(f"page {landing}", "web")] == "2"  # Ben and Cy
    shown = {(t, c): n for t, c, n in rows(dom, "abandonment", "touchpoint", "channel", "abandoned")}
    assert shown == points
    errors = httpx.post(f"{up.url}/v1/errors", json={"goal": buy, "limit": 15}, headers=auth, timeout=30).json()
    listed = [(e["kind"], e["message"], str(e["journeys"])) for e in errors["errors"]]
    assert ("js", "checkout broke", "1") in listed  # Cy
    assert rows(dom, "errors", "kind", "message", "journeys") == listed
    waits = {"goal": buy, "by": "network", "limit": 15}
    waited = httpx.post(f"{up.url}/v1/performance", json=waits, headers=auth, timeout=30).json()["groups"]
    assert {"wifi", "cellular"} <= {g["value"] for g in waited}  # the three loads of 900 ms
    expected_waits = [(g["value"], str(g["observations"]), g["rating"]) for g in waited]
    assert rows(dom, "performance", "value", "observations", "rating") == expected_waits
    zone = re.search(r'data-trend-timezone="([^"]+)"', dom)
    assert zone, "no trends table"
    now = datetime.now(UTC)
    series = {"goal": buy, "interval": "day", "timezone": zone.group(1), "to": now.isoformat()}
    series["from"] = (now - timedelta(days=7)).isoformat()
    points = httpx.post(f"{up.url}/v1/trends", json=series, headers=auth, timeout=30).json()["points"]
    assert len(points) == 8 and sum(p["converted"] for p in points) >= 1  # Ann
    shown_days = rows(dom, "trends", "start", "people", "converted")
    assert shown_days == [(p["start"], str(p["people"]), str(p["converted"])) for p in points]
    by_network = httpx.post(
        f"{up.url}/v1/abandonment", json={"goal": buy, "limit": 15, "breakdown": "network"}, headers=auth, timeout=30
    ).json()["breakdown"]
    worst_first = sorted(by_network.items(), key=lambda kv: kv[1]["conversion_rate"])
    assert rows(dom, "suffers", "value", "journeys") == [(k, str(v["journeys"])) for k, v in worst_first]
    assert [(k, v["journeys"], v["converted"]) for k, v in worst_first] == [("cellular", 2, 0), ("wifi", 1, 1)]
    assert [e for (e,) in rows(dom, "events", "event")] == [e["event_id"] for e in events[:3]]
    assert ("abandonment", ben) in rows(dom, "live", "signal", "person")
    around = {"touchpoint": {"type": "page", "path": landing}, "goal": buy, "limit": 10}
    paths = httpx.post(f"{up.url}/v1/paths", json=around, headers=auth, timeout=30).json()
    assert [(t["touchpoint"], t["count"]) for t in paths["next"]] == [("(exit)", 2)]  # Ben and Cy left there
    for side in ("previous", "next"):
        expected = [(t["touchpoint"], t["channel"], str(t["count"])) for t in paths[side]]
        assert rows(dom, side, "touchpoint", "channel", "count") == expected
    zone = re.search(r'data-timezone="([^"]+)"', dom)
    assert zone, "no retention table"
    cohort_body = {"start": {"type": "page", "path": landing}, "return": buy, "period": "day", "periods": 8}
    retained = httpx.post(
        f"{up.url}/v1/retention", json={**cohort_body, "timezone": zone.group(1)}, headers=auth, timeout=30
    ).json()
    assert sum(c["people"] for c in retained["cohorts"]) == 3
    expected_cohorts = [(c["cohort"], str(c["people"])) for c in retained["cohorts"]]
    assert rows(dom, "retention", "cohort", "people") == [*expected_cohorts, ("all", "3")]
    stages = httpx.get(f"{up.url}/v1/journey-map", headers=auth, timeout=30).json()["stages"]
    assert [(s["stage"], s["people"]) for s in stages][0] == ("awareness", 3)
    shown_stages = re.findall(r'<div class="stage" data-stage="([^"]+)" data-people="(\d+)"', dom)
    assert shown_stages == [(s["stage"], str(s["people"])) for s in stages]
    # Tracked text is shown as text: the hostile name is escaped, no element was made of it.
    assert "track &lt;img src=x onerror=" in dom and "<img" not in dom, [m.start() for m in re.finditer("<img", dom)]
    assert "<title>Touchpoint</title>" in dom


def test_the_page_is_served_with_a_strict_policy_and_a_refused_key_asks_again(up: Proc, tmp_path: Path) -> None:
    r = httpx.get(f"{up.url}/", timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    policy = r.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
    again = httpx.get(f"{up.url}/", headers={"If-None-Match": r.headers["etag"]}, timeout=30)
    assert again.status_code == 304
    assert httpx.get(f"{up.url}/console/console.js", timeout=30).status_code == 200
    assert httpx.get(f"{up.url}/console/../app.py", timeout=30).status_code == 404
    dom = run_chromium(f"{up.url}/#key=ak_not_a_key", tmp_path / "profile", budget_ms=5000)
    assert "the API key was refused" in dom
    assert re.search(r'<main id="panels" hidden', dom) and re.search(r'<form id="key-form"[^>]*>', dom)
    assert not re.search(r'<form id="key-form"[^>]*hidden', dom)


def test_a_segment_applies_to_every_panel(up: Proc, tmp_path: Path) -> None:
    """Three people came from a Google ad (two by the web, with Google as referrer), two from a
    newsletter, one directly; with the segment "campaign source: google" the funnel, the
    abandonment table and its breakdown by referrer, and the journey map hold the API's answers
    for those three only."""
    landing, buy = f"/ad-{uid('p')}", uid("Buy")
    arrivals = [
        ("google", "https://www.google.com/search?q=x", True),
        ("google", "https://www.google.com/search?q=y", False),
        ("google", "", False),
        ("newsletter", "", True),
        ("newsletter", "", False),
        ("", "", True),
    ]
    events: list[dict[str, Any]] = []
    for k, (source, referrer, buys) in enumerate(arrivals):
        person = uid(f"visitor{k}")
        page: dict[str, Any] = {"path": landing, "referrer": referrer}
        context: dict[str, Any] = {"page": page, **({"campaign": {"source": source}} if source else {})}
        events.append(
            {
                "event_id": uid("e"),
                "type": "page",
                "name": "Home",
                "anonymous_id": person,
                "timestamp": ago(30 - k),
                "context": context,
            }
        )
        if buys:
            events.append(
                {"event_id": uid("e"), "type": "track", "name": buy, "anonymous_id": person, "timestamp": ago(20 - k)}
            )
    assert up.post_batch(events).json()["accepted"] == len(events)
    auth = {"Authorization": f"Bearer {API_KEY}"}
    steps = [{"type": "page", "path": landing}, buy]
    google = {"campaign_source": ["google"]}

    def google_funnel() -> dict[str, Any] | None:
        body = {"steps": steps, "filters": google}
        answer: dict[str, Any] = httpx.post(f"{up.url}/v1/funnels", json=body, headers=auth, timeout=30).json()
        return answer if answer["steps"][0]["count"] == 3 else None

    funnel = wait_for(google_funnel, 60, "the Google visitors stored")
    assert [s["count"] for s in funnel["steps"]] == [3, 1]  # the truth, before the page is asked

    state = {"key": API_KEY, "goal": buy, "steps": f"page {landing}\n{buy}", "segment-by": "campaign_source"}
    state.update({"segment-values": "google", "abandonment-breakdown": "referrer_domain"})
    dom = run_chromium(f"{up.url}/#{urlencode(state)}", tmp_path / "profile", budget_ms=8000)

    assert rows(dom, "funnel", "step", "count") == [(f"page {landing}", "3"), (buy, "1")]
    body = {"goal": buy, "limit": 15, "filters": google, "breakdown": "referrer_domain"}
    answer = httpx.post(f"{up.url}/v1/abandonment", json=body, headers=auth, timeout=30).json()
    assert (answer["journeys"], answer["converted"]) == (3, 1)
    assert rows(dom, "abandonment", "touchpoint", "abandoned") == [
        (p["touchpoint"], str(p["abandoned"])) for p in answer["points"]
    ]
    by_referrer = sorted(answer["breakdown"].items(), key=lambda kv: kv[1]["conversion_rate"])
    assert [(k, v["journeys"]) for k, v in by_referrer] == [("", 1), ("google.com", 2)]
    assert rows(dom, "suffers", "value", "journeys") == [(k, str(v["journeys"])) for k, v in by_referrer]
    assert "(none: direct)" in dom
    stages = httpx.get(
        f"{up.url}/v1/journey-map", params={"filter": "campaign_source:google"}, headers=auth, timeout=30
    ).json()["stages"]
    assert stages[0]["people"] == 3
    shown_stages = re.findall(r'<div class="stage" data-stage="([^"]+)" data-people="(\d+)"', dom)
    assert shown_stages == [(s["stage"], str(s["people"])) for s in stages]

    # The label of the empty value selects it: the one visitor without a campaign, who bought.
    state.update({"segment-values": "(none: direct)", "cohort-start": f"page {landing}", "cohort-kind": "new"})
    direct = run_chromium(f"{up.url}/#{urlencode(state)}", tmp_path / "profile", budget_ms=8000)
    assert rows(direct, "funnel", "step", "count") == [(f"page {landing}", "1"), (buy, "1")]
    zone = re.search(r'data-timezone="([^"]+)"', direct)
    assert zone, "no retention table"
    body = {"start": {"type": "page", "path": landing}, "period": "week", "periods": 8, "cohort": "new"}
    body.update({"filters": {"campaign_source": [""]}, "timezone": zone.group(1)})
    retained = httpx.post(f"{up.url}/v1/retention", json=body, headers=auth, timeout=30).json()
    assert retained["people"] == 1
    cohorts = [(c["cohort"], str(c["people"])) for c in retained["cohorts"]]
    assert rows(direct, "retention", "cohort", "people") == [*cohorts, ("all", "1")]

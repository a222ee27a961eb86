"""Abandonment and correlations through the API on generated traffic whose ground truth is known."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import httpx
import pytest

from loadtests.generator import GOAL, WEB_STEPS, Traffic, generate
from loadtests.sender import send
from services.api.analytics import DIMENSIONS
from services.api.models import Breakdown
from services.core.events import parse_time_ms
from tests.faults import wait_caught_up
from tests.harness import API_KEY, OTHER_API_KEY, WRITE_KEY, Proc, new_proc

PEOPLE = 800


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Traffic]]:
    proc = new_proc("up", tmp_path_factory.mktemp("analytics")).start()
    now = int(time.time() * 1000)
    traffic = generate(seed=21, people=PEOPLE, start_ms=now - 20 * 3600_000, end_ms=now)
    result = asyncio.run(send(proc.url, WRITE_KEY, traffic.batches, concurrency=8, progress=False))
    assert set(result.statuses) == {200}
    # Crawlers and a headless browser walk the shop's pages too: every analysis below must give
    # the ground truth of the people without them (they are left out unless asked for).
    r = httpx.post(f"{proc.url}/v1/batch", json={"events": bot_events(now)}, headers={"X-Write-Key": WRITE_KEY})
    assert r.status_code == 200 and r.json()["accepted"] == BOTS * 3, r.text
    wait_caught_up(proc)
    yield proc, traffic
    proc.stop()


BOTS = 30
BOT_AGENTS = (
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
)


def bot_events(now: int) -> list[dict[str, Any]]:
    """Each bot: Home, Search, Product on the web, a minute apart, an hour ago; never buys."""
    out = []
    for b in range(BOTS):
        for k, (etype, name, path) in enumerate(WEB_STEPS[:3]):
            out.append(
                {
                    "event_id": f"bot{b}-{k}",
                    "type": etype,
                    "name": name,
                    "anonymous_id": f"bot-{b}",
                    "timestamp": datetime.fromtimestamp((now - 3600_000 + k * 60_000) / 1000, tz=UTC).isoformat(),
                    "timing": {"response_ms": 50},
                    "context": {
                        "page": {"path": path, "url": f"https://shop.example{path}"},
                        "user_agent": BOT_AGENTS[b % 2],
                    },
                }
            )
    return out


def api(proc: Proc, path: str, body: dict[str, Any], key: str = API_KEY) -> httpx.Response:
    return httpx.post(f"{proc.url}{path}", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120)


def test_abandonment_matches_ground_truth(loaded: tuple[Proc, Traffic]) -> None:
    proc, traffic = loaded
    r = api(proc, "/v1/abandonment", {"goal": GOAL, "limit": 1000})
    assert r.status_code == 200, r.text
    body = r.json()
    truths = traffic.truths
    converted = sum(t.converted for t in truths)
    assert body["journeys"] == PEOPLE
    assert body["converted"] == converted
    assert body["abandoned"] == PEOPLE - converted
    assert body["recovered_cross_channel"] == sum(t.recovered_cross_channel for t in truths)
    expected = Counter((t.last_touchpoint, t.last_channel) for t in truths if not t.converted)
    got = {(p["touchpoint"], p["channel"]): p["abandoned"] for p in body["points"]}
    assert got == dict(expected)
    top = body["points"][0]
    assert top["share"] == pytest.approx(top["abandoned"] / body["abandoned"])
    assert 0 <= top["error_rate"] <= 1 and top["avg_repeats"] >= 1
    lo, hi = body["conversion_rate_ci95"]
    assert lo < converted / PEOPLE < hi


def test_abandonment_by_channel_and_default_goal(loaded: tuple[Proc, Traffic]) -> None:
    proc, traffic = loaded
    body = api(proc, "/v1/abandonment", {"breakdown": "channel"}).json()  # goal: the project's default
    by = body["breakdown"]
    assert sum(v["journeys"] for v in by.values()) == PEOPLE
    assert set(by) <= {"web", "mobile_web", "app"}


def _search_observations(traffic: Traffic, persons: set[str] | None = None) -> list[tuple[float, bool]]:
    """Each /search page view (of ``persons`` when given), and whether its person ordered within a day after it."""
    person_of_device = {d: t for t in traffic.truths for d in t.devices}
    seen: set[str] = set()
    goals: dict[str, list[int]] = {}
    visits: list[tuple[str, int, float]] = []
    for batch in traffic.batches:
        for e in batch.events:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            truth = person_of_device[e["anonymous_id"]]
            ts = parse_time_ms(e["timestamp"], "timestamp") - (batch.clock_skew_ms or 0)
            if e.get("name") == GOAL:
                goals.setdefault(truth.person_id, []).append(ts)
            if e["type"] == "page" and e.get("context", {}).get("page", {}).get("path") == "/search":
                visits.append((truth.person_id, ts, e["timing"]["response_ms"]))
    return [
        (ms, any(v <= g <= v + 86_400_000 for g in goals.get(p, [])))
        for p, v, ms in visits
        if persons is None or p in persons
    ]


def test_correlation_buckets_match_ground_truth(loaded: tuple[Proc, Traffic]) -> None:
    proc, traffic = loaded
    edges = [500, 1000, 2000, 4000]
    r = api(
        proc,
        "/v1/correlations",
        {"metric": "response_ms", "touchpoint": {"type": "page", "path": "/search"}, "goal": GOAL, "buckets": edges},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    observations = _search_observations(traffic)
    assert body["observations"] == len(observations)
    bounds = [0, *edges, float("inf")]
    for bucket, lo, hi in zip(body["buckets"], bounds[:-1], bounds[1:], strict=True):
        inside = [c for m, c in observations if lo <= round(m, 1) < hi]
        assert bucket["observations"] == len(inside), bucket
        assert bucket["converted"] == sum(inside), bucket
    assert body["odds_ratio_per_second"] < 1  # slow search pages lose buyers, by construction
    assert body["spearman"] < 0
    ci = body["odds_ratio_per_second_ci95"]
    assert ci[0] < body["odds_ratio_per_second"] < ci[1]


def test_session_scope_and_errors_metric(loaded: tuple[Proc, Traffic]) -> None:
    proc, _ = loaded
    sessions = api(proc, "/v1/abandonment", {"goal": GOAL, "scope": "session"}).json()
    assert sessions["journeys"] > PEOPLE  # two-device people have two sessions at least
    # The sessions of session-scope analyses are the ones the sessionizer stored, one by one.
    stored = httpx.get(
        f"{proc.url}/v1/sessions", params={"limit": 10_000}, headers={"Authorization": f"Bearer {API_KEY}"}
    ).json()
    assert stored["count"] < 10_000
    assert sessions["journeys"] == stored["count"]
    reached = sum(GOAL in s["goals_reached"] for s in stored["sessions"])
    assert sessions["converted"] == reached
    errors = api(proc, "/v1/correlations", {"metric": "errors", "goal": GOAL, "breakdown": "channel"})
    assert errors.status_code == 200, errors.text
    assert "odds_ratio_per_error" in errors.json() and set(errors.json()["by"]) <= {"web", "mobile_web", "app"}


def test_invalid_queries_answer_422_naming_the_field(loaded: tuple[Proc, Traffic]) -> None:
    proc, _ = loaded
    cases: list[tuple[dict[str, Any], str]] = [
        ({"goal": GOAL, "window_seconds": -1}, "window_seconds"),
        ({"goal": GOAL, "scope": "galaxy"}, "scope"),
        ({"goal": {"colour": "red"}}, "goal"),
        ({"goal": GOAL, "from": "not a time"}, "from"),
        ({"goal": GOAL, "breakdown": "shoe_size"}, "breakdown"),
    ]
    for body, field in cases:
        r = api(proc, "/v1/abandonment", body)
        assert r.status_code == 422, (body, r.text)
        assert field in r.text
    r = api(proc, "/v1/correlations", {"goal": GOAL, "buckets": [100, 50]})
    assert r.status_code == 422 and "buckets" in r.text
    # SQL-shaped values are data, never SQL.
    r = api(proc, "/v1/abandonment", {"goal": {"name": "x' OR 1=1 --"}})
    assert r.status_code == 200 and r.json()["converted"] == 0


def test_projects_are_isolated(loaded: tuple[Proc, Traffic]) -> None:
    proc, _ = loaded
    other = api(proc, "/v1/abandonment", {"goal": GOAL}, key=OTHER_API_KEY).json()
    assert other["journeys"] == 0
    assert api(proc, "/v1/abandonment", {"goal": GOAL}, key="wk_test_shop").status_code == 401


FUNNEL = ["Home", "Search", "Product", "Product Added", "Cart", "Checkout", GOAL]


def _events_by_person(traffic: Traffic) -> dict[str, list[tuple[int, str, str]]]:
    """(true time, event_id, name) per person, each event once."""
    person_of_device = {d: t.person_id for t in traffic.truths for d in t.devices}
    seen: set[str] = set()
    out: dict[str, list[tuple[int, str, str]]] = {}
    for batch in traffic.batches:
        for e in batch.events:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            ts = parse_time_ms(e["timestamp"], "timestamp") - (batch.clock_skew_ms or 0)
            out.setdefault(person_of_device[e["anonymous_id"]], []).append((ts, e["event_id"], e.get("name", "")))
    return {p: sorted(v) for p, v in out.items()}


def _window_funnel(events: list[tuple[int, str, str]], steps: list[str], window_ms: int) -> list[int]:
    """The oracle: the longest in-order chain starting at any step-1 event, within the window."""
    best: list[int] = []
    for i, (start, _, name) in enumerate(events):
        if name != steps[0]:
            continue
        times = [start]
        for ts, _, other in events[i + 1 :]:
            if ts > start + window_ms or len(times) == len(steps):
                break
            if other == steps[len(times)]:
                times.append(ts)
        if len(times) > len(best):
            best = times
    return best


def test_funnel_matches_a_window_funnel_oracle(loaded: tuple[Proc, Traffic]) -> None:
    proc, traffic = loaded
    r = api(proc, "/v1/funnels", {"steps": FUNNEL, "window_seconds": 86400})
    assert r.status_code == 200, r.text
    steps = r.json()["steps"]
    chains = [_window_funnel(evs, FUNNEL, 86_400_000) for evs in _events_by_person(traffic).values()]
    expected = [sum(1 for c in chains if len(c) >= k) for k in range(1, len(FUNNEL) + 1)]
    assert [s["count"] for s in steps] == expected
    assert [s["step"] for s in steps] == FUNNEL
    assert steps[-1]["count"] == sum(t.converted for t in traffic.truths)
    for k in range(1, len(FUNNEL)):
        gaps = sorted((c[k] - c[k - 1]) / 1000 for c in chains if len(c) > k)
        assert steps[k]["median_seconds_from_previous"] is not None
        assert gaps[0] <= steps[k]["median_seconds_from_previous"] <= gaps[-1]
        assert steps[k]["drop_off"] == steps[k - 1]["count"] - steps[k]["count"]
        assert steps[k]["step_conversion_rate"] == pytest.approx(steps[k]["count"] / steps[k - 1]["count"])
    assert steps[0]["conversion_rate"] == 1.0


def test_bots_are_left_out_unless_asked_for(loaded: tuple[Proc, Traffic]) -> None:
    """The ground-truth tests above pass with the bots' pages in the table; asked for, the bots
    are counted: BOTS more journeys that abandon at the product page, and BOTS more funnel starts."""
    proc, _ = loaded
    people = api(proc, "/v1/abandonment", {"goal": GOAL, "limit": 1000}).json()
    everyone = api(proc, "/v1/abandonment", {"goal": GOAL, "limit": 1000, "include_bots": True}).json()
    assert everyone["journeys"] == people["journeys"] + BOTS == PEOPLE + BOTS
    assert everyone["abandoned"] == people["abandoned"] + BOTS
    points = {(p["touchpoint"], p["channel"]): p["abandoned"] for p in people["points"]}
    with_bots = {(p["touchpoint"], p["channel"]): p["abandoned"] for p in everyone["points"]}
    assert with_bots[("page /product", "web")] == points.get(("page /product", "web"), 0) + BOTS
    funnel = api(proc, "/v1/funnels", {"steps": FUNNEL[:3]}).json()["steps"]
    funnel_all = api(proc, "/v1/funnels", {"steps": FUNNEL[:3], "include_bots": True}).json()["steps"]
    assert [s["count"] + BOTS for s in funnel] == [s["count"] for s in funnel_all]
    sessions = api(proc, "/v1/funnels", {"steps": FUNNEL[:3], "scope": "session", "include_bots": True}).json()
    sessions_people = api(proc, "/v1/funnels", {"steps": FUNNEL[:3], "scope": "session"}).json()
    assert sessions["steps"][0]["count"] == sessions_people["steps"][0]["count"] + BOTS


def test_funnel_breakdown_and_session_scope(loaded: tuple[Proc, Traffic]) -> None:
    proc, _ = loaded
    body = api(proc, "/v1/funnels", {"steps": ["Home", "Search"], "breakdown": "channel"}).json()
    total = body["steps"][0]["count"]
    assert sum(v[0]["count"] for v in body["breakdown"].values()) == total
    sessions = api(proc, "/v1/funnels", {"steps": ["Home", "Search"], "scope": "session"}).json()
    assert sessions["steps"][0]["count"] >= total
    bad = api(proc, "/v1/funnels", {"steps": ["Home"]})
    assert bad.status_code == 422 and "steps" in bad.text


def _labelled_events(traffic: Traffic) -> dict[str, list[tuple[int, str, str, str]]]:
    """(true time, event_id, label, channel) per person, identify calls left out."""
    person_of_device = {d: t.person_id for t in traffic.truths for d in t.devices}
    seen: set[str] = set()
    out: dict[str, list[tuple[int, str, str, str]]] = {}
    for batch in traffic.batches:
        for e in batch.events:
            if e["event_id"] in seen or e["type"] == "identify":
                continue
            seen.add(e["event_id"])
            path = e.get("context", {}).get("page", {}).get("path", "")
            label = f"page {path}" if e["type"] == "page" else f"{e['type']} {e['name']}"
            ts = parse_time_ms(e["timestamp"], "timestamp") - (batch.clock_skew_ms or 0)
            out.setdefault(person_of_device[e["anonymous_id"]], []).append((ts, e["event_id"], label, e["channel"]))
    return {p: sorted(v) for p, v in out.items()}


def _cart_paths(traffic: Traffic, persons: set[str] | None = None) -> tuple[Counter[Any], Counter[Any]]:
    """The oracle of /v1/paths around the cart among those who did not buy: (next, previous)."""
    following: Counter[tuple[str, str]] = Counter()
    preceding: Counter[tuple[str, str]] = Counter()
    for person, events in _labelled_events(traffic).items():
        if persons is not None and person not in persons:
            continue
        if any(label == f"track {GOAL}" for _, _, label, _ in events):
            continue
        for i, (_, _, label, _) in enumerate(events):
            if label != "page /cart":
                continue
            following[events[i + 1][2:] if i + 1 < len(events) else ("(exit)", "")] += 1
            preceding[events[i - 1][2:] if i > 0 else ("(entry)", "")] += 1
    return following, preceding


def test_paths_around_the_cart_among_people_who_did_not_buy(loaded: tuple[Proc, Traffic]) -> None:
    proc, traffic = loaded
    r = api(proc, "/v1/paths", {"touchpoint": {"type": "page", "path": "/cart"}, "goal": GOAL, "limit": 100})
    assert r.status_code == 200, r.text
    body = r.json()
    following, preceding = _cart_paths(traffic)
    assert body["visits"] == sum(following.values()) > 0
    assert {(x["touchpoint"], x["channel"]): x["count"] for x in body["next"]} == dict(following)
    assert {(x["touchpoint"], x["channel"]): x["count"] for x in body["previous"]} == dict(preceding)
    assert body["next"][0]["count"] == max(following.values())


def test_behaviour_by_hour_and_weekday(loaded: tuple[Proc, Traffic]) -> None:
    from datetime import UTC, datetime

    proc, traffic = loaded
    r = api(proc, "/v1/behaviour", {"goal": GOAL})
    assert r.status_code == 200, r.text
    body = r.json()
    # Each generated device makes one session; its hour is that of its first event.
    first: dict[str, int] = {}
    for batch in traffic.batches:
        for e in batch.events:
            ts = parse_time_ms(e["timestamp"], "timestamp") - (batch.clock_skew_ms or 0)
            first[e["anonymous_id"]] = min(first.get(e["anonymous_id"], ts), ts)
    expected = Counter(datetime.fromtimestamp(ts / 1000, tz=UTC).hour for ts in first.values())
    got: Counter[int] = Counter()
    for row in body["by_hour"]:
        got[row["hour"]] += row["sessions"]
    assert got == expected
    assert sum(row["converted"] for row in body["by_hour"]) == sum(t.converted for t in traffic.truths)
    assert sum(row["sessions"] for row in body["by_weekday"]) == len(first)
    assert all(1 <= row["weekday"] <= 7 for row in body["by_weekday"])
    india = api(proc, "/v1/behaviour", {"goal": GOAL, "timezone": "Asia/Kolkata"}).json()
    assert sum(row["sessions"] for row in india["by_hour"]) == len(first)
    bad = api(proc, "/v1/behaviour", {"goal": GOAL, "timezone": "Mars/Olympus"})
    assert bad.status_code == 422 and "timezone" in bad.text


STAGES = {"Home": 1, "Search": 2, "Product": 2, "Product Added": 2, "Cart": 3, "Checkout": 3, GOAL: 3}


def test_journey_map_stages_match_ground_truth(loaded: tuple[Proc, Traffic]) -> None:
    proc, traffic = loaded
    r = httpx.get(f"{proc.url}/v1/journey-map", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    assert r.status_code == 200, r.text
    stages = r.json()["stages"]
    assert [s["stage"] for s in stages] == ["awareness", "consideration", "purchase"]
    by_person = _labelled_events(traffic)
    names = {e["event_id"]: e.get("name", "") for b in traffic.batches for e in b.events}
    exits: Counter[tuple[int, str, str]] = Counter()
    for k in (1, 2, 3):
        reached = [evs for evs in by_person.values() if any(STAGES.get(names[i]) == k for _, i, _, _ in evs)]
        assert stages[k - 1]["people"] == len(reached)
        if k < 3:
            onward = 0
            for evs in reached:
                first = min(ts for ts, i, _, _ in evs if STAGES.get(names[i]) == k)
                onward += any(ts >= first and STAGES.get(names[i]) == k + 1 for ts, i, _, _ in evs)
            assert stages[k - 1]["conversion_to_next"]["people"] == onward
    for evs in by_person.values():
        staged = [(ts, STAGES[names[i]], label, ch) for ts, i, label, ch in evs if names[i] in STAGES]
        if staged and max(s for _, s, _, _ in staged) < 3:
            _, stage, label, channel = max(staged)
            exits[(stage, label, channel)] += 1
    for k, stage in enumerate(stages, 1):
        for pain in stage["pain_points"]["abandonment"]:
            assert pain["exits"] == exits[(k, pain["touchpoint"], pain["channel"])]
    assert stages[1]["pain_points"]["slowest"][0]["touchpoint"] in ("page /search", "screen Search")
    assert stages[2]["conversion_to_next"] is None


def test_journey_map_needs_configured_stages(loaded: tuple[Proc, Traffic]) -> None:
    proc, _ = loaded
    r = httpx.get(f"{proc.url}/v1/journey-map", headers={"Authorization": f"Bearer {OTHER_API_KEY}"})
    assert r.status_code == 422 and "stages" in r.text


def test_segments_and_first_touch_breakdowns_match_ground_truth(loaded: tuple[Proc, Traffic]) -> None:
    """A fifth of the people came from a Google ad (a referrer on the web), a fifth from a
    newsletter, the rest directly. A segment keeps the journeys whose first touchpoint matches;
    a breakdown splits by the same first touch; each answer is checked against the truth."""
    assert get_args(Breakdown) == tuple(DIMENSIONS)  # one list of dimensions, read one way
    proc, traffic = loaded
    truths = traffic.truths
    by_source = {v: {t.person_id for t in truths if t.campaign_source == v} for v in ("google", "newsletter", "")}
    assert all(len(p) >= 100 for p in by_source.values())
    events = _events_by_person(traffic)
    labelled = _labelled_events(traffic)

    def funnel_truth(persons: set[str]) -> list[int]:
        chains = [_window_funnel(evs, FUNNEL, 86_400_000) for p, evs in events.items() if p in persons]
        return [sum(1 for c in chains if len(c) >= k) for k in range(1, len(FUNNEL) + 1)]

    google = api(proc, "/v1/funnels", {"steps": FUNNEL, "filters": {"campaign_source": ["google"]}}).json()
    assert [s["count"] for s in google["steps"]] == funnel_truth(by_source["google"])
    split = api(proc, "/v1/funnels", {"steps": FUNNEL, "breakdown": "campaign_source"}).json()["breakdown"]
    assert {k: [s["count"] for s in v] for k, v in split.items()} == {
        k: funnel_truth(p) for k, p in by_source.items() if funnel_truth(p)[0]
    }

    # Abandonment of the newsletter's readers; two sources at once; two dimensions at once.
    mail = api(proc, "/v1/abandonment", {"goal": GOAL, "limit": 1000, "filters": {"campaign_source": ["newsletter"]}})
    assert mail.status_code == 200, mail.text
    readers = [t for t in truths if t.campaign_source == "newsletter"]
    assert mail.json()["journeys"] == len(readers)
    assert mail.json()["converted"] == sum(t.converted for t in readers)
    expected = Counter((t.last_touchpoint, t.last_channel) for t in readers if not t.converted)
    assert {(p["touchpoint"], p["channel"]): p["abandoned"] for p in mail.json()["points"]} == dict(expected)
    both = api(proc, "/v1/abandonment", {"goal": GOAL, "filters": {"campaign_source": ["newsletter", "google"]}})
    assert both.json()["journeys"] == len(by_source["google"]) + len(by_source["newsletter"])
    first_channel = {p: evs[0][3] for p, evs in labelled.items()}
    app_ads = {p for p in by_source["google"] if first_channel[p] == "app"}
    r = api(proc, "/v1/abandonment", {"goal": GOAL, "filters": {"campaign_source": ["google"], "channel": ["app"]}})
    assert r.json()["journeys"] == len(app_ads) > 0

    # First-touch breakdowns: the referrer of the landing page, the entry touchpoint.
    referrers = api(proc, "/v1/abandonment", {"goal": GOAL, "breakdown": "referrer_domain"}).json()["breakdown"]
    assert {k: v["journeys"] for k, v in referrers.items()} == Counter(t.referrer_domain for t in truths)
    entries = api(proc, "/v1/abandonment", {"goal": GOAL, "breakdown": "entry_touchpoint"}).json()["breakdown"]
    assert {k: v["journeys"] for k, v in entries.items()} == Counter(evs[0][2] for evs in labelled.values())

    # Paths, correlations, sessions by hour and the journey map take the same segment.
    tp = {"type": "page", "path": "/cart"}
    paths = api(proc, "/v1/paths", {"touchpoint": tp, "goal": GOAL, "limit": 100, "filters": {"campaign_source": [""]}})
    following, _ = _cart_paths(traffic, by_source[""])
    assert {(x["touchpoint"], x["channel"]): x["count"] for x in paths.json()["next"]} == dict(following)
    search = {"type": "page", "path": "/search"}
    corr = api(
        proc, "/v1/correlations", {"touchpoint": search, "goal": GOAL, "filters": {"campaign_source": ["google"]}}
    )
    observations = _search_observations(traffic, by_source["google"])
    assert corr.json()["observations"] == len(observations) > 0
    assert sum(b["converted"] for b in corr.json()["buckets"]) == sum(c for _, c in observations)
    hours = api(proc, "/v1/behaviour", {"goal": GOAL, "filters": {"campaign_source": ["google"]}}).json()
    assert sum(row["sessions"] for row in hours["by_hour"]) == len(by_source["google"])  # the landing sessions
    mapped = httpx.get(
        f"{proc.url}/v1/journey-map",
        params=[("filter", "campaign_source:newsletter"), ("filter", "campaign_source:google")],
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    ).json()["stages"]
    homes = {p for p, evs in events.items() if any(name == "Home" for _, _, name in evs)}
    assert mapped[0]["people"] == len(homes & (by_source["google"] | by_source["newsletter"]))
    kept = api(proc, "/v1/retention", {"start": "Home", "period": "day", "filters": {"campaign_source": ["google"]}})
    assert kept.json()["people"] == len(homes & by_source["google"])

    for path, body in (
        ("/v1/funnels", {"steps": FUNNEL, "filters": {"shoe_size": ["42"]}}),
        ("/v1/abandonment", {"goal": GOAL, "filters": {"campaign_source": []}}),
        ("/v1/abandonment", {"goal": GOAL, "filters": {"campaign_source": "google"}}),
    ):
        bad = api(proc, path, body)
        assert bad.status_code == 422 and "filters" in bad.text, bad.text
    bad = httpx.get(
        f"{proc.url}/v1/journey-map", params={"filter": "google"}, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert bad.status_code == 422 and "filter" in bad.text


def test_query_limits_answer_clearly(tmp_path_factory: pytest.TempPathFactory) -> None:
    proc = new_proc("up", tmp_path_factory.mktemp("limits"), TOUCHPOINT_QUERY_MAX_ROWS="5").start()
    try:
        events = [{"type": "page", "name": "Home", "anonymous_id": f"lim-{i}"} for i in range(40)]
        sent = proc.post_batch(events)
        assert sent.status_code == 200, sent.text
        wait_caught_up(proc)
        r = api(proc, "/v1/abandonment", {"goal": GOAL})
        assert r.status_code == 413 and r.json()["detail"].startswith("query: ")
        assert httpx.get(f"{proc.url}/health").status_code == 200
    finally:
        proc.stop()


def test_a_new_campaign_starts_a_new_session_in_every_analysis(tmp_path: Path) -> None:
    """Session scope follows the sessions the sessionizer cut: a second campaign a minute after
    the first (well inside the inactivity timeout) is a session of its own."""
    proc = new_proc("up", tmp_path / "campaigns").start()
    try:
        now = datetime.now(UTC)

        def ago(minutes: float) -> str:
            return (now - timedelta(minutes=minutes)).isoformat()

        def page(path: str, source: str, minutes_ago: float) -> dict[str, Any]:
            url = f"https://shop.example{path}?utm_source={source}&utm_medium=cpc&utm_campaign={source}"
            return {
                "type": "page",
                "anonymous_id": "campaign-device",
                "timestamp": ago(minutes_ago),
                "context": {"page": {"path": path, "url": url}},
            }

        events = [
            page("/", "newsletter", 10),
            page("/search", "ads", 9),
            {"type": "track", "name": GOAL, "anonymous_id": "campaign-device", "timestamp": ago(8)},
        ]
        sent = proc.post_batch(events)
        assert sent.status_code == 200 and sent.json()["accepted"] == 3, sent.text
        wait_caught_up(proc)
        stored = httpx.get(
            f"{proc.url}/v1/sessions",
            params={"device": "campaign-device"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        ).json()
        assert stored["count"] == 2, stored
        steps = [{"type": "page", "path": "/"}, {"type": "page", "path": "/search"}]
        by_session = api(proc, "/v1/funnels", {"steps": steps, "scope": "session"}).json()["steps"]
        assert [s["count"] for s in by_session] == [1, 0]
        by_journey = api(proc, "/v1/funnels", {"steps": steps}).json()["steps"]
        assert [s["count"] for s in by_journey] == [1, 1]
        left = api(proc, "/v1/abandonment", {"goal": GOAL, "scope": "session"}).json()
        assert (left["journeys"], left["converted"], left["abandoned"]) == (2, 1, 1)
        assert [(p["touchpoint"], p["channel"]) for p in left["points"]] == [("page /", "web")]
        paths = api(proc, "/v1/paths", {"touchpoint": {"type": "page", "path": "/"}, "scope": "session"}).json()
        assert [(p["touchpoint"], p["count"]) for p in paths["next"]] == [("(exit)", 1)]
    finally:
        proc.stop()

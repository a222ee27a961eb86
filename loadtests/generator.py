"""A seeded, realistic traffic generator with known ground truth.

People browse the shop on the web, the mobile web and the app. Slow pages and
errors make them leave; some leave the app at the cart and buy on the web an
hour later. Logins stitch their devices. App batches arrive late from offline
queues with skewed clocks; some batches are retried (duplicates). The same seed
always gives the same traffic, and ``Truth`` says what really happened, so tests
and the demo can check every answer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from services.core.events import iso
from services.core.events import parse_time_ms as _parse

# (type, name, path): the shop's funnel, web and app flavours.
WEB_STEPS: tuple[tuple[str, str, str], ...] = (
    ("page", "Home", "/"),
    ("page", "Search", "/search"),
    ("page", "Product", "/product"),
    ("track", "Product Added", "/product"),
    ("page", "Cart", "/cart"),
    ("page", "Checkout", "/checkout"),
    ("track", "Order Completed", "/checkout/done"),
)
APP_STEPS: tuple[tuple[str, str, str], ...] = (
    ("screen", "Home", ""),
    ("screen", "Search", ""),
    ("screen", "Product", ""),
    ("track", "Product Added", ""),
    ("screen", "Cart", ""),
    ("screen", "Checkout", ""),
    ("track", "Order Completed", ""),
)
GOAL = "Order Completed"
# Chance to go on to the next step when the page was fast and error-free.
BASE_CONTINUE = (0.85, 0.75, 0.7, 0.8, 0.75, 0.85)
SLOW_MS = 2000.0

USER_AGENTS = {
    "web": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0 Safari/537.36",
    "mobile_web": "Mozilla/5.0 (iPhone; CPU iPhone OS 18_1 like Mac OS X) AppleWebKit/605.1.15 "
    "Mobile/15E148 Safari/604.1",
}
NETWORKS = ("wifi", "4g", "3g")
# How a person arrived, by their index modulo 5: a paid search ad, a newsletter, or else
# without a campaign (direct). (source, medium, name, referrer of a web landing page)
CAMPAIGNS = (
    ("google", "cpc", "spring-sale", "https://www.google.com/search?q=shop"),
    ("newsletter", "email", "weekly", ""),
)


@dataclass
class Batch:
    """One HTTP request as a tracker would send it.

    ``clock_skew_ms`` is how wrong the device clock is: event timestamps already
    include it, and the sender sets ``sent_at`` to (its now + skew) when sending.
    """

    events: list[dict[str, Any]]
    arrival_ms: int
    clock_skew_ms: int | None = None
    duplicate: bool = False

    def body(self, now_ms: int) -> dict[str, Any]:
        out: dict[str, Any] = {"events": self.events}
        if self.clock_skew_ms is not None:
            out["sent_at"] = iso(now_ms + self.clock_skew_ms)
        return out


@dataclass
class Truth:
    """What one person really did."""

    person_id: str
    user_id: str | None
    devices: list[str]
    converted: bool
    converted_channel: str | None
    last_touchpoint: str
    last_channel: str
    recovered_cross_channel: bool
    event_ids: list[str] = field(default_factory=list)
    campaign_source: str = ""  # of the landing page (first touch), "" for none
    referrer_domain: str = ""  # likewise


@dataclass
class Traffic:
    batches: list[Batch]
    truths: list[Truth]

    @property
    def unique_events(self) -> int:
        return sum(len(t.event_ids) for t in self.truths)


def touchpoint_label(event_type: str, name: str, path: str) -> str:
    return f"{event_type} {path}" if event_type == "page" else f"{event_type} {name}"


class _Person:
    def __init__(self, rng: random.Random, index: int, seed: int) -> None:
        self.rng = rng
        self.index = index
        self.seed = seed
        self.counter = 0

    def event_id(self) -> str:
        self.counter += 1
        return f"g{self.seed}-{self.index}-{self.counter}"


def _response_ms(rng: random.Random, step: int, network: str) -> float:
    base = 250.0 if step != 1 else 700.0  # search is the slow page
    factor = {"wifi": 1.0, "4g": 1.6, "3g": 4.0}[network]
    return round(min(base * factor * math.exp(rng.gauss(0, 0.6)), 60_000.0), 1)


def _continue_prob(step: int, response_ms: float, error: bool) -> float:
    p = BASE_CONTINUE[step]
    if response_ms > SLOW_MS:
        p *= 0.45  # slow pages lose people
    if error:
        p *= 0.3
    return p


def _session(
    person: _Person,
    anon: str,
    user_id: str | None,
    channel: str,
    start_ms: int,
    network: str,
    login_at_step: int | None,
    stop_before: int | None = None,
) -> tuple[list[dict[str, Any]], bool, str]:
    """One visit; returns (events, converted, last touchpoint)."""
    rng = person.rng
    steps = APP_STEPS if channel == "app" else WEB_STEPS
    context: dict[str, Any] = {"network": {"effective_type": network}}
    if channel == "app":
        context["app"] = {"name": "Shop", "version": "5.2.0"}
        context["os"] = {"name": rng.choice(["iOS", "Android"])}
        context["device"] = {"type": "mobile"}
    else:
        context["user_agent"] = USER_AGENTS[channel]
        context["device"] = {"type": "mobile" if channel == "mobile_web" else "desktop"}
    events: list[dict[str, Any]] = []
    ts = start_ms
    last = ""
    converted = False
    for i, (etype, name, path) in enumerate(steps):
        if stop_before is not None and i >= stop_before:
            break
        ts += int(rng.uniform(5_000, 90_000))
        if login_at_step == i and user_id:
            events.append(
                {
                    "event_id": person.event_id(),
                    "type": "identify",
                    "anonymous_id": anon,
                    "user_id": user_id,
                    "timestamp": iso(ts),
                    "channel": channel,
                    "properties": {"plan": rng.choice(["basic", "gold"])},
                    "context": context,
                }
            )
            ts += 1000
        event: dict[str, Any] = {
            "event_id": person.event_id(),
            "type": etype,
            "name": name,
            "anonymous_id": anon,
            "timestamp": iso(ts),
            "channel": channel,
            "context": dict(context),
        }
        if user_id and login_at_step is not None and i >= login_at_step:
            event["user_id"] = user_id
        if path and channel != "app":
            event["context"]["page"] = {"path": path, "url": f"https://shop.example{path}"}
        response = _response_ms(rng, i, network) if etype != "track" else round(rng.uniform(50, 400), 1)
        event["timing"] = {"response_ms": response}
        error = rng.random() < (0.04 if name in ("Search", "Checkout") else 0.01)
        if error:
            event["error"] = {
                "kind": "crash" if channel == "app" else "js",
                "message": f"{name} failed",
                "fatal": False,
            }
        events.append(event)
        last = touchpoint_label(etype, name, path)
        if name == GOAL:
            converted = True
            break
        if i < len(BASE_CONTINUE) and rng.random() > _continue_prob(i, response, error):
            break
    return events, converted, last


def generate(seed: int, people: int, start_ms: int, end_ms: int, duplicate_rate: float = 0.02) -> Traffic:
    """People whose journeys start between start_ms and end_ms (the newest end ~2 h after their start)."""
    rng = random.Random(seed)
    batches: list[Batch] = []
    truths: list[Truth] = []
    for index in range(people):
        person = _Person(rng, index, seed)
        t0 = rng.randint(start_ms, max(start_ms, end_ms - 3 * 3600_000))
        persona = rng.random()
        user_id = f"u{seed}-{index}" if persona < 0.55 else None
        network = rng.choice(NETWORKS)
        primary = rng.choices(["web", "mobile_web", "app"], weights=[0.45, 0.25, 0.30])[0]
        anon = f"d{seed}-{index}-{primary}"
        devices = [anon]
        recovered = False
        if user_id and persona < 0.12:
            # The app user who leaves at the cart and buys on the web an hour later.
            app_anon = f"d{seed}-{index}-app"
            web_anon = f"d{seed}-{index}-web"
            devices = [app_anon, web_anon]
            ev1, _, _ = _session(person, app_anon, user_id, "app", t0, network, login_at_step=0, stop_before=5)
            ev2, converted, last = _session(person, web_anon, user_id, "web", t0 + 3600_000, "wifi", login_at_step=0)
            sessions = [("app", ev1), ("web", ev2)]
            recovered = converted
            last_channel = "web"
        else:
            login = rng.choice([0, 2, 5]) if user_id else None
            ev, converted, last = _session(person, anon, user_id, primary, t0, network, login)
            sessions = [(primary, ev)]
            last_channel = primary
        source, referrer = _land(sessions[0][1], index)
        linked = user_id is not None and any(e.get("user_id") for _, evs in sessions for e in evs)
        if not linked:
            user_id = None  # they left before logging in: an anonymous person
        truth = Truth(
            person_id=user_id or devices[0],
            user_id=user_id,
            devices=devices,
            converted=converted,
            converted_channel=last_channel if converted else None,
            last_touchpoint=last,
            last_channel=last_channel,
            recovered_cross_channel=recovered,
            campaign_source=source,
            referrer_domain=referrer,
        )
        for channel, events in sessions:
            truth.event_ids += [e["event_id"] for e in events]
            batches += _batches(rng, channel, events)
        truths.append(truth)
    extra = [
        Batch(b.events, b.arrival_ms + 5_000, b.clock_skew_ms, True) for b in batches if rng.random() < duplicate_rate
    ]
    batches += extra
    batches.sort(key=lambda b: b.arrival_ms)
    return Traffic(batches, truths)


def _land(events: list[dict[str, Any]], index: int) -> tuple[str, str]:
    """Give the first visit its campaign (on the landing page, and on a login just before it,
    as a tracker adds the page's UTM parameters to every event sent from it) and the landing
    page its referrer; returns (campaign source, referrer domain)."""
    if index % 5 >= len(CAMPAIGNS):
        return "", ""
    source, medium, name, referrer = CAMPAIGNS[index % 5]
    landing = next(i for i, e in enumerate(events) if e["type"] != "identify")
    for e in events[: landing + 1]:
        e["context"] = {**e["context"], "campaign": {"source": source, "medium": medium, "name": name}}
    page = events[landing]["context"].get("page")
    if page is None or not referrer:
        return source, ""
    events[landing]["context"]["page"] = {**page, "referrer": referrer}
    return source, "google.com"


def _batches(rng: random.Random, channel: str, events: list[dict[str, Any]]) -> list[Batch]:
    if not events:
        return []
    last_ms = _parse(events[-1]["timestamp"], "timestamp")
    if channel == "app":
        # Offline queue: one late batch, the device clock off by up to ±2 h.
        skew = int(rng.uniform(-2, 2) * 3600_000) if rng.random() < 0.5 else 0
        delay = int(rng.uniform(0, 3 * 3600_000)) if rng.random() < 0.3 else 2_000
        skewed = [{**e, "timestamp": iso(_parse(e["timestamp"], "timestamp") + skew)} for e in events]
        return [Batch(skewed, last_ms + delay, skew)]
    # Web: a beacon per event or two, sent right away.
    out = []
    for i in range(0, len(events), 2):
        chunk = events[i : i + 2]
        out.append(Batch(chunk, _parse(chunk[-1]["timestamp"], "timestamp") + 50))
    return out


def beacon_events(count: int, seed: int = 7, devices: int = 1) -> list[dict[str, Any]]:
    """Events without ids or timestamps (the server assigns both): a body any load tool can repeat.

    A tracker's batch comes from one device (``devices=1``); a server-side relay mixes many."""
    rng = random.Random(seed)
    device_ids = [f"bench-{rng.randrange(1_000_000)}" for _ in range(devices)]
    out = []
    for i in range(count):
        step = WEB_STEPS[i % 6]
        out.append(
            {
                "type": step[0],
                "name": step[1],
                "anonymous_id": device_ids[i % devices],
                "context": {
                    "page": {"path": step[2], "url": f"https://shop.example{step[2]}"},
                    "user_agent": USER_AGENTS["web"],
                    "network": {"effective_type": "4g"},
                },
                "timing": {"response_ms": round(rng.uniform(100, 3000), 1)},
            }
        )
    return out

"""Pure identity and sessionization rules, tested directly (no I/O)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from services.core.identity import Link, device_owner, events_of_person, is_placeholder, links_in, person_of
from services.core.schema import ABANDONMENT_COLUMNS
from services.core.sessions import abandonment_signal, recovered_signal, sessionize, summarize

MIN = 60_000


def ev(eid: str, ts: int, anon: str = "a1", user: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "project": "p",
        "event_id": eid,
        "timestamp": ts,
        "anonymous_id": anon,
        "user_id": user,
        "channel": "web",
        **extra,
    }


def test_placeholders_never_link() -> None:
    for value in ("", "null", "undefined", "Anonymous", "0", "[object Object]", " NULL "):
        assert is_placeholder(value)
    events = [ev("1", 0, "undefined", "u1"), ev("2", 0, "a1", "null"), ev("3", 5, "a1", "u1"), ev("4", 9, "a1", "u1")]
    assert links_in(events) == [("p", Link("a1", "u1", 5, 9))]


def test_links_are_retroactive_and_devices_switch_owner_without_merging() -> None:
    links = [Link("shared", "alice", 100, 200), Link("shared", "bob", 500, 600)]
    assert device_owner(links, 10) == "alice"  # before the first login: the first user
    assert device_owner(links, 300) == "alice"
    assert device_owner(links, 500) == "bob"  # from the second login on: the second user
    events = [ev("e0", 10, "shared"), ev("e1", 300, "shared"), ev("e2", 700, "shared"), ev("e3", 800, "phone", "alice")]
    alice = [e["event_id"] for e in events_of_person("alice", events, links)]
    bob = [e["event_id"] for e in events_of_person("bob", events, links)]
    assert alice == ["e0", "e1", "e3"]
    assert bob == ["e2"]
    assert person_of("shared", links, set()) == "bob"
    assert person_of("alice", links, {"alice"}) == "alice"
    assert person_of("lonely", links, set()) == "lonely"


def test_sessions_split_on_inactivity_and_campaign() -> None:
    events = [
        ev("a", 0),
        ev("b", 10 * MIN),
        ev("c", 41 * MIN),  # 31 min gap: new session
        ev("d", 42 * MIN, campaign_source="newsletter"),  # new campaign: new session
        ev("e", 43 * MIN, campaign_source="newsletter"),
        ev("x", 5 * MIN, anon="a2"),  # another device: its own session
    ]
    sessions = sessionize(events, 30 * MIN)
    assert [[e["event_id"] for e in s.events] for s in sessions] == [["a", "b"], ["x"], ["c"], ["d", "e"]]
    assert sessions[0].started_at == 0 and sessions[0].ended_at == 10 * MIN


event_lists = st.lists(
    st.tuples(st.sampled_from(["a1", "a2", "a3"]), st.integers(0, 300 * MIN), st.sampled_from(["", "u1", "u2"])),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(event_lists, st.randoms(use_true_random=False))
def test_any_arrival_order_gives_the_same_sessions_and_persons(items: list[tuple[str, int, str]], rnd: Any) -> None:
    events = [ev(f"e{i}", ts, anon, user) for i, (anon, ts, user) in enumerate(items)]
    shuffled = events[:]
    rnd.shuffle(shuffled)

    def shape(evts: list[dict[str, Any]]) -> Any:
        sessions = [(s.session_id, [e["event_id"] for e in s.events]) for s in sessionize(evts, 30 * MIN)]
        links = [link for _, link in links_in(evts)]
        persons = {u: sorted(e["event_id"] for e in events_of_person(u, evts, links)) for u in ("u1", "u2")}
        return sessions, persons

    assert shape(events) == shape(shuffled)


@settings(max_examples=200, deadline=None)
@given(event_lists, st.randoms(use_true_random=False))
def test_summaries_are_the_sessions_folded(items: list[tuple[str, int, str]], rnd: Any) -> None:
    """The sessionizer's summaries and the journeys' sessions are one rule: same ids, same bounds."""
    from services.core.sessions import summarize

    events = [
        ev(f"e{i}", ts, anon, user, campaign_source=rnd.choice(["", "", "ad"]))
        for i, (anon, ts, user) in enumerate(items)
    ]
    shuffled = events[:]
    rnd.shuffle(shuffled)
    sessions = [(s.session_id, s.started_at, s.ended_at, len(s.events)) for s in sessionize(events, 30 * MIN)]
    summaries = [
        (s.session_id, s.started_at, s.ended_at, s.events) for s in summarize(shuffled + shuffled[:3], 30 * MIN)
    ]
    assert summaries == sessions


def test_session_ids_are_uuid5_of_device_and_first_event() -> None:
    import uuid

    from services.core.sessions import _NAMESPACE, session_id

    for project, device, first in (("p", "a1", "e1"), ("shop", "user:ü", "0190c6a2-1f9e")):
        assert session_id(project, device, first) == str(uuid.uuid5(_NAMESPACE, f"{project}\x00{device}\x00{first}"))


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), max_size=60))
def test_running_median_is_the_median_at_every_step(values: list[float]) -> None:
    import statistics

    from services.core.sessions import RunningMedian

    running = RunningMedian()
    assert running.median() is None
    for i, value in enumerate(values):
        running.add(value)
        assert running.median() == statistics.median(values[: i + 1])


@given(st.lists(st.text(max_size=6), max_size=30), st.lists(st.text(max_size=6), max_size=30))
def test_seen_ids_hold_exactly_what_was_added(added: list[str], others: list[str]) -> None:
    from services.core.sessions import SeenIds

    seen = SeenIds()
    for event_id in added:
        seen.add(event_id)
    assert all(event_id in seen for event_id in added)
    assert not any(other in seen for other in others if other not in added)
    assert 1 not in seen


def test_a_shared_device_starts_a_new_session_when_another_user_logs_in() -> None:
    """One session never holds two people: Bob logging in on Alice's browser ten minutes into
    her session starts his own; a placeholder user id or an event without one splits nothing."""
    events = [
        ev("a0", 0, "shared"),
        ev("a1", 1 * MIN, "shared", "alice"),
        ev("a2", 2 * MIN, "shared", "undefined"),
        ev("a3", 3 * MIN, "shared"),
        ev("b1", 10 * MIN, "shared", "bob"),
        ev("b2", 11 * MIN, "shared"),
        ev("b3", 12 * MIN, "shared", "bob"),
        ev("c1", 13 * MIN, "shared", "alice"),  # and back: a third session
    ]
    sessions = sessionize(events, 30 * MIN)
    assert [[e["event_id"] for e in s.events] for s in sessions] == [
        ["a0", "a1", "a2", "a3"],
        ["b1", "b2", "b3"],
        ["c1"],
    ]
    summaries = summarize(reversed(events), 30 * MIN)
    assert [(s.session_id, s.user_id) for s in summaries] == [
        (sessions[0].session_id, "alice"),
        (sessions[1].session_id, "bob"),
        (sessions[2].session_id, "alice"),
    ]
    # Bob's login arriving late, inside Alice's session as it was, splits it: not held inside.
    alice_only = summarize([e for e in events if e["event_id"].startswith("a")], 30 * MIN)[0]
    assert not alice_only.holds_inside(ev("late", 2 * MIN + 1, "shared", "bob"))
    assert alice_only.holds_inside(ev("late", 2 * MIN + 1, "shared", "alice"))
    assert alice_only.holds_inside(ev("late", 2 * MIN + 1, "shared", "null"))


def test_a_timed_out_session_abandons_only_without_a_goal_and_while_recent() -> None:
    now = 1_800_000_000_000
    (browsing,) = summarize([ev("1", now - 50 * MIN), ev("2", now - 40 * MIN)], 30 * MIN)
    (buying,) = summarize([ev("3", now - 50 * MIN), ev("4", now - 40 * MIN, type="track", name="Buy")], 30 * MIN)
    goals = ("Buy",)
    signal = abandonment_signal(browsing.row([], goals, 7), goals, now, 24 * 60 * MIN)
    assert signal is not None and tuple(signal) == ABANDONMENT_COLUMNS
    assert signal["detected_at"] == now / 1000 and signal["session_id"] == browsing.session_id
    assert abandonment_signal(buying.row([], goals, 7), goals, now, 24 * 60 * MIN) is None  # converted
    assert abandonment_signal(browsing.row([], (), 7), (), now, 24 * 60 * MIN) is None  # no goals: nothing to abandon
    assert abandonment_signal(browsing.row([], goals, 7), goals, now, 30 * MIN) is None  # too late to act on
    (crawling,) = summarize([ev("5", now - 50 * MIN, device_type="bot"), ev("6", now - 40 * MIN)], 30 * MIN)
    assert crawling.row([], goals, 7)["device_type"] == "bot"
    assert abandonment_signal(crawling.row([], goals, 7), goals, now, 24 * 60 * MIN) is None  # no customer left


def test_an_abandoned_session_is_recovered_by_a_goal_in_a_later_session_only() -> None:
    now = 1_800_000_000_000
    (left,) = summarize([ev("1", now - 50 * MIN), ev("2", now - 40 * MIN)], 30 * MIN)
    goals = ("Buy",)
    signal = abandonment_signal(left.row([], goals, 1), goals, now, 24 * 60 * MIN)
    assert signal is not None and signal["recovered_at"] is None
    (bought,) = summarize([ev("3", now - 5 * MIN, anon="phone", channel="app", type="track", name="Buy")], 30 * MIN)
    recovered = recovered_signal(signal, bought.row([], goals, 2), now + 1000)
    assert recovered is not None and tuple(recovered) == ABANDONMENT_COLUMNS
    assert recovered["recovered_at"] == (now - 5 * MIN) / 1000 and recovered["recovered_channel"] == "app"
    assert recovered["detected_at"] == (now + 1000) / 1000 and recovered["session_id"] == left.session_id
    assert recovered_signal(recovered, bought.row([], goals, 2), now) is None  # recovered once
    (earlier,) = summarize([ev("4", now - 60 * MIN, anon="tab", type="track", name="Buy")], 30 * MIN)
    assert recovered_signal(signal, earlier.row([], goals, 2), now) is None  # bought before leaving

"""The sessions table on the real embedded ClickHouse engine: what the sessionizer writes
agrees with the pure rule, whatever the arrival order, batching, restarts and rebalances."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.core.eventlog import EmbeddedLog, LogRecord
from services.core.events import normalize, now_ms, rejected_record
from services.core.identity import links_in
from services.core.sessions import session_person, summarize
from services.core.settings import Project, Projects
from services.core.warehouse import Warehouse
from services.sessionizer.open_sessions import OpenSessions
from services.sessionizer.pipeline import Pipeline, decode

MIN = 60_000
# Midnight (UTC) three days ago: within the allowed lateness (7 days) of events received now.
# A fixed date here (2026-11-18) made the erasure scenes' events late a week on, so they got
# no session and the tests failed.
BASE_MS = (now_ms() // 86_400_000 - 3) * 86_400_000
GOAL = "Order Completed"
_offsets = itertools.count()
_projects = itertools.count()


def raw_event(i: int, device: str, minute: int, user: str, kind: int) -> dict[str, Any]:
    """Event ``i`` of a device: pages, a goal, errors, response times and a campaign now and then."""
    ts = datetime.fromtimestamp((BASE_MS + minute * MIN + i) / 1000, tz=UTC).isoformat()
    raw: dict[str, Any] = {
        "event_id": f"e{i}",
        "anonymous_id": device,
        "user_id": user,
        "timestamp": ts,
        "timing": {"response_ms": float(100 + (i * 37) % 900)},
        "context": {"page": {"path": f"/p{i % 3}"}},
    }
    if kind == 0:
        raw.update(type="page")
    elif kind == 1:
        raw.update(type="track", name=GOAL)
    elif kind == 2:
        raw.update(type="track", name="Crash", error={"kind": "js", "message": "boom"})
    else:
        raw.update(type="page", context={"page": {"path": "/", "url": f"https://s.example/?utm_source=s{kind}"}})
    return raw


def records_of(raws: list[dict[str, Any]], project: str, received_ms: int = BASE_MS + 400 * MIN) -> list[LogRecord]:
    out = []
    for raw in raws:
        record = normalize(raw, project=project, received_ms=received_ms, sent_at_ms=None, ip="127.0.0.1")
        offset = next(_offsets)
        out.append(LogRecord(0, offset, offset + 1, b"k", orjson.dumps(record), topic="sessions-test"))
    return out


def dead_letters(project: str, refused: list[tuple[Any, int]]) -> list[LogRecord]:
    """Log records of refused events (payload as sent, when received in ms), as ingest writes them."""
    out = []
    for index, (payload, received_ms) in enumerate(refused):
        record = rejected_record(project, index, "type: must be one of ...", payload, received_ms)
        offset = next(_offsets)
        out.append(LogRecord(0, offset, offset + 1, b"k", orjson.dumps(record), topic="sessions-test"))
    return out


def expected_rows(records: list[LogRecord], goals: tuple[str, ...]) -> list[tuple[Any, ...]]:
    """The pure rule over every event: the rows the table must hold. Of an event sent twice,
    the copy that arrived last counts (the events table keeps the one inserted last)."""
    last = {(s["project"], s["anonymous_id"], s["event_id"]): s for r in records for s in decode([r]).sessions}
    events = list(last.values())
    links = [link for _, link in links_in(events)]
    out = []
    for s in summarize(events, 30 * MIN):
        device_links = [link for link in links if link.anonymous_id == s.device]
        row = s.row(device_links, goals, 0)
        out.append(_shape(row, session_person(s.user_id, s.device, s.started_at, device_links)))
    return sorted(out, key=_by_start)


def _by_start(shape: tuple[Any, ...]) -> tuple[Any, ...]:
    return shape[2], shape[0]


def _shape(row: dict[str, Any], person: str) -> tuple[Any, ...]:
    return (
        row["session_id"],
        row["device"],
        round(row["started_at"] * 1000),
        round(row["ended_at"] * 1000),
        row["events"],
        row["pageviews"],
        row["errors"],
        row["entry_touchpoint"],
        row["exit_touchpoint"],
        row["response_ms_median"],
        row["response_ms_max"],
        tuple(row["goals"]),
        row["campaign_source"],
        person,
    )


def stored_rows(wh: Warehouse, project: str) -> list[tuple[Any, ...]]:
    rows = wh.rows(
        "SELECT * EXCEPT (started_at, ended_at), toUnixTimestamp64Milli(started_at) / 1000 AS started_at, "
        "toUnixTimestamp64Milli(ended_at) / 1000 AS ended_at FROM sessions FINAL WHERE project = {p:String}",
        {"p": project},
    )
    return sorted((_shape(r, r["person"]) for r in rows), key=_by_start)


def pipeline(wh: Warehouse, tmp: Path, project: str) -> Pipeline:
    projects = Projects.of([Project(project, (f"w-{project}",), (f"a-{project}",), goals=(GOAL,))])
    reader = EmbeddedLog(tmp / f"log-{project}").reader("g")
    return Pipeline(reader, wh, max_events=1000, max_seconds=0.1, sessions=OpenSessions(wh, projects))


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["d1", "d2"]),
        st.integers(0, 200),  # minute: gaps above and below the 30 min timeout
        st.sampled_from(["", "", "", "alice", "bob"]),
        st.sampled_from([0, 0, 0, 1, 2, 3, 4]),
    ),
    min_size=1,
    max_size=30,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events_strategy, st.randoms(use_true_random=False), st.data())
def test_the_table_holds_the_rule_for_any_arrival_order_batching_and_restart(
    chdb_path: Path, tmp_path: Path, items: list[tuple[str, int, str, int]], rnd: Any, data: st.DataObject
) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"st{next(_projects)}"
    raws = [raw_event(i, device, minute, user, kind) for i, (device, minute, user, kind) in enumerate(items)]
    if data.draw(st.booleans()):
        # A client resends one event (same event_id); the copy's time, corrected for the
        # client's clock with another request's received_at - sent_at, differs by a few ms.
        resent = dict(rnd.choice(raws))
        shift = timedelta(milliseconds=data.draw(st.integers(-20, 20)))
        resent["timestamp"] = (datetime.fromisoformat(resent["timestamp"]) + shift).isoformat()
        raws.append(resent)
    rnd.shuffle(raws)
    records = records_of(raws, project)
    cuts = sorted(data.draw(st.lists(st.integers(1, max(1, len(records) - 1)), max_size=4)))
    current = pipeline(wh, tmp_path, project)
    start = 0
    for cut in [*cuts, len(records)]:
        batch = records[start:cut]
        start = max(start, cut)
        if not batch:
            continue
        current.write(batch, decode(batch))
        if data.draw(st.integers(0, 4)) == 0:
            current = pipeline(wh, tmp_path, project)  # a restart: nothing held in memory
        elif data.draw(st.integers(0, 4)) == 0:
            assert current.sessions is not None
            current.sessions.forget()  # a rebalance took the partitions and gave them back
    assert stored_rows(wh, project) == expected_rows(records, (GOAL,))
    # ... and the events table holds the same copy of each event as the sessions.
    stored_times = wh.rows(
        "SELECT event_id, toUnixTimestamp64Milli(timestamp) AS ts FROM events FINAL WHERE project = {p:String}",
        {"p": project},
    )
    last = {e["event_id"]: e["timestamp"] for r in records for e in decode([r]).sessions}
    assert {r["event_id"]: r["ts"] for r in stored_times} == last


def test_a_late_event_rewrites_and_merges_sessions(chdb_path: Path, tmp_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"late{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    early = records_of([raw_event(1, "m1", 0, "", 0), raw_event(2, "m1", 10, "", 0)], project)
    later = records_of([raw_event(3, "m1", 50, "", 1)], project)  # 40 min gap: a second session
    for batch in (early, later):
        p.write(batch, decode(batch))
    before = stored_rows(wh, project)
    assert [(r[4], r[11]) for r in before] == [(2, ()), (1, (GOAL,))]
    # The app's offline queue delivers what happened in between: one session now.
    gap = records_of([raw_event(4, "m1", 30, "", 0), raw_event(0, "m1", -5, "alice", 0)], project)
    p.write(gap, decode(gap))
    after = stored_rows(wh, project)
    assert len(after) == 1
    session = after[0]
    assert session[4] == 5 and session[11] == (GOAL,)  # all five events, the goal reached
    assert session[-1] == "alice"  # the late login names the person of the whole session
    assert session == expected_rows([*early, *later, *gap], (GOAL,))[0]
    ids = {
        r["session_id"] for r in wh.rows("SELECT session_id FROM sessions WHERE project = {p:String}", {"p": project})
    }
    assert {r[0] for r in before} <= ids  # the old rows are tombstoned, not lost from history


def test_a_new_login_rewrites_the_person_of_earlier_sessions(chdb_path: Path, tmp_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"login{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    first = records_of([raw_event(1, "w1", 0, "", 0)], project)
    login = records_of([raw_event(2, "w1", 120, "carol", 0)], project)  # next day-part, a new session
    p.write(first, decode(first))
    assert [r[-1] for r in stored_rows(wh, project)] == ["w1"]
    p.write(login, decode(login))
    assert [r[-1] for r in stored_rows(wh, project)] == ["carol", "carol"]


def test_in_order_events_extend_the_open_session_without_reading_it_back(chdb_path: Path, tmp_path: Path) -> None:
    from services.sessionizer.open_sessions import RECOMPUTED

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"inorder{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    batches = [records_of([raw_event(i, "s1", i, "", i % 2)], project) for i in range(6)]
    p.write(batches[0], decode(batches[0]))  # a device this process does not hold yet: looked up
    before = RECOMPUTED._value.get()
    for batch in batches[1:]:
        p.write(batch, decode(batch))
    # Concurrent requests of one device land a little out of order: inside the session, still cheap.
    inside = records_of([raw_event(10, "s1", 2, "", 0)], project)
    p.write(inside, decode(inside))
    assert RECOMPUTED._value.get() == before  # held in memory: nothing read back
    everything = [r for b in [*batches, inside] for r in b]
    rows = stored_rows(wh, project)
    assert rows == expected_rows(everything, (GOAL,))
    assert rows[0][4] == 7 and rows[0][11] == (GOAL,)
    # A resent event is recognised and recomputed from storage: still counted once.
    p.write(batches[3], decode(batches[3]))
    assert RECOMPUTED._value.get() == before + 1
    assert stored_rows(wh, project) == rows


def test_seen_ids_never_forget_and_do_not_guess() -> None:
    from services.core.sessions import SeenIds

    seen = SeenIds()
    ids = [f"id-{i}" for i in range(20_000)]
    for i in ids:
        seen.add(i)
    assert all(i in seen for i in ids)
    # A long session gets hundreds of new events per batch: one false "seen" would recompute it.
    assert not any(f"other-{i}" in seen for i in range(100_000))


def test_rebuild_recomputes_sessions_of_events_stored_without_them(
    chdb_path: Path, tmp_path: Path, monkeypatch: Any, capsys: Any
) -> None:
    """An upgrade: events stored by a version without the sessions table get their sessions."""
    from services.cli import main

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"rebuild{next(_projects)}"
    records = records_of(
        [raw_event(i, f"old{i % 3}", i * 7, "dora" if i == 4 else "", i % 4) for i in range(12)], project
    )
    reader = EmbeddedLog(tmp_path / "log-old").reader("g")
    Pipeline(reader, wh, max_events=1000, max_seconds=0.1).write(records, decode(records))  # no sessions
    assert stored_rows(wh, project) == []
    config = tmp_path / "projects.toml"
    config.write_text(
        f'[[projects]]\nid = "{project}"\nwrite_keys = ["w-{project}"]\napi_keys = ["a-{project}"]\n'
        f'goals = ["{GOAL}"]\n'
    )
    monkeypatch.setenv("TOUCHPOINT_CONFIG", str(config))
    monkeypatch.setenv("TOUCHPOINT_CLICKHOUSE_URL", f"chdb://{chdb_path}")
    assert main(["rebuild-sessions"]) == 0
    assert "sessions rebuilt for 3 devices" in capsys.readouterr().err
    expected = expected_rows(records, (GOAL,))
    assert stored_rows(wh, project) == expected
    assert main(["rebuild-sessions", "--project", project]) == 0  # again: the same rows
    assert stored_rows(wh, project) == expected


def test_a_session_that_times_out_without_a_goal_is_signalled_once(chdb_path: Path, tmp_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"st{next(_projects)}"
    now = datetime.now(UTC)

    def event(i: int, device: str, minutes_ago: float, name: str = "") -> dict[str, Any]:
        kind = {"type": "track", "name": name} if name else {"type": "page", "context": {"page": {"path": "/cart"}}}
        at = (now - timedelta(minutes=minutes_ago)).isoformat()
        return {"event_id": f"e{i}", "anonymous_id": device, "timestamp": at, **kind}

    received = int(now.timestamp() * 1000)
    current = pipeline(wh, tmp_path, project)
    assert current.sessions is not None
    # Both sessions end 44 minutes ago: past the 30 min timeout by the clock, not yet by the
    # newest event time the sessionizer has seen, so the batch itself lets go of neither.
    batch = records_of(
        [event(1, "gone", 45), event(2, "gone", 44), event(3, "bought", 45), event(4, "bought", 44, GOAL)],
        project,
        received,
    )
    current.write(batch, decode(batch))

    def signals() -> list[dict[str, Any]]:
        return wh.rows(
            "SELECT device, exit_touchpoint, events, goals FROM abandonments FINAL WHERE project = {p:String}",
            {"p": project},
        )

    assert signals() == []
    assert current.sessions.idle() == 1  # nothing new to read: time passes by the clock
    assert signals() == [{"device": "gone", "exit_touchpoint": "page /cart", "events": 2, "goals": []}]
    # A device within its timeout stays open through the next ticks; nothing is signalled twice.
    batch = records_of([event(5, "here", 1)], project, received)
    current.write(batch, decode(batch))
    assert current.sessions.idle() == 0
    assert len(signals()) == 1
    # The person comes back and buys in a later session: the signal is rewritten as recovered.
    batch = records_of([event(6, "gone", 2), event(7, "gone", 1, GOAL)], project, received)
    current.write(batch, decode(batch))
    (recovered,) = wh.rows(
        "SELECT device, toUnixTimestamp64Milli(recovered_at) AS at, recovered_channel FROM abandonments FINAL "
        "WHERE project = {p:String}",
        {"p": project},
    )
    goal_at = int((now - timedelta(minutes=1)).timestamp() * 1000)
    assert recovered == {"device": "gone", "at": goal_at, "recovered_channel": "web"}


def test_a_device_back_after_its_timeout_gets_its_previous_session_signalled_once(
    chdb_path: Path, tmp_path: Path
) -> None:
    """The session timed out, but no batch or idle tick showed it before the device came back:
    the batch that opens its next session signals it, once."""
    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"st{next(_projects)}"
    now = datetime.now(UTC)
    received = int(now.timestamp() * 1000)

    def page(i: int, minutes_ago: float) -> dict[str, Any]:
        at = (now - timedelta(minutes=minutes_ago)).isoformat()
        return {"event_id": f"e{i}", "anonymous_id": "back", "timestamp": at, "type": "page"}

    current = pipeline(wh, tmp_path, project)
    for batch in (
        records_of([page(1, 45), page(2, 44)], project, received),
        records_of([page(3, 1)], project, received),
    ):
        current.write(batch, decode(batch))
    signals = wh.rows(
        "SELECT device, events FROM abandonments FINAL WHERE project = {p:String}",
        {"p": project},
    )
    assert signals == [{"device": "back", "events": 2}]
    assert current.sessions is not None and current.sessions.idle() == 0  # not again when its timeout shows


def test_a_device_back_after_its_person_was_erased_starts_afresh(chdb_path: Path, tmp_path: Path) -> None:
    """The sessionizer held the device's open session; after the erasure (DELETE /v1/persons) the
    device's next event, within that session's timeout, must not bring the erased events' counts
    back in a rewritten row: the read of the erasures after that batch's write recomputes the
    sessions of the erased devices it touched, and lets them go."""
    from services.api.erasure import erase_person

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"erase{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    first = records_of([raw_event(1, "er1", 0, "dora", 0), raw_event(2, "er1", 5, "", 0)], project)
    p.write(first, decode(first))
    assert [(r[4], r[-1]) for r in stored_rows(wh, project)] == [(2, "dora")]
    erased = erase_person(wh, project, "er1")  # the device names its owner
    assert erased is not None and erased["person_id"] == "dora"
    assert erased["deleted"] == {"events": 2, "sessions": 1, "rejected": 0}
    assert stored_rows(wh, project) == []
    # Accepted after the erasure: the device came back (one accepted before it would be dropped),
    # and Dora logs in again: her new link is kept.
    back = records_of([raw_event(3, "er1", 10, "", 0)], project, received_ms=now_ms() + 1000)
    p.write(back, decode(back))
    assert [(r[4], r[-1]) for r in stored_rows(wh, project)] == [(1, "er1")]
    assert [entry[2:] for entry in _listed(wh, project)] == [(2, 1)]  # the session let go is not counted again
    again = records_of([raw_event(4, "er1", 11, "dora", 0)], project, received_ms=now_ms() + 1000)
    p.write(again, decode(again))
    assert [(r[4], r[-1]) for r in stored_rows(wh, project)] == [(2, "dora")]
    assert _linked_users(wh, project) == {"dora"}
    assert erase_person(wh, "other-project", "er1") is None  # another project's data is not touched
    assert len(stored_rows(wh, project)) == 1


def test_an_erasure_cut_short_is_finished_by_running_it_again(chdb_path: Path, tmp_path: Path) -> None:
    """Events and sessions deleted, then the erasure failed before the identity links went:
    the links still name the person, so the erasure runs again and removes them."""
    from services.api.erasure import erase_person

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"erase{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    batch = records_of([raw_event(1, "er2", 0, "eve", 0)], project)
    p.write(batch, decode(batch))
    for table in ("events", "sessions"):  # as far as the first erasure got
        wh.command(f"DELETE FROM {table} WHERE project = {{p:String}}", {"p": project})
    erased = erase_person(wh, project, "eve")
    assert erased is not None and erased["deleted"] == {"events": 0, "sessions": 0, "rejected": 0}
    assert wh.rows("SELECT count() AS n FROM identity_links WHERE project = {p:String}", {"p": project})[0]["n"] == 0
    assert erase_person(wh, project, "eve") is None


def _listed(wh: Warehouse, project: str) -> list[tuple[str, list[str], int, int]]:
    """``GET /v1/erasures``'s entries: person, devices, events and sessions deleted in all."""
    from services.core.erasure import ERASURES_LISTED

    rows = wh.rows(ERASURES_LISTED, {"project": project, "limit": 100})
    return [(r["person"], list(r["devices"]), int(r["events"]), int(r["sessions"])) for r in rows]


def _stored_ids(wh: Warehouse, project: str) -> set[str]:
    rows = wh.rows("SELECT event_id FROM events FINAL WHERE project = {p:String}", {"p": project})
    return {r["event_id"] for r in rows}


def _persons(wh: Warehouse, project: str) -> set[str]:
    return {r[-1] for r in stored_rows(wh, project)}


def _linked_users(wh: Warehouse, project: str) -> set[str]:
    rows = wh.rows("SELECT DISTINCT user_id FROM identity_links WHERE project = {p:String}", {"p": project})
    return {r["user_id"] for r in rows}


def _erasure_scene(wh: Warehouse, tmp_path: Path) -> tuple[str, list[LogRecord], list[LogRecord]]:
    """Dora logged in on s1 at minute 0, Bob on the same browser at minute 100 (both stored);
    then, accepted before her erasure but not yet stored: s1 at minute 10 (hers, by the time),
    s1 at minute 110 (Bob's), Dora on a new device s9, and x1, someone else."""
    project = f"erase{next(_projects)}"
    stored = records_of(
        [raw_event(1, "s1", 0, "dora", 0), raw_event(2, "s1", 5, "", 0), raw_event(3, "s1", 100, "bob", 0)], project
    )
    pipeline(wh, tmp_path, project).write(stored, decode(stored))
    lagging = records_of(
        [
            raw_event(10, "s1", 10, "", 0),
            raw_event(11, "s1", 110, "", 0),
            raw_event(12, "s9", 20, "dora", 1),
            raw_event(13, "x1", 30, "", 0),
        ],
        project,
        received_ms=now_ms() - 5000,
    )
    return project, stored, lagging


def test_events_of_an_erased_person_still_in_the_log_are_not_stored(chdb_path: Path, tmp_path: Path) -> None:
    """Accepted before the erasure, read after it (the log's lag, or a restart): the erased
    person's are dropped by the stitching rules, a shared browser's other user keeps his."""
    from services.api.erasure import erase_person

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project, _, lagging = _erasure_scene(wh, tmp_path)
    lagging += dead_letters(
        project,
        [  # refused events accepted before the erasure: hers by her user id; Bob's browser by then; x1's
            ({"type": "bogus", "anonymous_id": "s1", "user_id": "dora"}, now_ms() - 5000),
            ({"type": "bogus", "anonymous_id": "s1"}, now_ms() - 5000),
            ({"type": "bogus", "anonymous_id": "x1"}, now_ms() - 5000),
        ],
    )
    erased = erase_person(wh, project, "dora")
    assert erased is not None and erased["deleted"] == {"events": 2, "sessions": 1, "rejected": 0}
    assert _stored_ids(wh, project) == {"e3"}
    # A fresh process (a restart): the erasure is read from ClickHouse before its first write.
    p = pipeline(wh, tmp_path, project)
    p.write(lagging, decode(lagging))
    assert _stored_ids(wh, project) == {"e3", "e11", "e13"}
    refused = wh.rows("SELECT payload FROM rejected_events WHERE project = {p:String}", {"p": project})
    assert sorted(orjson.loads(r["payload"])["anonymous_id"] for r in refused) == ["s1", "x1"]
    assert "dora" not in {orjson.loads(r["payload"]).get("user_id") for r in refused}
    assert _persons(wh, project) == {"bob", "x1"}
    assert _linked_users(wh, project) == {"bob"}
    # Dora comes back on s9 after the erasure: new data, kept and linked again.
    back = records_of([raw_event(14, "s9", 200, "dora", 0)], project, received_ms=now_ms() + 1000)
    p.write(back, decode(back))
    assert _stored_ids(wh, project) == {"e3", "e11", "e13", "e14"}
    assert _linked_users(wh, project) == {"bob", "dora"}


def test_a_write_that_races_an_erasure_is_swept_after_it(chdb_path: Path, tmp_path: Path) -> None:
    """The erasure runs after the batch was checked against the erasures but before its rows
    land (neither of the API's passes can see them): the sessionizer's read after the write
    finds it and deletes what the batch stored of her: events, sessions, links."""
    from services.api.erasure import erase_person

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project, _, lagging = _erasure_scene(wh, tmp_path)
    lagging += dead_letters(
        project,
        [  # refused with the batch: hers (her user id) and Bob's (his browser by then)
            ({"type": "bogus", "anonymous_id": "s1", "user_id": "dora"}, now_ms() - 5000),
            ({"type": "bogus", "anonymous_id": "s1"}, now_ms() - 5000),
        ],
    )
    p = pipeline(wh, tmp_path, project)
    p.erasure_guard.erasures.refresh()  # as the batch before did
    real_insert = wh.insert_json

    def erase_then_insert(table: str, *args: Any, **kwargs: Any) -> None:
        if table == "events" and not erased:
            erased.append(erase_person(wh, project, "dora"))
        real_insert(table, *args, **kwargs)

    erased: list[Any] = []
    wh.insert_json = erase_then_insert  # type: ignore[method-assign]
    p.write(lagging, decode(lagging))
    assert erased and erased[0] is not None
    assert _stored_ids(wh, project) == {"e3", "e11", "e13"}
    ((person, _, events, _),) = _listed(wh, project)  # the sweep's share (e10, e12) in the same entry
    assert person == "dora" and events == erased[0]["deleted"]["events"] + 2
    refused = wh.rows("SELECT payload FROM rejected_events WHERE project = {p:String}", {"p": project})
    assert [orjson.loads(r["payload"]) for r in refused] == [{"type": "bogus", "anonymous_id": "s1"}]  # Bob's
    listed = wh.rows("SELECT sum(rejected) AS n FROM erasures WHERE project = {p:String}", {"p": project})
    assert listed[0]["n"] == 1  # the sweep's, added to her record
    assert _persons(wh, project) == {"bob", "x1"}
    assert _linked_users(wh, project) == {"bob"}


def _erase_while_a_batch_lands(
    wh: Warehouse, p: Pipeline, project: str, lagging: list[LogRecord]
) -> dict[str, Any] | None:
    """Dora's erasure by the API, with ``lagging`` written by ``p`` after the API read what to
    delete and before it recorded the erasure (so no sessionizer read drops or sweeps it)."""
    from services.api.erasure import erase_person

    real_insert = wh.insert
    written: list[bool] = []

    def write_then_record(table: str, *args: Any, **kwargs: Any) -> None:
        if table == "erasures" and not written:  # the record, not what is added to it later
            written.append(True)
            p.write(lagging, decode(lagging))
        real_insert(table, *args, **kwargs)

    wh.insert = write_then_record  # type: ignore[method-assign]
    try:
        assert p.sessions is not None
        return erase_person(wh, project, "dora", p.sessions.recompute_after_erasure)
    finally:
        wh.insert = real_insert  # type: ignore[method-assign]


def test_a_write_that_lands_while_the_api_erases_is_taken_by_its_second_pass(chdb_path: Path, tmp_path: Path) -> None:
    """The batch lands after the API read what to delete and before it recorded the erasure (so
    no sessionizer read drops or sweeps it): the API's pass after the record deletes it."""

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project, _, lagging = _erasure_scene(wh, tmp_path)
    erased = _erase_while_a_batch_lands(wh, pipeline(wh, tmp_path, project), project, lagging)
    assert erased is not None and erased["deleted"] == {"events": 4, "sessions": 3, "rejected": 0}
    assert [entry[2:] for entry in _listed(wh, project)] == [(4, 3)]  # the second pass's share too
    assert _stored_ids(wh, project) == {"e3", "e11", "e13"}
    assert _persons(wh, project) == {"bob", "x1"}
    assert _linked_users(wh, project) == {"bob"}


def test_a_session_rewritten_between_the_apis_passes_is_counted_once(chdb_path: Path, tmp_path: Path) -> None:
    """The sessionizer holds Dora's open session on s1; a batch landing between the API's passes
    extends it (same session id, written again) and starts one on s9. Both passes delete it;
    the erasure's answer and record count two sessions, not three."""

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"erase{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    stored = records_of([raw_event(1, "s1", 0, "dora", 0), raw_event(2, "s1", 5, "", 0)], project)
    p.write(stored, decode(stored))
    lagging = records_of(
        [raw_event(10, "s1", 10, "", 0), raw_event(12, "s9", 20, "dora", 1)], project, received_ms=now_ms() - 5000
    )
    erased = _erase_while_a_batch_lands(wh, p, project, lagging)
    assert erased is not None and erased["deleted"] == {"events": 4, "sessions": 2, "rejected": 0}
    assert [entry[2:] for entry in _listed(wh, project)] == [(4, 2)]
    assert _stored_ids(wh, project) == set() and stored_rows(wh, project) == []


def test_a_sweep_cut_short_by_a_clickhouse_error_is_finished_by_the_retry(chdb_path: Path, tmp_path: Path) -> None:
    """As above, but the sweep's first DELETE fails: the write is retried (nothing committed),
    the retry drops her events before its insert and still deletes the copies the first stored."""
    from services.api.erasure import erase_person

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project, _, lagging = _erasure_scene(wh, tmp_path)
    p = pipeline(wh, tmp_path, project)
    p.erasure_guard.erasures.refresh()
    real_insert, real_command = wh.insert_json, wh.command
    erased: list[Any] = []
    failed: list[str] = []

    def erase_then_insert(table: str, *args: Any, **kwargs: Any) -> None:
        if table == "events" and not erased:
            erased.append(erase_person(wh, project, "dora"))
        real_insert(table, *args, **kwargs)

    def fail_once(sql: str, *args: Any, **kwargs: Any) -> None:
        if erased and sql.startswith("DELETE FROM events") and not failed:
            failed.append(sql)
            raise RuntimeError("ClickHouse away")
        real_command(sql, *args, **kwargs)

    wh.insert_json = erase_then_insert  # type: ignore[method-assign]
    wh.command = fail_once  # type: ignore[method-assign]
    decoded = decode(lagging)
    with pytest.raises(RuntimeError):
        p.write(lagging, decoded)
    assert failed and _stored_ids(wh, project) >= {"e10", "e12"}  # stored, not yet swept
    p.write(lagging, decoded)  # write_with_retry's next attempt
    assert _stored_ids(wh, project) == {"e3", "e11", "e13"}
    assert _persons(wh, project) == {"bob", "x1"}
    assert _linked_users(wh, project) == {"bob"}


def test_a_device_whose_login_was_still_in_the_log_is_erased_when_the_login_is_read(
    chdb_path: Path, tmp_path: Path
) -> None:
    """Dora browsed on her phone (stored, no login yet), then was erased while her login there
    waited in the log: no erasure could know the phone. When the login is read, the phone's
    anonymous events accepted before the erasure are hers by the stitching rules and go too;
    the device is recorded with the erasure, so a restarted sessionizer drops the rest."""
    from services.api.erasure import erase_person

    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project, _, _ = _erasure_scene(wh, tmp_path)
    browsing = records_of([raw_event(20, "ph", 15, "", 0)], project)
    p = pipeline(wh, tmp_path, project)
    p.write(browsing, decode(browsing))
    assert erase_person(wh, project, "dora") is not None
    p.erasure_guard.erasures.refresh()
    before = now_ms() - 5000  # accepted before the erasure, read after it
    more, login = (
        records_of([raw], project, received_ms=before)
        for raw in (raw_event(21, "ph", 18, "", 0), raw_event(22, "ph", 19, "dora", 0))
    )
    p.write(more, decode(more))
    assert {"e20", "e21"} <= _stored_ids(wh, project)  # nobody's yet, as far as anyone knows
    p.write(login, decode(login))
    assert not {"e20", "e21", "e22"} & _stored_ids(wh, project)
    assert "ph" not in {r[1] for r in stored_rows(wh, project)}
    rows = wh.rows(
        "SELECT devices, events FROM erasures WHERE project = {p:String} AND has(devices, 'ph')", {"p": project}
    )
    assert [(r["devices"], r["events"]) for r in rows] == [(["ph"], 2)]
    ((person, devices, events, _),) = _listed(wh, project)  # one erasure, the phone in it
    assert person == "dora" and "ph" in devices and events >= 2
    late = records_of([raw_event(23, "ph", 25, "", 0)], project, received_ms=before)
    restarted = pipeline(wh, tmp_path, project)
    restarted.write(late, decode(late))
    assert "e23" not in _stored_ids(wh, project)
    assert _persons(wh, project) == {"bob"}

"""Export of a person (right of access) on the real embedded ClickHouse engine: exactly the
events the stitching rules give them, each once, in time order, across pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from services.api.erasure import erase_person
from services.api.export import export_person
from services.core.erasure import ERASURES_LISTED
from services.core.events import iso
from services.core.warehouse import Warehouse
from services.sessionizer.pipeline import decode
from tests.test_sessions_table import BASE_MS, MIN, _projects, dead_letters, pipeline, raw_event, records_of


def _export(wh: Warehouse, project: str, identifier: str, page: int) -> list[dict[str, Any]]:
    lines = export_person(wh, project, identifier, page=page)
    assert lines is not None
    return [orjson.loads(line) for line in lines]


def _dora_bob_and_others(chdb_path: Path, tmp_path: Path) -> tuple[Warehouse, str]:
    """Dora browsed s1 anonymously, then logged in; Bob logged in on the same browser later
    (his events there are not hers); she also used s9. One of her events was sent twice, the
    second copy with another time. Some events were refused: hers, Bob's, others'."""
    wh = Warehouse(f"chdb://{chdb_path}", "sessions-test")
    wh.migrate()
    project = f"export{next(_projects)}"
    p = pipeline(wh, tmp_path, project)
    raws = [
        raw_event(1, "s1", 0, "", 0),  # before her login: hers by the stitching rules
        raw_event(2, "s1", 3, "dora", 0),
        raw_event(3, "s1", 5, "", 2),
        raw_event(4, "s1", 100, "bob", 0),
        raw_event(5, "s1", 105, "", 0),  # Bob's
        raw_event(6, "s9", 20, "dora", 1),
        raw_event(7, "s9", 21, "", 0),
        raw_event(8, "x1", 30, "", 0),  # someone else
    ]
    for raw in raws:
        raw["event_id"] = f"{raw['event_id']}-{project}"
    first = records_of(raws, project)
    p.write(first, decode(first))
    resent = dict(raws[6], timestamp=raw_event(7, "s9", 25, "", 0)["timestamp"])
    again = records_of([resent], project)
    p.write(again, decode(again))
    refused = dead_letters(
        project,
        [
            ({"type": "bogus", "anonymous_id": "s1", "user_id": "dora"}, BASE_MS + 4 * MIN),  # hers: her user id
            ({"type": "bogus", "anonymous_id": "s1"}, BASE_MS + 2 * MIN),  # hers: her browser before Bob's login
            ({"type": "bogus", "anonymous_id": "s1"}, BASE_MS + 101 * MIN),  # Bob's: his browser by then
            ({"type": "track", "anonymous_id": "s9", "properties": []}, BASE_MS + 22 * MIN),  # hers
            ({"type": "bogus", "anonymous_id": "x1"}, BASE_MS + 31 * MIN),  # someone else
            ("not an object", BASE_MS + 23 * MIN),  # names nobody
            ({"type": "bogus", "user_id": 42}, BASE_MS + 50 * MIN),  # user 42, whose every event was refused
        ],
    )
    p.write(refused, decode(refused))

    return wh, project


def test_an_export_holds_the_persons_events_once_in_order_across_pages(chdb_path: Path, tmp_path: Path) -> None:
    """Dora's export: her events (not Bob's, on the browser they shared), the copy written last of
    her resent one, once; her refused events by the same rule."""
    wh, project = _dora_bob_and_others(chdb_path, tmp_path)
    assert export_person(wh, project, "nobody", page=2) is None
    lines = _export(wh, project, "s9", page=2)  # her device names her
    assert lines == _export(wh, project, "dora", page=1000)
    kinds = [line["kind"] for line in lines]
    order = ["person", "identity_link", "event", "session", "abandonment", "rejected", "end"]
    assert kinds == sorted(kinds, key=order.index)
    person = lines[0]
    assert person["person_id"] == "dora" and person["identified"] is True
    assert person["identities"]["anonymous_ids"] == ["s1", "s9"]
    links = [line for line in lines if line["kind"] == "identity_link"]
    assert [(x["anonymous_id"], x["user_id"]) for x in links] == [("s1", "dora"), ("s9", "dora")]  # not Bob's
    events = [line for line in lines if line["kind"] == "event"]
    ids = [e["event_id"].split("-")[0] for e in events]
    assert ids == ["e1", "e2", "e3", "e6", "e7"]
    assert [e["timestamp"] for e in events] == sorted(e["timestamp"] for e in events)
    assert events[-1]["timestamp"] == iso(BASE_MS + 25 * MIN + 7)  # the copy written last (minute 25, not 21)
    e3 = events[2]
    assert e3["error_kind"] == "js" and e3["error_message"] == "boom"
    assert e3["context"]["page"]["path"] == "/p0" and isinstance(e3["properties"], dict)
    assert e3["ip"] == "127.0.0.0"  # anonymised before storage
    sessions = [line for line in lines if line["kind"] == "session"]
    assert sessions and {s["person_id"] for s in sessions} == {"dora"}
    assert {s["anonymous_id"] for s in sessions} == {"s1", "s9"}
    refused_lines = [line for line in lines if line["kind"] == "rejected"]
    assert [(r["received_at"], r["payload"]) for r in refused_lines] == [
        (iso(BASE_MS + 2 * MIN), {"type": "bogus", "anonymous_id": "s1"}),
        (iso(BASE_MS + 4 * MIN), {"type": "bogus", "anonymous_id": "s1", "user_id": "dora"}),
        (iso(BASE_MS + 22 * MIN), {"type": "track", "anonymous_id": "s9", "properties": []}),
    ]
    assert refused_lines[0]["error"].startswith("type:") and refused_lines[0]["index"] == 1
    assert lines[-1] == {
        "kind": "end",
        "identity_links": 2,
        "events": 5,
        "sessions": len(sessions),
        "abandonments": len([x for x in lines if x["kind"] == "abandonment"]),
        "rejected": 3,
    }
    lone = _export(wh, project, "x1", page=2)
    assert lone[0]["identified"] is False and [e["event_id"].split("-")[0] for e in lone if e["kind"] == "event"] == [
        "e8"
    ]
    assert [line["payload"] for line in lone if line["kind"] == "rejected"] == [{"type": "bogus", "anonymous_id": "x1"}]
    only_refused = _export(wh, project, "42", page=2)  # known by a refused event only
    assert [line["kind"] for line in only_refused] == ["person", "rejected", "end"]


def test_an_erasure_deletes_the_persons_refused_events_and_no_one_elses(chdb_path: Path, tmp_path: Path) -> None:
    """A refused event names its sender for 30 days: erasing Dora deletes hers (by the rule of
    her events: Bob's on the browser they shared stays), counts them and records the count."""
    wh, project = _dora_bob_and_others(chdb_path, tmp_path)

    def refused() -> list[str]:
        rows = wh.rows("SELECT payload FROM rejected_events WHERE project = {p:String}", {"p": project})
        return sorted(str(r["payload"]) for r in rows)

    before = refused()
    erased = erase_person(wh, project, "dora")
    assert erased is not None and erased["deleted"]["events"] == 5 and erased["deleted"]["rejected"] == 3
    left = [
        {"type": "bogus", "anonymous_id": "s1"},
        {"type": "bogus", "anonymous_id": "x1"},
        {"type": "bogus", "user_id": 42},
    ]
    assert len(before) == 7 and refused() == sorted([*(orjson.dumps(x).decode() for x in left), "not an object"])
    assert erase_person(wh, project, "dora") is None  # nothing left of her
    only_refused = erase_person(wh, project, "42")
    assert only_refused is not None and only_refused["deleted"] == {"events": 0, "sessions": 0, "rejected": 1}
    listed = wh.rows(ERASURES_LISTED, {"project": project, "limit": 10})
    assert sorted((r["person"], int(r["events"]), int(r["rejected"])) for r in listed) == [("42", 0, 1), ("dora", 5, 3)]

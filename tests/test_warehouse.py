"""The warehouse on the real embedded ClickHouse engine (chDB)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from services.core.event_rows import event_row, event_values_json
from services.core.eventlog import EmbeddedLog, LogRecord
from services.core.events import normalize, now_ms
from services.core.schema import CHANNEL_ID, EVENT_COLUMNS, MIGRATIONS, RETENTION_COLUMNS, TOUCHPOINT_ID
from services.core.warehouse import Warehouse
from services.sessionizer.pipeline import Pipeline, decode


def stored(raw: dict[str, Any], project: str) -> dict[str, Any]:
    """An event as ingest puts it in the log, received now."""
    return normalize(raw, project=project, received_ms=now_ms(), sent_at_ms=None, ip="127.0.0.1")


def test_migrations_are_idempotent_and_versioned(chdb_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    assert wh.migrate() == []
    versions = [r["version"] for r in wh.rows("SELECT version FROM schema_migrations FINAL ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS]
    second = Warehouse(f"chdb://{chdb_path}", "other-component")  # each component its own client
    assert second.migrate() == []


def test_retried_batch_is_stored_once(chdb_path: Path, tmp_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    records = [
        LogRecord(
            0,
            i,
            i + 1,
            b"k",
            orjson.dumps(
                stored(
                    {"type": "page", "anonymous_id": "retry-dev", "user_id": "retry-user", "event_id": f"r{i}"}, "wh"
                )
            ),
        )
        for i in range(5)
    ] + [LogRecord(0, 5, 6, b"k", b"{not json")]
    decoded = decode(records)
    assert len(decoded.events) == 5 and len(decoded.rejected) == 1 and len(decoded.links) == 1
    reader = EmbeddedLog(tmp_path / "log").reader("g")
    pipeline = Pipeline(reader=reader, warehouse=wh, max_events=10, max_seconds=0.1)
    pipeline.write(records, decoded)
    pipeline.write(records, decoded)  # a retry after an unclear failure: same token
    count = wh.rows("SELECT count() AS n FROM events WHERE project = 'wh'")[0]["n"]
    assert count == 5
    poison = wh.rows("SELECT error FROM rejected_events WHERE project = ''")
    assert len(poison) == 1 and "log record 0:5" in poison[0]["error"]


def test_rows_from_ingest_decode_as_records_from_before_did() -> None:
    """Ingest now sends each event's row; the sessionizer still reads records written before
    (event records, the row built there). The same events give the same lines, keys, sessions,
    links, late count and times either way."""
    from services.core.event_rows import event_head, pack_rows

    received = now_ms()
    raws = [
        {"type": "page", "anonymous_id": "eq-dev", "event_id": "eq1", "context": {"page": {"path": "/a"}}},
        {"type": "identify", "anonymous_id": "eq-dev", "user_id": "eq-user", "event_id": "eq2"},
        {
            "type": "track",
            "name": "Buy",
            "anonymous_id": "eq-dev",
            "user_id": "eq-user",
            "event_id": "eq3",
            "timing": {"response_ms": 812.5},
            "error": {"kind": "js", "message": "x"},
            "properties": {"n": [1, 2]},
        },
        {"type": "page", "anonymous_id": "eq-dev", "event_id": "eq4", "timestamp": "2020-01-01T00:00:00.007Z"},
    ]
    records = [normalize(r, project="eq", received_ms=received, sent_at_ms=None, ip="10.0.0.1") for r in raws]
    assert records[-1]["late"]
    old = decode([LogRecord(0, 0, 1, b"k", orjson.dumps(records))])
    rows = [event_row(r) for r in records]
    lines = [event_values_json(row) for row in rows]
    new = decode(
        [
            LogRecord(0, 0, 1, b"k", v)
            for v in pack_rows([(line, event_head(row)) for line, row in zip(lines, rows, strict=True)])
        ]
    )
    assert new.events == old.events == lines
    assert new.event_keys == old.event_keys
    assert new.sessions == old.sessions and len(new.sessions) == 3
    assert new.links == old.links and len(new.links) == 1
    assert (
        (new.late, new.newest_received_ms, new.oldest_received_ms)
        == (old.late, received, received)
        == (1, received, received)
    )
    assert not new.rejected
    broken = decode([LogRecord(0, 1, 2, b"k", next(pack_rows([(b'{"not": "a row"}', event_head(rows[0]))])))])
    assert not broken.events and "not a JSON array" in broken.rejected[0][3]


def test_event_rows_fill_every_column_of_the_schema() -> None:
    record = normalize(
        {
            "type": "page",
            "anonymous_id": "a",
            "timestamp": "2026-11-22T10:00:00.001Z",
            "context": {"page": {"url": "https://shop.example/p?utm_source=mail&utm_medium=email&utm_campaign=x"}},
        },
        project="p",
        received_ms=now_ms(),
        sent_at_ms=None,
        ip="10.1.2.3",
    )
    row = event_row(record)
    assert tuple(row) == EVENT_COLUMNS  # the sessionizer sends the values alone, in this order
    assert row["path"] == "/p" and (row["campaign_source"], row["campaign_medium"]) == ("mail", "email")
    assert row["timestamp"] == 1795341600.001  # exact milliseconds as epoch seconds


def test_json_rows_keep_milliseconds_exact(chdb_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    base = 1795341600000
    lines = [
        event_values_json(
            event_row(
                normalize(
                    {"type": "page", "anonymous_id": "ms-dev", "event_id": f"ms{k}"},
                    project="ms",
                    received_ms=base + k,
                    sent_at_ms=None,
                    ip="",
                )
            )
        )
        for k in range(0, 5000, 7)
    ]
    wh.insert_json("events", lines, EVENT_COLUMNS, fmt="JSONCompactEachRow")  # as the sessionizer writes
    bad = wh.rows(
        "SELECT count() AS n FROM events WHERE project = 'ms' "
        "AND toUnixTimestamp64Milli(timestamp) != toInt64OrZero(substring(event_id, 3)) + {b:Int64}",
        {"b": base},
    )
    assert bad[0]["n"] == 0


async def test_a_batch_is_bounded_by_events_when_records_pack_many(tmp_path: Path) -> None:
    """Ingest packs one request's events for one device into one record: a batch bounded by
    records alone once held a whole topic's backlog in one INSERT (10 GB of RSS)."""
    import asyncio

    log = EmbeddedLog(tmp_path / "log")
    await log.start()
    events = [
        stored({"type": "track", "name": "tap", "anonymous_id": "dev", "event_id": f"e{i}"}, "p") for i in range(50)
    ]
    packed = orjson.dumps(events)
    await log.append([(b"p\0dev", packed)] * 200)  # 10,000 events in 200 records
    reader = log.reader("g")
    await reader.start()
    pipeline = Pipeline(reader=reader, warehouse=None, max_events=1_000, max_seconds=5)  # type: ignore[arg-type]
    stop = asyncio.Event()
    sizes = []
    for _ in range(3):
        records, decoded = await pipeline.collect(stop)
        sizes.append(len(decoded.events))
        assert len(decoded.events) == 50 * len(records)
    assert all(1_000 <= n <= 1_050 for n in sizes), sizes  # at most one record beyond the bound
    by_bytes = Pipeline(reader=reader, warehouse=None, max_events=100_000, max_seconds=5, max_bytes=len(packed) * 10)  # type: ignore[arg-type]
    records, _ = await by_bytes.collect(stop)
    assert 10 <= len(records) <= 11
    await log.stop()


def test_a_final_query_over_a_time_range_reads_only_the_months_it_covers(chdb_path: Path) -> None:
    """ClickHouse 26.3+ reads every partition under FINAL unless told otherwise: a week's
    analysis on a year of events would read the year."""
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    for month in range(1, 13):
        wh.client.command(
            "INSERT INTO events (project, event_id, type, anonymous_id, timestamp, received_at) "
            f"VALUES ('pruning', 'e{month}', 'page', 'd', '2025-{month:02d}-15 12:00:00', now64(3))"
        )
    week = "project = 'pruning' AND timestamp >= '2025-10-12 00:00:00' AND timestamp < '2025-10-19 00:00:00'"
    plan = "\n".join(
        r["explain"] for r in wh.rows(f"EXPLAIN indexes = 1 SELECT count() FROM events FINAL WHERE {week}")
    )
    read = re.search(r"Parts: (\d+) \| Granules", plan)  # the parts actually read
    minmax = re.search(r"Min-Max\b.*?Parts: (\d+)/(\d+)", plan, re.DOTALL)  # kept by time / all
    assert read and minmax, plan
    assert int(read[1]) == 1 and int(minmax[1]) == 1 and int(minmax[2]) >= 12, plan
    assert wh.rows(f"SELECT event_id FROM events FINAL WHERE {week}") == [{"event_id": "e10"}]


def test_touchpoint_names_come_from_every_insert_and_from_events_stored_before(chdb_path: Path) -> None:
    """Analyses name the touchpoint ids of an answer through ``touchpoints``: a materialized view
    fills it on each insert into events, and migration 7 filled it from the events already stored."""
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()

    def write(raw: dict[str, Any]) -> None:
        row = event_values_json(event_row(stored({"anonymous_id": "tp-dev", **raw}, "tp")))
        wh.insert_json("events", [row], EVENT_COLUMNS, fmt="JSONCompactEachRow")

    def names() -> set[tuple[str, str]]:
        rows = wh.rows(
            "SELECT t.tp_text AS text, t.ch_text AS channel, count(e.tp_id) AS matching FROM touchpoints AS t "
            f"LEFT JOIN (SELECT {TOUCHPOINT_ID} AS tp_id, {CHANNEL_ID} AS ch_id FROM events WHERE project = 'tp') AS e "
            "ON t.tp_id = e.tp_id AND t.ch_id = e.ch_id WHERE t.project = 'tp' GROUP BY text, channel",
            {},
        )
        assert all(r["matching"] > 0 for r in rows), rows  # each id is the id of its own text
        return {(r["text"], r["channel"]) for r in rows}

    write({"type": "page", "context": {"page": {"path": "/cart"}}, "event_id": "a", "channel": "web"})
    write({"type": "track", "name": "Order Completed", "event_id": "b", "channel": "app"})
    assert names() == {("page /cart", "web"), ("track Order Completed", "app")}

    # A database whose events were stored before the view existed (migration 7 not yet applied).
    wh.client.command("DROP TABLE touchpoints_of_events")
    wh.client.command("DROP TABLE touchpoints")
    wh.client.command("ALTER TABLE schema_migrations DELETE WHERE version = 7 SETTINGS mutations_sync = 1")
    write({"type": "screen", "name": "Cart", "event_id": "c", "channel": "app"})
    assert wh.migrate() == [7]
    assert names() == {("page /cart", "web"), ("track Order Completed", "app"), ("screen Cart", "app")}


def test_retention_expires_old_rows_of_every_table_and_is_applied_only_when_it_changes(chdb_path: Path) -> None:
    """TOUCHPOINT_RETENTION_DAYS as TTLs: setting it removes rows older than the retention from
    events, sessions and identity links (and shortens the 30 days of signals and dead letters);
    the same retention again alters nothing; unset, the TTLs are as the migrations made them."""
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    day = 86_400_000
    for age, name in ((0, "new"), (10 * day, "old")):
        raw = {"type": "page", "anonymous_id": f"{name}-dev", "user_id": f"{name}-user", "event_id": name}
        record = normalize(raw, project="ret", received_ms=now_ms() - age, sent_at_ms=None, ip="")
        wh.insert_json("events", [event_values_json(event_row(record))], EVENT_COLUMNS, fmt="JSONCompactEachRow")
        wh.client.command(
            "INSERT INTO identity_links (project, anonymous_id, user_id, first_seen, last_seen) VALUES "
            "('ret', {d:String}, {u:String}, fromUnixTimestamp64Milli({t:Int64}), fromUnixTimestamp64Milli({t:Int64}))",
            parameters={"d": f"{name}-dev", "u": f"{name}-user", "t": now_ms() - age},
        )
        wh.client.command(
            "INSERT INTO sessions (project, device, session_id, person, started_at, ended_at, version) VALUES "
            "('ret', {d:String}, {d:String}, {d:String}, fromUnixTimestamp64Milli({t:Int64}), "
            "fromUnixTimestamp64Milli({t:Int64}), 1)",
            parameters={"d": f"{name}-dev", "t": now_ms() - age},
        )

    def kept() -> dict[str, list[str]]:
        return {
            table: sorted(r["id"] for r in wh.rows(f"SELECT {column} AS id FROM {table} WHERE project = 'ret'"))
            for table, column in (("events", "event_id"), ("sessions", "device"), ("identity_links", "anonymous_id"))
        }

    assert kept() == {
        "events": ["new", "old"],
        "sessions": ["new-dev", "old-dev"],
        "identity_links": ["new-dev", "old-dev"],
    }
    assert wh.apply_retention(7) == list(RETENTION_COLUMNS)
    assert kept() == {"events": ["new"], "sessions": ["new-dev"], "identity_links": ["new-dev"]}
    assert wh.apply_retention(7) == []
    assert wh.apply_retention(60) == ["events", "sessions", "identity_links", "abandonments", "rejected_events"]
    assert wh.apply_retention(90) == ["events", "sessions", "identity_links"]  # the 30 days stay
    assert wh.apply_retention(None) == ["events", "sessions", "identity_links"]
    engines = {
        r["name"]: r["e"]
        for r in wh.rows("SELECT name, engine_full AS e FROM system.tables WHERE database = currentDatabase()")
    }
    assert " TTL " not in engines["events"] and "toIntervalDay(30)" in engines["abandonments"]

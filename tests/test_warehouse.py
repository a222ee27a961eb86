"""The warehouse on the real embedded ClickHouse engine (chDB)."""

from __future__ import annotations

from pathlib import Path

import orjson

from services.core.eventlog import LogRecord
from services.core.events import normalize, now_ms
from services.core.schema import MIGRATIONS
from services.core.warehouse import Warehouse
from services.sessionizer.pipeline import Pipeline, decode


def test_migrations_are_idempotent_and_versioned(chdb_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    assert wh.migrate() == []
    versions = [r["version"] for r in wh.rows("SELECT version FROM schema_migrations FINAL ORDER BY version")]
    assert versions == [m.version for m in MIGRATIONS]
    second = Warehouse(f"chdb://{chdb_path}", "other-component")  # each component its own client
    assert second.migrate() == []


def test_retried_batch_is_stored_once(chdb_path: Path) -> None:
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()
    now = now_ms()
    records = [
        LogRecord(
            0,
            i,
            i + 1,
            b"k",
            orjson.dumps(
                normalize(
                    {"type": "page", "anonymous_id": "retry-dev", "user_id": "retry-user", "event_id": f"r{i}"},
                    project="wh",
                    received_ms=now,
                    sent_at_ms=None,
                    ip="127.0.0.1",
                )
            ),
        )
        for i in range(5)
    ] + [LogRecord(0, 5, 6, b"k", b"{not json")]
    decoded = decode(records)
    assert len(decoded.events) == 5 and len(decoded.rejected) == 1 and len(decoded.links) == 1
    pipeline = Pipeline(reader=None, warehouse=wh, max_events=10, max_seconds=0.1)  # type: ignore[arg-type]
    pipeline.write(records, decoded)
    pipeline.write(records, decoded)  # a retry after an unclear failure: same token
    count = wh.rows("SELECT count() AS n FROM events WHERE project = 'wh'")[0]["n"]
    assert count == 5
    poison = wh.rows("SELECT error FROM rejected_events WHERE project = ''")
    assert len(poison) == 1 and "log record 0:5" in poison[0]["error"]

"""Exact accounting: how many times each event id is stored in ClickHouse.

Run it as its own process (chDB allows one engine path per process), after the
service that owns the path has stopped:

    python -m loadtests.audit chdb:///path/to/clickhouse PROJECT < ids.txt
"""

from __future__ import annotations

import sys

import orjson

from services.core.warehouse import Warehouse


def stored_counts(url: str, project: str) -> dict[str, int]:
    """Rows per event_id as every query sees them (FINAL: merged or not)."""
    warehouse = Warehouse(url, "audit")
    rows = warehouse.rows(
        "SELECT event_id, count() AS n FROM events FINAL WHERE project = {p:String} GROUP BY event_id", {"p": project}
    )
    return {r["event_id"]: int(r["n"]) for r in rows}


def main() -> int:
    url, project = sys.argv[1], sys.argv[2]
    sys.stdout.write(orjson.dumps(stored_counts(url, project)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The warehouse: ClickHouse through clickhouse-connect, embedded (chDB) or a server.

Every component opens its own Warehouse (its own client and lock). All calls
are blocking; async code runs them in a worker thread.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlparse, urlunparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from .schema import MIGRATIONS, MIGRATIONS_TABLE, RETENTION_COLUMNS, retention_ttl

log = logging.getLogger("touchpoint.warehouse")

_migrate_lock = threading.Lock()


# An object or a list given for a String column (events' properties and context) is stored as
# its JSON text: the defaults of recent ClickHouse, set for servers configured otherwise.
JSON_OBJECTS_AS_TEXT: Mapping[str, Any] = {
    "input_format_json_read_objects_as_strings": 1,
    "input_format_json_read_arrays_as_strings": 1,
}

# A sessionizer batch's events INSERT (several MB of JSON rows). ClickHouse parses JSON in parallel
# only for inputs of 10 MiB and more by default, so a batch was parsed on one core; in chunks of
# 1 MiB it is parsed on both. A batch holds one copy of each event (the sessionizer keeps the last
# of resent copies) and every read of events keeps one copy of each (FINAL or LIMIT 1 BY), so
# collapsing duplicates inside the inserted block (optimize_on_insert) was a pass for nothing.
# Ad-hoc, 200,000 rows in batches of 13,000: 10.7-11.1 -> 7.3-7.6 us of wall time per row.
BULK_INSERT: Mapping[str, Any] = {
    "min_chunk_bytes_for_parallel_parsing": 1 << 20,
    "optimize_on_insert": 0,
}


# Partition pruning before FINAL. Since ClickHouse 26.3 (chDB 26.9 included) a FINAL query whose
# partition key is not in the sorting key (events: months of `timestamp`, sorted by event key)
# reads every partition, so a week's funnel on a year of events read the whole year (1,360 ms
# against 36 ms pruned, docs/benchmarks.md). Pruning first was the rule before 26.3 and is again
# with this setting at 0. What it gives up: when a resend moved an event across a month boundary
# (clock set right between two sends), a range that ends before the later copy's month shows the
# earlier copy, at its earlier time; once, as ever (docs/design.md). Servers without the setting
# already prune first.
PRUNE_BEFORE_FINAL: Mapping[str, Any] = {"defer_partition_pruning_after_final": 0}


class WarehouseError(RuntimeError):
    """ClickHouse could not be reached or refused a statement."""


def _server_client(url: str) -> Client:
    parsed = urlparse(url)
    database = parsed.path.strip("/") or "default"
    if database != "default":
        # The database may not exist yet: create it through the default one.
        bootstrap = clickhouse_connect.get_client(dsn=urlunparse(parsed._replace(path="/default")))
        bootstrap.command(f"CREATE DATABASE IF NOT EXISTS `{database}`")
        bootstrap.close()
    return clickhouse_connect.get_client(dsn=url)


class Warehouse:
    """One ClickHouse client with the schema applied."""

    def __init__(self, url: str, component: str, query_settings: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.component = component
        self.query_settings = dict(query_settings or {})
        self.embedded = url.startswith("chdb:")
        try:
            if self.embedded:
                path = urlparse(url).path
                if path:
                    from pathlib import Path

                    Path(path).mkdir(parents=True, exist_ok=True)
                self.client: Client = clickhouse_connect.get_client(dsn=url)
            elif url.startswith(("http://", "https://")):
                self.client = _server_client(url)
            else:
                raise WarehouseError(
                    f"TOUCHPOINT_CLICKHOUSE_URL={url!r}: use chdb:///absolute/path or http(s)://user:pass@host:8123/db"
                )
        except WarehouseError:
            raise
        except Exception as exc:
            hint = (
                "; another process may hold this chDB path (one engine path per process): stop it or point "
                "TOUCHPOINT_DATA_DIR / TOUCHPOINT_CLICKHOUSE_URL elsewhere"
                if self.embedded
                else "; check the URL, the credentials and that the server answers"
            )
            raise WarehouseError(f"cannot open ClickHouse at {_redact(url)}: {exc}{hint}") from exc
        for name, value in PRUNE_BEFORE_FINAL.items():
            if self._knows_setting(name):
                self.query_settings.setdefault(name, value)

    def _knows_setting(self, name: str) -> bool:
        """Whether this ClickHouse has the setting: an unknown one fails every query it rides on."""
        result = self.client.query("SELECT count() FROM system.settings WHERE name = {name:String}", {"name": name})
        return bool(result.result_rows[0][0])

    def migrate(self) -> list[int]:
        """Apply the migrations this database lacks; return the versions applied."""
        with _migrate_lock:
            self.client.command(MIGRATIONS_TABLE)
            done = {row[0] for row in self.client.query("SELECT version FROM schema_migrations").result_rows}
            applied = []
            for migration in MIGRATIONS:
                if migration.version in done:
                    continue
                # Some fill a new table from the stored events: seconds on a large database.
                log.info("applying migration", extra={"version": migration.version, "migration": migration.name})
                started = time.monotonic()
                for statement in migration.statements:
                    self.client.command(statement)
                self.client.insert(
                    "schema_migrations", [[migration.version, migration.name]], column_names=["version", "name"]
                )
                log.info(
                    "migration applied",
                    extra={
                        "version": migration.version,
                        "migration": migration.name,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                )
                applied.append(migration.version)
            return applied

    def ping(self) -> bool:
        try:
            return bool(self.client.query("SELECT 1").result_rows)
        except Exception:
            return False

    def insert(
        self,
        table: str,
        rows: Sequence[Sequence[Any]],
        columns: Sequence[str],
        dedup_token: str | None = None,
    ) -> None:
        """Insert rows; a retried insert with the same token is dropped by ClickHouse."""
        if not rows:
            return
        settings = {"insert_deduplication_token": dedup_token} if dedup_token else None
        self.client.insert(table, rows, column_names=list(columns), settings=settings)

    def insert_json(
        self,
        table: str,
        lines: Sequence[bytes],
        columns: Sequence[str],
        dedup_token: str | None = None,
        fmt: str = "JSONEachRow",
        settings: Mapping[str, Any] | None = None,
    ) -> None:
        """Insert JSON lines (``JSONEachRow`` objects, or ``JSONCompactEachRow`` arrays of the
        columns' values): ClickHouse parses them natively, several times faster than encoding
        Python values. A retried insert with the same token is dropped. ``settings`` add to the
        insert's (``BULK_INSERT`` for large batches)."""
        if not lines:
            return
        merged = {**JSON_OBJECTS_AS_TEXT, **(settings or {})}
        if dedup_token:
            merged["insert_deduplication_token"] = dedup_token
        self.client.raw_insert(table, list(columns), b"\n".join(lines), settings=merged, fmt=fmt)

    def rows(self, sql: str, parameters: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
        """Run a SELECT with bound parameters; rows as dicts."""
        result = self.client.query(sql, parameters=dict(parameters or {}), settings=self.query_settings or None)
        names = result.column_names
        return [dict(zip(names, row, strict=True)) for row in result.result_rows]

    def apply_retention(self, days: int | None) -> list[str]:
        """Give each table the TTL ``TOUCHPOINT_RETENTION_DAYS`` asks for; return the tables changed.

        Only a TTL that differs is altered: setting one removes the table's expired rows at once
        (a mutation), and later merges remove rows as they expire. Every process that writes
        calls this at start; the same retention everywhere changes nothing."""
        engines = {
            r["name"]: r["engine_full"]
            for r in self.rows(
                "SELECT name, engine_full FROM system.tables "
                "WHERE database = currentDatabase() AND name IN {tables:Array(String)}",
                {"tables": list(RETENTION_COLUMNS)},
            )
        }
        changed = []
        for table in RETENTION_COLUMNS:
            want = retention_ttl(table, days)
            found = re.search(r" TTL (.+?)(?: SETTINGS |$)", engines[table])
            if (found.group(1).strip() if found else None) == want:
                continue
            self.client.command(
                f"ALTER TABLE {table} REMOVE TTL" if want is None else f"ALTER TABLE {table} MODIFY TTL {want}"
            )
            log.info("retention applied", extra={"table": table, "ttl": want or "none"})
            changed.append(table)
        return changed

    def command(self, sql: str, parameters: Mapping[str, Any] | None = None) -> None:
        """Run a statement that returns no rows (a lightweight DELETE) with bound parameters."""
        self.client.command(sql, parameters=dict(parameters or {}))

    def close(self) -> None:
        self.client.close()


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return urlunparse(parsed._replace(netloc=f"{parsed.username}:***@{parsed.hostname}:{parsed.port}"))
    return url

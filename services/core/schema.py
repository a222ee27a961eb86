"""The ClickHouse schema: every table, as versioned migrations. The only DDL in Touchpoint.

Migrations are append-only: never edit one that has shipped, add the next
version. Each statement is idempotent (IF NOT EXISTS) so a crash halfway through
a migration is repaired by running it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


TS: Final = "DateTime64(3, 'UTC')"

# The columns the sessionizer fills, in the order of the table.
EVENT_COLUMNS: Final = (
    "project",
    "event_id",
    "type",
    "name",
    "anonymous_id",
    "user_id",
    "timestamp",
    "client_timestamp",
    "sent_at",
    "received_at",
    "channel",
    "url",
    "path",
    "referrer",
    "title",
    "campaign_source",
    "campaign_medium",
    "campaign_name",
    "user_agent",
    "browser",
    "browser_version",
    "os",
    "os_version",
    "device_type",
    "is_bot",
    "country",
    "region",
    "city",
    "network",
    "ip",
    "is_late",
    "response_ms",
    "ttfb_ms",
    "load_ms",
    "lcp_ms",
    "inp_ms",
    "cls",
    "error_kind",
    "error_message",
    "error_fatal",
    "properties",
    "context",
)
LINK_COLUMNS: Final = ("project", "anonymous_id", "user_id", "first_seen", "last_seen")
REJECTED_COLUMNS: Final = ("project", "received_at", "batch_index", "error", "payload")
SESSION_COLUMNS: Final = (
    "project",
    "device",
    "session_id",
    "person",
    "user_id",
    "channel",
    "browser",
    "os",
    "device_type",
    "country",
    "network",
    "campaign_source",
    "campaign_medium",
    "campaign_name",
    "started_at",
    "ended_at",
    "duration_ms",
    "entry_touchpoint",
    "exit_touchpoint",
    "events",
    "pageviews",
    "errors",
    "response_ms_median",
    "response_ms_max",
    "goals",
    "version",
    "is_deleted",
)
# An abandonment signal: the session's row as it timed out, and when that was noticed.
ABANDONMENT_COLUMNS: Final = (
    *(c for c in SESSION_COLUMNS if c not in ("version", "is_deleted")),
    "detected_at",
    "recovered_at",
    "recovered_channel",
)

# A touchpoint as every analysis names it: a page by its path, anything else by its type and name.
# Analyses carry 64-bit ids (cheap in arrays) and turn the few ids an answer holds back into texts
# through ``touchpoints``, which a materialized view fills from every insert into ``events``.
# Changing these needs a new migration (the view and its backfill hold the old text).
TOUCHPOINT_ID: Final = "if(type = 'page', cityHash64('page', path), cityHash64(toString(type), name))"
TOUCHPOINT_TEXT: Final = "if(type = 'page', concat('page ', path), concat(toString(type), ' ', name))"
CHANNEL_ID: Final = "cityHash64(channel)"

_TOUCHPOINTS_OF_EVENTS: Final = f"""
    SELECT project, {TOUCHPOINT_ID} AS tp_id, {CHANNEL_ID} AS ch_id,
           any({TOUCHPOINT_TEXT}) AS tp_text, any(channel) AS ch_text
    FROM events GROUP BY project, tp_id, ch_id"""

# Retention (TOUCHPOINT_RETENTION_DAYS): the tables whose rows expire, by which time column.
# Two tables keep their own 30-day TTL (from their migrations) unless the retention is shorter.
RETENTION_COLUMNS: Final = {
    "events": "timestamp",
    "sessions": "ended_at",
    "identity_links": "last_seen",
    "abandonments": "detected_at",
    "rejected_events": "received_at",
}
OWN_TTL_DAYS: Final = {"abandonments": 30, "rejected_events": 30}


def retention_ttl(table: str, days: int | None) -> str | None:
    """The TTL expression ``table`` should have under a retention of ``days`` (None: keep all),
    as ClickHouse prints it back in ``system.tables``."""
    keep = min((d for d in (days, OWN_TTL_DAYS.get(table)) if d is not None), default=None)
    return None if keep is None else f"toDateTime({RETENTION_COLUMNS[table]}) + toIntervalDay({keep})"


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "events, identity links, rejected events",
        (
            f"""
            CREATE TABLE IF NOT EXISTS events (
                project LowCardinality(String),
                event_id String,
                type LowCardinality(String),
                name String,
                anonymous_id String,
                user_id String,
                timestamp {TS} COMMENT 'event time, corrected for client clock skew',
                client_timestamp Nullable({TS}) COMMENT 'as the client sent it',
                sent_at Nullable({TS}),
                received_at {TS},
                channel LowCardinality(String),
                url String,
                path String,
                referrer String,
                title String,
                campaign_source LowCardinality(String),
                campaign_medium LowCardinality(String),
                campaign_name String,
                user_agent String,
                browser LowCardinality(String),
                os LowCardinality(String),
                device_type LowCardinality(String),
                country LowCardinality(String),
                network LowCardinality(String),
                ip String COMMENT 'anonymised unless the project turned that off',
                response_ms Nullable(Float64),
                ttfb_ms Nullable(Float64),
                load_ms Nullable(Float64),
                lcp_ms Nullable(Float64),
                inp_ms Nullable(Float64),
                cls Nullable(Float64),
                error_kind LowCardinality(String),
                error_message String,
                error_fatal UInt8,
                properties String COMMENT 'JSON',
                context String COMMENT 'JSON',
                inserted_at {TS} DEFAULT now64(3),
                INDEX idx_user_id user_id TYPE bloom_filter GRANULARITY 4,
                INDEX idx_event_id event_id TYPE bloom_filter GRANULARITY 4
            )
            ENGINE = ReplacingMergeTree(inserted_at)
            PARTITION BY toYYYYMM(timestamp)
            ORDER BY (project, anonymous_id, event_id)
            SETTINGS non_replicated_deduplication_window = 10000
            """,
            f"""
            CREATE TABLE IF NOT EXISTS identity_links (
                project LowCardinality(String),
                anonymous_id String,
                user_id String,
                first_seen SimpleAggregateFunction(min, {TS}),
                last_seen SimpleAggregateFunction(max, {TS}),
                INDEX idx_user_id user_id TYPE bloom_filter GRANULARITY 1
            )
            ENGINE = AggregatingMergeTree
            ORDER BY (project, anonymous_id, user_id)
            """,
            f"""
            CREATE TABLE IF NOT EXISTS rejected_events (
                project LowCardinality(String),
                received_at {TS},
                batch_index UInt32,
                error String,
                payload String,
                inserted_at {TS} DEFAULT now64(3)
            )
            ENGINE = MergeTree
            PARTITION BY toYYYYMM(received_at)
            ORDER BY (project, received_at)
            TTL toDateTime(received_at) + INTERVAL 30 DAY
            SETTINGS non_replicated_deduplication_window = 10000
            """,
        ),
    ),
    Migration(
        2,
        "enrichment: browser and OS versions, region, city, bot flag",
        (
            """
            ALTER TABLE events
                ADD COLUMN IF NOT EXISTS browser_version LowCardinality(String) AFTER browser,
                ADD COLUMN IF NOT EXISTS os_version LowCardinality(String) AFTER os,
                ADD COLUMN IF NOT EXISTS region LowCardinality(String) AFTER country,
                ADD COLUMN IF NOT EXISTS city LowCardinality(String) AFTER region,
                ADD COLUMN IF NOT EXISTS is_bot UInt8 AFTER device_type
            """,
        ),
    ),
    Migration(
        3,
        "late events flag",
        (
            """
            ALTER TABLE events ADD COLUMN IF NOT EXISTS is_late UInt8
                COMMENT 'received later than the allowed lateness after it happened' AFTER ip
            """,
        ),
    ),
    Migration(
        4,
        "sessions",
        (
            f"""
            CREATE TABLE IF NOT EXISTS sessions (
                project LowCardinality(String),
                device String COMMENT 'anonymous id, or user:<user id> for events without one',
                session_id String,
                person String COMMENT 'as known when the row was written; a later link rewrites it',
                user_id String COMMENT 'the first user id the session carried',
                channel LowCardinality(String),
                browser LowCardinality(String),
                os LowCardinality(String),
                device_type LowCardinality(String),
                country LowCardinality(String),
                network LowCardinality(String),
                campaign_source LowCardinality(String),
                campaign_medium LowCardinality(String),
                campaign_name String,
                started_at {TS},
                ended_at {TS},
                duration_ms UInt64,
                entry_touchpoint String,
                exit_touchpoint String,
                events UInt32,
                pageviews UInt32,
                errors UInt32,
                response_ms_median Nullable(Float64),
                response_ms_max Nullable(Float64),
                goals Array(String) COMMENT 'the project goals reached',
                version UInt64 COMMENT 'the newest row of a session wins',
                is_deleted UInt8 COMMENT '1: the session no longer exists (a late event merged or moved it)',
                INDEX idx_person person TYPE bloom_filter GRANULARITY 4,
                INDEX idx_started started_at TYPE minmax GRANULARITY 1
            )
            ENGINE = ReplacingMergeTree(version, is_deleted)
            ORDER BY (project, device, session_id)
            """,
        ),
    ),
    Migration(
        5,
        "abandonment signals",
        (
            f"""
            CREATE TABLE IF NOT EXISTS abandonments (
                project LowCardinality(String),
                device String,
                session_id String,
                person String,
                user_id String,
                channel LowCardinality(String),
                browser LowCardinality(String),
                os LowCardinality(String),
                device_type LowCardinality(String),
                country LowCardinality(String),
                network LowCardinality(String),
                campaign_source LowCardinality(String),
                campaign_medium LowCardinality(String),
                campaign_name String,
                started_at {TS},
                ended_at {TS},
                duration_ms UInt64,
                entry_touchpoint String,
                exit_touchpoint String,
                events UInt32,
                pageviews UInt32,
                errors UInt32,
                response_ms_median Nullable(Float64),
                response_ms_max Nullable(Float64),
                goals Array(String) COMMENT 'always empty: a signal is a session without a goal',
                detected_at {TS} COMMENT 'when the sessionizer saw the session time out'
            )
            ENGINE = ReplacingMergeTree(detected_at)
            ORDER BY (project, session_id)
            TTL toDateTime(detected_at) + INTERVAL 30 DAY
            """,
        ),
    ),
    Migration(
        6,
        "abandonment recoveries",
        (
            f"""
            ALTER TABLE abandonments
                ADD COLUMN IF NOT EXISTS recovered_at Nullable({TS})
                    COMMENT 'when the person reached a goal after all (any device or channel); the row is rewritten',
                ADD COLUMN IF NOT EXISTS recovered_channel LowCardinality(String) COMMENT 'the channel of that goal'
            """,
            "ALTER TABLE abandonments ADD INDEX IF NOT EXISTS idx_person person TYPE bloom_filter GRANULARITY 1",
        ),
    ),
    Migration(
        7,
        "touchpoint names",
        (
            """
            CREATE TABLE IF NOT EXISTS touchpoints (
                project LowCardinality(String),
                tp_id UInt64 COMMENT 'TOUCHPOINT_ID of services.core.schema',
                ch_id UInt64 COMMENT 'CHANNEL_ID',
                tp_text String COMMENT 'TOUCHPOINT_TEXT',
                ch_text LowCardinality(String) COMMENT 'the channel'
            )
            ENGINE = ReplacingMergeTree
            ORDER BY (project, tp_id, ch_id)
            """,
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS touchpoints_of_events TO touchpoints AS {_TOUCHPOINTS_OF_EVENTS}",
            # Events stored before the view: a row again for those the view also saw is harmless.
            f"INSERT INTO touchpoints {_TOUCHPOINTS_OF_EVENTS}",
        ),
    ),
    Migration(
        8,
        "erasures",
        (
            f"""
            CREATE TABLE IF NOT EXISTS erasures (
                project LowCardinality(String),
                person String COMMENT 'the erased person: a user id, or a lone anonymous id',
                devices Array(String) COMMENT 'sessionizer devices whose held state is let go',
                events UInt64,
                sessions UInt64,
                erased_at {TS} DEFAULT now64(3) COMMENT 'the server clock: every process polls by it'
            )
            ENGINE = MergeTree
            ORDER BY (project, erased_at)
            """,
        ),
    ),
    Migration(
        9,
        "erasures: when each device was the person's",
        (
            """
            ALTER TABLE erasures ADD COLUMN IF NOT EXISTS spans Array(Tuple(String, Int64, Int64)) DEFAULT []
            COMMENT '(anonymous id, from ms, until ms): the sessionizer drops events of these accepted before'
            """,
        ),
    ),
    Migration(
        10,
        "erasures: dead letters deleted",
        (
            """
            ALTER TABLE erasures ADD COLUMN IF NOT EXISTS rejected UInt64 DEFAULT 0
            COMMENT 'rejected events (dead letters) of the person deleted'
            """,
        ),
    ),
)

MIGRATIONS_TABLE: Final = f"""
CREATE TABLE IF NOT EXISTS schema_migrations (
    version UInt32,
    name String,
    applied_at {TS} DEFAULT now64(3)
)
ENGINE = ReplacingMergeTree
ORDER BY version
"""

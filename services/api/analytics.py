"""Abandonment and correlation queries: one SQL statement each, every user value bound.

Shared building blocks: ``base_sql`` gives each event its person (the stitching
rules of services.core.identity, expressed in SQL) and its session (the one the
sessionizer stored, when the analysis needs sessions); ``units_sql`` gathers each
journey's (or session's) events into one time-ordered array.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from services.core.identity import PLACEHOLDER_IDS
from services.core.schema import CHANNEL_ID, TOUCHPOINT_ID, TOUCHPOINT_TEXT
from services.core.warehouse import Warehouse

from .stats import MIN_OBSERVATIONS, logistic_odds_ratio, spearman, wilson

# What a breakdown or a segment filter reads, per dimension: a value of the unit's first
# touchpoint in the range (first touch: the campaign, referrer and landing page of a journey are
# those of its first event; identify calls are not touchpoints). ``models.Breakdown`` names the same.
DIMENSIONS: dict[str, str] = {
    "channel": "channel",
    "browser": "browser",
    "os": "os",
    "device_type": "device_type",
    "country": "country",
    "network": "network",
    "campaign_source": "campaign_source",
    "campaign_medium": "campaign_medium",
    "campaign_name": "campaign_name",
    "referrer_domain": "domainWithoutWWW(referrer)",
    "entry_touchpoint": "label",
}
METRICS = ("response_ms", "ttfb_ms", "load_ms", "lcp_ms", "inp_ms", "errors")

# Each unit's event array holds tuples, read in SQL by position (1-based):
# 1 ts, 2 touchpoint id, 3 channel id, 4 metric, 5 flags: the bits below (one column, not four:
# less to gather; they weigh in this order so that events tied on time sort as four flags did).
# Touchpoints and channels travel as 64-bit ids, not texts: gathering ten
# million events' texts into arrays was a third of abandonment's time. ``NAMES_SQL`` turns the few
# ids an answer holds back into texts.
ERROR_BIT, GOAL_BIT, MARK_BIT, IDENTIFY_BIT = 3, 2, 1, 0  # MARK: the start (abandonment), the touchpoint (paths)
NOT_GOAL_NOR_IDENTIFY = (1 << GOAL_BIT) | (1 << IDENTIFY_BIT)


@dataclass(frozen=True)
class Source:
    """What every analysis reads: one project's events (and stored sessions) between two instants."""

    warehouse: Warehouse
    project: str
    start_ms: int
    end_ms: int
    include_bots: bool = False  # else events of known bots (``is_bot``, by user agent) are left out
    # Only the units (journeys or sessions) whose first touchpoint has, for each dimension named,
    # one of the values listed: the same unit the breakdown by that dimension puts under that value.
    segment: tuple[tuple[str, tuple[str, ...]], ...] = ()


def first_touch(dimensions: list[str]) -> str:
    """SQL aggregate: the values of ``dimensions`` at the unit's first touchpoint, as a tuple.

    Ties on time go to the lower event id, so a breakdown and a segment filter always agree."""
    values = ", ".join(DIMENSIONS[d] for d in dimensions)
    return f"argMinIf(tuple({values}), (ts, event_id), type != 'identify')"


def dim_sql(breakdown: str | None) -> str:
    """The breakdown value of a unit (its first touchpoint's), or '' for none."""
    return f"{first_touch([breakdown])}.1" if breakdown else "''"


def base_sql(params: dict[str, Any], source: Source, sessions: bool = True) -> str:
    """Events with their person, label and (when ``sessions``) session.

    A session is the one the sessionizer stored (``sessions``, cut by the pure rule of
    services.core.sessions: the project's inactivity timeout, a change of campaign): each event
    joins the session of its device that started last at or before it, so session-scope
    analyses count the sessions ``GET /v1/sessions`` lists. Events no session holds (later than
    the allowed lateness, or in the batch being written this instant) are left out of them.
    Journey-scope analyses need no session and skip the join.

    The unit of an analysis is the session when it reads sessions, else the person: a segment
    (``Source.segment``) keeps the units whose first touchpoint matches it, all their events."""
    params.update(
        project=source.project,
        start_ms=source.start_ms,
        end_ms=source.end_ms,
        placeholders=sorted(PLACEHOLDER_IDS),
    )
    if sessions:
        stored = """
    stored_sessions AS (
        SELECT device AS s_device, session_id AS session,
               toUnixTimestamp64Milli(started_at) AS s_start, toUnixTimestamp64Milli(ended_at) AS s_end
        FROM sessions FINAL
        WHERE project = {project:String}
          AND started_at < fromUnixTimestamp64Milli({end_ms:Int64})
          AND ended_at >= fromUnixTimestamp64Milli({start_ms:Int64})
    ),"""
        join = """
        FROM with_person AS e ASOF INNER JOIN stored_sessions AS s ON e.device = s.s_device AND e.ts >= s.s_start
        WHERE e.ts <= s.s_end"""
    else:
        stored, join = "", "\n        FROM with_person"
    return f"""{stored}
    links AS (
        SELECT anonymous_id, arraySort(x -> x, groupArray((fs, user_id))) AS owners
        FROM (
            SELECT anonymous_id, user_id, toUnixTimestamp64Milli(min(first_seen)) AS fs
            FROM identity_links WHERE project = {{project:String}} GROUP BY anonymous_id, user_id
        ) GROUP BY anonymous_id
    ),
    deduped AS (
        SELECT *, toUnixTimestamp64Milli(timestamp) AS ts,
               if(anonymous_id = '', concat('user:', user_id), anonymous_id) AS device
        FROM events FINAL
        WHERE project = {{project:String}}
          AND timestamp >= fromUnixTimestamp64Milli({{start_ms:Int64}})
          AND timestamp < fromUnixTimestamp64Milli({{end_ms:Int64}}){"" if source.include_bots else " AND is_bot = 0"}
    ),
    with_person AS (
        SELECT e.*,
            multiIf(
                e.user_id != '' AND lower(trimBoth(e.user_id)) NOT IN {{placeholders:Array(String)}}, e.user_id,
                empty(l.owners), e.device,
                arrayExists(x -> x.1 <= e.ts, l.owners), arrayLast(x -> x.1 <= e.ts, l.owners).2,
                l.owners[1].2
            ) AS person
        FROM deduped AS e LEFT JOIN links AS l ON e.anonymous_id = l.anonymous_id
    ),
    {"base" if not source.segment else "every_unit"} AS (
        SELECT *, {TOUCHPOINT_TEXT} AS label{join}
    ){segment_sql(params, source.segment, "session" if sessions else "person")}"""


def segment_sql(params: dict[str, Any], segment: tuple[tuple[str, tuple[str, ...]], ...], unit: str) -> str:
    """``base`` as the events of the units (from ``every_unit``) whose first touchpoint is in the segment."""
    if not segment:
        return ""
    conds = []
    for k, (_, values) in enumerate(segment, 1):
        params[f"seg{k}"] = list(values)
        conds.append(f"firsts.{k} IN {{seg{k}:Array(String)}}")
    return f""",
    in_segment AS (
        SELECT {unit} AS segment_unit, {first_touch([d for d, _ in segment])} AS firsts
        FROM every_unit GROUP BY segment_unit
        HAVING {" AND ".join(conds)}
    ),
    base AS (
        SELECT * FROM every_unit WHERE {unit} IN (SELECT segment_unit FROM in_segment)
    )"""


def metric_expr(metric: str) -> str:
    """The metric of one event; -1 when the event has none."""
    if metric == "errors":
        return "toFloat64(error_kind != '')"
    return f"ifNull({metric}, -1.0)"


def units_sql(scope: str, goal_cond: str, mark_cond: str, metric: str, breakdown: str | None) -> str:
    unit = "person" if scope == "journey" else "session"
    dim = dim_sql(breakdown)
    return f"""
    units AS (
        SELECT {unit} AS unit, {dim} AS dim,
            arraySort(groupArray((ts, {TOUCHPOINT_ID}, {CHANNEL_ID}, {metric_expr(metric)},
                                  toUInt8({1 << ERROR_BIT} * (error_kind != '') + {1 << GOAL_BIT} * ({goal_cond})
                                          + {1 << MARK_BIT} * ({mark_cond}) + {1 << IDENTIFY_BIT} * (type = 'identify'))
            ))) AS evs
        FROM base GROUP BY unit
    )"""


# The texts of the project's touchpoint ids: a small table (one row per touchpoint and channel
# ever seen) that a materialized view keeps; naming them from the events scanned ten million
# rows again, a sixth of abandonment's time.
NAMES_SQL = """
    names AS (
        SELECT tp_id, ch_id, any(tp_text) AS tp_text, any(ch_text) AS ch_text
        FROM touchpoints WHERE project = {project:String}
        GROUP BY tp_id, ch_id
    )"""


def abandonment(
    source: Source,
    goal_cond: str,
    start_cond: str | None,
    window_ms: int,
    scope: str,
    breakdown: str | None,
    limit: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    params.update(window_ms=window_ms, limit=limit)
    has_start = start_cond is not None
    sql = f"""
    WITH {base_sql(params, source, sessions=scope == "session")},
    {units_sql(scope, goal_cond, start_cond or "1", "response_ms", breakdown)},
    j AS (
        SELECT unit, dim, evs,
            {f"arrayFirstIndex(x -> bitTest(x.5, {MARK_BIT}), evs)" if has_start else "1"} AS si,
            evs[si].1 AS start_ts,
            arrayFilter((x, i) -> i >= si AND x.1 <= start_ts + {{window_ms:Int64}}, evs, arrayEnumerate(evs)) AS win,
            arrayFirstIndex(x -> bitTest(x.5, {GOAL_BIT}), win) AS gi,
            gi > 0 AS converted,
            arrayFilter(x -> bitAnd(x.5, {NOT_GOAL_NOR_IDENTIFY}) = 0,
                        if(gi > 0, arraySlice(win, 1, gi - 1), win)) AS before,
            if(converted, win[gi].3, 0) AS goal_channel,
            (before[-1].2, before[-1].3) AS point,
            NOT converted AND notEmpty(before) AS abandoned,
            if(abandoned, point.1, 0) AS touchpoint,
            if(abandoned, point.2, 0) AS channel,
            arrayFilter(x -> x.2 = point.1 AND x.3 = point.2, before) AS at_point
        FROM units WHERE si > 0
    ),
    {NAMES_SQL}
    -- One pass over j for both the totals per dim and the abandonment points: j is a CTE,
    -- which ClickHouse inlines, so a UNION of two SELECTs from it computed it twice.
    SELECT r.* EXCEPT (touchpoint, channel), names.tp_text AS touchpoint, names.ch_text AS channel FROM (
        SELECT if(grouping(touchpoint) = 1, 'totals', 'point') AS kind, dim, touchpoint, channel,
            if(kind = 'totals', count(), countIf(abandoned)) AS n,
            countIf(converted) AS converted_n,
            countIf(converted AND arrayExists(x -> x.3 != goal_channel, before)) AS recovered,
            if(kind = 'totals',
               quantileExactArrayIf(0.5)(arrayMap(x -> x.4, arrayFilter(x -> x.4 >= 0, before)), converted),
               quantileExactArrayIf(0.5)(arrayMap(x -> x.4, arrayFilter(x -> x.4 >= 0, at_point)), abandoned))
                AS median_ms,
            if(kind = 'totals',
               avgIf(arrayExists(x -> bitTest(x.5, {ERROR_BIT}), before), converted),
               avgIf(arrayExists(x -> bitTest(x.5, {ERROR_BIT}), at_point), abandoned)) AS error_rate,
            if(kind = 'totals',
               avgIf(length(before) / greatest(1, length(arrayDistinct(arrayMap(x -> (x.2, x.3), before)))),
                     converted),
               avgIf(length(at_point), abandoned)) AS repeats
        FROM j
        GROUP BY GROUPING SETS ((dim), (dim, touchpoint, channel))
        HAVING n > 0 OR kind = 'totals'
    ) AS r
    LEFT JOIN names ON r.touchpoint = names.tp_id AND r.channel = names.ch_id
    ORDER BY kind, n DESC, touchpoint, channel
    LIMIT {{limit:UInt32}} BY kind, dim
    """
    rows = source.warehouse.rows(sql, params)
    by_dim: dict[str, dict[str, Any]] = {}
    for r in rows:
        entry = by_dim.setdefault(r["dim"], {"points": []})
        if r["kind"] == "totals":
            entry.update(
                journeys=int(r["n"]),
                converted=int(r["converted_n"]),
                abandoned=int(r["n"] - r["converted_n"]),
                recovered_cross_channel=int(r["recovered"]),
                converting={
                    "median_response_ms": _num(r["median_ms"]),
                    "error_rate": _num(r["error_rate"]),
                    "avg_repeats": _num(r["repeats"]),
                },
            )
        else:
            entry["points"].append(r)
    out: dict[str, dict[str, Any]] = {}
    for dim, entry in by_dim.items():
        abandoned = entry.get("abandoned", 0)
        entry["points"] = [
            {
                "touchpoint": p["touchpoint"],
                "channel": p["channel"],
                "abandoned": int(p["n"]),
                "share": p["n"] / abandoned if abandoned else None,
                "share_ci95": wilson(int(p["n"]), abandoned),
                "median_response_ms": _num(p["median_ms"]),
                "error_rate": _num(p["error_rate"]),
                "avg_repeats": _num(p["repeats"]),
            }
            for p in sorted(entry["points"], key=lambda p: (-p["n"], p["touchpoint"], p["channel"]))
        ]
        entry.setdefault("journeys", 0)
        entry["conversion_rate"] = entry["converted"] / entry["journeys"] if entry.get("journeys") else None
        entry["conversion_rate_ci95"] = wilson(entry.get("converted", 0), entry["journeys"])
        out[dim] = entry
    return out


def correlations(
    source: Source,
    metric: str,
    goal_cond: str,
    touchpoint_cond: str | None,
    window_ms: int,
    breakdown: str | None,
    edges: list[float],
    params: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """Observations: each visit to the touchpoint, or each session; outcome: goal within the window after it."""
    params.update(window_ms=window_ms)
    dim = dim_sql(breakdown)
    if touchpoint_cond is not None:
        # Only the visits (with their metric) and the goals' times of each journey: an array
        # of every event, as the other analyses gather, was most of this query's time. Other
        # events are left out before grouping, but with a breakdown (the unit's first event).
        relevant = "" if breakdown else f" WHERE ({goal_cond}) OR ({touchpoint_cond})"
        units = f"""
        units AS (
            SELECT person AS unit, {dim} AS dim,
                groupArrayIf(ts, {goal_cond}) AS goal_ts,
                groupArrayIf((ts, {metric_expr(metric)}), {touchpoint_cond} AND {metric_expr(metric)} >= 0) AS visits
            FROM base{relevant} GROUP BY unit
        )"""
        observations = """
        obs AS (
            SELECT dim, v.2 AS metric,
                arrayExists(g -> g >= v.1 AND g <= v.1 + {window_ms:Int64}, goal_ts) AS converted
            FROM units ARRAY JOIN visits AS v
        )"""
    else:
        agg = "sumIf" if metric == "errors" else "quantileExactIf(0.5)"
        # The goals of the person's every session reach each session through a window over
        # sessions: a join of two CTEs over ``base`` read and stitched the events twice.
        units = f"""
        sessions AS (
            SELECT session, any(person) AS person, {dim} AS dim, min(ts) AS started,
                   {agg}({metric_expr(metric)}, {metric_expr(metric)} >= 0) AS metric,
                   countIf({metric_expr(metric)} >= 0) AS measured,
                   groupArrayIf(ts, {goal_cond}) AS session_goal_ts
            FROM base GROUP BY session
        )"""
        observations = """
        obs AS (
            SELECT dim, metric,
                arrayExists(t -> t >= started AND t <= started + {window_ms:Int64}, goal_ts) AS converted
            FROM (
                SELECT dim, metric, started, measured,
                    groupArrayArray(session_goal_ts) OVER (PARTITION BY person) AS goal_ts
                FROM sessions
            )
            WHERE measured > 0
        )"""
    sql = f"""
    WITH {base_sql(params, source, sessions=touchpoint_cond is None)},
    {units},
    {observations}
    SELECT dim, round(metric, 1) AS value, toUInt8(converted) AS converted, count() AS n
    FROM obs GROUP BY dim, value, converted
    """
    groups: dict[str, list[tuple[float, int, int]]] = {}
    for r in source.warehouse.rows(sql, params):
        groups.setdefault(r["dim"], []).append((float(r["value"]), int(r["converted"]), int(r["n"])))
    scale = 1.0 if metric in ("errors", "cls") else 1000.0
    return {dim: summarize(g, edges, scale) for dim, g in groups.items()}


def summarize(groups: list[tuple[float, int, int]], edges: list[float], scale: float) -> dict[str, Any]:
    bounds = [0.0, *edges, float("inf")]
    buckets = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        inside = [(v, y, c) for v, y, c in groups if lo <= v < hi]
        n = sum(c for _, _, c in inside)
        converted = sum(c for _, y, c in inside if y)
        buckets.append(
            {
                "range": [lo, None if hi == float("inf") else hi],
                "observations": n,
                "converted": converted,
                "conversion_rate": converted / n if n else None,
                "ci95": wilson(converted, n),
                "enough": n >= MIN_OBSERVATIONS,
            }
        )
    total = sum(c for _, _, c in groups)
    fit = logistic_odds_ratio(groups, scale)
    return {
        "observations": total,
        "buckets": buckets,
        "spearman": spearman(groups),
        "odds_ratio_per_unit": fit,
        "note": None if total >= MIN_OBSERVATIONS else f"fewer than {MIN_OBSERVATIONS} observations: no statistics",
    }


def _num(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if f != f else f  # NaN (no values) → null


def funnel(
    source: Source,
    step_conds: list[str],
    window_ms: int,
    scope: str,
    breakdown: str | None,
    params: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Units (journeys or sessions) reaching each step in order within the window of step 1.

    Counts come from ClickHouse ``windowFunnel`` (its default semantics, as the contract says).
    Times between steps come from the chain that reaches that level: for each of the first
    starts, steps are taken greedily (earliest next match), which reaches the same level.
    """
    n = len(step_conds)
    params.update(window_ms=window_ms)
    unit = "person" if scope == "journey" else "session"
    dim = dim_sql(breakdown)
    # Which steps an event matches, as bits of one integer: a flat array element, where an
    # array of flags per event costs an allocation each (a third of the funnel's time).
    mask = " + ".join(f"bitShiftLeft(toUInt64({c}), {k})" for k, c in enumerate(step_conds))
    fold = (
        f"arrayFold((acc, x) -> if(acc.1 < {n} AND x.1 <= s.1 + {{window_ms:Int64}} AND bitTest(x.2, acc.1)"
        " AND (acc.1 = 0 OR x.1 >= acc.2[-1]), (toUInt8(acc.1 + 1), arrayPushBack(acc.2, x.1)), acc),"
        " arrayFilter(x -> x.1 >= s.1, evs), (toUInt8(0), CAST([], 'Array(Int64)')))"
    )
    medians = ", ".join(
        f"quantileExactIf(0.5)((best.2[{k}] - best.2[{k - 1}]) / 1000, length(best.2) >= {k}) AS m{k}"
        for k in range(2, n + 1)
    )
    counts = ", ".join(f"countIf(level >= {k}) AS c{k}" for k in range(1, n + 1))
    # Only events that match a step change a unit's level or its chain: the rest are left out
    # before grouping (most of a site's events, on real traffic). Not with a breakdown, whose
    # value is the unit's first event of any kind.
    only_steps = "" if breakdown else f" WHERE ({mask}) != 0"
    # The level is ClickHouse's windowFunnel over each unit's gathered events (arrayReduce): the
    # same function, without a second aggregate state per unit in the GROUP BY (a fifth of the time).
    step_flags = ", ".join(f"arrayMap(x -> bitTest(x.2, {k}), evs)" for k in range(n))
    sql = f"""
    WITH {base_sql(params, source, sessions=scope == "session")},
    units AS (
        SELECT {unit} AS unit, {dim} AS dim,
            arraySort(x -> x.1, groupArrayIf((ts, {mask}), ({mask}) != 0)) AS evs
        FROM base{only_steps} GROUP BY unit
    ),
    chains AS (
        SELECT dim,
            arrayReduce(concat('windowFunnel(', toString({{window_ms:UInt64}}), ')'),
                        arrayMap(x -> toUInt64(x.1), evs), {step_flags}) AS level,
            arrayMap(s -> {fold}, arraySlice(arrayFilter(x -> bitTest(x.2, 0), evs), 1, 20)) AS tries,
            arrayFirst(c -> c.1 = arrayMax(arrayMap(t -> t.1, tries)), tries) AS best
        FROM units
    )
    SELECT dim, {counts}{", " + medians if medians else ""} FROM chains WHERE level > 0 GROUP BY dim
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for row in source.warehouse.rows(sql, params):
        first = row["c1"]
        steps = []
        for k in range(1, n + 1):
            count = int(row[f"c{k}"])
            previous = int(row[f"c{k - 1}"]) if k > 1 else count
            steps.append(
                {
                    "count": count,
                    "conversion_rate": count / first if first else None,
                    "step_conversion_rate": count / previous if previous else None,
                    "conversion_rate_ci95": wilson(count, first),
                    "drop_off": previous - count,
                    "median_seconds_from_previous": _num(row.get(f"m{k}")) if k > 1 else None,
                }
            )
        out[row["dim"]] = steps
    return out


def paths(
    source: Source,
    touchpoint_cond: str,
    goal_cond: str | None,
    scope: str,
    limit: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """What came right before and right after each visit to a touchpoint.

    With a goal, only units (journeys or sessions) that never reached it count: what people did
    instead of converting. The end of a unit shows as ``(exit)``, its start as ``(entry)``.
    """
    params.update(limit=limit)
    sql = f"""
    WITH {base_sql(params, source, sessions=scope == "session")},
    {units_sql(scope, goal_cond or "0", touchpoint_cond, "response_ms", None)},
    unit_touchpoints AS (  -- identify calls are not touchpoints
        SELECT arrayFilter(x -> NOT bitTest(x.5, {IDENTIFY_BIT}), evs) AS evs FROM units
        WHERE {f"NOT arrayExists(x -> bitTest(x.5, {GOAL_BIT}), evs)" if goal_cond else "1"}
    ),
    visits AS (
        SELECT i, evs FROM unit_touchpoints
        ARRAY JOIN arrayFilter(i -> bitTest(evs[i].5, {MARK_BIT}), arrayEnumerate(evs)) AS i
    ),
    around AS (  -- both directions from one pass: a UNION of two SELECTs from visits computed it twice
        SELECT direction,  -- id 0: the unit's end (next) or start (previous)
            multiIf(direction = 'next' AND i = length(evs), 0, direction = 'next', evs[i + 1].2,
                    i = 1, 0, evs[i - 1].2) AS tp_id,
            multiIf(direction = 'next' AND i = length(evs), 0, direction = 'next', evs[i + 1].3,
                    i = 1, 0, evs[i - 1].3) AS ch_id
        FROM visits ARRAY JOIN ['next', 'previous'] AS direction
    ),
    {NAMES_SQL}
    SELECT direction,
        multiIf(r.tp_id != 0, names.tp_text, direction = 'next', '(exit)', '(entry)') AS touchpoint,
        names.ch_text AS channel, n, visits
    FROM (
        SELECT direction, tp_id, ch_id, count() AS n, sum(count()) OVER (PARTITION BY direction) AS visits
        FROM around GROUP BY direction, tp_id, ch_id
    ) AS r
    LEFT JOIN names ON r.tp_id = names.tp_id AND r.ch_id = names.ch_id
    ORDER BY direction, n DESC, touchpoint, channel
    LIMIT {{limit:UInt32}} BY direction
    """
    out: dict[str, Any] = {"visits": 0, "next": [], "previous": []}
    for row in source.warehouse.rows(sql, params):
        out["visits"] = int(row["visits"])
        share = row["n"] / row["visits"] if row["visits"] else None
        out[row["direction"]].append(
            {
                "touchpoint": row["touchpoint"],
                "channel": row["channel"],
                "count": int(row["n"]),
                "share": share,
                "share_ci95": wilson(int(row["n"]), int(row["visits"])),
            }
        )
    return out


def behaviour(
    source: Source,
    goal_cond: str,
    timezone: str,
    params: dict[str, Any],
) -> dict[str, list[dict[str, Any]]]:
    """Sessions, events and conversion (the goal within the session) by hour of day and by
    weekday of the session's start, per channel, in the given time zone."""
    params.update(tz=timezone)
    sql = f"""
    WITH {base_sql(params, source, sessions=True)},
    sessions AS (
        SELECT session, any(channel) AS channel, min(timestamp) AS started, count() AS events,
               countIf({goal_cond}) > 0 AS converted
        FROM base GROUP BY session
    )
    -- Both slots from one pass: a UNION of two SELECTs from sessions computed it twice.
    SELECT slot_of.1 AS by, slot_of.2 AS slot, channel,
           count() AS sessions, sum(events) AS events, countIf(converted) AS converted
    FROM sessions
    ARRAY JOIN [('hour', toHour(toTimeZone(started, {{tz:String}}))),
                ('weekday', toDayOfWeek(toTimeZone(started, {{tz:String}})))] AS slot_of
    GROUP BY by, slot, channel
    """
    out: dict[str, list[dict[str, Any]]] = {"by_hour": [], "by_weekday": []}
    for r in sorted(source.warehouse.rows(sql, params), key=lambda r: (r["by"], r["slot"], r["channel"])):
        n, converted = int(r["sessions"]), int(r["converted"])
        key = "hour" if r["by"] == "hour" else "weekday"
        out[f"by_{key}"].append(
            {
                key: int(r["slot"]),
                "channel": r["channel"],
                "sessions": n,
                "events": int(r["events"]),
                "converted": converted,
                "conversion_rate": converted / n if n else None,
                "ci95": wilson(converted, n),
            }
        )
    return out


# An error's group: its kind and its message with ids (UUIDs, hex runs of 8 or more) as <id> and
# every other number (sizes, line numbers, milliseconds) as <n>, so "Timeout after 3012 ms" and
# "Timeout after 2990 ms" are one error, and so are two failed requests of different ids.
_UUID = "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
ERROR_GROUP = (
    "substring(replaceRegexpAll(replaceRegexpAll(replaceRegexpAll(error_message, "
    f"'{_UUID}', '<id>'), '[0-9a-fA-F]{{8,}}', '<id>'), '[0-9]+', '<n>'), 1, 300)"
)


def errors(
    source: Source,
    goal_cond: str,
    scope: str,
    limit: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """Errors by group (kind and message, ids as ``<id>``, numbers as ``<n>``), the most widespread first: the
    journeys (or sessions) each hit, how many of those reached the goal after it, beside the
    conversion of those no error hit; how many left with it on their last touchpoint without the
    goal; where and in which browser it hit them first. Which errors cost conversions, not only
    which are frequent."""
    unit = "session" if scope == "session" else "person"
    params["limit"] = limit
    base = base_sql(params, source, sessions=scope == "session")
    units = f"""
    units AS (
        SELECT {unit} AS unit, maxIf(ts, {goal_cond}) AS goal_ts, countIf({goal_cond}) > 0 AS converted,
               countIf(error_kind != '') > 0 AS hit,
               argMaxIf(tuple(error_kind, {ERROR_GROUP}), (ts, event_id), type != 'identify') AS last_error
        FROM base GROUP BY unit
    )"""
    totals = source.warehouse.rows(
        f"""WITH {base}, {units}
        SELECT count() AS all_units, countIf(converted) AS all_converted,
               countIf(NOT hit) AS clean, countIf(NOT hit AND converted) AS clean_converted
        FROM units""",
        params,
    )[0]
    groups = source.warehouse.rows(
        f"""WITH {base}, {units},
        hits AS (
            SELECT {unit} AS unit, error_kind AS kind, {ERROR_GROUP} AS message, count() AS n,
                   min(ts) AS first_ts, argMin(label, (ts, event_id)) AS first_at,
                   argMin(browser, (ts, event_id)) AS first_browser
            FROM base WHERE error_kind != '' GROUP BY unit, kind, message
        )
        SELECT h.kind AS kind, h.message AS message, sum(h.n) AS occurrences, count() AS hit_units,
               countIf(u.goal_ts > h.first_ts) AS converted_after,
               countIf(NOT u.converted AND u.last_error = (h.kind, h.message)) AS left_with_it,
               topK(3)(h.first_at) AS touchpoints, topK(3)(h.first_browser) AS browsers
        FROM hits AS h INNER JOIN units AS u ON h.unit = u.unit
        GROUP BY kind, message
        ORDER BY hit_units DESC, occurrences DESC, kind, message
        LIMIT {{limit:UInt32}}""",
        params,
    )
    clean, clean_converted = int(totals["clean"]), int(totals["clean_converted"])
    clean_rate = clean_converted / clean if clean else None
    out = []
    for g in groups:
        n, after = int(g["hit_units"]), int(g["converted_after"])
        rate = after / n if n else None
        out.append(
            {
                "kind": g["kind"],
                "message": g["message"],
                "occurrences": int(g["occurrences"]),
                "journeys": n,
                "converted_after": after,
                "conversion_rate": rate,
                "ci95": wilson(after, n),
                "difference": None if rate is None or clean_rate is None else rate - clean_rate,
                "left_with_it": int(g["left_with_it"]),
                "first_hit_at": list(g["touchpoints"]),
                "browsers": list(g["browsers"]),
                "enough": n >= MIN_OBSERVATIONS,
            }
        )
    total = int(totals["all_units"])
    return {
        "scope": scope,
        "journeys": total,
        "converted": int(totals["all_converted"]),
        "without_errors": {
            "journeys": clean,
            "converted": clean_converted,
            "conversion_rate": clean_rate,
            "ci95": wilson(clean_converted, clean),
        },
        "errors": out,
        "note": None if total >= MIN_OBSERVATIONS else f"fewer than {MIN_OBSERVATIONS} journeys: rates not reliable",
    }


# Where a performance report puts a timed event: under its own value (a page load in Safari is
# Safari's), not its journey's first touch as breakdowns do.
PERFORMANCE_GROUPS: dict[str, str] = {
    "touchpoint": "label",
    "channel": "channel",
    "browser": "browser",
    "os": "os",
    "device_type": "device_type",
    "country": "country",
    "network": "network",
    "app_version": "JSONExtractString(context, 'app', 'version')",
}
# [good, poor] per metric: Core Web Vitals' thresholds (web.dev), and Apdex's T = 1 s and 4T for
# the waits no standard rates.
DEFAULT_THRESHOLDS: dict[str, tuple[float, float]] = {
    "lcp_ms": (2500.0, 4000.0),
    "inp_ms": (200.0, 500.0),
    "cls": (0.1, 0.25),
    "ttfb_ms": (800.0, 1800.0),
    "response_ms": (1000.0, 4000.0),
    "load_ms": (1000.0, 4000.0),
}
RATINGS = ("good", "needs_improvement", "poor")


def performance(
    source: Source,
    metric: str,
    by: str,
    goal_cond: str,
    touchpoint_cond: str,
    window_ms: int,
    thresholds: tuple[float, float],
    limit: int,
    params: dict[str, Any],
) -> dict[str, Any]:
    """The metric's percentiles per group (touchpoint, browser, network, ...), the share of good,
    needs-improvement and poor values, and the conversion after each: who suffers most, and what
    it costs. An observation is a timed event (a page load, a screen, an action), converted when
    its person reached the goal within the window after it, as correlations count a visit."""
    params.update(window_ms=window_ms, good=thresholds[0], poor=thresholds[1])
    timed = f"{metric} IS NOT NULL AND ({touchpoint_cond})"
    sql = f"""
    WITH {base_sql(params, source, sessions=False)},
    units AS (
        SELECT person,
            groupArrayIf(ts, {goal_cond}) AS goal_ts,
            groupArrayIf(({PERFORMANCE_GROUPS[by]}, ts, assumeNotNull({metric})), {timed}) AS visits
        FROM base WHERE ({goal_cond}) OR ({timed}) GROUP BY person
    ),
    obs AS (
        SELECT v.1 AS grp, v.3 AS value,
            multiIf(value <= {{good:Float64}}, 0, value <= {{poor:Float64}}, 1, 2) AS rating,
            arrayExists(g -> g >= v.2 AND g <= v.2 + {{window_ms:Int64}}, goal_ts) AS converted
        FROM units ARRAY JOIN visits AS v
    )
    SELECT grouping(grp) = 1 AS overall, grp, count() AS n, quantilesExact(0.5, 0.75, 0.95)(value) AS q,
           countIf(rating = 0) AS r0, countIf(rating = 1) AS r1, countIf(rating = 2) AS r2,
           countIf(rating = 0 AND converted) AS c0, countIf(rating = 1 AND converted) AS c1,
           countIf(rating = 2 AND converted) AS c2
    FROM obs GROUP BY GROUPING SETS ((grp), ())
    """
    overall: dict[str, Any] | None = None
    groups = []
    for r in source.warehouse.rows(sql, params):
        summary = _performance_group(r, thresholds)
        if r["overall"]:
            overall = summary
        else:
            groups.append({"value": r["grp"], **summary})
    groups.sort(key=lambda g: (not g["enough"], -g["p75"], g["value"]))
    total = overall["observations"] if overall else 0
    return {
        "overall": overall or _performance_group(None, thresholds),
        "groups": groups[:limit],
        "note": None
        if total >= MIN_OBSERVATIONS
        else f"fewer than {MIN_OBSERVATIONS} timed events: rates not reliable",
    }


def _performance_group(r: dict[str, Any] | None, thresholds: tuple[float, float]) -> dict[str, Any]:
    n = int(r["n"]) if r else 0
    counts = [int(r[f"r{k}"]) if r else 0 for k in range(3)]
    converted = [int(r[f"c{k}"]) if r else 0 for k in range(3)]
    p50, p75, p95 = (float(q) for q in r["q"]) if r and n else (None, None, None)
    ratings: dict[str, dict[str, Any]] = {}
    rates: dict[str, float | None] = {}
    for name, count, conv in zip(RATINGS, counts, converted, strict=True):
        rates[name] = conv / count if count >= MIN_OBSERVATIONS else None
        ratings[name] = {
            "observations": count,
            "share": count / n if n else None,
            "converted": conv,
            "conversion_rate": conv / count if count else None,
            "ci95": wilson(conv, count),
            "enough": count >= MIN_OBSERVATIONS,
        }
    good_rate, poor_rate = rates["good"], rates["poor"]
    return {
        "observations": n,
        "p50": p50,
        "p75": p75,
        "p95": p95,
        # Core Web Vitals' way: a page is rated by its 75th percentile.
        "rating": None if p75 is None else RATINGS[0 if p75 <= thresholds[0] else 1 if p75 <= thresholds[1] else 2],
        "apdex": (counts[0] + counts[1] / 2) / n if n else None,
        "ratings": ratings,
        # What slowness costs: conversion after a poor value minus after a good one, both counted enough.
        "poor_vs_good": None if good_rate is None or poor_rate is None else poor_rate - good_rate,
        "enough": n >= MIN_OBSERVATIONS,
    }


# A trend's bucket as text, in the request's time zone: its day (or Monday), or its hour.
BUCKET_KEY = {
    "hour": "formatDateTime(toStartOfHour(toTimeZone(timestamp, {tz:String})), '%Y-%m-%dT%H:00')",
    "day": "toString(toDate(timestamp, {tz:String}))",
    "week": "toString(toMonday(toDate(timestamp, {tz:String})))",
}
MAX_TREND_POINTS = 2000


def trend_buckets(start_ms: int, end_ms: int, interval: str, timezone: str) -> list[str]:
    """Every bucket key from the range's first instant to its last, in order, as BUCKET_KEY
    writes them: days with nothing still get a point (zero), so a chart does not skip them."""
    zone = ZoneInfo(timezone)
    first = datetime.fromtimestamp(start_ms / 1000, tz=zone)
    last = datetime.fromtimestamp((end_ms - 1) / 1000, tz=zone)
    if interval == "hour":  # stepped in UTC: a local hour that repeats (DST) is one bucket
        keys: list[str] = []
        at = first.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        while at <= last.astimezone(UTC) and len(keys) <= MAX_TREND_POINTS:
            key = at.astimezone(zone).strftime("%Y-%m-%dT%H:00")
            if not keys or keys[-1] != key:
                keys.append(key)
            at += timedelta(hours=1)
        return keys
    day, end_day = first.date(), last.date()
    if interval == "week":
        day, end_day = day - timedelta(days=day.weekday()), end_day - timedelta(days=end_day.weekday())
    step = timedelta(days=7 if interval == "week" else 1)
    out: list[str] = []
    while day <= end_day and len(out) <= MAX_TREND_POINTS:
        out.append(day.isoformat())
        day += step
    return out


def trends(
    source: Source,
    goal_cond: str,
    perf_cond: str,
    interval: str,
    buckets: list[str],
    timezone: str,
    params: dict[str, Any],
) -> list[dict[str, Any]]:
    """Per hour, day or week (in ``timezone``; ``buckets`` from ``trend_buckets``): people and
    sessions active, events, people who reached the goal (the share of those active, with its
    interval), the median response time of the events ``perf_cond`` picks (every timed event by
    default) and the errors."""
    params["tz"] = timezone
    sql = f"""
    WITH {base_sql(params, source, sessions=True)}
    SELECT {BUCKET_KEY[interval]} AS bucket, uniqExact(person) AS people, uniqExact(session) AS sessions,
           count() AS events, uniqExactIf(person, {goal_cond}) AS converted,
           quantileExactIf(0.5)(response_ms, response_ms IS NOT NULL AND ({perf_cond})) AS median_ms,
           countIf(response_ms IS NOT NULL AND ({perf_cond})) AS timed, countIf(error_kind != '') AS errors
    FROM base GROUP BY bucket
    """
    found = {r["bucket"]: r for r in source.warehouse.rows(sql, params)}
    out = []
    for key in buckets:
        r = found.get(key)
        people = int(r["people"]) if r else 0
        converted = int(r["converted"]) if r else 0
        events = int(r["events"]) if r else 0
        errors = int(r["errors"]) if r else 0
        out.append(
            {
                "start": key,
                "people": people,
                "sessions": int(r["sessions"]) if r else 0,
                "events": events,
                "converted": converted,
                "conversion_rate": converted / people if people else None,
                "ci95": wilson(converted, people),
                "median_response_ms": float(r["median_ms"]) if r and int(r["timed"]) else None,
                "timed_events": int(r["timed"]) if r else 0,
                "errors": errors,
                "error_rate": errors / events if events else None,
            }
        )
    return out


def journey_map(
    source: Source,
    stage_conds: list[str],
    params: dict[str, Any],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per stage: people, and people going on to the next stage; per (stage, touchpoint,
    channel): people, events, median response, error rate and exits (the last touchpoint of a
    journey that never reached the last stage)."""
    n = len(stage_conds)
    stage_expr = "multiIf(" + ", ".join(f"{c}, {k}" for k, c in enumerate(stage_conds, 1)) + ", 0)"
    firsts = ", ".join(f"minIf(ts, stage = {k}) AS f{k}, maxIf(ts, stage = {k}) AS l{k}" for k in range(1, n + 1))
    people = ", ".join(f"countIf(f{k} > 0) AS p{k}" for k in range(1, n + 1))
    onward = ", ".join(f"countIf(f{k} > 0 AND l{k + 1} >= f{k}) AS o{k}" for k in range(1, n)) or "0 AS o0"
    base = base_sql(params, source, sessions=False)
    staged = f"staged AS (SELECT *, {stage_expr} AS stage FROM base WHERE type != 'identify')"
    # Exits come from the same pass over persons as the stages (a third pass over the events
    # otherwise), counted per "stage<TAB>label<TAB>channel" key with sumMap.
    stages = source.warehouse.rows(
        f"""WITH {base}, {staged},
        per AS (
            SELECT person, {firsts}, argMaxIf((stage, label, channel), ts, stage > 0) AS last, max(stage) AS furthest
            FROM staged GROUP BY person
        )
        SELECT {people}, {onward},
            sumMapIf([concat(toString(last.1), '\t', last.2, '\t', last.3)], [toUInt64(1)],
                     furthest BETWEEN 1 AND {n - 1}) AS exits
        FROM per""",
        params,
    )[0]
    exits: dict[tuple[int, str, str], int] = {}
    for key, count in zip(*stages["exits"], strict=True):
        stage, rest = key.split("\t", 1)
        label, channel = rest.rsplit("\t", 1)  # a label may hold a tab; a stage or a channel cannot
        exits[(int(stage), label, channel)] = int(count)
    touchpoints = source.warehouse.rows(
        f"""WITH {base}, {staged}
        SELECT stage, label, channel, uniqExact(person) AS people, count() AS events,
            quantileExactIf(0.5)(response_ms, response_ms IS NOT NULL) AS median_ms,
            countIf(response_ms IS NOT NULL) AS timed, avg(error_kind != '') AS error_rate
        FROM staged WHERE stage > 0 GROUP BY stage, label, channel
        ORDER BY stage, people DESC, label, channel""",
        params,
    )
    for r in touchpoints:
        r["exits"] = exits.get((int(r["stage"]), r["label"], r["channel"]), 0)
    summary = [
        {"people": int(stages[f"p{k}"]), "onward": int(stages[f"o{k}"]) if k < n else None} for k in range(1, n + 1)
    ]
    return summary, touchpoints


# The period a day falls in, as the SQL of its first day (a Date in the request's time zone).
PERIOD_START = {
    "day": "toDate(timestamp, {tz:String})",
    "week": "toMonday(toDate(timestamp, {tz:String}))",
    "month": "toStartOfMonth(toDate(timestamp, {tz:String}))",
}
# How many whole periods lie between two period starts.
PERIOD_DIFF = {
    "day": "dateDiff('day', cohort, p)",
    "week": "intDiv(dateDiff('day', cohort, p), 7)",
    "month": "dateDiff('month', cohort, p)",
}


def period_after(first_day: date, period: str, k: int) -> date:
    """The first day of the ``k``-th period after the one starting on ``first_day``."""
    if period == "day":
        return first_day + timedelta(days=k)
    if period == "week":
        return first_day + timedelta(weeks=k)
    months = first_day.year * 12 + first_day.month - 1 + k
    return date(months // 12, months % 12 + 1, 1)


def retention(
    source: Source,
    start_cond: str,
    return_cond: str,
    period: str,
    periods: int,
    timezone: str,
    params: dict[str, Any],
    new_from_ms: int | None = None,
) -> dict[str, Any]:
    """Cohorts of people by the period of their first ``start`` event in the range; for each later
    period, how many of them did a ``return`` event in it (loyalty: buying again, coming back).
    With ``new_from_ms`` the source reads all history and only people whose first ``start`` of
    all time is at or after it are counted: new customers, not old ones buying again in the range.

    A person is a journey (every device). Periods are calendar days, ISO weeks (from Monday) or
    months in ``timezone``. A period that begins at or after the range's end is not observed yet:
    no rate, rather than a zero; the period holding the end is ``complete: false``."""
    params.update(tz=timezone, periods=periods)
    first_day = PERIOD_START[period]
    new_only = ""
    if new_from_ms is not None:
        params["new_from_ms"] = new_from_ms
        new_only = " AND first >= fromUnixTimestamp64Milli({new_from_ms:Int64})"
    sql = f"""
    WITH {base_sql(params, source, sessions=False)},
    persons AS (
        SELECT person, minIf(timestamp, {start_cond}) AS first,
               groupUniqArrayIf({first_day}, {return_cond}) AS returned
        FROM base GROUP BY person HAVING countIf({start_cond}) > 0{new_only}
    ),
    cohorts AS (
        SELECT {first_day.replace("timestamp", "first")} AS cohort,
               arrayFilter(k -> k BETWEEN 1 AND {{periods:UInt16}},
                           arrayMap(p -> {PERIOD_DIFF[period]}, returned)) AS ks
        FROM persons
    )
    SELECT cohort, count() AS people,
           sumForEach(arrayMap(i -> toUInt64(has(ks, i)), range(1, {{periods:UInt16}} + 1))) AS retained
    FROM cohorts GROUP BY cohort ORDER BY cohort
    """
    rows = source.warehouse.rows(sql, params)
    zone = ZoneInfo(timezone)
    end_day = datetime.fromtimestamp(source.end_ms / 1000, tz=zone).date()  # periods from its midnight on: ended
    last_day = datetime.fromtimestamp((source.end_ms - 1) / 1000, tz=zone).date()  # the range's last day read
    overall = [[0, 0] for _ in range(periods)]  # returned, observed (people of cohorts that could)
    cohorts: list[dict[str, Any]] = []
    for row in rows:
        cohort: date = row["cohort"]
        n = int(row["people"])
        retained = list(row["retained"]) or [0] * periods
        out: list[dict[str, Any]] = []
        for k in range(1, periods + 1):
            begins = period_after(cohort, period, k)
            if begins > last_day:
                out.append({"period": k, "people": None, "rate": None, "ci95": None, "complete": False})
                continue
            back = int(retained[k - 1])
            overall[k - 1][0] += back
            overall[k - 1][1] += n
            out.append(
                {
                    "period": k,
                    "people": back,
                    "rate": back / n,
                    "ci95": wilson(back, n),
                    "complete": period_after(cohort, period, k + 1) <= end_day,
                }
            )
        cohorts.append({"cohort": cohort.isoformat(), "people": n, "retained": out})
    total = sum(int(c["people"]) for c in cohorts)
    return {
        "period": period,
        "timezone": timezone,
        "people": total,
        "cohorts": cohorts,
        "overall": [
            {
                "period": k + 1,
                "people": back,
                "of": seen,
                "rate": back / seen if seen else None,
                "ci95": wilson(back, seen),
                "enough": seen >= MIN_OBSERVATIONS,
            }
            for k, (back, seen) in enumerate(overall)
        ],
        "note": None if total >= MIN_OBSERVATIONS else f"fewer than {MIN_OBSERVATIONS} people: rates are not reliable",
    }

"""``make bench-queries``: the query API's analyses on ten million events in chDB.

Fills a fresh chDB with synthetic journeys through SQL (INSERT … SELECT, so the fill
is fast), then times the 6-step funnel, the abandonment report and a correlation as
the API runs them (median of 5), beside the bare ClickHouse ``windowFunnel`` over the
same rows per device (no person stitching, no FINAL) as the reference.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from services.api.analytics import Source, abandonment, correlations, funnel
from services.api.steps import step_condition
from services.core.warehouse import Warehouse

STEPS = ["Home", "Search", "Product", "Product Added", "Cart", "Checkout"]


def fill(wh: Warehouse, devices: int, history: bool = False) -> int:
    """``devices`` journeys of the last ~6 days; with ``history``, as many more spread over the
    year before them (other devices), which a week's question must not read."""
    # Seconds before now at which device d starts: within ~6 days, or spread over 357 days ending 8 days ago.
    prefix, ago = ("h", f"{8 * 86_400} + intDiv(d * {357 * 86_400}, {devices})") if history else ("", "d % 500000")
    wh.client.command(f"""
        INSERT INTO events (project, event_id, type, name, anonymous_id, user_id, timestamp, received_at,
                            channel, path, response_ms, error_kind, properties, context)
        SELECT 'shop', concat('{prefix}', toString(d), '-', toString(step)),
            if(step >= 3 AND step != 4, 'track', 'page'),
            ['Home','Search','Product','Product Added','Cart','Checkout','Order Completed'][step + 1],
            concat('{prefix}d', toString(d)), if(d % 3 = 0, concat('{prefix}u', toString(d)), ''),
            now64(3) - toIntervalSecond({ago}) + toIntervalSecond(step * 30), now64(3),
            ['web', 'mobile_web', 'app'][(d % 3) + 1],
            ['/', '/search', '/product', '/product', '/cart', '/checkout', '/done'][step + 1],
            100 + (cityHash64(d, step) % 3000), if(cityHash64(d, step, 1) % 50 = 0, 'js', ''), '{{}}', '{{}}'
        FROM (SELECT number AS d, arrayJoin(range(1 + cityHash64(number) % 7)) AS step FROM numbers({devices}))
    """)
    return int(wh.rows("SELECT count() AS n FROM events")[0]["n"])


def median_of(runs: int, fn: Any) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return round(statistics.median(times) * 1000, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2_500_000, help="about 4 events each")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument(
        "--no-history", action="store_true", help="skip the week's funnel on a year of events (partition pruning)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="touchpoint-qbench-"))
    wh = Warehouse(f"chdb://{workdir / 'clickhouse'}", "query-bench")
    wh.migrate()
    print("[bench-queries] filling chDB ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    events = fill(wh, args.devices)
    print(f"[bench-queries] {events:,} events in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    now = int(time.time() * 1000)
    source = Source(wh, "shop", now - 7 * 86_400_000, now + 1000)

    def conds(params: dict[str, Any]) -> list[str]:
        return [step_condition(s, f"s{i}", params, "steps") for i, s in enumerate(STEPS)]

    def run_funnel() -> None:
        p: dict[str, Any] = {}
        funnel(source, conds(p), 86_400_000, "journey", None, p)

    def run_abandonment() -> None:
        p: dict[str, Any] = {}
        goal = step_condition("Order Completed", "goal", p, "goal")
        abandonment(source, goal, None, 86_400_000, "journey", None, 20, p)

    def run_correlation() -> None:
        p: dict[str, Any] = {}
        goal = step_condition("Order Completed", "goal", p, "goal")
        visit = step_condition({"type": "page", "path": "/search"}, "tp", p, "touchpoint")
        correlations(source, "response_ms", goal, visit, 86_400_000, None, [500, 1000, 2000, 4000], p)

    def run_bare() -> None:
        p: dict[str, Any] = {}
        cs = ", ".join(conds(p))
        wh.rows(
            f"SELECT level, count() FROM (SELECT windowFunnel(86400000)(toUInt64(toUnixTimestamp64Milli(timestamp)),"
            f" {cs}) AS level FROM events WHERE project = 'shop' GROUP BY anonymous_id) GROUP BY level",
            p,
        )

    results: dict[str, Any] = {"command": "make bench-queries", "events": events}
    for name, fn in (
        ("bare_window_funnel", run_bare),
        ("funnel_6_steps", run_funnel),
        ("abandonment", run_abandonment),
        ("correlation", run_correlation),
    ):
        results[f"{name}_median_ms"] = median_of(args.runs, fn)
        print(f"[bench-queries] {name}: median {results[f'{name}_median_ms']} ms", file=sys.stderr, flush=True)
    results["funnel_vs_bare"] = round(results["funnel_6_steps_median_ms"] / results["bare_window_funnel_median_ms"], 2)
    if not args.no_history:
        history(wh, args, results, run_funnel)
    print(orjson.dumps(results).decode())
    return 0


def history(wh: Warehouse, args: argparse.Namespace, results: dict[str, Any], run_funnel: Any) -> None:
    """The same week's funnel once a year of older events shares the table: as the API runs it
    (partitions pruned by time before FINAL), and as ClickHouse 26.3+ runs it by default."""
    print("[bench-queries] adding a year of older events ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    total = fill(wh, args.devices, history=True)
    print(f"[bench-queries] {total:,} events in all, {time.perf_counter() - started:.1f} s", file=sys.stderr)
    results["events_with_history"] = total
    results["week_funnel_on_a_year_median_ms"] = median_of(args.runs, run_funnel)
    wh.query_settings["defer_partition_pruning_after_final"] = 1
    try:
        results["week_funnel_on_a_year_unpruned_median_ms"] = median_of(args.runs, run_funnel)
    finally:
        wh.query_settings.pop("defer_partition_pruning_after_final")
    for name in ("week_funnel_on_a_year", "week_funnel_on_a_year_unpruned"):
        print(f"[bench-queries] {name}: median {results[f'{name}_median_ms']} ms", file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""``make bench``: Touchpoint's throughput and latency, beside references measured in the same run.

Starts what it needs (a real Kafka broker, chDB), drives real HTTP load with wrk,
and prints a table and one final JSON line. References in the same run: Kafka's
own ProducerPerformance on the same broker and record size; raw clickhouse-connect
inserts and queries of the same rows on chDB.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from loadtests.generator import GOAL, beacon_events, generate
from loadtests.sender import percentile
from services.core.event_rows import event_head, event_row, event_values_json, pack_rows
from services.core.events import normalize, now_ms
from services.core.schema import EVENT_COLUMNS
from services.testing import kafka_broker
from tests.harness import API_KEY, WRITE_KEY, Proc, new_proc

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtests" / "results"


HALF_BATCH_RATE = 500  # issue 4: 50,000 events/s in batches of 50, halved
HALF_SINGLE_RATE = 2000  # issue 4: 4,000 single-event requests/s, halved
PACED_SETTLE_S = 5  # unmeasured seconds at the same pace before each paced run
PACED_CONNECTIONS = 64  # connections of the paced runs, taking the scheduled arrivals between them


def say(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def peak_rss_mb(pid: int) -> float:
    """Peak resident memory (VmHWM) of a process and its children (the ingest workers), in MB."""
    total_kb = 0
    for p in [pid, *_children(pid)]:
        try:
            status = Path(f"/proc/{p}/status").read_text()
        except FileNotFoundError:
            continue
        m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
        total_kb += int(m.group(1)) if m else 0
    return round(total_kb / 1024, 1)


def _children(pid: int) -> list[int]:
    try:
        direct = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []
    return [d for c in direct for d in (c, *_children(c))]


def pid_of(proc: Proc) -> int:
    assert proc.proc is not None, "the process was never started"
    return proc.proc.pid


# Arrivals on a schedule: a Poisson process of the given rate over the whole run, shared by every
# connection of wrk's one thread. Each request waits (wrk's ``delay()``) for the next arrival time;
# one that is already past goes at once. The offered rate so holds whatever the latency, where
# pauses between a client's requests offer less the slower the answers come. LuaJIT's ffi reads
# the monotonic clock (wrk's Lua has no clock finer than a second).
_SCHEDULE_LUA = """
local ffi = require("ffi")
ffi.cdef[[ typedef struct {{ long tv_sec; long tv_nsec; }} tp_timespec; int clock_gettime(int, tp_timespec *); ]]
local now_ts = ffi.new("tp_timespec")
local function now_ms()
  ffi.C.clock_gettime(1, now_ts)
  return tonumber(now_ts.tv_sec) * 1000 + tonumber(now_ts.tv_nsec) / 1e6
end
local interval_ms = {interval_ms:.6f}
local next_arrival = nil
function delay()
  local now = now_ms()
  if next_arrival == nil then next_arrival = now end
  next_arrival = next_arrival + -math.log(1 - math.random()) * interval_ms
  local wait = next_arrival - now
  if wait < 0 then return 0 end
  return wait
end
"""


def wrk(
    url: str, body: bytes, seconds: int, connections: int, workdir: Path, rate: float | None = None
) -> dict[str, float]:
    """POST the same body for ``seconds``; requests/s and latency percentiles from wrk.

    With ``rate``, requests arrive at that many per second on average (``_SCHEDULE_LUA``) and
    the latency is the latency at that load rather than at saturation (see ``paced``)."""
    pause = "" if rate is None else _SCHEDULE_LUA.format(interval_ms=1000.0 / rate)
    body_file = workdir / f"body-{len(body)}.json"
    body_file.write_bytes(body)
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["X-Write-Key"] = "{WRITE_KEY}"\n'
        f'local f = io.open("{body_file}", "rb"); wrk.body = f:read("*a"); f:close()\n'
        + pause
        + "done = function(summary, latency, requests)\n"
        '  io.write(string.format("STATS %d %d %d %f %f %f\\n", summary.requests, summary.errors.status,\n'
        "    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,\n"
        "    latency:percentile(50), latency:percentile(99), summary.duration))\n"
        "end\n"
    )
    out = subprocess.run(
        [
            "wrk",
            "-t",
            "1",
            "-c",
            str(connections),
            "-d",
            f"{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            f"{url}/v1/batch",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    m = re.search(r"STATS (\d+) (\d+) (\d+) (\S+) (\S+) (\S+)", out)
    assert m, out
    requests, bad_status, socket_errors = int(m[1]), int(m[2]), int(m[3])
    duration_s = float(m[6]) / 1e6
    return {
        "requests_per_s": round(requests / duration_s, 1),
        "p50_ms": round(float(m[4]) / 1000, 2),
        "p99_ms": round(float(m[5]) / 1000, 2),
        "non_2xx": bad_status,
        "socket_errors": socket_errors,
        "requests": requests,
    }


def paced(url: str, body: bytes, seconds: int, workdir: Path, rate: float) -> dict[str, float]:
    """Latency at ``rate`` requests/s arriving on a schedule, over up to PACED_CONNECTIONS
    connections, after an unmeasured settling run at the same rate.

    Until 2026-11-23 each client paused a random time between its requests and two settling
    runs calibrated the pause; a machine that sped up or slowed down between them and the
    measured run then offered more or less than ``rate`` (556 batches/s for 500 once). The
    achieved rate is reported beside the target."""
    wrk(url, body, PACED_SETTLE_S, PACED_CONNECTIONS, workdir, rate=rate)
    result = wrk(url, body, seconds, PACED_CONNECTIONS, workdir, rate=rate)
    return {**result, "target_requests_per_s": rate}


def kafka_reference(broker: kafka_broker.Broker, record_size: int, records: int) -> dict[str, float]:
    """Kafka's own producer perf test, acks=all with idempotence, against the same broker."""
    topic = f"bench.ref.{int(time.time())}"
    subprocess.run(
        kafka_broker._java_cmd(
            broker.workdir,
            "org.apache.kafka.tools.TopicCommand",
            "--bootstrap-server",
            broker.bootstrap,
            "--create",
            "--topic",
            topic,
            "--partitions",
            "6",
        ),
        capture_output=True,
        check=True,
    )
    out = subprocess.run(
        kafka_broker._java_cmd(
            broker.workdir,
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            str(records),
            "--record-size",
            str(record_size),
            "--throughput",
            "-1",
            "--producer-props",
            f"bootstrap.servers={broker.bootstrap}",
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=5",
            "batch.size=1048576",
        ),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    last = [line for line in out.splitlines() if "records sent" in line][-1]
    rate = float(re.search(r"([\d.]+) records/sec", last)[1])  # type: ignore[index]
    p99 = float(re.search(r"(\d+) ms 99th", last)[1])  # type: ignore[index]
    return {"records_per_s": round(rate, 1), "p99_ms": p99, "record_size": record_size, "records": records}


def metric(proc: Proc, name: str) -> float:
    text = httpx.get(f"{proc.url}/metrics", timeout=10).text
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m[1]) if m else 0.0


def sessionizer_run(data: Path, env: dict[str, str], expected: int, keep: bool = False) -> dict[str, Any]:
    """Consume a filled topic from the start with a new group.

    Steady rate: events written between the first and the last sample of the
    write counter (start-up, group join and the first poll excluded, reported apart).
    """
    proc = new_proc("sessionizer", data, TOUCHPOINT_BATCH_MAX_SECONDS="1", **env)
    started = time.monotonic()
    proc.start()
    first: tuple[float, float] | None = None
    while True:
        written = metric(proc, "touchpoint_sessionizer_events_written_total")
        now = time.monotonic()
        if written > 0 and first is None:
            first = (now, written)
        if written >= expected:
            break
        if now - started > 600:
            raise RuntimeError(f"sessionizer wrote {written} of {expected} in 600 s")
        say(f"  sessionizer: {written:.0f}/{expected} events written")
        time.sleep(0.5)
    assert first is not None
    rss = peak_rss_mb(pid_of(proc))
    if not keep:
        proc.stop()
    steady_s = max(now - first[0], 1e-9)
    return {
        "events_per_s": round((written - first[1]) / steady_s, 1),
        "events": expected,
        "elapsed_s_including_startup": round(now - started, 2),
        "startup_to_first_write_s": round(first[0] - started, 2),
        "peak_rss_mb": rss,
        **({"proc": proc} if keep else {}),
    }


async def fill_devices(bootstrap: str, topic: str, devices: int) -> None:
    """One event from each of ``devices`` new devices, as ingest writes them (one record of rows per device)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
    finally:
        await admin.close()
    base = beacon_events(6)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_batch_size=1 << 20, acks="all")
    await producer.start()
    try:
        received = now_ms()
        pending = []
        for i in range(devices):
            record = normalize(
                {**base[i % 6], "anonymous_id": f"open-{i}"},
                project="shop",
                received_ms=received,
                sent_at_ms=None,
                ip="203.0.113.9",
            )
            row = event_row(record)
            value = next(pack_rows([(event_values_json(row), event_head(row))]))
            pending.append(await producer.send(topic, value, key=f"shop\x00open-{i}".encode()))
            if len(pending) >= 50_000:
                await asyncio.gather(*pending)
                pending.clear()
                say(f"  open sessions: {i + 1}/{devices} devices written to {topic}")
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def open_sessions_run(data: Path, env: dict[str, str], devices: int) -> dict[str, float]:
    """Consume one event from each of ``devices`` devices: as many open sessions, held in memory."""
    result = sessionizer_run(data, env, devices, keep=True)
    proc = result.pop("proc")
    try:
        deadline = time.monotonic() + 15
        while (open_now := metric(proc, "touchpoint_sessionizer_open_sessions")) < devices:
            if time.monotonic() > deadline:
                break
            time.sleep(0.5)
        result["open_sessions"] = open_now
        result["rss_mb"] = current_rss_mb(pid_of(proc))
    finally:
        proc.stop()
    return result


def current_rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.M)
    return round(int(m.group(1)) / 1024, 1) if m else 0.0


def clickhouse_reference(records: list[dict[str, Any]], workdir: Path, batch: int) -> dict[str, float]:
    """Raw clickhouse-connect on the same rows and schema: ``insert`` of Python rows (the plain way),
    ``raw_insert`` of prebuilt JSONCompactEachRow lines (what the sessionizer sends), and a point
    query per device."""
    from datetime import UTC, datetime

    from services.core.warehouse import Warehouse

    wh = Warehouse(f"chdb://{workdir / 'ref-clickhouse'}", "bench-reference")
    wh.migrate()
    lines = [event_values_json(event_row(r)) for r in records]
    rows = []
    for r in records:
        row = event_row(r)
        for col in ("timestamp", "received_at"):
            row[col] = datetime.fromtimestamp(row[col], tz=UTC)
        for col in ("properties", "context"):
            row[col] = orjson.dumps(row[col]).decode()
        rows.append([row[c] for c in EVENT_COLUMNS])
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        wh.insert("events", rows[i : i + batch], EVENT_COLUMNS)
    insert_s = time.perf_counter() - started
    started = time.perf_counter()
    for i in range(0, len(lines), batch):
        wh.insert_json("events", lines[i : i + batch], EVENT_COLUMNS, fmt="JSONCompactEachRow")
    json_s = time.perf_counter() - started
    anon = [r["anonymous_id"] for r in random.Random(1).sample(records, 50)]
    times = []
    for a in anon:
        t = time.perf_counter()
        wh.rows(
            "SELECT * FROM (SELECT * FROM events WHERE project = {p:String} AND anonymous_id = {a:String} "
            "ORDER BY inserted_at DESC LIMIT 1 BY event_id) ORDER BY timestamp",
            {"p": "shop", "a": a},
        )
        times.append(time.perf_counter() - t)
    return {
        "rows_per_s": round(len(rows) / insert_s, 1),
        "json_rows_per_s": round(len(lines) / json_s, 1),
        "rows": len(rows),
        "point_query_p50_ms": round(statistics.median(times) * 1000, 2),
    }


async def freshness(proc: Proc, seconds: float, probes_per_s: float, background_rate: float) -> dict[str, Any]:
    """200 at ingest → visible in /v1/journeys, for probe events sent under background load."""
    now = now_ms()
    traffic = generate(99, 100_000, now - 20 * 3600_000, now).batches
    lags: list[float] = []
    sent_devices: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        stop = time.monotonic() + seconds

        async def background() -> None:
            i = 0
            while time.monotonic() < stop and i < len(traffic):
                body = orjson.dumps(traffic[i].body(now_ms()))
                sent_devices.extend(e["anonymous_id"] for e in traffic[i].events)
                i += 1
                await client.post(f"{proc.url}/v1/batch", content=body, headers={"X-Write-Key": WRITE_KEY})
                await asyncio.sleep(1 / background_rate)

        async def probe(n: int) -> None:
            anon = f"probe-{n}-{time.time_ns()}"
            r = await client.post(
                f"{proc.url}/v1/batch",
                json={"events": [{"type": "page", "anonymous_id": anon}]},
                headers={"X-Write-Key": WRITE_KEY},
            )
            acked = time.monotonic()
            assert r.status_code == 200, r.text
            while time.monotonic() - acked < 60:
                q = await client.get(f"{proc.url}/v1/journeys/{anon}", headers={"Authorization": f"Bearer {API_KEY}"})
                if q.status_code == 200:
                    lags.append(time.monotonic() - acked)
                    return
                await asyncio.sleep(0.05)

        tasks = [asyncio.create_task(background()) for _ in range(4)]
        probes = []
        n = 0
        while time.monotonic() < stop:
            probes.append(asyncio.create_task(probe(n)))
            n += 1
            await asyncio.sleep(1 / probes_per_s)
        await asyncio.gather(*tasks, *probes)
    devices = sorted(set(sent_devices))
    if len(lags) != n:  # an acknowledged probe that never shows up is a lost event, not a slow one
        raise RuntimeError(f"{n - len(lags)} of {n} acknowledged probes not visible in /v1/journeys after 60 s")
    return {
        "p50_s": round(percentile(lags, 50), 3),
        "p99_s": round(percentile(lags, 99), 3),
        "probes": len(lags),
        "devices": random.Random(3).sample(devices, min(200, len(devices))),
    }


async def query_latency(proc: Proc, ids: list[str]) -> dict[str, float]:
    times = []
    async with httpx.AsyncClient(timeout=30) as client:
        for identifier in ids:
            t = time.perf_counter()
            r = await client.get(f"{proc.url}/v1/journeys/{identifier}", headers={"Authorization": f"Bearer {API_KEY}"})
            times.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text
        reports = {
            "abandonment": ("/v1/abandonment", {"goal": GOAL}),
            "correlations": ("/v1/correlations", {"goal": GOAL, "touchpoint": {"type": "page", "path": "/search"}}),
        }
        medians = {}
        for name, (path, body) in reports.items():
            runs = []
            for _ in range(5):
                t = time.perf_counter()
                r = await client.post(f"{proc.url}{path}", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
                runs.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
            medians[f"{name}_median_ms"] = round(statistics.median(runs) * 1000, 2)
    return {
        **medians,
        "journey_p50_ms": round(percentile(times, 50) * 1000, 2),
        "journey_p99_ms": round(percentile(times, 99) * 1000, 2),
        "queries": len(times),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=15, help="duration of each wrk run")
    parser.add_argument("--connections", type=int, default=256, help="concurrent clients (browsers, apps)")
    parser.add_argument("--open-sessions", type=int, default=1_000_000, help="devices of the open-sessions run")
    parser.add_argument("--only", choices=["all", "ingest"], default="all", help="ingest: stop after the ingest runs")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        say("wrk is missing: install it (Debian: apt-get install wrk) and run again")
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="touchpoint-bench-"))
    results: dict[str, Any] = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": platform.release()},
        "command": "make bench",
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    batch50 = orjson.dumps({"events": beacon_events(50)})
    mixed50 = orjson.dumps({"events": beacon_events(50, devices=50)})
    single = orjson.dumps({"events": beacon_events(1)})
    sample = normalize(beacon_events(1)[0], project="shop", received_ms=now_ms(), sent_at_ms=None, ip="203.0.113.9")
    record_size = len(orjson.dumps(sample))

    say("starting the Kafka broker")
    broker = kafka_broker.start()
    procs: list[Proc] = []
    try:
        say("reference: Kafka ProducerPerformance (acks=all, idempotent)")
        results["kafka_producer_perf"] = kafka_reference(broker, record_size, 1_000_000)
        say(f"  {results['kafka_producer_perf']}")

        topic_env = {
            "TOUCHPOINT_KAFKA_BOOTSTRAP": broker.bootstrap,
            "TOUCHPOINT_KAFKA_TOPIC": "bench.events",
            "TOUCHPOINT_KAFKA_PARTITIONS": "6",
            "TOUCHPOINT_KAFKA_GROUP": "bench-sessionizer",
        }
        workers = str(os.cpu_count() or 1)
        ingest = new_proc("ingest", workdir / "ingest", TOUCHPOINT_INGEST_WORKERS=workers, **topic_env).start()
        procs.append(ingest)
        say(f"ingest on Kafka ({workers} workers): warming up the broker's and the workers' code paths, 10 s")
        wrk(ingest.url, batch50, 10, args.connections, workdir)
        say(f"ingest on Kafka: batches of 50 events, wrk -c {args.connections} for {args.seconds}s")
        b50 = wrk(ingest.url, batch50, args.seconds, args.connections, workdir)
        b50["events_per_s"] = round(b50["requests_per_s"] * 50, 1)
        say(f"  {b50}")
        say("ingest on Kafka: batches of 50 events from 50 devices (a server-side relay)")
        m50 = wrk(ingest.url, mixed50, args.seconds, args.connections, workdir)
        m50["events_per_s"] = round(m50["requests_per_s"] * 50, 1)
        say(f"  {m50}")
        say("ingest on Kafka: single-event beacons")
        b1 = wrk(ingest.url, single, args.seconds, args.connections, workdir)
        say(f"  {b1}")
        say(f"ingest on Kafka: latency at half of issue 4's goals ({HALF_BATCH_RATE} batches/s of 50 events)")
        h50 = paced(ingest.url, batch50, args.seconds, workdir, HALF_BATCH_RATE)
        h50["events_per_s"] = round(h50["requests_per_s"] * 50, 1)
        say(f"  {h50}")
        say(f"ingest on Kafka: latency at half of issue 4's goals ({HALF_SINGLE_RATE} single-event requests/s)")
        h1 = paced(ingest.url, single, args.seconds, workdir, HALF_SINGLE_RATE)
        say(f"  {h1}")
        results["ingest_kafka"] = {
            "workers": int(workers),
            "batch50": b50,
            "batch50_mixed_devices": m50,
            "single": b1,
            "batch50_half_goal": h50,
            "single_half_goal": h1,
            "peak_rss_mb": peak_rss_mb(pid_of(ingest)),
        }
        if args.only == "ingest":
            print(orjson.dumps(results).decode())
            return 0
        time.sleep(1)  # requests still in flight when wrk stopped get their answer
        accepted = int(metric(ingest, "touchpoint_ingest_events_accepted_total"))
        ingest.stop()
        procs.remove(ingest)

        say(f"sessionizer: Kafka → chDB, {accepted} events from the start of the topic")
        results["sessionizer"] = sessionizer_run(workdir / "ingest", topic_env, accepted)
        say(f"  {results['sessionizer']}")

        say(f"sessionizer: {args.open_sessions:,} devices, one event each: as many open sessions in memory")
        devices_env = {**topic_env, "TOUCHPOINT_KAFKA_TOPIC": "bench.devices", "TOUCHPOINT_KAFKA_GROUP": "bench-open"}
        asyncio.run(fill_devices(broker.bootstrap, "bench.devices", args.open_sessions))
        results["open_sessions"] = open_sessions_run(workdir / "devices", devices_env, args.open_sessions)
        say(f"  {results['open_sessions']}")

        say("reference: raw clickhouse-connect inserts of the same rows (chDB)")
        n_rows = min(accepted, 500_000)
        base = beacon_events(1000)
        records = [
            normalize(
                {**base[i % 1000], "anonymous_id": f"ref-{i % 20000}"},
                project="shop",
                received_ms=now_ms(),
                sent_at_ms=None,
                ip="203.0.113.9",
            )
            for i in range(n_rows)
        ]
        results["clickhouse_reference"] = clickhouse_reference(records, workdir, 20_000)
        say(f"  {results['clickhouse_reference']}")

        say("embedded mode (touchpoint up, no Kafka): batches of 50")
        embedded = new_proc("up", workdir / "embedded").start()
        procs.append(embedded)
        e50 = wrk(embedded.url, batch50, args.seconds, args.connections, workdir)
        e50["events_per_s"] = round(e50["requests_per_s"] * 50, 1)
        results["ingest_embedded"] = {"batch50": e50, "peak_rss_mb": peak_rss_mb(pid_of(embedded))}
        say(f"  {e50}")
        embedded.stop()
        procs.remove(embedded)

        say("freshness and queries: touchpoint up on Kafka under steady load")
        fresh_env = {**topic_env, "TOUCHPOINT_KAFKA_TOPIC": "bench.fresh", "TOUCHPOINT_KAFKA_GROUP": "bench-fresh"}
        up = new_proc("up", workdir / "fresh", **fresh_env).start()
        procs.append(up)
        results["freshness"] = asyncio.run(freshness(up, 20, probes_per_s=5, background_rate=50))
        ids = results["freshness"].pop("devices")
        say(f"  {results['freshness']}")
        results["queries"] = asyncio.run(query_latency(up, ids))
        results["queries"]["stored_events"] = int(metric(up, "touchpoint_sessionizer_events_written_total"))
        results["queries"]["up_peak_rss_mb"] = peak_rss_mb(pid_of(up))
        say(f"  {results['queries']}")
        up.stop()
        procs.remove(up)
        results["kafka_broker_peak_rss_mb"] = peak_rss_mb(broker.pid)
    finally:
        for proc in procs:
            proc.stop()
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    ref = results["kafka_producer_perf"]["records_per_s"]
    results["ratios"] = {
        "ingest_batch50_vs_kafka_perf": round(results["ingest_kafka"]["batch50"]["events_per_s"] / ref, 3),
        "ingest_single_vs_kafka_perf": round(results["ingest_kafka"]["single"]["requests_per_s"] / ref, 3),
        "sessionizer_vs_raw_insert": round(
            results["sessionizer"]["events_per_s"] / results["clickhouse_reference"]["rows_per_s"], 3
        ),
    }
    print_table(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "latest.json").write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2))
    print(orjson.dumps(results).decode())
    return 0


def print_table(r: dict[str, Any]) -> None:
    k, ik, s, c = r["kafka_producer_perf"], r["ingest_kafka"], r["sessionizer"], r["clickhouse_reference"]
    rows = [
        ("Kafka ProducerPerformance (reference)", f"{k['records_per_s']:,.0f} records/s", f"p99 {k['p99_ms']} ms"),
        (
            "ingest → Kafka, batches of 50",
            f"{ik['batch50']['events_per_s']:,.0f} events/s",
            f"p50 {ik['batch50']['p50_ms']} ms, p99 {ik['batch50']['p99_ms']} ms",
        ),
        (
            "ingest → Kafka, 50 events from 50 devices",
            f"{ik['batch50_mixed_devices']['events_per_s']:,.0f} events/s",
            f"p50 {ik['batch50_mixed_devices']['p50_ms']} ms, p99 {ik['batch50_mixed_devices']['p99_ms']} ms",
        ),
        (
            "ingest → Kafka, single-event beacons",
            f"{ik['single']['requests_per_s']:,.0f} requests/s",
            f"p50 {ik['single']['p50_ms']} ms, p99 {ik['single']['p99_ms']} ms",
        ),
        (
            f"ingest → Kafka, ~{HALF_BATCH_RATE} batches/s of 50 (half the goal)",
            f"{ik['batch50_half_goal']['events_per_s']:,.0f} events/s",
            f"p50 {ik['batch50_half_goal']['p50_ms']} ms, p99 {ik['batch50_half_goal']['p99_ms']} ms",
        ),
        (
            f"ingest → Kafka, ~{HALF_SINGLE_RATE} single beacons/s (half the goal)",
            f"{ik['single_half_goal']['requests_per_s']:,.0f} requests/s",
            f"p50 {ik['single_half_goal']['p50_ms']} ms, p99 {ik['single_half_goal']['p99_ms']} ms",
        ),
        (
            "ingest → embedded log, batches of 50",
            f"{r['ingest_embedded']['batch50']['events_per_s']:,.0f} events/s",
            f"p50 {r['ingest_embedded']['batch50']['p50_ms']} ms, p99 {r['ingest_embedded']['batch50']['p99_ms']} ms",
        ),
        ("sessionizer Kafka → chDB", f"{s['events_per_s']:,.0f} events/s", f"peak RSS {s['peak_rss_mb']} MB"),
        (
            "sessionizer, one event from each new device",
            f"{r['open_sessions']['events_per_s']:,.0f} events/s",
            f"{r['open_sessions']['open_sessions']:,.0f} open sessions: RSS {r['open_sessions']['rss_mb']} MB",
        ),
        (
            "raw clickhouse-connect insert (reference)",
            f"{c['rows_per_s']:,.0f} rows/s",
            f"point query p50 {c['point_query_p50_ms']} ms",
        ),
        ("raw clickhouse-connect JSONCompactEachRow (reference)", f"{c['json_rows_per_s']:,.0f} rows/s", ""),
        ("freshness 200 → visible in journeys", f"p50 {r['freshness']['p50_s']} s", f"p99 {r['freshness']['p99_s']} s"),
        ("GET /v1/journeys", f"p50 {r['queries']['journey_p50_ms']} ms", f"p99 {r['queries']['journey_p99_ms']} ms"),
        (
            f"POST /v1/abandonment, /v1/correlations ({r['queries']['stored_events']:,} events)",
            f"{r['queries']['abandonment_median_ms']} ms",
            f"{r['queries']['correlations_median_ms']} ms (medians of 5)",
        ),
    ]
    width = max(len(a) for a, _, _ in rows)
    print()
    for a, b, c2 in rows:
        print(f"{a:<{width}}  {b:>22}  {c2}")
    print(f"\nratios: {r['ratios']}\n")


if __name__ == "__main__":
    sys.exit(main())

"""Faults on real services, each ending with an exact accounting by event_id:
every event that got a 200 is in ClickHouse exactly once, none that got a 4xx or 503 is."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx
import pytest

from services.testing import kafka_broker
from tests.conftest import start_broker, unavailable
from tests.faults import (
    BackgroundLoad,
    assert_exact_accounting,
    sessionizer_status,
    stored_counts,
    traffic,
    wait_caught_up,
)
from tests.harness import new_proc, wait_for
from tests.test_e2e_kafka import kafka_env


def test_up_sigkilled_mid_load(tmp_path: Path) -> None:
    proc = new_proc("up", tmp_path / "up").start()
    load = BackgroundLoad(proc.url, traffic(seed=11, people=500), rate=400).start()
    time.sleep(1.5)
    proc.kill()
    first = load.join()
    assert first.statuses.get(200, 0) > 20 and first.statuses.get(-1, 0) > 0, first.statuses
    proc.start()
    wait_caught_up(proc)
    assert proc.stop() == 0  # SIGTERM: drained, then a clean exit
    assert_exact_accounting(first, stored_counts(proc))


@pytest.mark.kafka
def test_sessionizer_sigkilled_mid_batch(kafka: kafka_broker.Broker | str, tmp_path: Path) -> None:
    env = kafka_env(kafka, "skill")
    data = tmp_path / "skill"
    ingest = new_proc("ingest", data, **env).start()
    sessionizer = new_proc(
        "sessionizer", data, TOUCHPOINT_BATCH_MAX_SECONDS="1", TOUCHPOINT_BATCH_MAX_EVENTS="300", **env
    ).start()
    try:
        load = BackgroundLoad(ingest.url, traffic(seed=12, people=600), rate=300).start()
        wait_for(lambda: sessionizer_status(sessionizer)["events_written"] > 0, 60, "a first batch written")
        sessionizer.kill()  # mid-stream: a batch is being collected or written
        result = load.join()
        assert set(result.statuses) == {200}, result.statuses
        sessionizer.start()
        wait_caught_up(sessionizer)
        sessionizer.stop()
    finally:
        ingest.stop()
        sessionizer.stop()
    assert_exact_accounting(result, stored_counts(sessionizer))


@pytest.mark.kafka
def test_two_sessionizers_share_the_topic_through_rebalances(kafka: kafka_broker.Broker | str, tmp_path: Path) -> None:
    """A second sessionizer joins mid-stream and the first leaves mid-stream (two rebalances):
    every acknowledged event is written exactly once across the two processes.

    Each process writes to its own chDB here (one engine path per process), so a record read
    by both would show up twice in the union: the batch in hand is committed before the
    partitions move. With a ClickHouse server both write to one store, where queries also
    count each event_id once."""
    env = {**kafka_env(kafka, "rebalance"), "TOUCHPOINT_KAFKA_PARTITIONS": "4"}
    batching = {"TOUCHPOINT_BATCH_MAX_SECONDS": "1", "TOUCHPOINT_BATCH_MAX_EVENTS": "300"}
    ingest = new_proc("ingest", tmp_path / "ingest", **env).start()
    first = new_proc("sessionizer", tmp_path / "first", **batching, **env).start()
    second = new_proc("sessionizer", tmp_path / "second", **batching, **env)
    try:
        # No client retries here: a resent event_id would land in whichever store owns its
        # partition by then, and only a shared store collapses those (FINAL).
        load = BackgroundLoad(ingest.url, traffic(seed=14, people=4000, duplicate_rate=0), rate=150).start()
        wait_for(lambda: sessionizer_status(first)["events_written"] > 0, 60, "the first sessionizer writing")
        second.start()  # joins the group: partitions move from the first to the second
        wait_for(lambda: sessionizer_status(second)["events_written"] > 0, 60, "the second sessionizer writing")
        written_by_first = sessionizer_status(first)["events_written"]
        wait_for(
            lambda: sessionizer_status(first)["events_written"] > written_by_first, 60, "both sessionizers writing"
        )
        assert load.running(), "the load ended before the rebalances: the test would prove nothing"
        first.stop()  # SIGTERM: leaves the group mid-stream: the second takes every partition
        assert load.running(), "the load ended before the first sessionizer left"
        result = load.join()
        assert set(result.statuses) == {200}, result.statuses
        wait_caught_up(second)
        second.stop()
    finally:
        ingest.stop()
        first.stop()
        second.stop()
    by_first, by_second = stored_counts(first), stored_counts(second)
    assert by_first and by_second, "one process did all the work: no rebalance was tested"
    union = {i: by_first.get(i, 0) + by_second.get(i, 0) for i in by_first.keys() | by_second.keys()}
    assert_exact_accounting(result, union)
    revoked = "".join(p.read_text() for p in first.logs if p.exists())
    assert "partitions revoked after the batch in hand was committed" in revoked


@pytest.mark.kafka
def test_kafka_broker_sigkilled_and_restarted_during_load(tmp_path: Path) -> None:
    broker = start_broker()
    try:
        env = kafka_env(broker, "bkill")
        proc = new_proc("up", tmp_path / "bkill", TOUCHPOINT_PRODUCE_TIMEOUT_SECONDS="2", **env).start()
        load = BackgroundLoad(proc.url, traffic(seed=13, people=1500), rate=120).start()
        time.sleep(2)
        broker.kill()
        # While it is down: a clear 503 with Retry-After, within the bounded produce wait (2 s
        # here), not a request hanging until the client gives up; /health says so too.
        deadline = time.monotonic() + 15
        while True:
            started = time.monotonic()
            probe = proc.post_batch([{"type": "page", "anonymous_id": "outage-probe"}])
            elapsed = time.monotonic() - started
            if probe.status_code == 503 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert probe.status_code == 503, probe.text
        assert int(probe.headers["Retry-After"]) > 0
        assert "retry" in probe.json()["error"]
        assert elapsed < 2 + 1.5, f"a 503 took {elapsed:.1f} s: requests pile up while the broker is down"
        health = httpx.get(f"{proc.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["components"]["ingest"] is False, health.text
        time.sleep(1)
        broker.restart()
        result = load.join(240)
        assert result.statuses.get(503, 0) > 0, f"the outage was not noticed: {result.statuses}"
        assert result.statuses.get(200, 0) > 0
        # Recovery by itself: new requests are accepted again once the broker is back.
        wait_for(
            lambda: proc.post_batch([{"type": "page", "anonymous_id": "probe"}]).status_code == 200,
            60,
            "ingest to recover",
        )
        assert httpx.get(f"{proc.url}/health").status_code == 200
        wait_caught_up(proc)
        proc.stop()
        # Only the generator's ids (g…): the recovery probes got server-assigned ids.
        counts = {i: n for i, n in stored_counts(proc).items() if i.startswith("g")}
        assert_exact_accounting(result, counts)
    finally:
        broker.stop()


def _events_table_dir(data_dir: Path) -> Path:
    sql = (data_dir / "clickhouse" / "metadata" / "default" / "events.sql").read_text()
    uuid = sql.split("UUID '")[1].split("'")[0]
    return data_dir / "clickhouse" / "store" / uuid[:3] / uuid


def test_clickhouse_writes_failing_for_a_while(tmp_path: Path) -> None:
    proc = new_proc("up", tmp_path / "chfail").start()
    table_dir = _events_table_dir(proc.data_dir)
    if subprocess.run(["chattr", "+i", str(table_dir)], capture_output=True).returncode != 0:
        proc.stop()
        unavailable("chattr +i is not supported here: cannot make ClickHouse writes fail")
    try:
        load = BackgroundLoad(proc.url, traffic(seed=14, people=300), rate=300).start()
        result = load.join()
        assert set(result.statuses) == {200}, "ingest must keep accepting while ClickHouse fails"
        status = wait_for(lambda: (s := sessionizer_status(proc))["last_error"] and s, 30, "a failed write")
        assert status["consumer_lag"] is not None
        assert httpx.get(f"{proc.url}/health").status_code == 200
        time.sleep(2)  # a few retries with backoff
    finally:
        subprocess.run(["chattr", "-i", str(table_dir)], check=True)
    wait_for(lambda: sessionizer_status(proc)["last_error"] is None, 60, "writes to resume")
    wait_caught_up(proc)
    proc.stop()
    assert "ClickHouse write failed" in proc.logs[-1].read_text()  # the structured log says what happened
    assert_exact_accounting(result, stored_counts(proc))

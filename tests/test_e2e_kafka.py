"""The real path on a real Apache Kafka broker: HTTP → Kafka → sessionizer → chDB → API."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.partitioner import DefaultPartitioner

from services.core.event_rows import ROWS_PREFIX, rows_in
from services.testing.kafka_broker import Broker
from tests.conftest import bootstrap_of
from tests.harness import API_KEY, event_ids, journey_with, new_proc, sessions_of, wait_for

pytestmark = pytest.mark.kafka


def kafka_env(kafka: Broker | str, name: str) -> dict[str, str]:
    return {
        "TOUCHPOINT_KAFKA_BOOTSTRAP": bootstrap_of(kafka),
        "TOUCHPOINT_KAFKA_TOPIC": f"test.{name}.{uuid.uuid4().hex[:8]}",
        "TOUCHPOINT_KAFKA_GROUP": f"g-{name}-{uuid.uuid4().hex[:8]}",
        "TOUCHPOINT_KAFKA_PARTITIONS": "3",
    }


def _devices_in(value: bytes) -> list[str]:
    """The device of each event in a record of the events topic; [""] for a dead letter (a JSON object)."""
    return [r["anonymous_id"] for r in rows_in(value)] if value.startswith(ROWS_PREFIX) else [""]


def devices_events(devices: list[str], per_device: int) -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"{d}-{i}",
            "type": "page",
            "name": f"Page {i}",
            "anonymous_id": d,
            "context": {"page": {"path": f"/p/{i}"}},
        }
        for d in devices
        for i in range(per_device)
    ]


async def read_topic(
    bootstrap: str, topic: str, expected: int, partitions: int = 3
) -> list[tuple[int, bytes, list[str]]]:
    """(partition, key, the device of each event in the record) until ``expected`` events were read."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
    )
    await consumer.start()
    out: list[tuple[int, bytes, list[str]]] = []
    try:
        async with asyncio.timeout(30):
            while sum(len(d) for _, _, d in out) < expected:
                for tp, messages in (await consumer.getmany(timeout_ms=500)).items():
                    out += [(tp.partition, m.key or b"", _devices_in(m.value or b"[]")) for m in messages]
        found = consumer.partitions_for_topic(topic)
        assert found is not None and len(found) == partitions
    finally:
        await consumer.stop()
    return out


def test_up_on_kafka_end_to_end_keyed_per_device(kafka: Broker | str, tmp_path: Path) -> None:
    env = kafka_env(kafka, "up")
    proc = new_proc("up", tmp_path / "up", **env).start()
    try:
        devices = [f"dev-{uuid.uuid4().hex[:8]}" for _ in range(6)]
        events = devices_events(devices, 5)
        marker = f"dead-{uuid.uuid4().hex[:8]}"
        events.append({"type": "track", "anonymous_id": marker})  # no name: a dead letter
        r = proc.post_batch(events)
        assert r.status_code == 200
        assert r.json() == {"accepted": 30, "rejected": [{"index": 30, "error": "name: required for track events"}]}
        for device in devices:
            journey = journey_with(proc, device, {f"{device}-{i}" for i in range(5)})
            assert sorted(event_ids(journey)) == sorted(f"{device}-{i}" for i in range(5))
        records = asyncio.run(read_topic(bootstrap_of(kafka), env["TOUCHPOINT_KAFKA_TOPIC"], 30))
        # One request, one transaction: its events packed into one record per partition.
        assert len(records) == len({p for p, _, _ in records}) <= 3
        partition_of: dict[str, set[int]] = {}
        for partition, _, in_record in records:
            for device in in_record:
                partition_of.setdefault(device, set()).add(partition)
        assert set(partition_of) == set(devices)
        # One device, one partition: the one Kafka's default partitioner gives its key.
        default = DefaultPartitioner()
        for device, partitions in partition_of.items():
            assert partitions == {default(f"shop\x00{device}".encode(), [0, 1, 2], [0, 1, 2])}, device
        metrics = httpx.get(f"{proc.url}/metrics").text
        accepted = re.search(r"^touchpoint_ingest_events_accepted_total (\S+)$", metrics, re.M)
        assert accepted and float(accepted.group(1)) == 30
        # The dead letter has its own topic, and operators can list it.
        dead = asyncio.run(read_topic(bootstrap_of(kafka), env["TOUCHPOINT_KAFKA_TOPIC"] + ".rejected", 1, 1))
        assert [key for _, key, _ in dead] == [b"shop"]  # dead letters are sent as they are

        def listed() -> bool:
            r = httpx.get(f"{proc.url}/v1/rejected", headers={"Authorization": "Bearer ak_test_shop"})
            return any(
                isinstance(i["payload"], dict) and i["payload"].get("anonymous_id") == marker
                for i in r.json()["rejected"]
            )

        wait_for(listed, 30, "the dead letter in /v1/rejected")
    finally:
        proc.stop()


def test_separate_services_ingest_sessionizer_api(kafka: Broker | str, tmp_path: Path) -> None:
    env = kafka_env(kafka, "split")
    data = tmp_path / "split"
    ingest = new_proc("ingest", data, **env).start()
    sessionizer = new_proc("sessionizer", data, **env).start()
    try:
        user = f"user-{uuid.uuid4().hex[:8]}"
        devices = [f"dev-{uuid.uuid4().hex[:8]}" for _ in range(3)]
        events = devices_events(devices, 4)
        events += [
            {"event_id": f"login-{d}", "type": "track", "name": "Login", "anonymous_id": d, "user_id": user}
            for d in devices
        ]
        assert ingest.post_batch(events[:8]).json()["accepted"] == 8
        assert ingest.post_batch(events[8:]).json()["accepted"] == len(events) - 8
        # A batch the sessionizer receives twice (a client retry) must still count once.
        assert ingest.post_batch(events[:3]).status_code == 200

        def written() -> bool:
            # A copy that arrives in the same batch as its original is dropped before the write
            # (only the last copy counts), so every copy is either written or counted as dropped.
            text = httpx.get(f"{sessionizer.url}/metrics").text
            counts = [
                re.search(rf"^touchpoint_sessionizer_{name}_total (\S+)$", text, re.M)
                for name in ("events_written", "resent_in_batch")
            ]
            return sum(float(m.group(1)) for m in counts if m) >= len(events) + 3

        wait_for(written, 60, "the sessionizer to write every event")
        # SIGTERM drains and commits, and the process ends with 0: a shutdown that went as asked.
        assert sessionizer.stop() == 0
        assert '"msg":"sessionizer stopped"' in sessionizer.tail()
    finally:
        ingest.stop()
        sessionizer.stop()
    # chDB is in-process: the API opens the same engine path once the sessionizer left.
    api = new_proc("api", data, **env).start()
    try:
        journey = journey_with(api, user, {e["event_id"] for e in events})
        ids = event_ids(journey)
        assert len(ids) == len(events) and set(ids) == {e["event_id"] for e in events}
        assert set(journey["identities"]["anonymous_ids"]) == set(devices)
    finally:
        api.stop()


def test_sessionizer_restart_resumes_from_committed_offsets(kafka: Broker | str, tmp_path: Path) -> None:
    env = kafka_env(kafka, "resume")
    data = tmp_path / "resume"
    proc = new_proc("up", data, **env).start()
    device = f"dev-{uuid.uuid4().hex[:8]}"
    first = devices_events([device], 5)
    try:
        assert proc.post_batch(first).status_code == 200
        journey_with(proc, device, {e["event_id"] for e in first})
    finally:
        proc.stop()
    proc.start()
    try:
        later = [{**e, "event_id": f"later-{e['event_id']}"} for e in first]
        assert proc.post_batch(later).status_code == 200
        expected = {e["event_id"] for e in first + later}
        journey = journey_with(proc, device, expected)
        assert sorted(event_ids(journey)) == sorted(expected)
    finally:
        proc.stop()


# Yesterday: within the allowed lateness (7 days) whenever the suite runs. A fixed date here
# turned every event late a week after it was written, and the sessions it checks never came.
APP_DAY = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%d")


def app_event(n: int, device: str, minute: int, **extra: object) -> dict[str, object]:
    return {
        "event_id": f"{device}-{n}",
        "type": "screen",
        "name": f"Screen {n}",
        "anonymous_id": device,
        "timestamp": f"{APP_DAY}T10:{minute:02d}:00Z" if minute < 60 else f"{APP_DAY}T11:{minute - 60:02d}:00Z",
        "context": {"app": {"name": "shop-ios"}},
        "timing": {"response_ms": 100.0 * n},
        **extra,
    }


def test_sessions_are_stored_and_rewritten_by_a_late_offline_batch(kafka: Broker | str, tmp_path: Path) -> None:
    """HTTP → Kafka → sessionizer → sessions table → GET /v1/sessions, across a restart."""
    env = kafka_env(kafka, "sessions")
    proc = new_proc("up", tmp_path / "sessions", **env).start()
    device = f"ios-{uuid.uuid4().hex[:8]}"
    try:
        first = [app_event(1, device, 0), app_event(2, device, 10)]
        later = [app_event(5, device, 50), app_event(6, device, 52, type="track", name="Order Completed")]
        assert proc.post_batch(first).json()["accepted"] == 2
        assert proc.post_batch(later).json()["accepted"] == 2
        two = sessions_of(proc, device, lambda s: [x["event_count"] for x in s] == [2, 2])
        assert [x["goals_reached"] for x in two] == [[], ["Order Completed"]]
        assert two[0]["channel"] == "app" and two[0]["person_id"] == device
    finally:
        proc.stop()
    proc.start()  # nothing held in memory now: the sessionizer recomputes from what is stored
    try:
        # The app's offline queue arrives an hour late: what happened in between, and the login.
        gap = [app_event(3, device, 25, user_id="user-late"), app_event(4, device, 40)]
        assert proc.post_batch(gap).json()["accepted"] == 2
        one = sessions_of(proc, device, lambda s: len(s) == 1)
        session = one[0]
        assert session["session_id"] != two[1]["session_id"]  # the second one merged into the first
        assert session["session_id"] == two[0]["session_id"]  # which kept its first event
        assert session["event_count"] == 6 and session["goals_reached"] == ["Order Completed"]
        assert session["person_id"] == "user-late"
        assert (session["entry_touchpoint"], session["exit_touchpoint"]) == ("screen Screen 1", "track Order Completed")
        assert session["started_at"] == f"{APP_DAY}T10:00:00.000Z" and session["duration_seconds"] == 52 * 60
        assert session["response_ms"] == {"median": 350.0, "max": 600.0}
        # Resent by a client retry: counted once, the session unchanged.
        assert proc.post_batch(gap).status_code == 200
        more = [app_event(7, device, 55)]
        assert proc.post_batch(more).status_code == 200
        extended = sessions_of(proc, device, lambda s: len(s) == 1 and s[0]["event_count"] == 7)
        assert extended[0]["session_id"] == session["session_id"]
    finally:
        proc.stop()


def _children(pid: int) -> set[int]:
    """The worker processes of an ingest supervisor (not multiprocessing's resource tracker)."""
    path = Path(f"/proc/{pid}/task/{pid}/children")
    out = set()
    for child in path.read_text().split():
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline:
            out.add(int(child))
    return out


def test_ingest_workers_share_one_port_and_a_killed_worker_comes_back(kafka: Broker | str, tmp_path: Path) -> None:
    env = kafka_env(kafka, "workers")
    ingest = new_proc("ingest", tmp_path / "workers", TOUCHPOINT_INGEST_WORKERS="2", **env).start()
    try:
        assert ingest.proc is not None
        supervisor = ingest.proc.pid
        workers = wait_for(lambda: (c := _children(supervisor)) and len(c) == 2 and c, 30, "two workers")
        devices = [f"w-{uuid.uuid4().hex[:8]}" for _ in range(40)]
        # One connection per request: the kernel spreads them over both workers' sockets.
        for device in devices[:20]:
            assert ingest.post_batch(devices_events([device], 1)).status_code == 200
        victim = sorted(workers)[0]
        os.kill(victim, signal.SIGKILL)
        # Requests keep getting answers while the worker is replaced: its socket stays open
        # in the parent, so connections queued on it wait for the new worker.
        for device in devices[20:]:
            assert ingest.post_batch(devices_events([device], 1)).status_code == 200
        replaced = wait_for(
            lambda: (c := _children(supervisor)) and len(c) == 2 and victim not in c and c, 30, "a new worker"
        )
        assert len(replaced & workers) == 1
        records = asyncio.run(read_topic(bootstrap_of(kafka), env["TOUCHPOINT_KAFKA_TOPIC"], 40))
        assert sorted(d for _, _, in_record in records for d in in_record) == sorted(devices)
        # /metrics on whichever worker answers sums over the live workers.
        for _ in range(4):
            text = httpx.get(f"{ingest.url}/metrics").text
            m = re.search(r"^touchpoint_ingest_events_accepted_total (\S+)$", text, re.M)
            assert m and float(m.group(1)) >= 20, text[:500]
        assert ingest.stop() == 0
        assert '"msg":"ingest workers stopped"' in ingest.tail()
    finally:
        ingest.stop()


def test_events_accepted_before_an_erasure_and_read_after_it_are_not_stored(
    kafka: Broker | str, tmp_path: Path
) -> None:
    """Alice is erased while events of hers wait in Kafka (the sessionizer was down): when it
    reads them they are dropped; Bob's on the browser they share, and Carol's, are stored."""
    env = kafka_env(kafka, "erase-lag")
    data = tmp_path / "erase-lag"
    tag = uuid.uuid4().hex[:8]
    shared, app, phone, carol = (f"{d}-{tag}" for d in ("shared", "app", "phone", "carol"))
    alice, bob = f"alice-{tag}", f"bob-{tag}"
    now = datetime.now(UTC)

    def event(name: str, device: str, minutes_ago: int, **extra: str) -> dict[str, str]:
        at = (now - timedelta(minutes=minutes_ago)).isoformat()
        return {
            "event_id": f"{name}-{tag}",
            "type": "page",
            "name": name,
            "anonymous_id": device,
            "timestamp": at,
            **extra,
        }

    stored = [
        event("a-login", shared, 60, type="identify", user_id=alice),
        event("a-app", app, 50, user_id=alice),
        event("b-login", shared, 30, type="identify", user_id=bob),
    ]
    lagging = [
        event("a-shared", shared, 40),  # anonymous, before Bob's login on it: Alice's
        event("b-shared", shared, 20),  # after it: Bob's
        event("a-phone", phone, 10, user_id=alice),  # Alice on a device not stored yet
        event("c-page", carol, 5),
    ]
    up = new_proc("up", data, **env).start()
    try:
        assert up.post_batch(stored).status_code == 200
        journey_with(up, alice, {"a-login-" + tag, "a-app-" + tag})
        journey_with(up, bob, {"b-login-" + tag})
    finally:
        up.stop()
    ingest = new_proc("ingest", data, **env).start()  # accepted into Kafka, read by nobody yet
    try:
        assert ingest.post_batch(lagging).json()["accepted"] == 4
    finally:
        ingest.stop()
    api = new_proc("api", data, **env).start()
    try:
        r = httpx.delete(f"{api.url}/v1/persons/{alice}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["deleted"]["events"] == 2
    finally:
        api.stop()
    up.start()
    try:
        journey_with(up, carol, {"c-page-" + tag})
        bobs = journey_with(up, bob, {"b-login-" + tag, "b-shared-" + tag})
        assert sorted(event_ids(bobs)) == sorted(["b-login-" + tag, "b-shared-" + tag])
        for identifier in (alice, app, phone):
            assert up.journey(identifier).status_code == 404, identifier
        assert {s["person_id"] for s in sessions_of(up, shared, lambda s: len(s) >= 1)} == {bob}
        erased = re.search(
            r"^touchpoint_sessionizer_erased_events_total (\S+)$", httpx.get(f"{up.url}/metrics").text, re.M
        )
        assert erased is not None and float(erased.group(1)) == 2
    finally:
        up.stop()

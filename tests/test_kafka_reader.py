"""The Kafka reader on a real broker: a consumer that stops making progress is restarted."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from services.core.eventlog import kafka as kafka_log
from services.core.events import normalize, now_ms
from services.core.warehouse import Warehouse
from services.sessionizer.pipeline import READER_RESTARTS, Pipeline
from services.testing import kafka_broker
from tests.conftest import bootstrap_of


def _value(event_id: str) -> bytes:
    raw = {"type": "page", "anonymous_id": f"dev-{event_id[-1]}", "event_id": event_id}
    return orjson.dumps(normalize(raw, project="stall", received_ms=now_ms(), sent_at_ms=None, ip="127.0.0.1"))


async def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.mark.kafka
def test_a_consumer_that_stops_fetching_is_restarted_and_loses_nothing(
    kafka: kafka_broker.Broker | str, chdb_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka was seen (CI, after a broker restart) to stop fetching for good while records
    waited. Here the fetcher is stopped on purpose (its partitions paused): the reader must
    notice the stall, the pipeline must restart it, and every event must be stored once."""
    monkeypatch.setattr(kafka_log, "STALL_AFTER_S", 3.0)
    bootstrap = bootstrap_of(kafka)
    topic = f"test.stall.{uuid.uuid4().hex[:8]}"
    wh = Warehouse(f"chdb://{chdb_path}", "test")
    wh.migrate()

    async def scenario() -> None:
        writer = kafka_log.KafkaLogWriter(bootstrap, topic, 3, 10, f"tx-{topic}", f"{topic}.rejected", producers=1)
        reader = kafka_log.KafkaLogReader(bootstrap, topic, f"g-{topic}", f"{topic}.rejected")
        await writer.start()
        await reader.start()
        pipeline = Pipeline(reader, wh, max_events=1000, max_seconds=0.2)
        stop = asyncio.Event()
        running = asyncio.create_task(pipeline.run(stop))
        restarts_before = READER_RESTARTS._value.get()
        try:
            await writer.append([(b"dev-a", _value("first-a")), (b"dev-b", _value("first-b"))])
            await _wait(lambda: pipeline.state.events_written >= 2, 30, "the first events")
            consumer = reader._consumer
            assert consumer is not None
            consumer.pause(*consumer.assignment())  # the fetcher stops; the group stays
            await writer.append([(f"dev-{i}".encode(), _value(f"later-{i}")) for i in range(20)])
            await _wait(lambda: pipeline.state.events_written >= 22, 60, "the events sent after the stall")
            assert READER_RESTARTS._value.get() == restarts_before + 1
            assert reader._consumer is not consumer
        finally:
            stop.set()
            await asyncio.wait_for(running, 30)
            await reader.stop()
            await writer.stop()

    asyncio.run(scenario())
    stored = wh.rows("SELECT event_id, count() AS n FROM events FINAL WHERE project = 'stall' GROUP BY event_id")
    assert {r["event_id"] for r in stored} == {"first-a", "first-b"} | {f"later-{i}" for i in range(20)}
    assert all(r["n"] == 1 for r in stored)

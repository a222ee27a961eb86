"""The event log on Apache Kafka, through aiokafka.

Producer: ``acks=all`` with idempotence, so a 200 means every in-sync replica has
the event. Consumer: a consumer group with auto-commit off; offsets are committed
by the pipeline only after ClickHouse accepted the write.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, KafkaError, TopicAlreadyExistsError

from .base import LogRecord, LogUnavailable

log = logging.getLogger("touchpoint.eventlog.kafka")


async def ensure_topic(bootstrap: str, topic: str, partitions: int, replication: int = 1) -> None:
    """Create the topic when missing; an existing topic is left as it is."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = await admin.list_topics()
        if topic in existing:
            return
        try:
            await admin.create_topics([NewTopic(topic, partitions, replication)])
            log.info("topic created", extra={"topic": topic, "partitions": partitions})
        except TopicAlreadyExistsError:
            pass
    finally:
        await admin.close()


class KafkaLogWriter:
    def __init__(self, bootstrap: str, topic: str, partitions: int, timeout_s: float) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.partitions = partitions
        self.timeout_s = timeout_s
        self._producer: AIOKafkaProducer | None = None
        self._last_error: str | None = None

    async def start(self) -> None:
        await ensure_topic(self.bootstrap, self.topic, self.partitions)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            max_batch_size=1 << 20,
            request_timeout_ms=int(self.timeout_s * 1000),
        )
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    def healthy(self) -> bool:
        return self._producer is not None and self._last_error is None

    async def append(self, records: Sequence[tuple[bytes, bytes]]) -> None:
        producer = self._producer
        if producer is None:
            raise LogUnavailable("Kafka producer is not started")
        try:
            async with asyncio.timeout(self.timeout_s):
                futures = [await producer.send(self.topic, value, key=key) for key, value in records]
                await asyncio.gather(*futures)
        except (KafkaError, TimeoutError) as exc:
            self._last_error = repr(exc)
            raise LogUnavailable(f"Kafka did not acknowledge within {self.timeout_s}s: {exc!r}") from exc
        self._last_error = None


class KafkaLogReader:
    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.group = group
        self._consumer: AIOKafkaConsumer | None = None
        self._next: dict[int, int] = {}

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 << 20,
        )
        await self._consumer.start()

    async def stop(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def lag(self) -> int | None:
        """Records on assigned partitions not yet read by this consumer."""
        consumer = self._consumer
        if consumer is None:
            return None
        total = 0
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is None or tp.partition not in self._next:
                continue
            total += max(0, highwater - self._next[tp.partition])
        return total

    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        assert self._consumer is not None
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[LogRecord] = []
        for tp, messages in batches.items():
            for m in messages:
                out.append(LogRecord(tp.partition, m.offset, m.offset + 1, m.key or b"", m.value or b""))
            if messages:
                self._next[tp.partition] = messages[-1].offset + 1
        return out

    async def commit(self, records: Sequence[LogRecord]) -> None:
        assert self._consumer is not None
        offsets: dict[TopicPartition, int] = {}
        for r in records:
            tp = TopicPartition(self.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.next_offset)
        assigned = self._consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await self._consumer.commit(offsets)
        except CommitFailedError as exc:
            # A rebalance took the partitions: the new owner re-reads from the last
            # commit. What we wrote is already stored, and queries count each
            # event_id once, so the redelivery is harmless.
            log.warning("commit failed after rebalance", extra={"error": repr(exc)})

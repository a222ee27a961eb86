"""The event log on Apache Kafka, through aiokafka.

Producer: ``acks=all`` with idempotence, so a 200 means every in-sync replica has
the event. Consumer: a consumer group with auto-commit off; offsets are committed
by the pipeline only after ClickHouse accepted the write.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import CommitFailedError, TopicAlreadyExistsError
from aiokafka.partitioner import murmur2
from aiokafka.producer import sender as _aiokafka_sender

from ..event_rows import ROWS_PREFIX, merge_packed
from .base import LogOutcomeUnknown, LogRecord, LogUnavailable

log = logging.getLogger("touchpoint.eventlog.kafka")

RETRY_COOLDOWN_S = 0.5
LAG_INTERVAL_S = 1.0
LAG_TIMEOUT_S = 2.0
COMMIT_TIMEOUT_S = 10.0
# A consumer polled for this long without a record while records wait (or without knowing
# whether they do) is restarted: aiokafka's group coordinator can stay stuck after the
# broker comes back (seen in CI: four commit timeouts after a broker restart, then nothing).
STALL_AFTER_S = 30.0
RESTART_RETRY_S = 5.0
# A pause between polls longer than this (the pipeline waiting for ClickHouse) is not a stall.
POLL_GAP_S = 5.0
STOP_TIMEOUT_S = 10.0  # after a failure, answer 503 at once for this long instead of piling up
# After a commit the broker writes its transaction markers and answers the producer's next
# AddPartitionsToTxn with CONCURRENT_TRANSACTIONS until they are written (KAFKA-5477), which
# takes a few milliseconds on one broker. aiokafka then waits a fixed 20 ms, which was a
# producer's whole cycle at half load and the p99 of ingest. Asking again after 5 ms costs a
# few extra round trips to the coordinator.
CONCURRENT_TRANSACTIONS_BACKOFF_S = 0.002
_aiokafka_sender.BACKOFF_OVERRIDE = CONCURRENT_TRANSACTIONS_BACKOFF_S


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


@functools.lru_cache(maxsize=65536)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner gives ``key`` (murmur2, as the Java client and
    aiokafka's ``DefaultPartitioner``): a device's records stay where they always went."""
    return int(murmur2(key) & 0x7FFFFFFF) % partitions


def coalesce(
    records: Iterable[tuple[str, bytes, bytes]], topic: str, partitions: int
) -> list[tuple[str, int | None, bytes | None, bytes]]:
    """(topic, partition, key, value) to send for one transaction's records: the records of rows
    bound for ``topic`` as one record per partition (``merge_packed``; each device's partition
    is its key's, so its events stay in one partition and in order), others as they are. A
    merged record keeps its key when all its parts had the same one, else it has none."""
    out: list[tuple[str, int | None, bytes | None, bytes]] = []
    by_partition: dict[int, tuple[list[bytes], set[bytes]]] = {}
    for to, key, value in records:
        if to == topic and value.startswith(ROWS_PREFIX):
            values, keys = by_partition.setdefault(partition_for(key, partitions), ([], set()))
            values.append(value)
            keys.add(key)
        else:
            out.append((to, None, key, value))
    for partition, (values, keys) in by_partition.items():
        shared = next(iter(keys)) if len(keys) == 1 else None
        out.extend((topic, partition, shared, value) for value in merge_packed(values))
    return out


class KafkaLogWriter:
    """Appends in Kafka transactions, grouping concurrent requests into one commit.

    Why transactions: a request that times out must not be stored, or a client
    told 503 would find its events anyway. Every HTTP request waiting at the same
    moment shares one transaction; the consumer reads ``read_committed``, so an
    aborted (or fenced, after a crash) transaction is never seen.

    Why several producers: after a commit, the broker takes a moment to write its
    transaction markers and answers the next transaction of the same producer
    with ``CONCURRENT_TRANSACTIONS``; the client backs off 20 ms. One producer
    thus commits about 30 times a second on loopback, whatever the load. Each of
    ``producers`` transactional producers takes the requests waiting when it is
    free, so commits overlap. Their transactional ids (``<id>-0``, ``<id>-1``, …)
    are stable, so a restarted instance fences what its predecessor left open
    instead of waiting for the broker's transaction timeout.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        partitions: int,
        timeout_s: float,
        transactional_id: str,
        dead_letter_topic: str,
        max_pending_records: int = 200_000,
        producers: int = 4,
        compression: str = "zstd",
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.partitions = partitions
        self.timeout_s = timeout_s
        self.transactional_ids = [f"{transactional_id}-{i}" for i in range(max(1, producers))]
        self.max_pending_records = max_pending_records
        self.compression = None if compression == "none" else compression
        self._producers: list[AIOKafkaProducer | None] = [None] * len(self.transactional_ids)
        self._last_error: str | None = None
        self._failed_at = 0.0
        self._pending: list[tuple[list[tuple[str, bytes, bytes]], asyncio.Future[None]]] = []
        self._pending_records = 0
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await ensure_topic(self.bootstrap, self.topic, self.partitions)
        await ensure_topic(self.bootstrap, self.dead_letter_topic, 1)
        await asyncio.gather(*(self._ensure_producer(i) for i in range(len(self._producers))))
        self._tasks = [
            asyncio.create_task(self._commit_loop(i), name=f"kafka-log-writer-{i}") for i in range(len(self._producers))
        ]

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(self._discard_producer(i) for i in range(len(self._producers))))

    def healthy(self) -> bool:
        return bool(self._tasks) and self._last_error is None

    async def append(
        self, records: Sequence[tuple[bytes, bytes]], dead_letters: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        if not self._tasks:
            raise LogUnavailable("Kafka producer is not started")
        if self._last_error is not None and time.monotonic() - self._failed_at < RETRY_COOLDOWN_S:
            raise LogUnavailable(f"Kafka unavailable: {self._last_error}")
        if self._pending_records + len(records) > self.max_pending_records:
            raise LogUnavailable("too many events waiting for Kafka")
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        routed = [(self.topic, k, v) for k, v in records] + [(self.dead_letter_topic, k, v) for k, v in dead_letters]
        self._pending.append((routed, future))
        self._pending_records += len(routed)
        self._wakeup.set()
        await future

    async def _ensure_producer(self, slot: int) -> AIOKafkaProducer:
        producer = self._producers[slot]
        if producer is None:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.bootstrap,
                acks="all",
                enable_idempotence=True,
                transactional_id=self.transactional_ids[slot],
                transaction_timeout_ms=max(10_000, int(self.timeout_s * 4000)),
                linger_ms=2,
                compression_type=self.compression,
                max_batch_size=1 << 20,
                request_timeout_ms=max(1000, int(self.timeout_s * 1000)),
            )
            try:
                await producer.start()
            except BaseException:
                with contextlib.suppress(BaseException):
                    await asyncio.wait_for(producer.stop(), 2)
                raise
            self._producers[slot] = producer
        return producer

    async def _discard_producer(self, slot: int) -> None:
        producer, self._producers[slot] = self._producers[slot], None
        if producer is not None:
            # Not BaseException: a stop() cancelled mid-discard must end the task, not be swallowed
            # (the commit loop then waited for work forever, and shutdown with it).
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), 2)

    async def _commit_loop(self, slot: int) -> None:
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            batch, self._pending = self._pending, []
            self._pending_records = 0
            committing = False
            try:
                async with asyncio.timeout(self.timeout_s):
                    producer = await self._ensure_producer(slot)
                    partitions = len(await producer.partitions_for(self.topic))
                    await producer.begin_transaction()
                    futures = []
                    sends = coalesce((r for routed, _ in batch for r in routed), self.topic, partitions)
                    for topic, partition, key, value in sends:
                        futures.append(await producer.send(topic, value, key=key, partition=partition))
                    await asyncio.gather(*futures)
                    committing = True
                    await producer.commit_transaction()
            except asyncio.CancelledError:
                failure = self._failure(committing, "ingest is shutting down")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(failure)
                raise
            except Exception as exc:
                self._last_error = repr(exc)[:300]
                self._failed_at = time.monotonic()
                log.warning(
                    "Kafka transaction failed; answering 504 (outcome unknown)"
                    if committing
                    else "Kafka transaction failed; answering 503",
                    extra={"error": self._last_error, "transactional_id": self.transactional_ids[slot]},
                )
                # Answer first: the requests of this transaction, and those queued behind it, which
                # would otherwise wait for another whole timeout (a bounded wait is the request's,
                # not each transaction's). Queued records were never sent: a 503 loses nothing.
                queued, self._pending = self._pending, []
                self._pending_records = 0
                failure = self._failure(committing, f"Kafka did not commit within {self.timeout_s}s: {exc!r}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(failure)
                for _, fut in queued:
                    if not fut.done():
                        fut.set_exception(LogUnavailable(f"Kafka unavailable: {exc!r}"))
                # A new producer with the same transactional id fences this one: the broker aborts
                # its open transaction, or completes its commit if the EndTxn had reached it.
                await self._discard_producer(slot)
                continue
            self._last_error = None
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)

    @staticmethod
    def _failure(committing: bool, why: str) -> Exception:
        """Before ``commit_transaction`` nothing is stored: the transaction will be aborted (by
        the fencing producer or the transaction timeout). During it the EndTxn may already be
        on the broker, which then completes the commit even if it restarts: nobody can tell."""
        if committing:
            return LogOutcomeUnknown(f"{why}; the events may be stored")
        return LogUnavailable(why)


class _RevokeListener(ConsumerRebalanceListener):  # type: ignore[misc]
    """Before a rebalance takes partitions away, let the pipeline write and commit what it holds."""

    def __init__(self) -> None:
        self.hook: Callable[[], Awaitable[None]] | None = None

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if revoked and self.hook is not None:
            started = time.monotonic()
            await self.hook()
            log.info(
                "partitions revoked after the batch in hand was committed",
                extra={
                    "partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in revoked),
                    "flush_s": round(time.monotonic() - started, 3),
                },
            )

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in assigned)})


class KafkaLogReader:
    def __init__(self, bootstrap: str, topic: str, group: str, dead_letter_topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.dead_letter_topic = dead_letter_topic
        self.group = group
        self._consumer: AIOKafkaConsumer | None = None
        self._lag: int | None = None
        self._lag_task: asyncio.Task[None] | None = None
        self._listener = _RevokeListener()
        self._progress_at = time.monotonic()  # last poll with records, or with nothing to read
        self._polled_at = 0.0
        self._commit_timeouts = 0

    def on_revoke(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._listener.hook = hook

    async def start(self) -> None:
        for topic in (self.topic, self.dead_letter_topic):
            await ensure_topic(self.bootstrap, topic, 1)  # a no-op when ingest created them
        await self._start_consumer()

    async def _start_consumer(self) -> None:
        self._progress_at = time.monotonic()
        self._commit_timeouts = 0
        self._lag = None
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 << 20,
            # aiokafka keeps one fetch in flight per broker. Draining one full partition while
            # the others are read up, that fetch waits on the empty ones for fetch_max_wait_ms
            # before the full one is asked again: 500 ms (the default) stalled the pipeline
            # every few batches. A consumer with nothing to read asks ten times a second.
            fetch_max_wait_ms=100,
        )
        self._consumer.subscribe([self.topic, self.dead_letter_topic], listener=self._listener)
        await self._consumer.start()
        self._lag_task = asyncio.create_task(self._measure_lag_every_second(self._consumer))

    async def stop(self) -> None:
        consumer, self._consumer = self._consumer, None
        lag_task, self._lag_task = self._lag_task, None
        if lag_task is not None:
            lag_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await lag_task
        if consumer is not None:
            try:
                await asyncio.wait_for(consumer.stop(), STOP_TIMEOUT_S)
            except TimeoutError:
                log.warning("Kafka consumer did not leave its group in time; the broker will time it out")

    def stalled(self) -> str | None:
        idle = time.monotonic() - self._progress_at
        if self._consumer is None:
            return "no consumer: the last restart failed" if idle > RESTART_RETRY_S else None
        if self._commit_timeouts >= 3:
            return f"{self._commit_timeouts} offset commits in a row timed out"
        if idle > STALL_AFTER_S:
            state = "records waiting" if self._lag else "consumer lag unknown"
            return f"no record for {idle:.0f} s with {state}"
        return None

    async def restart(self) -> None:
        """Leave the group and join again as a new member, from the last committed offsets.

        Records read but not committed are read again; each event_id is stored once."""
        reason = self.stalled()
        log.warning("restarting the Kafka consumer", extra={"reason": reason, **self._group_state()})
        await self.stop()
        try:
            await asyncio.wait_for(self._start_consumer(), STOP_TIMEOUT_S)
        except Exception as exc:  # broker still away: try again a little later
            log.warning("Kafka consumer restart failed; trying again later", extra={"error": repr(exc)[:300]})
            await self.stop()  # what the failed start left half open
            self._progress_at = time.monotonic()
        else:
            log.info("Kafka consumer restarted")

    def lag(self) -> int | None:
        """Records on assigned partitions not yet read, as of the last measurement (each second).

        Measured from the consumer's position, which steps over transaction
        markers, so a fully read topic shows 0.
        """
        return self._lag

    async def _measure_lag_every_second(self, consumer: AIOKafkaConsumer) -> None:
        """Ask the broker for the end offsets once a second, beside the polls rather than in
        them: under load one answer took 0.1-0.2 s, a fifth of the sessionizer's time when each
        poll waited for it. It goes on while the pipeline waits for ClickHouse, so the lag shows
        the backlog growing. A consumer cut off from the broker reports no lag (None) rather
        than the stale figure of its last fetch."""
        while True:
            assigned = list(consumer.assignment())
            try:
                async with asyncio.timeout(LAG_TIMEOUT_S):
                    ends = await consumer.end_offsets(assigned) if assigned else {}
                    total = 0
                    for tp in assigned:
                        total += max(0, ends[tp] - await consumer.position(tp))
            except Exception as exc:  # broker unreachable, rebalance under way (not a cancel: BaseException)
                level = logging.INFO if self._lag is not None else logging.DEBUG  # once per outage
                log.log(level, "consumer lag unknown", extra={"error": repr(exc)[:200], **self._group_state()})
                self._lag = None
            else:
                self._lag = total
            await asyncio.sleep(LAG_INTERVAL_S)

    def _group_state(self) -> dict[str, object]:
        """What the consumer believes about its group, for logs when something is stuck."""
        consumer = self._consumer
        coordinator = getattr(consumer, "_coordinator", None)
        return {
            "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()) if consumer else [],
            "coordinator_id": getattr(coordinator, "coordinator_id", None),
            "generation": getattr(coordinator, "generation", None),
            "member_id": getattr(coordinator, "member_id", None),
        }

    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        now = time.monotonic()
        if now - self._polled_at > POLL_GAP_S:  # we were busy elsewhere: the clock starts now
            self._progress_at = now
        if self._consumer is None:  # a failed restart; ``stalled`` asks for another
            await asyncio.sleep(timeout_s)
            self._polled_at = time.monotonic()
            return []
        batches = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out: list[LogRecord] = []
        for tp, messages in batches.items():
            for m in messages:
                out.append(LogRecord(tp.partition, m.offset, m.offset + 1, m.key or b"", m.value or b"", tp.topic))
        self._polled_at = time.monotonic()
        if out or self._lag == 0:
            self._progress_at = self._polled_at
        return out

    async def commit(self, records: Sequence[LogRecord]) -> None:
        if self._consumer is None:
            log.warning("offsets not committed: no Kafka consumer; they are read again after the restart")
            return
        newest: dict[tuple[str, int], int] = {}  # a TopicPartition per partition, not per record
        for r in records:
            where = (r.topic, r.partition)
            if r.next_offset > newest.get(where, 0):
                newest[where] = r.next_offset
        assigned = self._consumer.assignment()
        offsets = {TopicPartition(topic or self.topic, partition): o for (topic, partition), o in newest.items()}
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await asyncio.wait_for(self._consumer.commit(offsets), COMMIT_TIMEOUT_S)
            self._commit_timeouts = 0
        except TimeoutError:
            self._commit_timeouts += 1
            # The group coordinator is unreachable. What we wrote is stored; a
            # redelivery after a restart or rebalance is counted once by event_id.
            log.warning(
                "offset commit timed out; continuing", extra={"timeout_s": COMMIT_TIMEOUT_S, **self._group_state()}
            )
        except CommitFailedError as exc:
            # A rebalance took the partitions: the new owner re-reads from the last
            # commit. What we wrote is already stored, and queries count each
            # event_id once, so the redelivery is harmless.
            log.warning("commit failed after rebalance", extra={"error": repr(exc)})

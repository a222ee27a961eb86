"""The consumer pipeline: poll → decode → batch → write → commit, in small steps.

Offsets are committed only after ClickHouse accepted every row of the batch.
While ClickHouse fails, the batch is retried with backoff and nothing new is
polled (back-pressure, not an unbounded buffer). A record that cannot be decoded
is written to ``rejected_events`` with its reason; the consumer goes on. Around
each write, ``erasures.ErasureGuard`` keeps erased persons' events out.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter, Gauge, Histogram

from services.core.erasure import ErasedOwners, Erasure, Owner
from services.core.event_rows import HEAD_FIELDS, event_row, event_values_json, unpack_rows
from services.core.eventlog import LogReader, LogRecord
from services.core.events import now_ms
from services.core.schema import EVENT_COLUMNS, LINK_COLUMNS, REJECTED_COLUMNS
from services.core.sessions import SESSION_EVENT_FIELDS
from services.core.warehouse import BULK_INSERT, Warehouse

from .erasures import ErasureGuard
from .open_sessions import OpenSessions
from .rows import dead_letter_owner, link_rows, owners_of, rejected_row, session_event

log = logging.getLogger("touchpoint.sessionizer")

EVENTS_WRITTEN = Counter("touchpoint_sessionizer_events_written_total", "Events written to ClickHouse")
REJECTS_WRITTEN = Counter("touchpoint_sessionizer_rejected_written_total", "Dead letters written to ClickHouse")
POISON = Counter("touchpoint_sessionizer_poison_records_total", "Log records that could not be decoded")
WRITE_SECONDS = Histogram(
    "touchpoint_sessionizer_batch_write_seconds",
    "Time to write one batch to ClickHouse",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
READER_RESTARTS = Counter(
    "touchpoint_sessionizer_reader_restarts_total", "Log consumers restarted after they stopped making progress"
)
WRITE_FAILURES = Counter("touchpoint_sessionizer_write_failures_total", "Failed batch writes (retried)")
RESENT_IN_BATCH = Counter(
    "touchpoint_sessionizer_resent_in_batch_total", "Earlier copies of an event sent twice within one batch, dropped"
)
LATE = Counter("touchpoint_sessionizer_late_events_total", "Events received later than the allowed lateness")
# How long a cancelled pipeline still waits for the write in flight (and its commit).
WRITE_IN_FLIGHT_GRACE_S = 10.0

# How long a rebalance waits for the batch in hand to be written and committed.
REVOKE_FLUSH_TIMEOUT_S = 30.0

# What one poll asks of the log: about this many bytes of record values, decoded at once.
# One record can pack hundreds of events, so a count of records alone bounds nothing.
POLL_CHUNK_BYTES = 1 << 20
POLL_FIRST_RECORDS = 8

# With nothing to read for this long, collect() returns empty-handed so the pipeline can let
# time pass for the open sessions (timeouts and abandonment signals while no device sends).
IDLE_TICK_S = 1.0

NEWEST_RECEIVED = Gauge(
    "touchpoint_sessionizer_newest_event_received_timestamp_seconds",
    "When ingest received the newest event stored so far (time() minus this: the ingestion delay)",
)
LAG = Gauge("touchpoint_sessionizer_consumer_lag", "Records (Kafka) or bytes (embedded log) not yet consumed")


_NEVER_RECEIVED = 2**63 - 1


@dataclass
class Decoded:
    """One batch, decoded into the rows of each table."""

    events: list[bytes] = field(default_factory=list)  # JSONCompactEachRow lines (EVENT_COLUMNS order)
    # (project, anonymous_id, event_id) of each line: the events table's key
    event_keys: list[tuple[str, str, str]] = field(default_factory=list)
    sessions: list[dict[str, Any]] = field(default_factory=list)  # what sessionization needs of each event
    links: list[list[Any]] = field(default_factory=list)
    rejected: list[list[Any]] = field(default_factory=list)
    late: int = 0
    newest_received_ms: int = 0  # when ingest received the newest event of the batch
    oldest_received_ms: int = _NEVER_RECEIVED  # ... and the oldest: no erasure after it, no owner to look up

    def extend(self, other: Decoded) -> None:
        self.events.extend(other.events)
        self.event_keys.extend(other.event_keys)
        self.sessions.extend(other.sessions)
        self.links.extend(other.links)
        self.rejected.extend(other.rejected)
        self.late += other.late
        self.newest_received_ms = max(self.newest_received_ms, other.newest_received_ms)
        self.oldest_received_ms = min(self.oldest_received_ms, other.oldest_received_ms)

    def keep_last_copies(self) -> int:
        """Drop all but the last copy of each event sent twice within this batch (a client's
        retry); returns how many were dropped.

        Why: across batches the events table keeps the copy inserted last (``inserted_at``), but
        two copies in one INSERT tie, and a resend's skew-corrected time differs by the network
        delay. The table and the sessions must hold the same copy: the last one, as between batches.
        """
        last = {key: i for i, key in enumerate(self.event_keys)}
        if len(last) == len(self.event_keys):
            return 0
        kept = [i for i, key in enumerate(self.event_keys) if last[key] == i]
        dropped = len(self.event_keys) - len(kept)
        self.events = [self.events[i] for i in kept]
        self.event_keys = [self.event_keys[i] for i in kept]
        last_session = {_key(e): i for i, e in enumerate(self.sessions)}
        self.sessions = [e for i, e in enumerate(self.sessions) if last_session[_key(e)] == i]
        return dropped

    def drop_erased(self, owners: ErasedOwners) -> list[tuple[Owner, Erasure]]:
        """Drop the events of persons erased after they were accepted (still in the log when the
        erasure ran, or read again after a crash), with the sessions' copies and the identity
        links they made, and their dead letters; returns the dropped events with the erasure
        that took each."""
        if owners and self.rejected:
            self.rejected = [
                r for r in self.rejected if (o := dead_letter_owner(r)) is None or owners.erasure_of(o) is None
            ]
        if not owners or self.oldest_received_ms > owners.newest_ms:
            return []
        mine = owners_of(self.events)
        took = [owners.erasure_of(o) for o in mine]
        gone = [t is not None for t in took]
        if not any(gone):
            return []
        dropped = [(o, t) for o, t in zip(mine, took, strict=True) if t is not None]
        erased_keys = {k for k, g in zip(self.event_keys, gone, strict=True) if g}
        self.events = [e for e, g in zip(self.events, gone, strict=True) if not g]
        mine = [o for o, g in zip(mine, gone, strict=True) if not g]
        self.event_keys = [k for k, g in zip(self.event_keys, gone, strict=True) if not g]
        self.sessions = [e for e in self.sessions if _key(e) not in erased_keys]
        self.links = link_rows(
            [{"project": p, "anonymous_id": a, "user_id": u, "timestamp": ts} for p, a, u, ts, _ in mine]
        )
        return dropped


def _key(event: dict[str, Any]) -> tuple[str, str, str]:
    return event["project"], event["anonymous_id"], event["event_id"]


def decode(records: list[LogRecord]) -> Decoded:
    """Pure: log records to table rows; an undecodable record becomes a dead letter."""
    out = Decoded()
    event_records: list[dict[str, Any]] = []
    for record in records:
        try:
            rows = unpack_rows(record.value)
            if rows is not None:  # rows built by ingest: the lines go to ClickHouse as they are
                _decode_rows(*rows, out, event_records)
                continue
            value = orjson.loads(record.value)
            # Before rows travelled: one request's event records for one device (a list).
            for item in value if isinstance(value, list) else (value,):
                kind = item.get("kind")
                if kind == "event":
                    row = event_row(item)
                    out.events.append(event_values_json(row))
                    out.event_keys.append((row["project"], row["anonymous_id"], row["event_id"]))
                    event_records.append(item)
                    received = int(item["received_at"])
                    if received > out.newest_received_ms:
                        out.newest_received_ms = received
                    if received < out.oldest_received_ms:
                        out.oldest_received_ms = received
                    if item.get("late"):
                        out.late += 1  # stored and flagged: sessions that old are final
                    else:
                        out.sessions.append(session_event(item, row))
                elif kind == "rejected":
                    out.rejected.append(rejected_row(item))
                else:
                    raise ValueError(f"unknown record kind {kind!r}")
        except Exception as exc:  # a poison record must not stop the consumer
            POISON.inc()
            out.rejected.append(
                rejected_row(
                    {
                        "project": "",
                        "received_at": now_ms(),
                        "index": 0,
                        "error": f"log record {record.partition}:{record.offset}: {exc}",
                        "payload": record.value.decode("utf-8", "replace"),
                    }
                )
            )
    out.links = link_rows(event_records)
    return out


# Where _decode_rows finds its fields in an event's head (services/core/event_rows.py).
_AT = {name: i for i, name in enumerate(HEAD_FIELDS)}
_PROJECT, _EVENT_ID, _ANONYMOUS_ID, _USER_ID, _TIMESTAMP = (
    _AT[f] for f in ("project", "event_id", "anonymous_id", "user_id", "timestamp")
)
_RECEIVED_AT, _IS_LATE = _AT["received_at"], _AT["is_late"]


def _decode_rows(heads: list[list[Any]], lines: list[bytes], out: Decoded, link_records: list[dict[str, Any]]) -> None:
    """The rows of one log record into ``out``: each line as it is; sessions, links, erasures
    and the ingestion delay read the event's head."""
    out.events.extend(lines)
    for head in heads:
        anonymous_id, user_id = head[_ANONYMOUS_ID], head[_USER_ID]
        out.event_keys.append((head[_PROJECT], anonymous_id, head[_EVENT_ID]))
        received = head[_RECEIVED_AT]
        if received > out.newest_received_ms:
            out.newest_received_ms = received
        if received < out.oldest_received_ms:
            out.oldest_received_ms = received
        if head[_IS_LATE]:
            out.late += 1  # stored and flagged: sessions that old are final
        else:
            out.sessions.append(dict(zip(SESSION_EVENT_FIELDS, head, strict=False)))  # the head starts with them
        if anonymous_id and user_id:
            link_records.append(
                {
                    "project": head[_PROJECT],
                    "anonymous_id": anonymous_id,
                    "user_id": user_id,
                    "timestamp": head[_TIMESTAMP],
                }
            )


def batch_token(fingerprint: bytes, table: str) -> str:
    """Same records (``records_fingerprint``), same token: ClickHouse drops a retried insert it already has."""
    return hashlib.sha1(table.encode() + fingerprint).hexdigest()


def records_fingerprint(records: list[LogRecord]) -> bytes:
    """Where each record came from, as one text: the part of every table's token the batch
    shares (computed once per batch; a loop over the records per table was 2% of the time)."""
    return ";".join(f"{r.topic}:{r.partition}:{r.offset}" for r in records).encode()


@dataclass
class PipelineState:
    last_write_ok: bool = True
    last_error: str | None = None
    last_write_at: float | None = None
    events_written: int = 0
    newest_received_ms: int | None = None


class Pipeline:
    def __init__(
        self,
        reader: LogReader,
        warehouse: Warehouse,
        max_events: int,
        max_seconds: float,
        max_bytes: int = 48 << 20,
        sessions: OpenSessions | None = None,
    ) -> None:
        self.reader = reader
        self.warehouse = warehouse
        self.sessions = sessions
        self.erasure_guard = ErasureGuard(warehouse, sessions)
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds
        self.state = PipelineState()
        # The events' INSERT of a batch runs here while the write's own thread folds sessions.
        self._events_inserter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="events-insert")
        self._running = False
        self._flush_requested = asyncio.Event()
        self._flushed = asyncio.Event()
        reader.on_revoke(self.flush_before_revoke)

    async def flush_before_revoke(self) -> None:
        """Called by the log before a rebalance hands partitions to another consumer: the batch
        in hand is cut short, written and committed, so the next owner does not read it again."""
        if not self._running:
            if self.sessions is not None:
                self.sessions.forget()
            return
        self._flushed.clear()
        self._flush_requested.set()
        try:
            await asyncio.wait_for(self._flushed.wait(), REVOKE_FLUSH_TIMEOUT_S)
        except TimeoutError:
            log.warning(
                "batch in hand not committed before the rebalance; the next owner reads it again "
                "(stored once all the same: queries count each event_id once)",
                extra={"timeout_s": REVOKE_FLUSH_TIMEOUT_S},
            )
        finally:
            if self.sessions is not None:  # the next owner extends these sessions now
                self.sessions.forget()

    def _flush_done(self) -> None:
        if self._flush_requested.is_set():
            self._flush_requested.clear()
            self._flushed.set()

    async def collect(self, stop: asyncio.Event) -> tuple[list[LogRecord], Decoded]:
        """Poll and decode in small chunks until the batch holds ``max_events`` events or
        ``max_bytes`` of log values, or ``max_seconds`` passed since its first record.

        One log record packs many events (a request's events for one device), and one
        poll may hand back everything the fetcher buffered: counting events and bytes
        chunk by chunk is what keeps a batch, and the INSERT built from it, bounded.
        """
        batch: list[LogRecord] = []
        decoded = Decoded()
        size = 0
        deadline: float | None = None
        idle_until = time.monotonic() + IDLE_TICK_S
        while (
            len(decoded.events) < self.max_events
            and size < self.max_bytes
            and not stop.is_set()
            and not self._flush_requested.is_set()
            and not self.reader.stalled()
        ):
            remaining = self.max_seconds if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            # Ask for about a chunk's worth of bytes and no more events than the batch has room
            # for, judged by the records seen so far.
            want = POLL_FIRST_RECORDS
            if size:
                room = self.max_events - len(decoded.events)
                events_per_record = max(len(decoded.events), 1) / len(batch)
                bytes_per_record = size / len(batch)
                want = int(min(POLL_CHUNK_BYTES, self.max_bytes - size) / bytes_per_record)
                want = min(want, int(room / events_per_record))
            want = max(1, want)
            got = await self._poll(want, min(remaining, 0.5))
            if got:
                batch.extend(got)
                size += sum(len(r.value) for r in got)
                decoded.extend(await asyncio.to_thread(decode, got))  # CPU work off the event loop
                if deadline is None:
                    deadline = time.monotonic() + self.max_seconds
            elif deadline is None:
                if batch or time.monotonic() >= idle_until:
                    break
                continue
        return batch, decoded

    async def _poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        """Poll, but give up as soon as a rebalance asks for the batch in hand: aiokafka's
        getmany() waits for the next assignment, which waits for us."""
        poll = asyncio.ensure_future(self.reader.poll(max_records, timeout_s))
        flush = asyncio.ensure_future(self._flush_requested.wait())
        await asyncio.wait((poll, flush), return_when=asyncio.FIRST_COMPLETED)
        flush.cancel()
        if not poll.done():
            poll.cancel()
        try:
            return await poll
        except asyncio.CancelledError:
            if not self._flush_requested.is_set():
                raise  # we are cancelled ourselves, not the poll
            return []

    async def _restart_reader(self) -> None:
        """The log is stuck: with nothing in hand or in flight, reconnect and read again from
        the last commit. Another process may own our partitions by then, so the open sessions
        are forgotten (recomputed from stored events when their devices come back)."""
        if self.sessions is not None:
            self.sessions.forget()
        READER_RESTARTS.inc()
        await self.reader.restart()

    def write(self, records: list[LogRecord], decoded: Decoded) -> None:
        """Blocking: insert every table's rows of one batch.

        The events go to ClickHouse on a thread of their own while this one folds them into
        the sessions held: ClickHouse parses without the GIL, so the two overlap (the insert and
        the fold one after the other were most of a batch's time)."""
        RESENT_IN_BATCH.inc(decoded.keep_last_copies())  # 0 on a retry: already done
        as_written = self.erasure_guard.before_insert(decoded)
        fingerprint = records_fingerprint(records)
        stored = self._events_inserter.submit(
            self.warehouse.insert_json,
            "events",
            decoded.events,
            EVENT_COLUMNS,
            batch_token(fingerprint, "events"),
            fmt="JSONCompactEachRow",
            settings=BULK_INSERT,
        )
        fold = None
        try:
            if self.sessions is not None:
                fold = self.sessions.fold(decoded.sessions)
        finally:
            try:
                stored.result()
            except BaseException:
                if fold is not None and self.sessions is not None:
                    self.sessions.discard(fold)
                raise
        self.warehouse.insert("identity_links", decoded.links, LINK_COLUMNS, batch_token(fingerprint, "links"))
        self.warehouse.insert(
            "rejected_events", decoded.rejected, REJECTED_COLUMNS, batch_token(fingerprint, "rejected")
        )
        if self.sessions is not None and fold is not None:  # last: it reads the events just stored to recompute
            self.sessions.finish(fold)
        self.erasure_guard.after_write(*as_written, decoded.rejected)

    def _idle(self) -> None:
        """Blocking: nothing to read. Erasures still apply to the sessions held, then time passes."""
        assert self.sessions is not None
        self.erasure_guard.idle()
        self.sessions.idle()

    async def write_with_retry(self, records: list[LogRecord], decoded: Decoded, stop: asyncio.Event) -> bool:
        delay = 0.2
        while True:
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.write, records, decoded)
            except Exception as exc:
                WRITE_FAILURES.inc()
                self.state.last_write_ok = False
                self.state.last_error = repr(exc)
                log.warning(
                    "ClickHouse write failed; retrying, nothing is committed",
                    extra={"error": repr(exc)[:500], "retry_in_s": delay, "records": len(records)},
                )
                if stop.is_set():
                    return False
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return False
                except TimeoutError:
                    pass
                delay = min(delay * 2, 10.0)
                continue
            WRITE_SECONDS.observe(time.monotonic() - started)
            self.state.last_write_ok = True
            self.state.last_error = None
            self.state.last_write_at = time.time()
            return True

    async def write_and_commit(self, records: list[LogRecord], decoded: Decoded, stop: asyncio.Event) -> bool:
        """Write one batch (retrying while ClickHouse fails), then commit its offsets."""
        if not await self.write_with_retry(records, decoded, stop):
            return False
        await self.reader.commit(records)
        EVENTS_WRITTEN.inc(len(decoded.events))
        REJECTS_WRITTEN.inc(len(decoded.rejected))
        LATE.inc(decoded.late)
        self.state.events_written += len(decoded.events)
        if decoded.newest_received_ms and decoded.newest_received_ms > (self.state.newest_received_ms or 0):
            self.state.newest_received_ms = decoded.newest_received_ms
            NEWEST_RECEIVED.set(decoded.newest_received_ms / 1000)
        log.debug("batch committed", extra={"records": len(records), "events": len(decoded.events)})
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Consume until ``stop`` is set; the batch in hand is written and committed first.

        The next batch is collected and decoded while the previous one is being written (at
        most one write in flight, as Arroyo's run-task-in-threads step): ClickHouse parses
        rows in its own threads while Python decodes. Commits stay in batch order: a batch's
        write starts only after the previous batch was written and committed.
        """
        log.info("sessionizer consuming", extra={"max_events": self.max_events, "max_seconds": self.max_seconds})
        self._running = True
        writing: asyncio.Task[bool] | None = None
        try:
            while not stop.is_set():
                if self.reader.stalled():
                    if writing is not None:
                        done, writing = await writing, None
                        if not done:
                            break
                    await self._restart_reader()
                records, decoded = await self.collect(stop)
                lag = self.reader.lag()
                if lag is not None:
                    LAG.set(lag)
                if writing is not None:
                    done, writing = await writing, None
                    if not done:
                        break
                if records:
                    writing = asyncio.create_task(self.write_and_commit(records, decoded, stop))
                elif self.sessions is not None and lag == 0 and not stop.is_set():
                    # Everything read, nothing in flight: time passes by the clock. Not while the
                    # lag is unknown (a broker away): events may be waiting that extend sessions.
                    await asyncio.to_thread(self._idle)
                if self._flush_requested.is_set() or stop.is_set():
                    if writing is not None:
                        done, writing = await writing, None
                        if not done:
                            break
                    self._flush_done()
        finally:
            if writing is not None:  # cancelled mid-write: wait for it, its commit decides
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(writing), WRITE_IN_FLIGHT_GRACE_S)
            self._running = False
            self._flush_done()
        log.info("sessionizer stopped", extra={"events_written": self.state.events_written})

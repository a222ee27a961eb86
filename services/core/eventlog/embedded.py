"""An embedded durable log in the data directory, for ``touchpoint up`` without Kafka.

Why: a single process must still be able to answer 200 only once an event is
safe. Appends are framed (length, CRC32, key, value), written by one writer task
that groups concurrent requests into one ``fdatasync``; a torn tail left by a
crash is cut off when the log reopens.

The log is a series of segment files named by the global byte offset they start
at (``events-00000000000000000000.log``). Offsets are global byte positions; the
consumer's offset is persisted atomically (write, fsync, rename) after each
commit, and segments wholly below it are deleted, so the log does not grow
without bound. A segment also rolls once its first event is an hour old, so
raw events (and those of a person erased since) leave the disk about an hour
after they are stored, however little traffic fills the segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from .base import LogOutcomeUnknown, LogRecord, LogUnavailable

_HEADER = struct.Struct("<IIH")  # payload length, crc32(payload), key length
MAX_PENDING_BYTES = 64 << 20  # back-pressure: appends wait beyond this
SEGMENT_BYTES = 128 << 20  # roll to a new segment file beyond this
SEGMENT_MAX_AGE_S = 3600.0  # ... or once its first write is this old
RETRY_AFTER_FAILURE_S = 1.0  # after a failed write that was cut back cleanly, try again after this


def _frame(key: bytes, value: bytes) -> bytes:
    payload = key + value
    return _HEADER.pack(len(payload), zlib.crc32(payload), len(key)) + payload


def _scan_valid_end(path: Path) -> int:
    """Byte position after the last complete, checksum-valid frame."""
    end = 0
    with open(path, "rb") as f:
        data_len = os.fstat(f.fileno()).st_size
        while end + _HEADER.size <= data_len:
            f.seek(end)
            header = f.read(_HEADER.size)
            length, crc, key_len = _HEADER.unpack(header)
            payload = f.read(length)
            if len(payload) < length or zlib.crc32(payload) != crc or key_len > length:
                break
            end += _HEADER.size + length
    return end


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EmbeddedLog:
    """Segment files; one writer and any number of in-process readers."""

    def __init__(
        self,
        directory: Path,
        name: str = "events",
        segment_bytes: int = SEGMENT_BYTES,
        segment_max_age_s: float = SEGMENT_MAX_AGE_S,
    ) -> None:
        self.directory = directory
        self.name = name
        self.segment_bytes = segment_bytes
        self.segment_max_age_s = segment_max_age_s
        self._active_since: float | None = None  # monotonic time of the active segment's first write
        self._bases: list[int] = []  # start offsets of the segments, ascending
        self._fd: int | None = None
        self._durable_end = 0
        self._pending: list[tuple[bytes, asyncio.Future[None]]] = []
        self._pending_bytes = 0
        self._wakeup = asyncio.Event()
        self._space = asyncio.Event()
        self._grown = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self._failed_at = 0.0
        self._unrecoverable = False  # a failed write could not be cut back: restart to reopen the log

    @property
    def durable_end(self) -> int:
        return self._durable_end

    def segment_path(self, base: int) -> Path:
        return self.directory / f"{self.name}-{base:020d}.log"

    def segments(self) -> list[int]:
        return list(self._bases)

    async def start(self) -> None:
        if self._fd is not None:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        prefix = f"{self.name}-"
        self._bases = sorted(
            int(p.name[len(prefix) : -4])
            for p in self.directory.glob(f"{self.name}-*.log")
            if p.name[len(prefix) : -4].isdigit()
        )
        if not self._bases:
            self._bases = [0]
            self.segment_path(0).touch()
        active = self.segment_path(self._bases[-1])
        valid = await asyncio.to_thread(_scan_valid_end, active)
        if valid != active.stat().st_size:
            os.truncate(active, valid)  # a crash mid-append left a torn frame
        self._fd = os.open(active, os.O_WRONLY | os.O_APPEND)
        self._durable_end = self._bases[-1] + valid
        self._active_since = time.monotonic() if valid else None  # its age before the restart is unknown
        self._space.set()
        self._task = asyncio.create_task(self._write_loop(), name="embedded-log-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def healthy(self) -> bool:
        """No failed write, or one a while ago that was cut back cleanly: worth trying again (a
        full disk may have room now), or /health would keep traffic away for good."""
        if self._fd is None or self._unrecoverable:
            return False
        return self._failed is None or time.monotonic() - self._failed_at >= RETRY_AFTER_FAILURE_S

    async def append(
        self, records: Sequence[tuple[bytes, bytes]], dead_letters: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        if not self.healthy():
            raise LogUnavailable(f"embedded log in {self.directory} is not writable: {self._failed}")
        while self._pending_bytes > MAX_PENDING_BYTES:
            self._space.clear()
            await self._space.wait()
        blob = b"".join(_frame(k, v) for k, v in (*records, *dead_letters))
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((blob, future))
        self._pending_bytes += len(blob)
        self._wakeup.set()
        await future

    def _roll_if_due(self) -> None:
        """Start a new segment at the durable end once the active one is full, or holds events
        older than ``segment_max_age_s`` (so that a reader's next commit can delete them)."""
        assert self._fd is not None
        size = self._durable_end - self._bases[-1]
        stale = (
            size > 0
            and self._active_since is not None
            and time.monotonic() - self._active_since >= self.segment_max_age_s
        )
        if size < self.segment_bytes and not stale:
            return
        base = self._durable_end
        path = self.segment_path(base)
        path.touch()
        _fsync_dir(self.directory)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)  # before closing the old one: a failure leaves it usable
        os.close(self._fd)
        self._fd = fd
        self._bases.append(base)
        self._active_since = None

    def _cut_back(self) -> bool:
        """After a failed write: truncate the active segment to the durable end, so what the
        failed write left there (whole frames of requests about to be told 503, or a torn one)
        is not read after a restart. False when even that failed: the outcome is unknown."""
        try:
            assert self._fd is not None
            os.ftruncate(self._fd, self._durable_end - self._bases[-1])
            os.fdatasync(self._fd)
        except OSError:
            return False
        return True

    async def _write_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # idle: a stale segment still rolls
                await asyncio.wait_for(self._wakeup.wait(), min(60.0, self.segment_max_age_s / 2))
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                if self._failed is None:
                    with contextlib.suppress(OSError):  # tried again at the next write or tick
                        self._roll_if_due()
                continue
            blob = b"".join(b for b, _ in batch)
            try:
                self._roll_if_due()
                assert self._fd is not None
                await asyncio.to_thread(_write_and_sync, self._fd, blob)
            except OSError as exc:
                self._failed, self._failed_at = exc, time.monotonic()
                self._pending_bytes -= len(blob)
                self._space.set()
                failure: Exception
                if await asyncio.to_thread(self._cut_back):
                    failure = LogUnavailable(f"embedded log write failed, nothing was stored: {exc}")
                else:
                    self._unrecoverable = True
                    failure = LogOutcomeUnknown(f"embedded log write failed and could not be undone: {exc}")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(failure)
                continue
            self._failed = None
            if self._active_since is None:
                self._active_since = time.monotonic()
            self._durable_end += len(blob)
            self._pending_bytes -= len(blob)
            self._space.set()
            for _, fut in batch:
                if not fut.done():
                    fut.set_result(None)
            async with self._grown:
                self._grown.notify_all()

    async def wait_beyond(self, position: int, timeout_s: float) -> None:
        """Wait until the durable end passes ``position`` or the timeout expires."""
        if self._durable_end > position:
            return
        async with self._grown:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._grown.wait_for(lambda: self._durable_end > position), timeout_s)

    def locate(self, position: int) -> tuple[int, int]:
        """The segment holding ``position`` and where that segment ends (the durable end for the last)."""
        for i, base in enumerate(self._bases):
            end = self._bases[i + 1] if i + 1 < len(self._bases) else self._durable_end
            if base <= position < end or (position == end and i + 1 == len(self._bases)):
                return base, end
        raise LogUnavailable(
            f"offset {position} is not in the embedded log (segments start at {self._bases[:3]}...); "
            "remove the offset file to re-read what is left"
        )

    def release(self, position: int) -> list[int]:
        """Delete segments wholly below ``position`` (everything in them is committed)."""
        removed = []
        while len(self._bases) > 1 and self._bases[1] <= position:
            base = self._bases.pop(0)
            self.segment_path(base).unlink(missing_ok=True)
            removed.append(base)
        return removed

    def reader(self, group: str) -> EmbeddedLogReader:
        return EmbeddedLogReader(self, group)


def _write_and_sync(fd: int, blob: bytes) -> None:
    view = memoryview(blob)
    while view:
        written = os.write(fd, view)
        view = view[written:]
    os.fdatasync(fd)


class EmbeddedLogReader:
    """A consumer of an EmbeddedLog whose committed position survives restarts."""

    def __init__(self, log: EmbeddedLog, group: str) -> None:
        self.log = log
        self.offsets_path = log.directory / f"{log.name}.{group}.offset"
        self._position = 0
        self._committed = 0

    async def start(self) -> None:
        try:
            self._position = int(self.offsets_path.read_text().strip() or 0)
        except FileNotFoundError:
            self._position = self.log.segments()[0] if self.log.segments() else 0
        self.log.locate(self._position)  # raises with advice when the offset is gone
        self._committed = self._position

    async def stop(self) -> None:
        return None

    def on_revoke(self, hook: Callable[[], Awaitable[None]]) -> None:
        """One consumer per group owns the whole log: nothing is ever revoked."""

    def lag(self) -> int | None:
        return self.log.durable_end - self._position

    def stalled(self) -> str | None:
        """A file in our own process cannot stall."""
        return None

    async def restart(self) -> None:
        return None

    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        await self.log.wait_beyond(self._position, timeout_s)
        if self.log.durable_end <= self._position:
            self.log.release(self._committed)  # a segment rolled for its age while nothing came
            return []
        base, end = self.log.locate(self._position)
        if self._position == end:  # at the end of a full segment: go on in the next
            base, end = self.log.locate(end)
        records = await asyncio.to_thread(
            _read_frames, self.log.segment_path(base), base, self._position, end, max_records
        )
        if records:
            self._position = records[-1].next_offset
        return records

    async def commit(self, records: Sequence[LogRecord]) -> None:
        if not records:
            return
        position = max(r.next_offset for r in records)
        await asyncio.to_thread(self._persist, position)
        self._committed = position
        self.log.release(position)

    def _persist(self, position: int) -> None:
        tmp = self.offsets_path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            f.write(str(position))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(self.offsets_path)
        _fsync_dir(self.offsets_path.parent)


def _read_frames(path: Path, base: int, start: int, end: int, max_records: int) -> list[LogRecord]:
    """Frames of one segment from global offset ``start`` up to ``end``."""
    out: list[LogRecord] = []
    chunk_limit = 8 << 20
    with open(path, "rb") as f:
        f.seek(start - base)
        data = f.read(min(end - start, chunk_limit))
        pos = 0
        while len(out) < max_records and pos + _HEADER.size <= len(data):
            length, _crc, key_len = _HEADER.unpack_from(data, pos)
            body_start = pos + _HEADER.size
            if body_start + length > len(data):
                if out:
                    break
                f.seek(start - base)  # one frame larger than the chunk: read it whole
                data = f.read(_HEADER.size + length)
                continue
            payload = data[body_start : body_start + length]
            next_pos = body_start + length
            out.append(LogRecord(0, start + pos, start + next_pos, bytes(payload[:key_len]), bytes(payload[key_len:])))
            pos = next_pos
    return out

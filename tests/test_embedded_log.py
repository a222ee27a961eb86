"""The embedded durable log: appends survive reopening, torn tails are cut, offsets persist."""

from __future__ import annotations

import asyncio
import resource
import signal
from pathlib import Path

import pytest

from services.core.eventlog import EmbeddedLog, LogUnavailable, embedded


async def test_append_read_commit_and_resume(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    await log.start()
    await log.append([(b"k1", b"v1"), (b"k2", b"v2")])
    await log.append([(b"k3", b"v3")])
    reader = log.reader("g")
    await reader.start()
    first = await reader.poll(2, 0.1)
    assert [(r.key, r.value) for r in first] == [(b"k1", b"v1"), (b"k2", b"v2")]
    await reader.commit(first)
    await log.stop()

    log = EmbeddedLog(tmp_path)
    await log.start()
    reader = log.reader("g")
    await reader.start()
    rest = await reader.poll(10, 0.1)
    assert [r.value for r in rest] == [b"v3"]  # resumes after the committed position
    assert await reader.poll(10, 0.05) == []
    await log.stop()


async def test_torn_tail_is_cut_on_reopen(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    await log.start()
    await log.append([(b"k", b"complete")])
    await log.stop()
    with open(tmp_path / "events-00000000000000000000.log", "ab") as f:
        f.write(b"\x40\x00\x00\x00garbage-of-a-crash")  # a header promising more than is there
    log = EmbeddedLog(tmp_path)
    await log.start()
    await log.append([(b"k", b"after")])
    reader = log.reader("g")
    await reader.start()
    assert [r.value for r in await reader.poll(10, 0.1)] == [b"complete", b"after"]
    await log.stop()


async def test_poll_waits_for_new_appends(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path)
    await log.start()
    reader = log.reader("g")
    await reader.start()
    waiter = asyncio.create_task(reader.poll(10, 5))
    await asyncio.sleep(0.05)
    await log.append([(b"k", b"late")])
    records = await asyncio.wait_for(waiter, 2)
    assert [r.value for r in records] == [b"late"]
    await log.stop()


async def test_segments_roll_are_read_across_and_deleted_once_committed(tmp_path: Path) -> None:
    log = EmbeddedLog(tmp_path, segment_bytes=1000)
    await log.start()
    values = [f"value-{i:04d}".encode() * 10 for i in range(60)]  # ~110 bytes framed each
    for i in range(0, 60, 3):
        await log.append([(b"k", v) for v in values[i : i + 3]])
    assert len(log.segments()) > 3, log.segments()
    reader = log.reader("g")
    await reader.start()
    got: list[bytes] = []
    while len(got) < 30:
        got += [r.value for r in await reader.poll(min(7, 30 - len(got)), 0.1)]
    assert got == values[:30]
    before = len(list(tmp_path.glob("events-*.log")))
    batch = await reader.poll(1, 0.1)
    await reader.commit(batch)
    after = list(tmp_path.glob("events-*.log"))
    assert len(after) < before, "segments below the committed offset are deleted"
    await log.stop()

    log = EmbeddedLog(tmp_path, segment_bytes=1000)  # restart: resume after the commit, in a later segment
    await log.start()
    await log.append([(b"k", b"after-restart")])
    reader = log.reader("g")
    await reader.start()
    rest: list[bytes] = []
    while not rest or rest[-1] != b"after-restart":
        rest += [r.value for r in await reader.poll(100, 0.1)]
    assert rest == values[31:] + [b"after-restart"]
    await log.stop()


async def test_a_failed_write_is_cut_back_so_a_503_stays_unstored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails half way (here the file size limit, as a full disk would) may leave
    whole frames of requests that are then told 503: they must not come back after a restart.
    The log cuts the file back to its durable end and takes appends again a moment later."""
    monkeypatch.setattr(embedded, "RETRY_AFTER_FAILURE_S", 0.05, raising=False)
    log = EmbeddedLog(tmp_path)
    await log.start()
    await log.append([(b"k", b"before")])
    segment = tmp_path / "events-00000000000000000000.log"
    size = segment.stat().st_size
    first, second = [(b"k", b"first" * 100)], [(b"k", b"second" * 100)]
    # Room for the first request's frame and a little of the second's: a partial write.
    limit = size + len(embedded._frame(*first[0])) + 10
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        results = await asyncio.gather(log.append(first), log.append(second), return_exceptions=True)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert all(isinstance(r, LogUnavailable) for r in results), results
    assert segment.stat().st_size == size  # cut back: nothing of the failed write is left
    assert "nothing was stored" in str(results[0])
    assert not log.healthy()
    await asyncio.sleep(0.1)
    assert log.healthy()  # tries again by itself
    await log.append([(b"k", b"after")])
    await log.stop()

    log = EmbeddedLog(tmp_path)
    await log.start()
    reader = log.reader("g")
    await reader.start()
    assert [r.value for r in await reader.poll(10, 0.1)] == [b"before", b"after"]
    await log.stop()


async def test_a_segment_rolls_for_its_age_and_goes_once_consumed(tmp_path: Path) -> None:
    """Little traffic never fills a segment: without an age limit an erased person's raw events
    would sit in the data directory for months. Once a segment's first event is older than the
    limit it rolls (on the next write, or on the writer's idle tick), and the consumer's next poll
    after its commit deletes it; a restart resumes in the new segment."""
    log = EmbeddedLog(tmp_path, segment_max_age_s=0.3)
    await log.start()
    await log.append([(b"alice", b"her raw event")])
    reader = log.reader("g")
    await reader.start()
    first = await reader.poll(10, 0.1)
    assert [r.value for r in first] == [b"her raw event"]
    await reader.commit(first)  # stored: the segment is still the active one and stays
    assert any(b"her raw event" in p.read_bytes() for p in tmp_path.glob("events-*.log"))

    await asyncio.sleep(0.5)  # older than the limit; nothing written since: the idle tick rolls it
    assert await reader.poll(10, 0.05) == []
    assert len(log.segments()) == 1 and log.segments()[0] == first[-1].next_offset
    assert not any(b"her raw event" in p.read_bytes() for p in tmp_path.glob("events-*.log"))

    await log.append([(b"bob", b"later")])  # a young segment is not rolled
    later = await reader.poll(10, 0.1)
    await reader.commit(later)
    assert len(log.segments()) == 1
    await log.stop()
    log = EmbeddedLog(tmp_path, segment_max_age_s=0.3)
    await log.start()
    reader = log.reader("g")
    await reader.start()
    await log.append([(b"cy", b"after the restart")])
    assert [r.value for r in await reader.poll(10, 0.1)] == [b"after the restart"]
    await log.stop()

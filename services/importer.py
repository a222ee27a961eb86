"""``touchpoint import FILE``: history from elsewhere, sent through a running Touchpoint's ingest.

Moving to Touchpoint from another tool means bringing the past along. Each line of the file
(newline-delimited JSON, gzipped or not, ``-`` for stdin) is one of:

- a Touchpoint event (the body of ``POST /v1/batch``'s ``events``);
- a Segment or RudderStack message (``messageId``, ``anonymousId``, ``userId``: their exports
  and warehouse dumps), mapped as ingest maps them (``services/ingest/segment.py``);
- a line of ``touchpoint export`` (``"kind": "event"``; its other kinds are skipped), so a
  person moves between two Touchpoints.

Events go through ``/v1/batch`` like any tracker's: validated, refused with the line's number
and the field at fault, stored once. A line without an ``event_id`` gets one made from its
content, so running the same import again (after an interruption, say) stores nothing twice.
Events older than the allowed lateness are stored and flagged late, as from a device offline
that long; the sessions table leaves them out until ``touchpoint rebuild-sessions``.
"""

from __future__ import annotations

import gzip
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Final, cast

import httpx
import orjson

from services.core.events import InvalidEvent, parse_time_ms
from services.ingest.segment import from_segment

BATCH_EVENTS: Final = 1000
GROW_AFTER: Final = 10  # batches taken in a row before the importer tries batches twice as large
BATCH_BYTES: Final = 900_000  # under ingest's 1 MiB body limit
RETRY_STATUSES: Final = (429, 503, 504)
MAX_TRIES: Final = 8
# Ids made from a line's content: the same line, the same id, in every import.
ID_NAMESPACE: Final = uuid.UUID("5b0c8f0e-2f3a-4c51-9a57-8d1f0f2a7e11")
SEGMENT_KEYS: Final = ("messageId", "anonymousId", "userId", "previousId")
# Columns of an exported event that are the event as sent (the rest are derived from it again).
EXPORT_TIMING: Final = ("response_ms", "ttfb_ms", "load_ms", "lcp_ms", "inp_ms", "cls")


@dataclass
class ImportResult:
    lines: int = 0
    sent: int = 0
    accepted: int = 0
    skipped: int = 0  # blank lines and export lines that are not events
    late: int = 0  # older than the allowed lateness when sent
    problems: list[str] = field(default_factory=list)  # "line N: field: reason", the first ones

    def refuse(self, line: int, reason: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(f"line {line}: {reason}")

    @property
    def refused(self) -> int:
        return self.lines - self.skipped - self.accepted


def event_of(value: Any) -> Any | None:
    """The Touchpoint event a line means; None for a line to skip (an export's non-event kinds)."""
    if not isinstance(value, dict):
        return value  # refused by ingest with its reason
    kind = value.get("kind")
    if isinstance(kind, str):
        return _exported_event(value) if kind == "event" else None
    if any(key in value for key in SEGMENT_KEYS):
        return from_segment(value)
    return value


def _exported_event(row: dict[str, Any]) -> dict[str, Any]:
    """An event as ``touchpoint export`` wrote it, as it was sent (derived columns dropped)."""
    event: dict[str, Any] = {
        key: row[key] for key in ("event_id", "type", "name", "anonymous_id", "user_id", "channel") if row.get(key)
    }
    if row.get("timestamp"):  # as stored: corrected for the device's clock when it was sent
        event["timestamp"] = row["timestamp"]
    for key in ("properties", "context"):
        if isinstance(row.get(key), dict):
            event[key] = row[key]
    timing = {k: row[k] for k in EXPORT_TIMING if row.get(k) is not None}
    if timing:
        event["timing"] = timing
    if row.get("error_kind"):
        event["error"] = {
            "kind": row["error_kind"],
            "message": row.get("error_message", ""),
            "fatal": bool(row.get("error_fatal")),
        }
    if row.get("ip"):
        event["ip"] = row["ip"]
    return event


def _open(path: str) -> BinaryIO:
    """The file, gunzipped when it is gzip (by its first bytes, whatever its name)."""
    if path == "-":
        return sys.stdin.buffer
    raw = Path(path).open("rb")
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return cast(BinaryIO, gzip.GzipFile(fileobj=raw))
    return raw


def prepared(lines: Iterable[bytes], result: ImportResult, lateness_ms: int) -> Iterator[tuple[int, Any, int]]:
    """(line number, event, its size) for each line to send; counts and notes the others."""
    oldest = time.time_ns() // 1_000_000 - lateness_ms
    for number, line in enumerate(lines, 1):
        result.lines += 1
        if not line.strip():
            result.skipped += 1
            continue
        try:
            event = event_of(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            result.refuse(number, f"not JSON ({exc})")
            continue
        if event is None:
            result.skipped += 1
            continue
        if isinstance(event, dict):
            if event.get("event_id") is None:
                event["event_id"] = str(uuid.uuid5(ID_NAMESPACE, line.strip().decode("utf-8", "replace")))
            try:
                if event.get("timestamp") is not None and parse_time_ms(event["timestamp"], "timestamp") < oldest:
                    result.late += 1
            except InvalidEvent:
                pass  # ingest refuses it with the reason
        body = orjson.dumps(event, default=str)
        yield number, event, len(body)


def batches(items: Iterable[tuple[int, Any, int]]) -> Iterator[tuple[list[int], list[Any]]]:
    """Line numbers and events, at most ``BATCH_EVENTS`` or ``BATCH_BYTES`` each."""
    numbers: list[int] = []
    events: list[Any] = []
    size = 0
    for number, event, length in items:
        if events and (len(events) >= BATCH_EVENTS or size + length > BATCH_BYTES):
            yield numbers, events
            numbers, events, size = [], [], 0
        numbers.append(number)
        events.append(event)
        size += length
    if events:
        yield numbers, events


class ImportFailed(Exception):
    """The collector could not take a batch after every retry (what to do is in the message)."""


class TooLarge(Exception):
    """413: the collector takes fewer events (or bytes) in one batch (TOUCHPOINT_MAX_BATCH_EVENTS)."""


def send_batch(client: httpx.Client, url: str, write_key: str, events: list[Any]) -> dict[str, Any]:
    """One batch, retried with the same event ids on 429/503/504 or no answer: stored once either way."""
    body = orjson.dumps({"events": events}, default=str)
    for attempt in range(MAX_TRIES):
        try:
            r = client.post(url, content=body, headers={"X-Write-Key": write_key, "Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            problem = f"no answer ({exc})"
        else:
            if r.status_code == 200:
                answer: dict[str, Any] = r.json()
                return answer
            if r.status_code == 413:
                raise TooLarge(r.text[:200])
            if r.status_code not in RETRY_STATUSES:
                raise ImportFailed(f"{url} answered {r.status_code}: {r.text[:300]}")
            problem = f"{r.status_code}: {r.text[:200]}"
        time.sleep(min(30.0, 2.0**attempt))
    raise ImportFailed(f"{url}: {problem}; run the import again (events already stored are stored once)")


def import_lines(
    lines: Iterable[bytes],
    url: str,
    write_key: str,
    lateness_ms: int,
    progress: Callable[[ImportResult, float], None] | None = None,
) -> ImportResult:
    """Send every line's event to ``url`` (``…/v1/batch``); what happened to each, counted."""
    result = ImportResult()
    started = last_said = time.monotonic()
    # Halved while the collector answers 413 (its limits are its own); back to the largest batch
    # it took once a single event alone was too large, and doubled again after a run of batches
    # taken, so one oversize event does not leave the rest of the file going one by one.
    cap = BATCH_EVENTS
    taken_largest = 1
    taken_since_413 = 0
    with httpx.Client(timeout=httpx.Timeout(60.0)) as client:
        for numbers, events in batches(prepared(lines, result, lateness_ms)):
            done = 0
            while done < len(events):
                piece = events[done : done + cap]
                try:
                    answer = send_batch(client, url, write_key, piece)
                except TooLarge as exc:
                    taken_since_413 = 0
                    if len(piece) > 1:
                        cap = len(piece) // 2
                        continue
                    result.refuse(numbers[done], f"event: larger than the collector takes ({exc})")
                    done += 1
                    cap = taken_largest
                    continue
                taken_largest = max(taken_largest, len(piece))
                taken_since_413 += 1
                if cap < BATCH_EVENTS and taken_since_413 >= GROW_AFTER:
                    cap, taken_since_413 = min(BATCH_EVENTS, cap * 2), 0
                result.sent += len(piece)
                result.accepted += int(answer.get("accepted", 0))
                for refused in answer.get("rejected", []):
                    result.refuse(numbers[done + int(refused["index"])], str(refused["error"]))
                done += len(piece)
            now = time.monotonic()
            if progress is not None and now - last_said >= 2.0:
                progress(result, now - started)
                last_said = now
    return result


def read(path: str) -> Iterator[bytes]:
    """The lines of ``path`` (gzipped or not; ``-``: stdin)."""
    with _open(path) as stream:
        yield from stream

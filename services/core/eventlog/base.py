"""What every event log offers: durable appends for ingest, batched reads for consumers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol


class LogUnavailable(RuntimeError):
    """The log cannot take events right now, and stored none of them: retry later (HTTP 503)."""


class LogOutcomeUnknown(RuntimeError):
    """The log may or may not have stored the events: the answer to their commit was lost.

    Not a 503, whose promise is "nothing was stored": a client retrying with the same event
    ids has them stored once either way (HTTP 504)."""


class LogRecord(NamedTuple):
    """One record read from the log, with where to resume after it.

    A named tuple, not a frozen dataclass: one is made per record read, and a frozen
    dataclass's ``__init__`` (``object.__setattr__`` per field) was 7% of the sessionizer's
    Python time on the bench's mix of single-event records."""

    partition: int
    offset: int
    next_offset: int
    key: bytes
    value: bytes
    topic: str = ""  # Kafka: the topic it came from (events or dead letters)


class LogWriter(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def healthy(self) -> bool: ...

    async def append(
        self, records: Sequence[tuple[bytes, bytes]], dead_letters: Sequence[tuple[bytes, bytes]] = ()
    ) -> None:
        """Return only once every (key, value) is durable, all or none; raise LogUnavailable when
        none is, LogOutcomeUnknown when the log cannot tell which.

        Dead letters go to their own topic on Kafka (the embedded log keeps them inline)."""


class LogReader(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def poll(self, max_records: int, timeout_s: float) -> list[LogRecord]:
        """Up to max_records new records; an empty list after timeout_s without any."""

    async def commit(self, records: Sequence[LogRecord]) -> None:
        """Mark everything up to and including these records as processed."""

    def lag(self) -> int | None:
        """Records (or bytes, for the embedded log) not yet read, when known."""

    def on_revoke(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Await ``hook`` before partitions are handed to another consumer, so what is in hand
        can be written and committed first (a log without consumer groups never calls it)."""

    def stalled(self) -> str | None:
        """Why the reader has made no progress for too long while polled, or None."""

    async def restart(self) -> None:
        """Drop the connection and read again from the last commit (after ``stalled``)."""

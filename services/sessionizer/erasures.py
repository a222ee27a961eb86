"""The erasures a sessionizer honours, read from ClickHouse's ``erasures`` table.

Read once for the last ``HORIZON_MS`` before the first write, then what is new after each
batch's write and on idle ticks (one small read each). Which events they take is the pure rule
of services.core.erasure.
"""

from __future__ import annotations

import time
from typing import Any, Final

from services.core.erasure import ErasedOwners, Erasure
from services.core.warehouse import Warehouse

# Events accepted longer ago than this are not waiting in the log any more (Kafka keeps a topic's
# records 7 days unless told otherwise; the embedded log drops what was committed).
HORIZON_MS: Final = 30 * 24 * 3600 * 1000

# Erasures a second apart or less are read twice (the clock is ClickHouse's and two may share a
# millisecond); the ones already known are told apart by (project, person, time, devices): a
# device found later is recorded with its erasure's time.
_OVERLAP_MS: Final = 1000

_SQL: Final = """
SELECT project, person, devices, spans, toUnixTimestamp64Milli(erased_at) AS at FROM erasures
WHERE erased_at >= fromUnixTimestamp64Milli({since:Int64})
"""


class Erasures:
    def __init__(self, warehouse: Warehouse, horizon_ms: int = HORIZON_MS) -> None:
        self.warehouse = warehouse
        self.horizon_ms = horizon_ms
        self.owners = ErasedOwners()
        self._since: int | None = None  # ms: the newest erasure read, less the overlap
        self._known: set[tuple[str, str, int, tuple[str, ...]]] = set()

    @property
    def read(self) -> bool:
        """Read at least once (the horizon's erasures are known)."""
        return self._since is not None

    def refresh(self) -> list[Erasure]:
        """Blocking: read the erasures recorded since the last look; returns the new ones."""
        now = time.time_ns() // 1_000_000
        since = now - self.horizon_ms if self._since is None else self._since
        rows: list[dict[str, Any]] = self.warehouse.rows(_SQL, {"since": since})
        new = []
        for row in rows:
            erasure = Erasure(
                project=str(row["project"]),
                person=str(row["person"]),
                devices=tuple(row["devices"]),
                spans=tuple((str(d), int(lo), int(hi)) for d, lo, hi in row["spans"]),
                erased_at=int(row["at"]),
            )
            key = (erasure.project, erasure.person, erasure.erased_at, erasure.devices)
            if key in self._known:
                continue
            self._known.add(key)
            self.owners.add(erasure)
            new.append(erasure)
        newest = max((int(r["at"]) for r in rows), default=since + _OVERLAP_MS)
        self._since = max(since, newest - _OVERLAP_MS)
        if new:  # the known keys only matter within the overlap; the owners, for the horizon
            self._known = {k for k in self._known if k[2] >= self._since}
            self.owners.prune(now - self.horizon_ms)
        return new
